"""Reading inputs lazily: topics files, JSONL, CSV, or plain lines.

Readers are generators: a 100,000-line file is never held in memory.  A row
that does not fit the chain becomes an ``InputError`` *item* (it gets an error
record; the other rows still run); a file that cannot be used at all is a
``UsageError`` raised before anything runs.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from chains.errors import InputError, UsageError

STDIN = "-"


class RowError(InputError):
    """One input row that cannot be run; carries the row as ``input``."""

    def __init__(self, message: str, row: Any = None) -> None:
        super().__init__(message)
        self.input = row


def _open(path: str, flag: str) -> TextIO:
    if path == STDIN:
        return sys.stdin
    file = Path(path)
    if not file.exists():
        raise UsageError(f"{flag} {path}: no such file; check the path (use - to read standard input)")
    if file.is_dir():
        raise UsageError(f"{flag} {path}: is a directory; pass a file")
    try:
        return file.open(encoding="utf-8", newline="")
    except OSError as exc:
        raise UsageError(f"{flag} {path}: cannot read ({exc.strerror}); check its permissions") from exc


def _lines(handle: TextIO) -> Iterator[tuple[int, str]]:
    try:
        for number, line in enumerate(handle, 1):
            text = line.strip()
            if text and not text.startswith("#"):
                yield number, text
    except UnicodeDecodeError as exc:
        raise UsageError(f"input is not UTF-8 text (byte {exc.start}); save it as UTF-8") from exc
    finally:
        if handle is not sys.stdin:
            handle.close()


class Rows(Iterator[Any]):
    """A lazy row iterator whose ``close()`` closes the file behind it."""

    def __init__(self, first: Any, rows: Iterator[Any]) -> None:
        self._head = [first]
        self._rows = rows

    def __next__(self) -> Any:
        if self._head:
            return self._head.pop()
        return next(self._rows)

    def close(self) -> None:
        close = getattr(self._rows, "close", None)
        if close is not None:
            close()


def _non_empty(rows: Iterator[Any], path: str, flag: str, what: str) -> Rows:
    """Fail with one line when the source has no rows at all; stay lazy otherwise."""
    first = next(rows, None)
    if first is None:
        raise UsageError(f"{flag} {path}: no {what} found; add at least one (blank lines and # lines are skipped)")
    return Rows(first, rows)


def read_topics(path: str, variable: str = "topic") -> Rows:
    """One topic per line; blank lines and ``#`` lines skipped; ``-`` reads stdin."""
    rows = ({variable: text} for _, text in _lines(_open(path, "--topics")))
    return _non_empty(rows, path, "--topics", "topics")


def _check(row: Any, where: str, required: Sequence[str], chain: str) -> Any:
    if not isinstance(row, dict):
        return RowError(f"{where}: expected a JSON object with {', '.join(required)}; got {type(row).__name__}", row)
    missing = [name for name in required if row.get(name) in (None, "")]
    if missing:
        return RowError(
            f"{where}: missing {', '.join(repr(m) for m in missing)} (chain {chain} needs "
            f"{', '.join(required)}); add it to the row",
            row,
        )
    return row


def detect_format(path: str) -> str:
    suffix = Path(path).suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    return "lines"


def read_inputs(path: str, *, chain: str, required: Sequence[str], fmt: str | None = None) -> Rows:
    """Rows for ``chain`` from JSONL objects, CSV with a header, or plain lines (one-variable chains)."""
    fmt = fmt or detect_format(path)
    handle = _open(path, "--input")
    if fmt == "jsonl":
        rows: Iterator[Any] = _jsonl(handle, path, chain, required)
    elif fmt == "csv":
        rows = _csv(handle, path, chain, required)
    else:
        if len(required) != 1:
            handle.close() if handle is not sys.stdin else None
            raise UsageError(
                f"--input {path}: plain lines only fit a chain with one input, but {chain} needs "
                f"{', '.join(required)}; use a .jsonl or .csv file with those fields"
            )
        rows = ({required[0]: text} for _, text in _lines(handle))
    return _non_empty(rows, path, "--input", "inputs")


def _jsonl(handle: TextIO, path: str, chain: str, required: Sequence[str]) -> Iterator[Any]:
    for number, text in _lines(handle):
        where = f"{path} line {number}"
        try:
            row = json.loads(text)
        except json.JSONDecodeError as exc:
            yield RowError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno}); fix the line", text)
            continue
        yield _check(row, where, required, chain)


def _csv(handle: TextIO, path: str, chain: str, required: Sequence[str]) -> Iterator[Any]:
    try:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        missing = [name for name in required if name not in header]
        if missing:
            raise UsageError(
                f"--input {path}: the CSV header has {', '.join(header) or 'no columns'} but chain {chain} "
                f"needs {', '.join(required)}; add a column named {missing[0]!r}"
            )
        for row in reader:
            if not any((value or "").strip() for value in row.values() if isinstance(value, str)):
                continue
            clean = {k: v for k, v in row.items() if k is not None}
            yield _check(clean, f"{path} line {reader.line_num}", required, chain)
    finally:
        if handle is not sys.stdin:
            handle.close()


def count_inputs(path: str, fmt: str) -> int | None:
    """How many rows a file holds (for progress and ETA), reading it once without keeping it."""
    if path == STDIN:
        return None
    count = 0
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                text = line.strip()
                if text and not text.startswith("#"):
                    count += 1
    except OSError:
        return None
    return max(0, count - 1) if fmt == "csv" else count


def parse_inline(text: str) -> io.StringIO:  # pragma: no cover - convenience for notebooks
    return io.StringIO(text)
