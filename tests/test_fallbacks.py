"""``--fallback-model``: an input whose request fails for good, for a reason another model may not share, is answered
by the next model — through the real ``ChatOpenAI`` against the fault server (whose rules can match a model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import cli, one_error_line, records
from fault_server import FaultServer


@pytest.fixture
def texts(tmp_path: Path) -> Path:
    (tmp_path / "in.txt").write_text("first text\nsecond text\n")
    prices = {"big-model": {"input": 10.0, "output": 30.0}, "small-model": {"input": 1.0, "output": 2.0}}
    (tmp_path / "prices.json").write_text(json.dumps(prices))
    return tmp_path


def _run(server: FaultServer, *extra: str) -> list[str]:
    return [
        "run", "summarize", "--input", "in.txt", "--model", "openai:small-model", "--base-url", server.base_url,
        "--fallback-model", "openai:big-model", "--prices", "prices.json", "--output", "out.jsonl",
        "--metrics-out", "m.json", "--max-retries", "1", "-q", *extra,
    ]  # fmt: skip


def _models_asked(server: FaultServer) -> list[str]:
    return [entry["model"] for entry in server.stats()["log"]]


def test_a_context_too_long_for_one_model_is_answered_by_the_next(texts: Path, fault_server: FaultServer) -> None:
    fault_server.add_fault("context_length", match="first", model="small-model")
    run = cli(*_run(fault_server), cwd=texts)
    assert run.returncode == 0, run.stderr
    by_text = {r["input"]["text"]: r for r in records(texts / "out.jsonl")}
    first, second = by_text["first text"]["metrics"], by_text["second text"]["metrics"]
    assert first["model"] == "openai:big-model" and second["model"] == "openai:small-model"
    assert [f["model"] for f in first["fallbacks"]] == ["openai:small-model"]
    assert first["fallbacks"][0]["reason"] == "context_length_exceeded" and second["fallbacks"] == []
    assert sorted(_models_asked(fault_server)) == ["big-model", "small-model", "small-model"]  # no retry of a 400
    # priced per model: the answer came from the big model, at its price
    assert first["cost_usd"] == pytest.approx((10 * first["input_tokens"] + 30 * first["output_tokens"]) / 1e6)
    assert second["cost_usd"] == pytest.approx((1 * second["input_tokens"] + 2 * second["output_tokens"]) / 1e6)


def test_retries_spent_on_5xx_fall_back(texts: Path, fault_server: FaultServer) -> None:
    fault_server.add_fault("503", match="first", model="small-model")
    run = cli(*_run(fault_server), cwd=texts)
    assert run.returncode == 0, run.stderr
    first = next(r for r in records(texts / "out.jsonl") if r["input"]["text"] == "first text")
    assert first["metrics"]["model"] == "openai:big-model" and first["metrics"]["retries"] == 1
    assert first["metrics"]["fallbacks"][0]["reason"] == "retries exhausted"


@pytest.mark.parametrize("status", ["400", "401", "403"])
def test_a_request_refused_for_itself_or_its_key_never_falls_back(
    texts: Path, fault_server: FaultServer, status: str
) -> None:
    fault_server.add_fault(status, match="first", model="small-model")
    run = cli(*_run(fault_server), cwd=texts)
    assert run.returncode == 1
    first = next(r for r in records(texts / "out.jsonl") if r["input"]["text"] == "first text")
    assert first["error"]["status"] == int(status)
    assert "big-model" not in _models_asked(fault_server)


def test_the_resume_key_is_the_inputs_whichever_model_answered(texts: Path, fault_server: FaultServer) -> None:
    fault_server.add_fault("context_length", match="first", model="small-model")
    assert cli(*_run(fault_server), cwd=texts).returncode == 0
    fault_server.reset_stats()
    again = cli(*_run(fault_server, "--resume"), cwd=texts)
    assert again.returncode == 0, again.stderr
    assert fault_server.stats()["requests"] == 0  # both inputs already answered: nothing is redone
    assert json.loads((texts / "m.json").read_text())["skipped"] == 2


def test_a_bad_fallback_model_is_one_line(texts: Path, fault_server: FaultServer) -> None:
    args = _run(fault_server)
    args[args.index("openai:big-model")] = "big model"
    run = cli(*args, cwd=texts)
    assert run.returncode == 2 and "is not PROVIDER:MODEL" in one_error_line(run.stderr)


def test_in_the_batch_tier_a_row_that_fails_for_good_falls_back_online(texts: Path, fault_server: FaultServer) -> None:
    """A batch row refused as too long for its model is answered by the fallback model, sent online (a fallback is
    for the few inputs that failed: another batch stage would add hours for them)."""
    fault_server.configure_batches(validating_s=0.02, in_progress_s=0.05, finalizing_s=0.02)
    fault_server.add_fault("context_length", match="first", model="small-model")
    run = cli(*_run(fault_server, "--tier", "batch", "--batch-poll", "0.05"), cwd=texts)
    assert run.returncode == 0, run.stderr
    by_text = {r["input"]["text"]: r["metrics"] for r in records(texts / "out.jsonl")}
    first, second = by_text["first text"], by_text["second text"]
    assert first["model"] == "openai:big-model" and first["tier"] == "online"
    assert first["fallbacks"][0]["reason"] == "context_length_exceeded"
    assert second["model"] == "openai:small-model" and second["tier"] == "batch"
    assert [b["rows"] for b in fault_server.stats()["batches"]["created"]] == [2]
    assert _models_asked(fault_server) == ["big-model"]  # the one online request: the fallback's
    summary = json.loads((texts / "m.json").read_text())
    assert summary["cost_usd"] == pytest.approx(first["cost_usd"] + second["cost_usd"])


def test_a_key_on_a_long_hold_falls_back_at_once_instead_of_waiting(texts: Path, fault_server: FaultServer) -> None:
    """A 429 whose Retry-After is longer than the retry layer waits (a key rate-limited for minutes) goes to the
    fallback model now; without a fallback model the same 429 is retried as any other (capped wait)."""
    fault_server.add_fault("429", match="first", model="small-model", retry_after=3600)
    run = cli(*_run(fault_server), cwd=texts)
    assert run.returncode == 0, run.stderr
    first = next(r for r in records(texts / "out.jsonl") if r["input"]["text"] == "first text")["metrics"]
    assert first["model"] == "openai:big-model" and first["retries"] == 0
    assert first["fallbacks"][0]["reason"] == "a long hold"
    assert _models_asked(fault_server).count("small-model") == 2  # one each: no wait, no retry of the held one


def test_a_short_hold_is_waited_out_on_the_same_model(texts: Path, fault_server: FaultServer) -> None:
    fault_server.add_fault("429", match="first", model="small-model", retry_after=0.2, times=1)
    run = cli(*_run(fault_server), cwd=texts)
    assert run.returncode == 0, run.stderr
    first = next(r for r in records(texts / "out.jsonl") if r["input"]["text"] == "first text")["metrics"]
    assert first["model"] == "openai:small-model" and first["retries"] == 1 and first["fallbacks"] == []
