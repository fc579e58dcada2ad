"""What the CLI shows on the terminal: live tokens, a progress bar, and the run summary table.

Everything here writes to stderr except the live tokens (stdout), so that
stdout carries only outputs and can be piped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Column, Table

from chains.engine.execution import BatchRun, Record

_BAR_MIN = 5
_SHOWN_WAIT_S = 0.05
"""Waits shorter than this are the time to take a free slot, not a rate limit: not shown."""


def rate_text(per_s: float, unit: str) -> str:
    """A rate with the precision it deserves: ``0.25 items/s``, ``4.2 items/s``, ``1,234 items/s``."""
    if per_s >= 100:
        return f"{per_s:,.0f} {unit}"
    if per_s >= 10:
        return f"{per_s:.1f} {unit}"
    return f"{per_s:.2g} {unit}" if per_s >= 0.01 else f"0 {unit}"


def clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def fit(parts: list[str], room: int, sep: str = " · ") -> str:
    """As many of ``parts`` (most important first) as fit in ``room`` characters."""
    kept: list[str] = []
    for part in parts:
        if len(sep.join([*kept, part])) > room:
            break
        kept.append(part)
    return sep.join(kept)


class ProgressDisplay:
    """done/total and ETA first, then elapsed time, items/s, failures, in flight and tokens per second,
    on stderr; what does not fit the terminal's width is left out, least important first, so that
    done/total and ETA stay on one line even at 60 columns."""

    def __init__(
        self,
        total: int | None,
        label: str,
        console: Console | None = None,
        status: Callable[[], str] | None = None,
    ) -> None:
        self.console = console or Console(stderr=True)
        self.status = status
        """What the run waits on besides its requests (the batch tier's batches), shown after the ETA."""
        self.total = total
        self.label = label if len(label) <= 16 else label[:15] + "…"
        self.progress = Progress(
            TextColumn("[bold]{task.description}", table_column=Column(no_wrap=True)),
            BarColumn(bar_width=None, table_column=Column(ratio=1, min_width=_BAR_MIN)),
            MofNCompleteColumn(table_column=Column(no_wrap=True)),
            TextColumn("{task.fields[info]}", table_column=Column(no_wrap=True)),
            console=self.console,
            transient=False,
            expand=True,
        )
        self.task = self.progress.add_task(self.label, total=total, info="")
        self._started = time.perf_counter()

    def __enter__(self) -> ProgressDisplay:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def info(self, batch: BatchRun, done: int) -> str:
        summary = batch.summary
        elapsed = max(1e-9, time.perf_counter() - self._started)
        ran = summary.done
        per_s = ran / elapsed
        parts = []
        if self.total is not None and done < self.total:
            parts.append(f"ETA {clock((self.total - done) / per_s)}" if per_s > 0 else "ETA –")
        if self.status is not None:
            parts.append(self.status())
        parts.append(clock(elapsed))
        parts.append(rate_text(per_s, "items/s"))
        if summary.failed:
            parts.append(f"failed {summary.failed:,}")
        if summary.not_run:
            parts.append(f"not run {summary.not_run:,}")
        parts.append(f"in flight {batch.in_flight}")
        if summary.output_tokens:
            parts.append(rate_text(summary.output_tokens / elapsed, "tok/s"))
        if summary.wait_s >= _SHOWN_WAIT_S:
            parts.append(f"waited {summary.wait_s:.1f}s")
        total = f"{self.total:,}" if self.total is not None else "?"
        fixed = len(self.label) + _BAR_MIN + len(f"{done}/{total}") + 3  # three column gaps
        return fit(parts, self.console.width - fixed - 1)

    def update(self, record: Record | None, batch: BatchRun) -> None:
        """After each record, and every second while the run waits (``record`` None)."""
        summary = batch.summary
        done = summary.done + summary.skipped + summary.not_run + summary.cancelled
        self.progress.update(self.task, completed=done, info=self.info(batch, done))


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.3f}{unit}"
    return f"{value:,}{unit}"


