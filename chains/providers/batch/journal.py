"""What a batch run has submitted, written durably before it waits: the file that makes ``--resume`` free.

One JSON line per event, appended, flushed and ``fsync``ed before the next step:

- ``{"event": "file", "file_id": ..., "ids": [custom_id, ...]}`` after an input file is uploaded and
  before a batch is created over it;
- ``{"event": "batch", "file_id": ..., "batch_id": ...}`` once the provider has created the batch.

A run killed between the two leaves a file without a batch: on resume the provider is asked whether a
batch over that file exists (``BatchBackend.find``), so a batch created in that instant is adopted, not
submitted again.  A request's ``custom_id`` is derived from its input's resume key and its body, so the
same request of a resumed run finds the batch that already carries it.  A last line cut short by a kill
is ignored.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from chains.io.sinks import cannot_write

MAX_JOURNAL_LINE = 8 * 1024 * 1024
"""A line lists at most one file's ids (50,000 × ~40 bytes); anything longer is not ours."""


@dataclass
class JournalState:
    """What earlier runs submitted: batch id → its custom ids, and files never seen as a batch."""

    batches: dict[str, list[str]] = field(default_factory=dict)
    orphan_files: dict[str, list[str]] = field(default_factory=dict)
    """Uploaded, with no batch recorded: the run may have been killed while creating it."""


def journal_path(output: str) -> str:
    """Where the journal of ``--output FILE`` lives: beside it."""
    return output + ".batches"


class BatchJournal:
    """Append-only, fsynced; ``load()`` reads what is already there."""

    def __init__(self, path: str, *, fresh: bool = False) -> None:
        self.path = path
        self._handle: BinaryIO | None = None
        try:
            if fresh:
                Path(path).unlink(missing_ok=True)
            Path(path).touch()  # a journal that cannot be written fails before anything is submitted
        except OSError as exc:
            raise cannot_write("--output", path, exc) from exc

    def load(self) -> JournalState:
        state = JournalState()
        files: dict[str, list[str]] = {}
        with open(self.path, "rb") as handle:
            for raw in handle:
                event = _event(raw)
                if event is None:
                    continue
                ids = event.get("ids")
                if event.get("event") == "file" and isinstance(ids, list):
                    files[str(event.get("file_id"))] = [str(i) for i in ids]
                elif event.get("event") == "batch":
                    file_id, batch_id = str(event.get("file_id")), str(event.get("batch_id"))
                    state.batches[batch_id] = files.pop(file_id, [])
        state.orphan_files = files
        return state

    def file(self, file_id: str, ids: list[str]) -> None:
        self._write({"event": "file", "file_id": file_id, "ids": ids})

    def batch(self, file_id: str, batch_id: str) -> None:
        self._write({"event": "batch", "file_id": file_id, "batch_id": batch_id})

    def _write(self, event: dict[str, object]) -> None:
        try:
            if self._handle is None:
                self._handle = open(self.path, "ab")
            self._handle.write(json.dumps(event, separators=(",", ":")).encode("utf-8") + b"\n")
            self._handle.flush()
            os.fsync(self._handle.fileno())
        except OSError as exc:
            raise cannot_write("--output", self.path, exc) from exc

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def _event(raw: bytes) -> dict[str, object] | None:
    if len(raw) > MAX_JOURNAL_LINE or not raw.endswith(b"\n"):
        return None  # a line cut short by a kill, or not ours
    try:
        event = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return event if isinstance(event, dict) else None
