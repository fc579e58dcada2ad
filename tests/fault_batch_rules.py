"""Batch fault rules: what a rule does to a batch or to its rows, which rows it matches, how often it fires.

``times`` counts rows for the row faults (``ROW_KINDS``) and batches for the others; ``match`` is a substring of a
row's last user message, as for chat faults (see the kinds in ``fault_batches``).
"""

from __future__ import annotations

import itertools
from typing import Any

from fault_rules import STATUS_ERRORS, Rule, rule_kwargs

__all__ = ["BATCH_FAULT_KINDS", "BATCH_RULE_KEYS", "ROW_KINDS", "BatchRule"]

BATCH_FAULT_KINDS = frozenset({"validation_failed", "row_error", "row_expire", "stall", "slow_finalizing"})
BATCH_RULE_KEYS = frozenset(
    {"fault", "match", "times", "status", "message", "error_type", "code", "param", "line"}
    | {"stall_s", "after_rows", "seconds"}
)
ROW_KINDS = frozenset({"row_error", "row_expire"})

_rule_ids = itertools.count(1)


class BatchRule:
    """One batch fault rule: what it does to a batch or a row, which rows it matches, how often it fires."""

    __slots__ = (
        "after_rows",
        "applied",
        "code",
        "error_type",
        "id",
        "kind",
        "line",
        "match",
        "message",
        "param",
        "remaining",
        "seconds",
        "stall_s",
        "status",
        "times",
    )

    def __init__(
        self,
        fault: str,
        match: str | None = None,
        times: int | None = None,
        *,
        status: int = 500,
        message: str | None = None,
        error_type: str | None = None,
        code: str = "invalid_request",
        param: str | None = None,
        line: int | None = None,
        stall_s: float | None = None,
        after_rows: int = 0,
        seconds: float = 1.0,
    ) -> None:
        if fault not in BATCH_FAULT_KINDS:
            raise ValueError(f"unknown batch fault kind {fault!r}; expected one of {sorted(BATCH_FAULT_KINDS)}")
        if times is not None and int(times) < 0:
            raise ValueError("times must be >= 0 or None")
        if int(status) not in STATUS_ERRORS:
            raise ValueError(f"status must be one of {sorted(STATUS_ERRORS)}")
        if int(after_rows) < 0 or float(seconds) < 0 or (stall_s is not None and float(stall_s) < 0):
            raise ValueError("after_rows, seconds and stall_s must be >= 0")
        self.id = next(_rule_ids)
        self.kind = fault
        self.match = None if match is None else str(match)
        self.times = None if times is None else int(times)
        self.remaining = self.times
        self.applied = 0
        self.status = int(status)
        self.message = None if message is None else str(message)
        self.error_type = None if error_type is None else str(error_type)
        self.code = str(code)
        self.param = None if param is None else str(param)
        self.line = None if line is None else int(line)
        self.stall_s = None if stall_s is None else float(stall_s)
        self.after_rows = int(after_rows)
        self.seconds = float(seconds)

    @classmethod
    def from_dict(cls, data: Any) -> BatchRule:
        return cls(**rule_kwargs(data, BATCH_RULE_KEYS, "batch fault rule"))

    def matches(self, key: str) -> bool:
        return self.remaining != 0 and (self.match is None or self.match in key)

    def fire(self) -> BatchRule:
        if self.remaining is not None:
            self.remaining -= 1
        self.applied += 1
        return self

    def as_chat_rule(self) -> Rule:
        """A ``row_error`` as the chat fault rule whose answer it is."""
        return Rule(str(self.status), message=self.message, error_type=self.error_type)

    def to_dict(self) -> dict[str, Any]:
        return {
            "fault": self.kind,
            "match": self.match,
            "times": self.times,
            "remaining": self.remaining,
            "applied": self.applied,
            "status": self.status,
            "message": self.message,
            "error_type": self.error_type,
            "code": self.code,
            "param": self.param,
            "line": self.line,
            "stall_s": self.stall_s,
            "after_rows": self.after_rows,
            "seconds": self.seconds,
        }