def summary_table(summary: dict[str, Any], title: str = "run summary") -> Table:
    """The summary as a table; rows that do not apply to this run (no streaming, so no time to
    first token; no successes, so no latency) are left out rather than shown as ``– / –``."""
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    estimated = " (estimated)" if summary.get("tokens_estimated") else ""
    rows = [("items ok / failed", f"{summary['ok']:,} / {summary['failed']:,}")]
    if summary.get("skipped"):
        rows.append(("skipped (already done)", _fmt(summary["skipped"])))
    if summary.get("not_run"):
        rows.append(("not run", _fmt(summary["not_run"])))
    if summary.get("cancelled"):
        rows.append(("cancelled", _fmt(summary["cancelled"])))
    rows += [
        ("wall time", _fmt(summary["wall_s"], " s")),
        ("throughput", rate_text(summary["items_per_s"] or 0.0, "items/s")),
        ("tokens in / out" + estimated, f"{summary['input_tokens']:,} / {summary['output_tokens']:,}"),
        ("output tokens/s", rate_text(summary["output_tokens_per_s"] or 0.0, "tok/s")),
    ]
    if summary.get("latency_p50_s") is not None:
        rows.append(("latency p50 / p95", f"{_fmt(summary['latency_p50_s'])} / {_fmt(summary['latency_p95_s'])} s"))
    if summary.get("ttft_p50_s") is not None:
        rows.append(
            ("time to first token p50 / p95", f"{_fmt(summary['ttft_p50_s'])} / {_fmt(summary['ttft_p95_s'])} s")
        )
    rows.append(("retries", _fmt(summary["retries"])))
    if summary.get("repairs"):
        rows.append(("schema repairs", _fmt(summary["repairs"])))
    if (summary.get("rate_limit_wait_s") or 0.0) >= _SHOWN_WAIT_S:
        rows.append(("rate-limit wait", _fmt(summary["rate_limit_wait_s"], " s")))
    if summary.get("cache_hits"):
        rows.append(("cache hits", _fmt(summary["cache_hits"])))
    rows += _worker_rows(summary)
    rows += _endpoint_rows(summary)
    rows += _tier_rows(summary)
    if summary.get("cost_usd"):
        tier = summary.get("tier")
        rows.append(
            ("cost" + (f" ({tier} prices)" if tier and tier != "online" else ""), f"${summary['cost_usd']:.4f}")
        )
    elif "cost_usd" in summary and summary["cost_usd"] is None:
        rows.append(("cost", "unknown (no price for the model; add it with --prices FILE)"))
    for name, value in rows:
        table.add_row(name, value)
    return table


def _worker_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """A scaled-out run: each worker's share and pace, Ray's start-up, the inputs run again after a worker died."""
    workers = summary.get("per_worker")
    if not workers:
        return []
    rows = [
        (f"worker {w['worker']}" + _worker_state(w),
         f"{w['items']:,} items" + (f" · {rate_text(w['items_per_s'], 'items/s')}" if w.get("items_per_s") else ""))
        for w in workers
    ]  # fmt: skip
    if summary.get("startup_s") is not None:
        rows.append(("Ray start-up", _fmt(summary["startup_s"], " s")))
    if summary.get("run_s") is not None:
        rows.append(("run (first input to last record)", _fmt(summary["run_s"], " s")))
    if summary.get("shutdown_s") is not None:
        rows.append(("Ray shutdown", _fmt(summary["shutdown_s"], " s")))
    if summary.get("inputs_rerun"):
        rows.append(("inputs run again (worker died)", _fmt(summary["inputs_rerun"])))
    return rows


def _worker_state(worker: dict[str, Any]) -> str:
    if not worker.get("alive", True):
        return " (died)"
    return " (never started)" if worker.get("pid") is None else ""  # it waited for a place the whole run


def _endpoint_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """Several endpoints: each one's requests (attempts), failures, times taken out and latency."""
    rows = []
    for endpoint in summary.get("endpoints") or ():
        parts = [f"{endpoint['requests']:,} requests", f"{endpoint['failures']:,} failed"]
        if endpoint.get("taken_out"):
            parts.append(f"taken out {endpoint['taken_out']}x")
        if endpoint.get("latency_p50_s") is not None:
            parts.append(f"p50 {endpoint['latency_p50_s']:.3f} s")
        rows.append((endpoint["endpoint"], " · ".join(parts)))
    return rows


def _tier_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    batches = summary.get("batches")
    if not batches:
        return []
    resubmitted = f", {batches['resubmitted']:,} resubmitted" if batches.get("resubmitted") else ""
    adopted = f", {batches['adopted']:,} from the earlier run" if batches.get("adopted") else ""
    return [
        ("batches", f"{batches['batches']:,} ({batches['requests']:,} requests{resubmitted}){adopted}"),
        ("batch wall time", clock(batches.get("batch_wall_s") or 0.0)),
    ]


def print_summary(summary: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console(stderr=True)
    console.print(summary_table(summary))
    failures = summary.get("failures") or []
    for failure in failures[:10]:
        console.print(f"[red]failed[/red] input {failure['index']}: {failure['message']}", highlight=False)
    if len(failures) > 10 or summary["failed"] > len(failures[:10]):
        console.print(f"… {summary['failed'] - min(10, len(failures))} more failures (see the records)")
