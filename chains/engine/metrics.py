"""Per-input metrics and the run summary built from them.

``ItemMetrics`` is filled for one input by its ``MetricsHandler`` (latency,
time to first token, tokens from the final usage) and by the managed model
(retries, rate-limit waits, estimated usage).  ``RunSummary`` folds finished
records into the run's numbers without keeping the records themselves.
"""

from __future__ import annotations

import contextvars
import time
from array import array
from dataclasses import dataclass, field, fields
from typing import Any, Literal

ItemStatus = Literal["ok", "failed", "cancelled", "not_run", "skipped"]
"""What became of one input: answered, failed, cancelled mid-way, not run (the budget was spent), or skipped
(``--resume``: it already has a success record)."""


@dataclass(slots=True)
class ItemMetrics:
    """What one input cost and how long it took."""

    latency_s: float | None = None
    ttft_s: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    tokens_estimated: bool = False
    model_calls: int = 0
    retries: int = 0
    repairs: int = 0
    """JSON answers asked again because they broke the schema (each one a model request)."""
    wait_s: float = 0.0
    cache_hits: int = 0
    cost_usd: float | None = None
    status: ItemStatus = "ok"
    model: str | None = None
    """The model that answered (its last call): with ``--fallback-model``, maybe not the first one."""
    fallbacks: list[dict[str, Any]] = field(default_factory=list)
    """Models that did not answer a call of this input, and why (``chains.providers.fallbacks``)."""
    endpoint: str | None = None
    """With several ``--base-url``: the endpoint that answered its last call (``chains.providers.endpoints``)."""
    tier: str | None = None
    """The price tier that answered (``online``, ``flex``, ``batch``; ``mixed`` when its calls differed)."""

    def answered_at(self, tier: str) -> None:
        self.tier = tier if self.tier in (None, tier) else "mixed"

    def to_dict(self) -> dict[str, Any]:
        """The fields in order, times rounded; a copy (``dataclasses.asdict``'s deep walk was most of a driver's own
        CPU per record behind Ray workers, about 80 µs)."""
        data = {name: getattr(self, name) for name in ITEM_FIELDS}
        data["fallbacks"] = [dict(entry) for entry in self.fallbacks]
        for key in ("latency_s", "ttft_s", "wait_s"):
            if data[key] is not None:
                data[key] = round(data[key], 4)
        return data


ITEM_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(ItemMetrics))
"""``ItemMetrics``' field names, in order."""


_current: contextvars.ContextVar[ItemMetrics | None] = contextvars.ContextVar("chain_runner_item", default=None)


def current_item() -> ItemMetrics | None:
    """The metrics of the input whose task this code runs in, if any."""
    return _current.get()


def set_current_item(item: ItemMetrics) -> contextvars.Token[ItemMetrics | None]:
    return _current.set(item)


_current_key: contextvars.ContextVar[str | None] = contextvars.ContextVar("chain_runner_key", default=None)


def current_key() -> str | None:
    """The resume key of the input whose task this code runs in (the batch tier derives request ids from it)."""
    return _current_key.get()


def set_current_key(key: str | None) -> None:
    _current_key.set(key)


def percentile(values: array[float] | list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100.0 * len(ordered) + 0.5)))
    return ordered[rank - 1]


@dataclass
class RunSummary:
    """Run-level numbers; ``add`` each record's metrics, then ``to_dict``."""

    started: float = field(default_factory=time.perf_counter)
    finished: float | None = None
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    not_run: int = 0
    cancelled: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    retries: int = 0
    repairs: int = 0
    wait_s: float = 0.0
    cache_hits: int = 0
    cost_usd: float = 0.0
    priced: int = 0
    unpriced: int = 0
    """Records with model calls but no price for the model: when none had a price, the cost is unknown."""
    tokens_estimated: bool = False
    failures: list[dict[str, Any]] = field(default_factory=list)
    max_failures_listed: int = 50
    _latencies: array[float] = field(default_factory=lambda: array("d"))
    _ttfts: array[float] = field(default_factory=lambda: array("d"))

    def add(self, index: int, metrics: ItemMetrics, error: dict[str, Any] | None) -> None:
        """Fold one record in.  Whatever a record says was spent counts, whatever its status: an
        input stopped by ``--max-cost`` after its first step, or cancelled mid-way, was still billed
        for the requests it made, so the run's totals always equal the sum of its records."""
        if metrics.status == "skipped":
            self.skipped += 1
            return
        if metrics.status == "not_run":
            self.not_run += 1
            if len(self.failures) < self.max_failures_listed and error is not None and self.not_run == 1:
                self.failures.append({"index": index, **error})
        elif metrics.status == "cancelled":
            self.cancelled += 1
        elif error is None:
            self.ok += 1
        else:
            self.failed += 1
            if len(self.failures) < self.max_failures_listed:
                self.failures.append({"index": index, **error})
        self.input_tokens += metrics.input_tokens
        self.output_tokens += metrics.output_tokens
        self.retries += metrics.retries
        self.repairs += metrics.repairs
        self.wait_s += metrics.wait_s
        self.cache_hits += metrics.cache_hits
        self.tokens_estimated = self.tokens_estimated or metrics.tokens_estimated
        if metrics.cost_usd is not None:
            self.cost_usd += metrics.cost_usd
            self.priced += 1
        elif metrics.model_calls:
            self.unpriced += 1
        if error is None and metrics.latency_s is not None:
            self._latencies.append(metrics.latency_s)
        if metrics.ttft_s is not None:
            self._ttfts.append(metrics.ttft_s)

    @property
    def done(self) -> int:
        return self.ok + self.failed

    @property
    def wall_s(self) -> float:
        end = self.finished if self.finished is not None else time.perf_counter()
        return end - self.started

    def finish(self) -> RunSummary:
        if self.finished is None:
            self.finished = time.perf_counter()
        return self

    def to_dict(self) -> dict[str, Any]:
        wall = self.wall_s

        def rate(n: float) -> float | None:
            return round(n / wall, 3) if wall > 0 else None

        def r(value: float | None) -> float | None:
            return None if value is None else round(value, 4)

        return {
            "items": self.ok + self.failed + self.cancelled + self.not_run,
            "ok": self.ok,
            "failed": self.failed,
            "cancelled": self.cancelled,
            "skipped": self.skipped,
            "not_run": self.not_run,
            "wall_s": round(wall, 4),
            "items_per_s": rate(self.ok + self.failed),
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "tokens_estimated": self.tokens_estimated,
            "output_tokens_per_s": rate(self.output_tokens),
            "latency_p50_s": r(percentile(self._latencies, 50)),
            "latency_p95_s": r(percentile(self._latencies, 95)),
            "ttft_p50_s": r(percentile(self._ttfts, 50)),
            "ttft_p95_s": r(percentile(self._ttfts, 95)),
            "retries": self.retries,
            "repairs": self.repairs,
            "rate_limit_wait_s": round(self.wait_s, 4),
            "cache_hits": self.cache_hits,
            "cost_usd": None if self.unpriced and not self.priced else round(self.cost_usd, 6),
            "failures": list(self.failures),
        }
