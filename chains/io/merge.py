"""``merge OUT IN...``: the records of several runs of one job (its ``--shard`` runs, a run and its resumes) as one
file with one record per input.

Records are de-duplicated by ``key`` (the resume key, ``chains.engine.resume``): per key a success wins over
failures, the latest success if there are several, the latest failure if none succeeded ("latest": later on the
command line, or further down the same file).  Records without a key (a row the reader could not read) are kept as
they are.  Indexes are kept, not renumbered: in a shard run a record's index is its input's place in the whole
input file, so the merged file has the indexes one run over the file would have written.  Records are written in
the order they were read, each winner where it stood.

Bounded: each input is read twice, line by line (never whole), lines longer than ``max_line_chars`` are skipped
without being held.  The first pass keeps, per key, a 16-byte digest and where its winner is (about 150 bytes per
distinct key, never a record), and one bit per line; the second writes the winners through ``JsonlSink``.  A line
that is not a record (the torn last line of a killed run, which ``--resume`` leaves in the middle of a file, a
line that is not JSON, too deep, or not UTF-8) is skipped and counted, as ``done_keys`` skips it.  A file that
cannot be an output at all (missing, binary, one that a run is still writing, or whose lines are none of them
records) is one usage error before ``OUT`` is touched.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from chains.errors import UsageError
from chains.io.sinks import JsonlSink, check_writable, lock_file
from chains.io.text_file import STDIN, bounded_lines, close_text, not_utf8, open_text

MAX_RECORD_CHARS = 64 * 1024 * 1024
"""The longest record line read: an input row may have 32 MiB (``chains.io.inputs``), its record has more."""
MAX_RECORD_DEPTH = 256
"""The deepest record kept: an input may nest 100 levels; past this, writing it again could exhaust the stack."""
_WRITE_CHARS = 1024 * 1024
"""Records are written in groups of about this many characters (one flush per group, not per record)."""
_FLAG = "merge"


@dataclass
class MergeReport:
    """What a merge read and wrote; ``line(out)`` is the one summary line."""

    files: int
    read: int = 0
    """Records read (lines that are records), from every input."""
    written: int = 0
    duplicates: int = 0
    """Records dropped because another record of the same key won."""
    failures: int = 0
    """Written records that are failures: no record of their key (or no key) succeeded."""
    unreadable: int = 0
    first_unreadable: str | None = None

    def line(self, out: str) -> str:
        text = (
            f"merge: {_count(self.read, 'record')} read from {_count(self.files, 'file')}, "
            f"{self.written:,} written to {out}, {_count(self.duplicates, 'duplicate')} dropped, "
            f"{_count(self.failures, 'failure')} kept"
        )
        if self.unreadable:
            where = self.first_unreadable if self.unreadable == 1 else f"the first: {self.first_unreadable}"
            text += f"; {_count(self.unreadable, 'unreadable line')} skipped ({where})"
        return text


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


@dataclass
class _Winners:
    """Pass one's result: per key digest, the line of its winner (``position * 2 + ok``); a bit per line to write."""

    by_key: dict[bytes, int] = field(default_factory=dict)
    lines: bytearray = field(default_factory=bytearray)
    keyless_failures: int = 0

    def mark(self, position: int, on: bool) -> None:
        byte, bit = divmod(position, 8)
        if byte >= len(self.lines):
            self.lines.extend(bytes(byte - len(self.lines) + 1))
        if on:
            self.lines[byte] |= 1 << bit
        else:
            self.lines[byte] &= ~(1 << bit) & 0xFF

    def marked(self, position: int) -> bool:
        byte, bit = divmod(position, 8)
        return byte < len(self.lines) and bool(self.lines[byte] >> bit & 1)

    def add(self, position: int, record: dict[str, Any]) -> None:
        """Fold in the record on line ``position``: a success replaces its key's record, a failure only a failure."""
        ok = record.get("error") is None
        digest = _digest(record)
        if digest is None:  # no key: kept as it is
            self.mark(position, True)
            self.keyless_failures += not ok
            return
        current = self.by_key.get(digest)
        if current is not None:
            if current & 1 and not ok:
                return  # a failure never replaces a success
            self.mark(current >> 1, False)
        self.by_key[digest] = position * 2 + ok
        self.mark(position, True)


