"""``--tier flex``: OpenAI's ``service_tier: "flex"`` on every request, its "Resource Unavailable" 429 retried or (with
``--flex-fallback``) sent at the standard tier, records that say which tier answered, and flex prices — through
the real ``ChatOpenAI`` against the fault server on 127.0.0.1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import cli, records
from fault_server import FaultServer

from chains.settings import DEFAULT_TIMEOUT_S, FLEX_TIMEOUT_S, RunSettings

FLEX_BUSY = "Resource Unavailable: flex processing capacity is not available right now; retry later"


@pytest.fixture
def texts(tmp_path: Path) -> Path:
    (tmp_path / "in.txt").write_text("first text\nsecond text\n")
    (tmp_path / "prices.json").write_text(json.dumps({"test-model": {"input": 2.0, "output": 8.0}}))
    return tmp_path


def _run(server: FaultServer, *extra: str) -> list[str]:
    return [
        "run", "summarize", "--input", "in.txt", "--model", "openai:test-model", "--base-url", server.base_url,
        "--prices", "prices.json", "--output", "out.jsonl", "--metrics-out", "m.json", "-q", *extra,
    ]  # fmt: skip


def _tiers_sent(server: FaultServer) -> list[str | None]:
    return [entry["service_tier"] for entry in server.stats()["log"]]


def test_flex_requests_say_so_and_are_priced_at_flex_prices(texts: Path, fault_server: FaultServer) -> None:
    online = cli(*_run(fault_server), cwd=texts)
    assert online.returncode == 0, online.stderr
    online_cost = {r["input"]["text"]: r["metrics"]["cost_usd"] for r in records(texts / "out.jsonl")}
    fault_server.reset_stats()
    flex = cli(*_run(fault_server, "--tier", "flex", "--overwrite"), cwd=texts)
    assert flex.returncode == 0, flex.stderr
    assert _tiers_sent(fault_server) == ["flex", "flex"]
    for record in records(texts / "out.jsonl"):
        assert record["metrics"]["tier"] == "flex"
        assert record["metrics"]["cost_usd"] == pytest.approx(online_cost[record["input"]["text"]] / 2)
    assert json.loads((texts / "m.json").read_text())["tier"] == "flex"


def test_flex_without_capacity_is_retried_with_backoff(texts: Path, fault_server: FaultServer) -> None:
    fault_server.add_fault("429", match="first", times=1, message=FLEX_BUSY, retry_after=0.05)
    run = cli(*_run(fault_server, "--tier", "flex"), cwd=texts)
    assert run.returncode == 0, run.stderr
    first = next(r for r in records(texts / "out.jsonl") if r["input"]["text"] == "first text")
    assert first["error"] is None and first["metrics"]["retries"] == 1 and first["metrics"]["tier"] == "flex"
    assert _tiers_sent(fault_server).count("flex") == 3


def test_flex_fallback_sends_what_flex_refuses_at_the_standard_tier(texts: Path, fault_server: FaultServer) -> None:
    fault_server.add_fault("429", match="first", times=1, message=FLEX_BUSY)
    refused = cli(*_run(fault_server, "--tier", "flex", "--max-retries", "0"), cwd=texts)
    assert refused.returncode == 1  # no retries, no fallback: the input fails
    fault_server.reset_stats()
    fault_server.add_fault("429", match="first", times=1, message=FLEX_BUSY)
    run = cli(*_run(fault_server, "--tier", "flex", "--flex-fallback", "--max-retries", "0", "--overwrite"), cwd=texts)
    assert run.returncode == 0, run.stderr
    by_text = {r["input"]["text"]: r for r in records(texts / "out.jsonl")}
    assert by_text["first text"]["metrics"]["tier"] == "online" and by_text["second text"]["metrics"]["tier"] == "flex"
    assert by_text["first text"]["metrics"]["retries"] == 1
    assert sorted(map(str, _tiers_sent(fault_server))) == ["default", "flex", "flex"]
    first, second = by_text["first text"]["metrics"], by_text["second text"]["metrics"]
    per_token = first["cost_usd"] / (2 * first["input_tokens"] + 8 * first["output_tokens"])
    assert per_token == pytest.approx(1e-6)  # the standard tier's price
    assert second["cost_usd"] == pytest.approx((2 * second["input_tokens"] + 8 * second["output_tokens"]) / 2e6)


def test_a_rate_limit_429_is_not_taken_for_flex_capacity(texts: Path, fault_server: FaultServer) -> None:
    fault_server.add_fault("429", match="first", times=1, message="Rate limit reached for requests", retry_after=0.05)
    run = cli(*_run(fault_server, "--tier", "flex", "--flex-fallback"), cwd=texts)
    assert run.returncode == 0, run.stderr
    assert "default" not in _tiers_sent(fault_server)  # retried at flex, not sent at the standard tier


def test_flex_waits_longer_unless_told() -> None:
    assert RunSettings.from_env(tier="flex").timeout == FLEX_TIMEOUT_S
    assert RunSettings.from_env(tier="flex", timeout=30.0).timeout == 30.0
    assert RunSettings.from_env().timeout == DEFAULT_TIMEOUT_S
