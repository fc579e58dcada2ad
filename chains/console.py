"""What the CLI shows on the terminal: live tokens, a progress bar, and the run summary table.

Everything here writes to stderr except the live tokens (stdout), so that
stdout carries only outputs and can be piped.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from chains.execution import BatchRun, Record


class ProgressDisplay:
    """done / failed / in flight, tokens per second and ETA, on stderr."""

    def __init__(self, total: int | None, label: str, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                "failed {task.fields[failed]} · in flight {task.fields[in_flight]} · "
                "{task.fields[tps]} tok/s · waited {task.fields[wait]}s"
            ),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.task = self.progress.add_task(label, total=total, failed=0, in_flight=0, tps="0", wait="0")
        self._started = time.perf_counter()

    def __enter__(self) -> ProgressDisplay:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, record: Record, batch: BatchRun) -> None:
        summary = batch.summary
        elapsed = max(1e-9, time.perf_counter() - self._started)
        self.progress.update(
            self.task,
            completed=summary.done + summary.skipped + summary.not_run,
            failed=summary.failed,
            in_flight=batch.in_flight,
            tps=f"{summary.output_tokens / elapsed:,.0f}",
            wait=f"{summary.wait_s:.1f}",
        )


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.3f}{unit}"
    return f"{value:,}{unit}"


def summary_table(summary: dict[str, Any], title: str = "run summary") -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    estimated = " (estimated)" if summary.get("tokens_estimated") else ""
    rows = [
        ("items ok / failed", f"{summary['ok']:,} / {summary['failed']:,}"),
        ("wall time", _fmt(summary["wall_s"], " s")),
        ("throughput", _fmt(summary["items_per_s"], " items/s")),
        ("tokens in / out" + estimated, f"{summary['input_tokens']:,} / {summary['output_tokens']:,}"),
        ("output tokens/s", _fmt(summary["output_tokens_per_s"])),
        ("latency p50 / p95", f"{_fmt(summary['latency_p50_s'])} / {_fmt(summary['latency_p95_s'])} s"),
        ("time to first token p50 / p95", f"{_fmt(summary['ttft_p50_s'])} / {_fmt(summary['ttft_p95_s'])} s"),
        ("retries", _fmt(summary["retries"])),
        ("rate-limit wait", _fmt(summary["rate_limit_wait_s"], " s")),
    ]
    if summary.get("cancelled"):
        rows.insert(1, ("cancelled", _fmt(summary["cancelled"])))
    if summary.get("not_run"):
        rows.insert(1, ("not run (--max-cost reached)", _fmt(summary["not_run"])))
    if summary.get("skipped"):
        rows.insert(1, ("skipped (already done)", _fmt(summary["skipped"])))
    if summary.get("cache_hits"):
        rows.append(("cache hits", _fmt(summary["cache_hits"])))
    if summary.get("cost_usd"):
        rows.append(("cost", f"${summary['cost_usd']:.4f}"))
    for name, value in rows:
        table.add_row(name, value)
    return table


def print_summary(summary: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console(stderr=True)
    console.print(summary_table(summary))
    failures = summary.get("failures") or []
    for failure in failures[:10]:
        console.print(f"[red]failed[/red] input {failure['index']}: {failure['message']}", highlight=False)
    if len(failures) > 10 or summary["failed"] > len(failures[:10]):
        console.print(f"… {summary['failed'] - min(10, len(failures))} more failures (see the records)")
