"""Where records go: a JSONL file written as each input finishes, or labelled text on stdout."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, TextIO

from chains.errors import UsageError
from chains.execution import Record


def record_line(record: Record) -> str:
    return json.dumps(record.to_dict(), ensure_ascii=False, default=str) + "\n"


class JsonlSink:
    """One JSON line per record, appended and flushed as each input finishes.

    A crash loses at most the inputs still in flight, never a written record.
    """

    def __init__(self, path: str | Path, *, append: bool = False) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            torn = append and self.path.exists() and not _ends_with_newline(self.path)
            self._file = self.path.open("a" if append else "w", encoding="utf-8")
            if torn:  # a crash cut the last record short: start ours on a line of its own
                self._file.write("\n")
        except OSError as exc:
            raise UsageError(f"--output {path}: cannot write ({exc.strerror}); pick a writable path") from exc
        self.written = 0

    def write(self, record: Record) -> None:
        self._file.write(record_line(record))
        self._file.flush()
        self.written += 1

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> JsonlSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as handle:
        handle.seek(0, 2)
        if handle.tell() == 0:
            return True
        handle.seek(-1, 2)
        return handle.read(1) == b"\n"


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


class TextSink:
    """Outputs on stdout, one per input, each under a header naming its input."""

    def __init__(self, stream: TextIO | None = None) -> None:
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
