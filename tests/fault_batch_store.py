"""The batch tier's state: its stored files and batches (the objects OpenAI answers), rules, settings and books."""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from fault_batch_input import Row, Validation
from fault_batch_rules import BatchRule
from fault_rules import RuleBook

__all__ = ["BATCH_DEFAULTS", "WINDOW_S", "BatchRecord", "BatchState", "FileRecord", "now"]


BATCH_DEFAULTS: dict[str, float] = {
    "validating_s": 0.05,
    "in_progress_s": 0.1,
    "finalizing_s": 0.05,
    "cancelling_s": 0.05,
    "max_lines": 50_000,
    "max_bytes": 200_000_000,  # OpenAI's 200 MB, read strictly: a client under it here is under it there
}
WINDOW_S = 24 * 3600


def now() -> int:
    return int(time.time())


@dataclass(slots=True)
class FileRecord:
    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int

    @property
    def rows(self) -> int:
        return self.data.count(b"\n") + (0 if not self.data or self.data.endswith(b"\n") else 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "filename": self.filename,
            "purpose": self.purpose,
            "bytes": len(self.data),
            "rows": self.rows,
        }


@dataclass(slots=True, eq=False)
class BatchRecord:
    """One batch: the Batch object's fields, the lines answered so far, and what its runner is told."""

    id: str
    endpoint: str
    input_file_id: str
    completion_window: str
    metadata: dict[str, str] | None
    created_at: int
    settings: dict[str, float]
    validation: Validation | None
    """None: the input file did not exist."""
    headers: dict[str, str]
    status: str = "validating"
    errors: list[dict[str, Any]] | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    in_progress_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    output: list[bytes] = field(default_factory=list)
    error_lines: list[bytes] = field(default_factory=list)
    cancel_requested: bool = False
    dropped: bool = False
    stalled: bool = False
    fired: set[int] = field(default_factory=set)
    """Ids of the batch-level rules that already fired for this batch."""

    @property
    def rows(self) -> list[Row]:
        return [] if self.validation is None else self.validation.rows

    @property
    def finished(self) -> bool:
        return self.status in ("completed", "failed", "expired", "cancelled")

    def to_dict(self) -> dict[str, Any]:
        """The Batch object, with every field the SDK's ``Batch`` type has."""
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "model": None if self.validation is None else self.validation.model,
            "errors": None if self.errors is None else {"object": "list", "data": list(self.errors)},
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "in_progress_at": self.in_progress_at,
            "expires_at": self.created_at + WINDOW_S,
            "finalizing_at": self.finalizing_at,
            "completed_at": self.completed_at,
            "failed_at": self.failed_at,
            "expired_at": self.expired_at,
            "cancelling_at": self.cancelling_at,
            "cancelled_at": self.cancelled_at,
            "request_counts": {"total": self.total, "completed": self.completed, "failed": self.failed},
            "usage": {
                "input_tokens": self.input_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": self.output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": self.input_tokens + self.output_tokens,
            },
            "metadata": self.metadata,
        }

    def summary(self) -> dict[str, Any]:
        counts = {"total": self.total, "completed": self.completed, "failed": self.failed}
        return {
            "id": self.id,
            "status": self.status,
            "input_file_id": self.input_file_id,
            "rows": len(self.rows),
            "request_counts": counts,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
        }


class BatchState(RuleBook):
    """The files, batches, rules and settings of one fault server's batch tier, and its bookkeeping.

    Everything here is guarded by ``_lock``: the python API (faults, settings, release, stats, reset) may be
    called from any thread while the server's loop runs the handlers and runners.
    """

    _rule_type = BatchRule

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._settings = dict(BATCH_DEFAULTS)
        self._rules: list[BatchRule] = []
        self._files: dict[str, FileRecord] = {}
        self._batches: dict[str, BatchRecord] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._release_gen = 0
        self._prefix = os.urandom(4).hex()
        self._seq = itertools.count(1)
        self._reset_books()

    @property
    def settings(self) -> dict[str, float]:
        return dict(self._settings)

    def configure(self, **settings: Any) -> dict[str, float]:
        """Phase durations (``*_s``, seconds >= 0) and limits (``max_lines``, ``max_bytes``, >= 1)."""
        unknown = set(settings) - set(BATCH_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown batch setting(s): {sorted(unknown)}; expected {sorted(BATCH_DEFAULTS)}")
        new = dict(self._settings)
        for name, value in settings.items():
            number = float(value) if name.endswith("_s") else int(value)
            if number < (0 if name.endswith("_s") else 1):
                raise ValueError(f"{name} must be >= {0 if name.endswith('_s') else 1}")
            new[name] = number
        self._settings = new
        return dict(new)

    def release(self) -> int:
        """End every current ``stall`` (later batches still stall by the rules); returns how many were held."""
        with self._lock:
            held = sum(1 for batch in self._batches.values() if batch.stalled)
            self._release_gen += 1
        return held

    def submissions(self) -> dict[str, int]:
        """custom_id → how many created batches held it (whatever became of them)."""
        with self._lock:
            return dict(self._submissions)

    def answers(self) -> dict[str, int]:
        """custom_id → how many times a row with it was answered (200 or error): what a provider would bill."""
        with self._lock:
            return dict(self._answers)

    def file_content(self, file_id: str) -> bytes:
        """A stored file's bytes (what a client uploaded)."""
        with self._lock:
            return self._files[file_id].data

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "settings": dict(self._settings),
                "faults": [rule.to_dict() for rule in self._rules],
                "submissions": dict(self._submissions),
                "answers": dict(self._answers),
                "rows": self._rows,
                "rows_per_key": dict(self._rows_per_key),
                "row_status_counts": {str(k): v for k, v in self._row_status.items()},
                "fault_counts": dict(self._fault_counts),
                "created": [self._batches[i].summary() for i in self._created_ids if i in self._batches],
                "files": [dict(summary) for summary in self._file_books],
            }

    def reset_stats(self) -> None:
        """Clear the bookkeeping; the files and batches stay."""
        with self._lock:
            self._reset_books()

    def reset(self) -> None:
        """Drop everything: bookkeeping, files, batches (their runners stop), rules and settings."""
        with self._lock:
            self._reset_books()
            for batch in self._batches.values():
                batch.dropped = True
            self._batches.clear()
            self._files.clear()
            self._rules.clear()
            self._settings = dict(BATCH_DEFAULTS)
            self._release_gen += 1

    def _reset_books(self) -> None:
        self._submissions: dict[str, int] = {}
        self._answers: dict[str, int] = {}
        self._rows = 0
        self._rows_per_key: dict[str, int] = {}
        self._row_status: dict[int, int] = {}
        self._fault_counts: dict[str, int] = {}
        self._created_ids: list[str] = []
        self._file_books: list[dict[str, Any]] = []
        """Every file stored since the last reset: id, filename, purpose, bytes, rows, deleted."""

    def _token(self) -> str:
        return f"{self._prefix}{next(self._seq):08x}"

    def _store_file(self, filename: str, purpose: str, data: bytes) -> FileRecord:
        record = FileRecord(f"file-{self._token()}", filename, purpose, data, now())
        with self._lock:
            self._files[record.id] = record
            self._file_books.append({**record.summary(), "deleted": False})
        return record
