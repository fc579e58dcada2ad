"""A text file from outside, opened and read safely: one up-front check that it is text at all, then physical
lines bounded in length (a line too long is reported, never held), with bytes that are not UTF-8 kept
escaped so that one bad byte spoils only its line.
"""

from __future__ import annotations

import io
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TextIO

from chains.errors import UsageError

STDIN = "-"
_SNIFF_BYTES = 8192
PREVIEW_CHARS = 80
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")


# -- opening: one up-front check that the file is text at all -----------------------------------


def open_text(path: str, flag: str) -> TextIO:
    """The file as UTF-8 text (BOM dropped, bad bytes escaped), after refusing binary and UTF-16 files."""
    if path == STDIN:
        binary: BinaryIO | None = getattr(sys.stdin, "buffer", None)
        if binary is None:  # stdin replaced by a text stream (a notebook, a test): use it as it is
            return sys.stdin
    else:
        binary = _open_file(path, flag)
    try:
        _refuse_non_text(_peek(binary), path, flag)
    except UsageError:
        if path != STDIN:
            binary.close()
        raise
    return io.TextIOWrapper(binary, encoding="utf-8-sig", errors="surrogateescape", newline="")


def _open_file(path: str, flag: str) -> BinaryIO:
    file = Path(path)
    if not file.exists():
        raise UsageError(f"{flag} {path}: no such file; check the path (use - to read standard input)")
    if file.is_dir():
        raise UsageError(f"{flag} {path}: is a directory; pass a file")
    try:
        return file.open("rb")
    except OSError as exc:
        raise UsageError(f"{flag} {path}: cannot read ({exc.strerror}); check its permissions") from exc


def _peek(binary: BinaryIO) -> bytes:
    peek = getattr(binary, "peek", None)
    return bytes(peek(_SNIFF_BYTES)[:_SNIFF_BYTES]) if peek is not None else b""


def _refuse_non_text(head: bytes, path: str, flag: str) -> None:
    """A whole file that is not UTF-8 text is one clear line up front, not one error record per line.

    NUL bytes never occur in CSV, JSONL or text someone means to send to a model, and always occur
    in UTF-16 text, spreadsheets, archives and executables.
    """
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise UsageError(f"{flag} {path}: saved as UTF-16; save it as UTF-8")
    nul = head.find(b"\x00")
    if nul >= 0:
        raise UsageError(
            f"{flag} {path}: not a text file (NUL byte at offset {nul}); pass a UTF-8 .jsonl, .csv or text file"
        )


def close_text(handle: TextIO) -> None:
    """Close a file; give standard input back untouched."""
    if handle is sys.stdin:
        return
    if isinstance(handle, io.TextIOWrapper) and handle.buffer is getattr(sys.stdin, "buffer", None):
        handle.detach()
        return
    handle.close()


# -- physical lines, bounded ------------------------------------------------------------------


def line_pieces(handle: TextIO, size: int) -> Iterator[tuple[int, str, bool]]:
    """``(line number, piece, ends its line)``: lines of at most ``size`` characters, longer ones in pieces.

    Lines end at ``\\n``, ``\\r`` or ``\\r\\n`` (kept), as the ``csv`` module expects.
    """
    number, cut_after_cr = 1, False
    try:
        while piece := handle.readline(size):
            if cut_after_cr and piece == "\n":  # the size limit fell inside a \r\n: same line
                number -= 1
            ends = len(piece) < size or piece[-1] in "\r\n"
            yield number, piece, ends
            number += ends
            cut_after_cr = len(piece) == size and piece[-1] == "\r"
    except UnicodeDecodeError as exc:  # only a text-mode stdin we did not open can get here
        raise UsageError(f"input is not UTF-8 text (byte {exc.start}); save it as UTF-8") from exc


@dataclass(frozen=True, slots=True)
class Line:
    number: int
    text: str
    """The whole line; for a line that is too long, its first characters."""
    too_long: bool = False


def bounded_lines(handle: TextIO, max_chars: int) -> Iterator[Line]:
    """Every line; one longer than ``max_chars`` is skipped in pieces, never held whole."""
    pieces = line_pieces(handle, max_chars + 1)
    for number, piece, ends in pieces:
        if len(piece) <= max_chars:
            yield Line(number, piece)
            continue
        preview = piece[:PREVIEW_CHARS]
        del piece
        while not ends:
            ends = next(pieces, (0, "", True))[2]
        yield Line(number, preview, too_long=True)


def not_utf8(where: str, text: str) -> str | None:
    """The message for a line holding bytes that are not UTF-8 (escaped as U+DC80..U+DCFF), if any."""
    found = _ESCAPED_BYTE.search(text)
    if found is None:
        return None
    byte = ord(found.group()) - 0xDC00
    return f"{where}: not UTF-8 text (byte 0x{byte:02x} at column {found.start() + 1}); save the file as UTF-8"


def clean(text: str) -> str:
    """Escaped bad bytes as U+FFFD, so the row can be written into its error record."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def too_long(where: str, what: str, max_chars: int, fix: str) -> str:
    return f"{where}: {what} is longer than {max_chars:,} characters; {fix}"
