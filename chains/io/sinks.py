"""Where records go: a JSONL file written as each input finishes, or labelled text on stdout.

The same JSONL writer keeps the server's generation log, and the one "cannot write" check of a file
the user named lives here.

Stdout may be a pipe whose reader goes away (``runner.py story ... | head -3``): ``GuardedStdout``
turns that into a request to stop the run, instead of a ``BrokenPipeError`` from deep inside it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any, TextIO

from chains.engine.execution import Record
from chains.errors import UsageError

logger = logging.getLogger(__name__)


_SURROGATE = re.compile("[\ud800-\udfff]")


def json_text(data: Any) -> str:
    """``data`` as JSON that any UTF-8 writer can send: non-ASCII text as itself, a lone surrogate (which
    no UTF-8 encoder writes) as its JSON escape ``\\ud800``; it can only be inside a JSON string."""
    text = json.dumps(data, ensure_ascii=False, default=str)
    return _SURROGATE.sub(lambda bad: f"\\u{ord(bad[0]):04x}", text)


def record_line(record: Record) -> str:
    return json_text(record.to_dict()) + "\n"


def cannot_write(flag: str, path: str | Path, exc: OSError) -> UsageError:
    """The one line for a file the user named that cannot be written."""
    return UsageError(f"{flag} {path}: cannot write ({exc.strerror or exc}); pick a writable path")


def check_writable(path: str, flag: str) -> None:
    """Fail now, not after the run is paid for, when ``path`` cannot be written; leave no new file behind."""
    existed = os.path.lexists(path)
    try:
        # O_NONBLOCK: a FIFO with no reader is an error here, not a hang.
        os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, 0o666))
    except OSError as exc:
        raise cannot_write(flag, path, exc) from exc
    if not existed:
        os.unlink(path)


class JsonlSink:
    """One JSON line per record, appended and flushed as each input finishes.

    A crash loses at most the inputs still in flight, never a written record.  The file is
    held under an exclusive lock for the whole run, taken when the sink opens (before any
    request): a second run on the same file is refused instead of interleaving its records
    and paying for the same inputs again.  Without ``append`` a file that already holds
    records is refused unless ``overwrite``; it is emptied only when the first record is
    written, so a run that fails before its first record leaves the old records as they were.

    The server's generation log is the same writer: ``flag="--log"``, ``append``, no lock (it
    pays for nothing twice: another server may append to it too), ``redact`` applied to each
    line, written from background threads (``write_entries``).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        append: bool = False,
        overwrite: bool = False,
        flag: str = "--output",
        lock: bool = True,
        redact: Callable[[str], str] | None = None,
    ) -> None:
        self.path = Path(path)
        self.label = str(path)
        self.flag = flag
        self.redact = redact
        self._guard = threading.Lock()  # background threads write the log
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")  # never truncates: the lock comes first
        except OSError as exc:
            raise cannot_write(flag, path, exc) from exc
        try:
            if lock:
                _lock(self._file, self.label, flag)
            size = os.fstat(self._file.fileno()).st_size
            if size and not append and not overwrite:
                raise UsageError(
                    f"{flag} {path} already holds records ({size:,} bytes); pass --resume to continue that run, "
                    "--overwrite to replace them, or pick a new file"
                )
            self._truncate = bool(size) and not append
            if append and size and not _ends_with_newline(self.path):
                self._file.write("\n")  # a crash cut the last record short: start ours on a line of its own
        except BaseException:
            self._file.close()
            raise
        self.written = 0

    def write(self, record: Record) -> None:
        self._write([record_line(record)])

    def write_entries(self, entries: Iterable[dict[str, Any]]) -> None:
        """Lines that are not records (the generation log's), in one write."""
        self._write([json_text(entry) + "\n" for entry in entries])

    def _write(self, lines: list[str]) -> None:
        text = "".join(lines)
        if self.redact is not None:
            text = self.redact(text)
        with self._guard:
            if self._file.closed:  # a background task that outlived the server: nothing left to write to
                logger.warning("%s %s is closed: %d line(s) not written", self.flag, self.label, len(lines))
                return
            if self._truncate:  # --overwrite: the old records go only once a new one replaces them
                self._file.truncate(0)
                self._truncate = False
            self._file.write(text)
            self._file.flush()
            self.written += len(lines)

    def close(self) -> None:
        with self._guard:
            self._file.close()  # releases the lock

    def __enter__(self) -> JsonlSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _lock(handle: IO[str], label: str, flag: str) -> None:
    """An exclusive, non-blocking lock on the open file, held until it is closed."""
    busy = f"{flag} {label} is in use by another run (it holds the file's lock); wait for that run to finish, or pick another file"
    if not lock_file(handle, exclusive=True, busy=busy):
        logger.warning("%s %s: cannot lock it; do not start another run on it", flag, label)


