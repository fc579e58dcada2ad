"""What the terminal shows: a progress line that fits, rates with sensible precision, true rows only."""

from __future__ import annotations

import io

import pytest
from langchain_core.runnables import RunnableLambda
from rich.console import Console

from chains.cli.console import ProgressDisplay, rate_text, summary_table
from chains.engine.execution import BatchRun, Record
from chains.engine.metrics import ItemMetrics, RunSummary


def progress_line(width: int, *, ok: int = 0, failed: int = 0, not_run: int = 0, total: int = 100_000) -> str:
    console = Console(file=io.StringIO(), width=width, force_terminal=True, color_system=None)
    batch = BatchRun(RunnableLambda(lambda x: x), [])
    for i in range(ok):
        batch.summary.add(i, ItemMetrics(latency_s=0.1, output_tokens=50), None)
    for i in range(failed):
        batch.summary.add(i, ItemMetrics(status="failed"), {"type": "X", "message": "m"})
    for i in range(not_run):
        batch.summary.add(i, ItemMetrics(status="not_run"), {"type": "BudgetExceededError", "message": "m"})
    display = ProgressDisplay(total, "story", console)
    display.update(Record(0, {}), batch)
    console.print(display.progress.make_tasks_table(display.progress.tasks))
    text = console.file.getvalue()  # type: ignore[attr-defined]
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, f"the progress wrapped onto {len(lines)} lines at {width} columns: {text!r}"
    return lines[0]


@pytest.mark.parametrize("width", [60, 80, 120, 200])
def test_done_total_and_eta_fit_at_any_width(width: int) -> None:
    line = progress_line(width, ok=1234)
    assert len(line) <= width
    assert "1234/100000" in line, line
    assert "ETA " in line, line


def test_a_wide_terminal_shows_elapsed_time_rate_and_tokens() -> None:
    line = progress_line(200, ok=10, failed=2)
    assert "items/s" in line and "tok/s" in line and "in flight" in line and "failed 2" in line, line


def test_no_failed_zero_when_nothing_failed_and_not_run_is_shown() -> None:
    line = progress_line(200, not_run=7)
    assert "failed" not in line, line
    assert "not run 7" in line, line


@pytest.mark.parametrize(
    ("per_s", "text"),
    [
        (0.004, "0 items/s"),
        (0.25, "0.25 items/s"),
        (4.234, "4.2 items/s"),
        (42.37, "42.4 items/s"),
        (1234.6, "1,235 items/s"),
    ],
)
def test_rates_have_sensible_precision(per_s: float, text: str) -> None:
    assert rate_text(per_s, "items/s") == text


def table_text(summary: RunSummary) -> str:
    console = Console(file=io.StringIO(), width=100, color_system=None)
    console.print(summary_table(summary.finish().to_dict()))
    return console.file.getvalue()  # type: ignore[attr-defined]


def test_rows_that_do_not_apply_are_left_out() -> None:
    summary = RunSummary()
    summary.add(0, ItemMetrics(latency_s=0.2, output_tokens=10, wait_s=0.0002), None)  # a slot, not a limit
    text = table_text(summary)
    assert "time to first token" not in text and "rate-limit wait" not in text and "– / –" not in text, text
    assert "latency p50 / p95" in text


def test_rows_that_apply_are_shown() -> None:
    summary = RunSummary()
    summary.add(0, ItemMetrics(latency_s=0.2, ttft_s=0.05, wait_s=1.5, output_tokens=10), None)
    text = table_text(summary)
    assert "time to first token" in text and "rate-limit wait" in text, text


def test_a_cost_nobody_priced_is_unknown_not_zero() -> None:
    summary = RunSummary()
    summary.add(0, ItemMetrics(latency_s=0.2, output_tokens=10, model_calls=2, cost_usd=None), None)
    assert summary.to_dict()["cost_usd"] is None
    assert "unknown" in table_text(summary)
    priced = RunSummary()
    priced.add(0, ItemMetrics(latency_s=0.2, model_calls=1, cost_usd=0.25), None)
    assert priced.to_dict()["cost_usd"] == 0.25 and "$0.2500" in table_text(priced)


def test_each_worker_of_a_scaled_out_run_says_whether_it_ran_died_or_never_started() -> None:
    from chains.scale.throughput import ScaleSummary, WorkerStats

    summary = ScaleSummary()
    summary.add(0, ItemMetrics(latency_s=0.2, output_tokens=10), None)
    summary.workers = [
        WorkerStats("w0", pid=11, items=1, first=0.0, last=0.5),
        WorkerStats("w1", pid=12, alive=False),
        WorkerStats("w2"),  # waited for a place on the cluster the whole run
    ]
    rows = {line.split("│")[1].strip() for line in table_text(summary).splitlines() if "│" in line}
    assert {"worker w0", "worker w1 (died)", "worker w2 (never started)"} <= rows, rows
