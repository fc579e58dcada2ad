"""A scaled-out run's summary: the run's numbers (the sum of its records) plus each worker's share.

A run's ``wall_s`` is Ray's start-up (``startup_s``: Ray started or joined, the first worker's chain built), the run
proper (``run_s``: from the first input handed to a worker to the last record back) and the shutdown
(``shutdown_s``: workers closed, Ray stopped if the run started it), plus the caller's own time between.  Items/s
are given over both (``items_per_s`` over ``wall_s``, ``run_items_per_s`` over ``run_s``); ``per_worker`` items/s
run from a worker's first input to its last record.

Items per second per worker say whether the work was spread evenly and whether one node is slow; inputs run
again (their worker died under them) say what the faults cost.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from chains.engine.metrics import RunSummary


@dataclass
class WorkerStats:
    """One worker actor of the run (a replacement is another one)."""

    name: str
    pid: int | None = None
    node: str | None = None
    items: int = 0
    """Records it produced (ok or failed)."""
    lost: int = 0
    """Inputs that were in flight on it when it died (run again elsewhere)."""
    alive: bool = True
    calls: int = 0
    """Ray calls that carried its inputs (each a chunk of them, ``chains.scale.pool``)."""
    first: float | None = None
    """When it was handed its first input."""
    last: float | None = None
    """When its last record arrived (or it died)."""

    def dispatched(self) -> None:
        self.calls += 1
        if self.first is None:
            self.first = time.perf_counter()

    def delivered(self, count: int = 1) -> None:
        self.items += count
        self.last = time.perf_counter()

    def died(self, lost: int) -> None:
        self.alive = False
        self.lost += lost
        self.last = time.perf_counter()

    @property
    def items_per_s(self) -> float | None:
        if self.first is None or self.last is None or self.last <= self.first:
            return None
        return self.items / (self.last - self.first)

    def to_dict(self) -> dict[str, Any]:
        rate = self.items_per_s
        return {
            "worker": self.name,
            "pid": self.pid,
            "node": self.node,
            "items": self.items,
            "items_per_s": None if rate is None else round(rate, 3),
            "lost": self.lost,
            "alive": self.alive,
            "calls": self.calls,
        }


@dataclass
class ScaleSummary(RunSummary):
    """``RunSummary`` plus ``per_worker`` (items and items/s per worker) and the inputs run again."""

    workers: list[WorkerStats] = field(default_factory=list)
    rerun: int = 0
    """Inputs sent again because the worker running them died."""
    startup_s: float | None = None
    """From the run's start until every worker had built its chain (Ray started or joined): part of ``wall_s``."""
    shutdown_s: float | None = None
    """From the end of the records until the workers were closed and Ray stopped (if the run started it)."""
    first_input: float | None = None
    """When the first input was handed to a worker (``time.perf_counter``)."""
    last_record: float | None = None
    governor: dict[str, Any] | None = None
    """The governor's own numbers at the end (peak slots held, leases granted), when the run had one."""

    @property
    def run_s(self) -> float | None:
        """The run proper: from the first input handed out to the last record back (None: no record came)."""
        if self.first_input is None or self.last_record is None:
            return None
        return max(0.0, self.last_record - self.first_input)

    @property
    def per_worker(self) -> list[dict[str, Any]]:
        return [worker.to_dict() for worker in self.workers]

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data["per_worker"] = self.per_worker
        data["inputs_rerun"] = self.rerun
        run_s = self.run_s
        data["startup_s"] = None if self.startup_s is None else round(self.startup_s, 4)
        data["run_s"] = None if run_s is None else round(run_s, 4)
        data["shutdown_s"] = None if self.shutdown_s is None else round(self.shutdown_s, 4)
        data["run_items_per_s"] = round(self.done / run_s, 3) if run_s else None
        if self.governor is not None:
            data["governor"] = dict(self.governor)
        return data


__all__ = ["ScaleSummary", "WorkerStats"]