def lock_file(handle: IO[str], *, exclusive: bool, busy: str) -> bool:
    """A non-blocking ``flock`` on an open file, held until it is closed: exclusive for a writer, shared for a
    reader.  Another holder is one ``UsageError`` (``busy``); False when the filesystem has no locks (some network
    mounts) or the platform none."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no locking
        return False
    try:
        fcntl.flock(handle.fileno(), (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        raise UsageError(busy) from None
    except OSError:
        return False
    return True


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as handle:
        handle.seek(0, 2)
        if handle.tell() == 0:
            return True
        handle.seek(-1, 2)
        return handle.read(1) == b"\n"


def refuse_input_as_output(flag: str, path: str | None, source: str) -> None:
    """``flag``'s file must not be the input file (the same path, a symlink or a hard link to it)."""
    if not path or source == "-" or not _same_file(path, source):
        return
    raise UsageError(f"{flag} {path} is the input file {source}; the run would read its own records: pick another file")


def _same_file(one: str, other: str) -> bool:
    try:
        return os.path.samefile(one, other)
    except (OSError, ValueError):  # one of them does not exist (yet): not the same file
        return False


def input_label(value: Any, width: int = 60) -> str:
    if isinstance(value, dict) and len(value) == 1:
        text = str(next(iter(value.values())))
    else:
        text = json.dumps(value, ensure_ascii=False, default=str)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def format_output(output: Any) -> str:
    if isinstance(output, str):
        return output
    return json.dumps(output, ensure_ascii=False, indent=2, default=str)


class GuardedStdout:
    """The CLI's stdout: when its reader goes away, ``on_close`` is called once and later writes are dropped.

    Only this stream is guarded: SIGPIPE stays ignored for the whole process, so that a client
    hanging up on ``serve`` (a socket) never kills it.  Once closed, file descriptor 1 points at
    ``/dev/null``, so that the interpreter's last flush cannot fail again ("Exception ignored").
    """

    def __init__(self, on_close: Callable[[], None], stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.on_close = on_close
        self.closed = False

    def write(self, text: str) -> int:
        if not self.closed:
            try:
                self.stream.write(text)
            except BrokenPipeError:
                self._close()
        return len(text)

    def flush(self) -> None:
        if not self.closed:
            try:
                self.stream.flush()
            except BrokenPipeError:
                self._close()

    def _close(self) -> None:
        self.closed = True
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.stream.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):  # not a real file: nothing will flush into it later
            pass
        self.on_close()


class TextSink:
    """Outputs on stdout, one per input, each under a header naming its input."""

    def __init__(self, stream: TextIO | GuardedStdout | None = None) -> None:
        self.stream = stream or sys.stdout

    def write(self, record: Record) -> None:
        header = f"── [{record.index}] {input_label(record.input)} "
        self.stream.write(header.ljust(72, "─") + "\n")
        if record.error is None:
            self.stream.write(format_output(record.output).rstrip() + "\n\n")
        else:
            self.stream.write(f"error: {record.error['message']}\n\n")
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()
