"""Every number the tool prints is true: the summary equals the sum of the records."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, runner_env

# USD per million tokens: the offline model made expensive, so a small --max-cost stops a run mid-way.
PRICES = {"fake": {"input": 1000, "output": 2000}}


def run_story(tmp_path: Path, *extra: str, topics: int = 30) -> tuple[list[dict[str, Any]], dict[str, Any], str]:
    (tmp_path / "topics.txt").write_text("".join(f"topic number {i}\n" for i in range(topics)), encoding="utf-8")
    (tmp_path / "prices.json").write_text(json.dumps(PRICES), encoding="utf-8")
    args = ["--topics", "topics.txt", "--model", "fake", "--prices", "prices.json", "--output", "out.jsonl"]
    result = subprocess.run(
        [sys.executable, str(ROOT / "runner.py"), "story", *args, "--metrics-out", "metrics.json", *extra],
        cwd=tmp_path,
        env=runner_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    summary = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))
    return records, summary, result.stderr


@pytest.mark.parametrize("budget", ["0.5", "2", "6"])
def test_a_budget_stopped_run_reports_what_its_records_spent(tmp_path: Path, budget: str) -> None:
    """An input stopped by --max-cost after its outline step was still billed for the outline."""
    records, summary, _ = run_story(tmp_path, "--max-cost", budget, "--max-concurrency", "4")
    statuses = Counter(r["metrics"]["status"] for r in records)
    assert statuses["not_run"] > 0, "the budget should stop this run part-way"
    spent = sum(r["metrics"]["cost_usd"] or 0.0 for r in records)
    assert spent > 0
    assert summary["cost_usd"] == pytest.approx(spent, abs=1e-6)
    assert summary["cost_usd"] <= float(budget) + 1e-9
    for field in ("input_tokens", "output_tokens"):
        assert summary[field] == sum(r["metrics"][field] for r in records), field
    assert summary["retries"] == sum(r["metrics"]["retries"] for r in records)
    assert (summary["ok"], summary["failed"], summary["not_run"]) == (
        statuses["ok"],
        statuses["failed"],
        statuses["not_run"],
    )
    assert summary["items"] == len(records)


def test_a_full_run_reports_what_its_records_spent(tmp_path: Path) -> None:
    records, summary, _ = run_story(tmp_path, topics=12)
    assert summary["ok"] == len(records) == 12
    assert summary["cost_usd"] == pytest.approx(sum(r["metrics"]["cost_usd"] for r in records), abs=1e-6)
    assert summary["input_tokens"] == sum(r["metrics"]["input_tokens"] for r in records)
