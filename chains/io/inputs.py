"""Reading inputs lazily: topics files, JSONL, CSV, or plain lines.

Readers are generators: a 100,000-line file is never held in memory.  A row
that does not fit the chain becomes an ``InputError`` *item* (it gets an error
record; the other rows still run); a file that cannot be used at all is a
``UsageError`` raised before anything runs.

Nothing inside a file can stop a run: a row with bytes that are not UTF-8, a
line or CSV record longer than ``MAX_ROW_CHARS``, JSON nested deeper than
``MAX_JSON_DEPTH`` or that Python refuses to parse, each becomes that row's
``RowError``.  Files are decoded with ``surrogateescape`` so one bad byte spoils
only its row (valid UTF-8 never decodes to U+DC80..U+DCFF, so detection is
exact), and with ``utf-8-sig`` so the byte-order mark Excel writes is dropped.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from chains.errors import ChainRunnerError, InputError, UsageError
from chains.io.text_file import (
    PREVIEW_CHARS,
    STDIN,
    bounded_lines,
    clean,
    close_text,
    line_pieces,
    not_utf8,
    open_text,
    too_long,
)

MAX_ROW_CHARS = 32 * 1024 * 1024
"""The longest line (JSONL, plain lines, topics) or CSV record, line endings included."""
MAX_JSON_DEPTH = 100
"""The deepest nesting a JSONL row may have: far beyond real data, far below Python's recursion limit."""
_SURROGATE = re.compile("[\ud800-\udfff]")


class RowError(InputError):
    """One input row that cannot be run; carries the row as ``input``."""

    def __init__(self, message: str, row: Any = None) -> None:
        super().__init__(message)
        self.input = row


# -- line formats: topics, plain lines, JSONL -------------------------------------------------

Entry = tuple[str, str] | RowError
"""A non-blank, non-comment line as ``(where, text)``, or the ``RowError`` of a line that cannot be one."""


def _entries(handle: TextIO, path: str, max_chars: int, wrap: Callable[[str], Any]) -> Iterator[Entry]:
    """Lines with something on them; ``wrap`` turns a bad line's text into the row its error record shows."""
    try:
        for line in bounded_lines(handle, max_chars):
            text = line.text.strip()
            if line.text.lstrip().startswith("#") or not (text or line.too_long):
                continue
            where = f"{path} line {line.number}"
            if line.too_long:
                message = too_long(where, "line", max_chars, "shorten the line or split it")
                yield RowError(message, wrap(clean(line.text) + "…"))
            elif (message_ := not_utf8(where, line.text)) is not None:
                yield RowError(message_, wrap(clean(text)))
            else:
                yield where, text
    finally:
        close_text(handle)


def _one_variable(entries: Iterator[Entry], variable: str) -> Iterator[Any]:
    for entry in entries:
        yield entry if isinstance(entry, RowError) else {variable: entry[1]}


def _jsonl(entries: Iterator[Entry], chain: str, required: Sequence[str]) -> Iterator[Any]:
    for entry in entries:
        yield entry if isinstance(entry, RowError) else _json_row(*entry, chain=chain, required=required)


def _json_row(where: str, text: str, *, chain: str, required: Sequence[str]) -> Any:
    try:
        row = json.loads(text)
    except RecursionError:
        return RowError(_too_deep(where), text)
    except json.JSONDecodeError as exc:
        return RowError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno}); fix the line", text)
    except ValueError:  # an integer longer than Python converts (sys.get_int_max_str_digits)
        return RowError(
            f"{where}: not valid JSON (a number has more than {sys.get_int_max_str_digits()} digits); "
            "write it as a string",
            text,
        )
    problem = _json_problem(row)
    if problem == "deep":
        return RowError(_too_deep(where), text)
    if problem == "surrogate":
        return RowError(f"{where}: the row has a lone surrogate escape (\\ud800-\\udfff); fix the line", clean(text))
    return _check(row, where, required, chain)


def _too_deep(where: str) -> str:
    return f"{where}: JSON nested deeper than {MAX_JSON_DEPTH} levels; flatten the row"