def _digest(record: dict[str, Any]) -> bytes | None:
    """The record's key as a fixed-size digest (keys come from files: any length); None when it has none."""
    key = record.get("key")
    if not key:
        return None
    text = key if isinstance(key, str) else json.dumps(key, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


# ------------------------------------------------------------------ the command


def merge_records(
    out: str,
    inputs: Sequence[str],
    *,
    overwrite: bool = False,
    max_line_chars: int = MAX_RECORD_CHARS,
) -> MergeReport:
    """Join the records of ``inputs`` into ``out``, one per key (see the module docstring); the report.

    Refused, as one ``UsageError`` and before ``out`` is created or emptied: no input, an input that is standard
    input, missing, a directory, given twice, not text, held by a run, or without a single record; ``out`` being
    one of the inputs; ``out`` holding records without ``overwrite``; ``out`` not writable.
    """
    sources = _check_paths(out, inputs, overwrite)
    report = MergeReport(files=len(sources))
    winners = _Winners()
    starts, fingerprints = [], []
    position = 0
    for path in sources:
        starts.append(position)
        fingerprint, position = _first_pass(path, position, winners, report, max_line_chars)
        fingerprints.append(fingerprint)
    report.written = int.from_bytes(winners.lines, "little").bit_count()
    report.duplicates = report.read - report.written
    report.failures = winners.keyless_failures + sum(not value & 1 for value in winners.by_key.values())
    with JsonlSink(out, overwrite=overwrite, flag=f"{_FLAG} OUT") as sink:
        sink.write_entries([])  # with --overwrite the old records go even when there is nothing to write
        for path, fingerprint, start in zip(sources, fingerprints, starts, strict=True):
            _second_pass(path, fingerprint, start, winners, sink, out, max_line_chars)
    return report


def _check_paths(out: str, inputs: Sequence[str], overwrite: bool) -> list[str]:
    if not inputs:
        raise UsageError(f"{_FLAG}: no input files; pass OUT.jsonl and one or more records files")
    seen: dict[tuple[int, int], str] = {}
    for path in inputs:
        identity = _input_identity(path)
        if identity in seen:
            also = f" (also as {seen[identity]})" if seen[identity] != path else ""
            raise UsageError(f"{_FLAG} {path}: given twice{also}; pass each file once")
        seen[identity] = path
    out_identity = _identity(out)
    if out_identity is not None and out_identity in seen:
        raise UsageError(f"{_FLAG} OUT {out} is one of the inputs ({seen[out_identity]}); pick another file")
    check_writable(out, f"{_FLAG} OUT")
    size = os.stat(out).st_size if os.path.isfile(out) else 0
    if size and not overwrite:
        raise UsageError(
            f"{_FLAG} OUT {out} already holds records ({size:,} bytes); pass --overwrite to replace them, "
            "or pick a new file"
        )
    return list(inputs)


def _input_identity(path: str) -> tuple[int, int]:
    if path == STDIN:
        raise UsageError(
            f"{_FLAG} reads each input file twice (to find each key's record, then to write it): standard input "
            "(-) cannot be read twice; save it to a file and pass that"
        )
    file = Path(path)
    if file.is_dir():
        raise UsageError(f"{_FLAG} {path}: is a directory; pass a records file (a run's --output .jsonl)")
    identity = _identity(path)
    if identity is None:
        raise UsageError(f"{_FLAG} {path}: no such file; check the path")
    return identity


def _identity(path: str) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except (OSError, ValueError):
        return None
    return stat.st_dev, stat.st_ino


# ------------------------------------------------------------------ the two passes


Fingerprint = tuple[int, int, int, int]
"""Device, inode, size and modification time of an input as the first pass read it."""


def _first_pass(
    path: str, start: int, winners: _Winners, report: MergeReport, max_chars: int
) -> tuple[Fingerprint, int]:
    """Index one input's records; its lines are numbered from ``start`` (lines are numbered across the inputs).
    Its fingerprint, and the number after its last line."""
    records = unreadable = 0
    position = start
    with _open(path) as (handle, fingerprint):
        for number, text in _lines(handle, max_chars):
            position += 1
            if text is not None and not text.strip():
                continue
            record = _parse(text)
            if record is None:
                unreadable += 1
                report.unreadable += 1
                report.first_unreadable = report.first_unreadable or f"{path} line {number}"
                continue
            records += 1
            report.read += 1
            winners.add(position - 1, record)
    if not records and unreadable > 1:
        raise UsageError(
            f"{_FLAG} {path}: holds no records ({unreadable:,} lines, none a JSON record with an 'error' field); "
            "pass the --output files of runs"
        )
    return fingerprint, position


def _second_pass(
    path: str, expected: Fingerprint, start: int, winners: _Winners, sink: JsonlSink, out: str, max_chars: int
) -> None:
    """Write the winners among one input's lines, in groups of about ``_WRITE_CHARS``."""
    group: list[dict[str, Any]] = []
    size = 0
    with _open(path) as (handle, fingerprint):
        if fingerprint != expected:
            raise UsageError(
                f"{_FLAG} {path}: changed while it was being merged (a run wrote to it); {out} is incomplete: "
                "run the merge again with --overwrite"
            )
        for position, (_, text) in enumerate(_lines(handle, max_chars), start):
            if not winners.marked(position):
                continue
            record = _parse(text)
            if record is None:  # the first pass read a record on this line: the file changed under us
                raise UsageError(f"{_FLAG} {path}: changed while it was being merged; run the merge again")
            group.append(record)
            size += len(text or "")
            if size >= _WRITE_CHARS:
                sink.write_entries(group)
                group, size = [], 0
    sink.write_entries(group)


def _lines(handle: TextIO, max_chars: int) -> Iterator[tuple[int, str | None]]:
    """``(line number, text)`` for every physical line; None for a line over ``max_chars`` (never held whole)."""
    for line in bounded_lines(handle, max_chars):
        yield line.number, None if line.too_long else line.text


def _parse(text: str | None) -> dict[str, Any] | None:
    """A line as the record it holds, or None when it holds none (too long, not UTF-8, torn, not JSON, too deep)."""
    if text is None or not_utf8("", text) is not None:
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # JSONDecodeError, a number too long to convert, nesting past the stack
        return None
    if not isinstance(value, dict) or "error" not in value or _deeper_than(value, MAX_RECORD_DEPTH):
        return None
    return value


def _deeper_than(value: Any, limit: int) -> bool:
    """Iterative, so that no depth can exhaust the stack here."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return False


class _open:
    """An input as text, under a shared lock (a run writing it holds an exclusive one), with its fingerprint."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.handle: TextIO | None = None

    def __enter__(self) -> tuple[TextIO, Fingerprint]:
        self.handle = open_text(self.path, _FLAG)
        try:
            busy = f"{_FLAG} {self.path} is in use by a run (it holds the file's lock); wait for that run to finish, then merge"
            lock_file(self.handle, exclusive=False, busy=busy)  # a filesystem without locks: read it anyway
            stat = os.fstat(self.handle.fileno())
        except BaseException:
            close_text(self.handle)
            raise
        return self.handle, (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)

    def __exit__(self, *exc: object) -> None:
        if self.handle is not None:
            close_text(self.handle)  # releases the lock


__all__ = ["MAX_RECORD_CHARS", "MAX_RECORD_DEPTH", "MergeReport", "merge_records"]
