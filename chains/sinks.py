"""Where records go: a JSONL file written as each input finishes, or labelled text on stdout.

Stdout may be a pipe whose reader goes away (``runner.py story ... | head -3``): ``GuardedStdout``
turns that into a request to stop the run, instead of a ``BrokenPipeError`` from deep inside it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TextIO

from chains.errors import UsageError
from chains.execution import Record

logger = logging.getLogger(__name__)


def record_line(record: Record) -> str:
    return json.dumps(record.to_dict(), ensure_ascii=False, default=str) + "\n"


class JsonlSink:
    """One JSON line per record, appended and flushed as each input finishes.

    A crash loses at most the inputs still in flight, never a written record.  The file is
    held under an exclusive lock for the whole run, taken when the sink opens (before any
    request): a second run on the same file is refused instead of interleaving its records
    and paying for the same inputs again.  Without ``append`` a file that already holds
    records is refused unless ``overwrite``; it is emptied only when the first record is
    written, so a run that fails before its first record leaves the old records as they were.
    """

    def __init__(self, path: str | Path, *, append: bool = False, overwrite: bool = False) -> None:
        self.path = Path(path)
        self.label = str(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")  # never truncates: the lock comes first
        except OSError as exc:
            raise UsageError(f"--output {path}: cannot write ({exc.strerror}); pick a writable path") from exc
        try:
            _lock(self._file, self.label)
            size = os.fstat(self._file.fileno()).st_size
            if size and not append and not overwrite:
                raise UsageError(
                    f"--output {path} already holds records ({size:,} bytes); pass --resume to continue that run, "
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
        if self._truncate:  # --overwrite: the old records go only once a new one replaces them
            self._file.truncate(0)
            self._truncate = False
        self._file.write(record_line(record))
        self._file.flush()
        self.written += 1

    def close(self) -> None:
        self._file.close()  # releases the lock

    def __enter__(self) -> JsonlSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _lock(handle: IO[str], label: str) -> None:
    """An exclusive, non-blocking lock on the open file, held until it is closed."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no locking
        return
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise UsageError(
            f"--output {label} is in use by another run (it holds the file's lock); "
            "wait for that run to finish, or pick another file"
        ) from None
    except OSError as exc:  # a filesystem without locks (some network mounts): run, but say so
        logger.warning("--output %s: cannot lock it (%s); do not start another run on it", label, exc.strerror)


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