def _json_problem(row: Any) -> str | None:
    """``"deep"`` past ``MAX_JSON_DEPTH``, ``"surrogate"`` for a string no UTF-8 file can hold, else None.

    Iterative, so a deep value cannot exhaust the stack here; the check keeps deep values from
    exhausting it later (the record's JSON, the resume key).
    """
    stack: list[tuple[Any, int]] = [(row, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                return "surrogate"
        elif isinstance(value, dict | list):
            if depth > MAX_JSON_DEPTH:
                return "deep"
            children = [*value.keys(), *value.values()] if isinstance(value, dict) else value
            stack.extend((child, depth + 1) for child in children)
    return None


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


# -- CSV: records split exactly where the csv module splits them, each bounded --------------------

_START, _UNQUOTED, _QUOTED, _QUOTE, _ENDED = range(5)
_QUOTE_RUN = re.compile('"+')


class _QuoteScan:
    """Whether a CSV record goes on past the end of a line: ``csv``'s own state machine, quotes only.

    Mirrors the ``excel`` dialect's reader (``"`` quotes, ``""`` escapes, a quote inside an unquoted
    field is literal, non-strict): a record ends at a line end outside a quoted field.  Only quote
    characters change that, so the scan jumps from quote run to quote run; pieces of a line may come
    one after the other.
    """

    def __init__(self) -> None:
        self.state = _START

    def feed(self, text: str) -> None:
        start = 0
        while (quote := text.find('"', start)) >= 0:
            self.state = _after_plain(self.state, text, start, quote)
            run = _QUOTE_RUN.match(text, quote)
            assert run is not None
            self.state = _after_quotes(self.state, run.end() - quote)
            start = run.end()
        self.state = _after_plain(self.state, text, start, len(text))

    def record_ends(self) -> bool:
        """At a line end: True (and ready for the next record) unless inside a quoted field."""
        if self.state == _QUOTED:
            return False
        self.state = _START
        return True


def _after_plain(state: int, text: str, start: int, end: int) -> int:
    """The state after ``text[start:end]``, which holds no quote character."""
    if start == end or state in (_QUOTED, _ENDED):
        return state
    if text.find("\n", start, end) >= 0 or text.find("\r", start, end) >= 0:
        return _ENDED
    return _START if text[end - 1] == "," else _UNQUOTED


def _after_quotes(state: int, run: int) -> int:
    """The state after ``run`` consecutive quote characters."""
    if state in (_UNQUOTED, _ENDED):
        return state  # a quote inside an unquoted field is an ordinary character
    if state in (_START, _QUOTE):  # the first quote opens the field, or is the second of a ""
        state, run = _QUOTED, run - 1
    return _QUOTED if run % 2 == 0 else _QUOTE


@dataclass(slots=True)
class _Record:
    number: int
    lines: list[str] = field(default_factory=list)
    size: int = 0
    preview: str | None = None
    """Set when the record is longer than allowed: its first characters; ``lines`` is then empty."""

    def add(self, piece: str, max_chars: int) -> None:
        self.size += len(piece)
        if self.preview is None and self.size > max_chars:
            self.preview = (self.lines[0] if self.lines else piece)[:PREVIEW_CHARS]
            self.lines.clear()
        elif self.preview is None:
            self.lines.append(piece)


def _csv_records(handle: TextIO, max_chars: int) -> Iterator[_Record]:
    """The physical lines of each CSV record; a record over ``max_chars`` is skipped to its real end."""
    scan = _QuoteScan()
    record: _Record | None = None
    for number, piece, ends in line_pieces(handle, max_chars + 1):
        record = record or _Record(number)
        scan.feed(piece)
        record.add(piece, max_chars)
        if ends and scan.record_ends():
            yield record
            record = None
    if record is not None:  # the file ends inside a quoted field: csv keeps what it has, so do we
        yield record


def _fields(record: _Record) -> list[str]:
    return next(csv.reader(record.lines), [])


def _csv(handle: TextIO, path: str, chain: str, required: Sequence[str], max_chars: int) -> Iterator[Any]:
    csv.field_size_limit(max(csv.field_size_limit(), max_chars))  # process-wide; records are bounded above
    try:
        records = _csv_records(handle, max_chars)
        header = _csv_header(records, path, max_chars)
        missing = [name for name in required if name not in header]
        if missing:
            raise UsageError(
                f"--input {path}: the CSV header has {', '.join(header) or 'no columns'} but chain {chain} "
                f"needs {', '.join(required)}; add a column named {missing[0]!r}"
            )
        for record in records:
            item = _csv_row(record, header, path, chain, required, max_chars)
            if item is not None:
                yield item
    finally:
        close_text(handle)


def _csv_header(records: Iterator[_Record], path: str, max_chars: int) -> list[str]:
    """The first non-blank record's fields; a header that cannot be read makes the whole file unusable."""
    for record in records:
        where = f"--input {path} line {record.number}"
        if record.preview is not None:
            raise UsageError(too_long(where, "the CSV header", max_chars, "fix the header line"))
        try:
            fields = _fields(record)
        except csv.Error as exc:
            raise UsageError(f"{where}: the CSV header is not valid CSV ({exc}); fix the header line") from exc
        if not fields:
            continue
        for offset, line in enumerate(record.lines):
            if (message := not_utf8(f"--input {path} line {record.number + offset}", line)) is not None:
                raise UsageError(message)
        return fields
    return []


def _csv_row(record: _Record, header: list[str], path: str, chain: str, required: Sequence[str], max_chars: int) -> Any:
    """One record as a row, a ``RowError``, or None for a blank record."""
    where = f"{path} line {record.number}"
    if record.preview is not None:
        fix = "shorten the row or split it into several rows"
        return RowError(too_long(where, "row", max_chars, fix), clean(record.preview) + "…")
    try:
        fields = _fields(record)
    except csv.Error as exc:
        return RowError(f"{where}: not valid CSV ({exc}); fix the row", clean("".join(record.lines)))
    if not any(value.strip() for value in fields):
        return None
    row: dict[str, Any] = dict(zip(header, fields, strict=False))
    for name in header[len(fields) :]:
        row[name] = None
    for offset, line in enumerate(record.lines):
        if (message := not_utf8(f"{path} line {record.number + offset}", line)) is not None:
            return RowError(message, {name: clean(value) if value else value for name, value in row.items()})
    return _check(row, where, required, chain)


# -- the public readers -----------------------------------------------------------------------


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


def read_topics(path: str, variable: str = "topic", *, max_chars: int = MAX_ROW_CHARS) -> Rows:
    """One topic per line; blank lines and ``#`` lines skipped; ``-`` reads stdin."""
    entries = _entries(open_text(path, "--topics"), path, max_chars, lambda text: {variable: text})
    return _non_empty(_one_variable(entries, variable), path, "--topics", "topics")


def detect_format(path: str) -> str:
    suffix = Path(path).suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    return "lines"


def read_inputs(
    path: str, *, chain: str, required: Sequence[str], fmt: str | None = None, max_chars: int = MAX_ROW_CHARS
) -> Rows:
    """Rows for ``chain`` from JSONL objects, CSV with a header, or plain lines (one-variable chains)."""
    fmt = fmt or detect_format(path)
    handle = open_text(path, "--input")
    if fmt == "jsonl":
        rows: Iterator[Any] = _jsonl(_entries(handle, path, max_chars, lambda text: text), chain, required)
    elif fmt == "csv":
        rows = _csv(handle, path, chain, required, max_chars)
    else:
        if len(required) != 1:
            close_text(handle)
            raise UsageError(
                f"--input {path}: plain lines only fit a chain with one input, but {chain} needs "
                f"{', '.join(required)}; use a .jsonl or .csv file with those fields"
            )
        variable = required[0]
        rows = _one_variable(_entries(handle, path, max_chars, lambda text: {variable: text}), variable)
    return _non_empty(rows, path, "--input", "inputs")


def count_inputs(path: str, fmt: str, *, max_chars: int = MAX_ROW_CHARS) -> int | None:
    """How many items the readers yield for a file (for progress and ETA): one streaming pass, never raising.

    Every line format yields one item per entry, so entries are counted without parsing them;
    CSV rows are split and parsed exactly as ``read_inputs`` does.  None for standard input or a
    file that cannot be read.
    """
    if path == STDIN:
        return None
    try:
        handle = open_text(path, "--input")
        if fmt == "csv":
            rows: Iterator[Any] = _csv(handle, path, "", (), max_chars)
        else:
            rows = _entries(handle, path, max_chars, lambda text: text)
        return sum(1 for _ in rows)
    except (ChainRunnerError, OSError):
        return None
