"""``--tier batch``: the same chain and the same records as online, through a provider's batch API, at batch prices,
and kill -9 + ``--resume`` at any point without a request submitted twice — against the fault server's real
Files + Batches API (tests/fault_batches.py) over HTTP on 127.0.0.1, through the real ``ChatOpenAI``."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, cli, one_error_line, records, runner_env
from fault_server import FaultServer, fault_server_fixture

TOPICS = ["dragons", "robots", "the sea"]
FAST = {"validating_s": 0.02, "in_progress_s": 0.05, "finalizing_s": 0.02, "cancelling_s": 0.02}
PRICES = {"test-model": {"input": 2.0, "output": 8.0}}


@pytest.fixture
def server() -> Iterator[FaultServer]:
    for started in fault_server_fixture():
        started.configure_batches(**FAST)
        yield started


def _story(server: FaultServer, *extra: str, tier: str = "batch") -> list[str]:
    return [
        "story",
        "--topics",
        "topics.txt",
        "--model",
        "openai:test-model",
        "--base-url",
        server.base_url,
        "--tier",
        tier,
        "--batch-poll",
        "0.05",
        "--prices",
        "prices.json",
        *extra,
    ]


@pytest.fixture
def topics(tmp_path: Path) -> Path:
    (tmp_path / "topics.txt").write_text("\n".join(TOPICS) + "\n")
    (tmp_path / "prices.json").write_text(json.dumps(PRICES))
    return tmp_path


def _by_topic(path: Path) -> dict[str, dict[str, Any]]:
    return {r["input"]["topic"]: r for r in records(path)}


def _journal(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def test_a_two_step_chain_runs_as_two_batch_stages_with_the_records_of_an_online_run(
    topics: Path, server: FaultServer
) -> None:
    online = cli(*_story(server, "--output", "online.jsonl", tier="online"), "-q", cwd=topics)
    assert online.returncode == 0, online.stderr
    online_requests = server.stats()["requests"]
    assert online_requests == 6  # outline + story per topic

    batch = cli(*_story(server, "--output", "batch.jsonl", "--metrics-out", "m.json"), cwd=topics)
    assert batch.returncode == 0, batch.stderr
    assert server.stats()["requests"] == online_requests  # nothing was sent online
    created = server.stats()["batches"]["created"]
    assert [b["rows"] for b in created] == [3, 3]  # all outlines, then all stories
    assert set(server.batch_submissions().values()) == {1}

    by_online, by_batch = _by_topic(topics / "online.jsonl"), _by_topic(topics / "batch.jsonl")
    assert set(by_batch) == set(TOPICS)
    for topic in TOPICS:
        a, b = by_online[topic], by_batch[topic]
        assert b["error"] is None and b["output"] == a["output"]  # the same answer, through the same parser
        assert b.keys() == a.keys() and b["metrics"].keys() == a["metrics"].keys()
        for name in ("input_tokens", "output_tokens", "model_calls"):
            assert b["metrics"][name] == a["metrics"][name]
        assert (a["metrics"]["tier"], b["metrics"]["tier"]) == ("online", "batch")
        assert b["metrics"]["cost_usd"] == pytest.approx(a["metrics"]["cost_usd"] / 2)  # batch prices
    summary = json.loads((topics / "m.json").read_text())
    assert summary["tier"] == "batch" and summary["batches"]["batches"] == 2 and summary["batches"]["requests"] == 6
    assert summary["cost_usd"] == pytest.approx(sum(r["metrics"]["cost_usd"] for r in by_batch.values()), abs=1e-6)
    assert "batches" in batch.stderr and "batch prices" in batch.stderr


def test_the_batch_body_is_the_body_an_online_request_sends(topics: Path, server: FaultServer) -> None:
    (topics / "texts.txt").write_text("a calm and happy day\n")
    common = ["run", "keywords", "--input", "texts.txt", "--model", "openai:test-model", "--max-tokens", "77", "-q"]
    online = cli(*common, "--base-url", server.base_url, "--output", "o.jsonl", cwd=topics)
    run = cli(*common, "--base-url", server.base_url, "--tier", "batch", "--batch-poll", "0.05", "--output", "k.jsonl",
              cwd=topics)  # fmt: skip
    assert run.returncode == online.returncode == 1  # the fault server's echo is not JSON: refused, as online
    file_id = _journal(topics / "k.jsonl.batches")[0]["file_id"]
    line = json.loads(server.batches.file_content(file_id).splitlines()[0])
    body = line["body"]
    assert line["method"] == "POST" and line["url"] == "/v1/chat/completions"
    assert body["model"] == "test-model" and body["max_tokens"] == 77 and "stream" not in body
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"]["required"] == ["keywords", "sentiment"]
    assert records(topics / "k.jsonl")[0]["error"] == records(topics / "o.jsonl")[0]["error"]


def test_rows_that_failed_for_the_provider_go_into_a_later_batch(topics: Path, server: FaultServer) -> None:
    server.add_batch_fault("row_error", match="robots", times=1, status=500)
    server.add_batch_fault("row_expire", match="the sea", times=1)
    run = cli(*_story(server, "--output", "out.jsonl", "--metrics-out", "m.json", "-q"), cwd=topics)
    assert run.returncode == 0, run.stderr
    by_topic = _by_topic(topics / "out.jsonl")
    assert all(r["error"] is None for r in by_topic.values())
    assert by_topic["robots"]["metrics"]["retries"] == 1 and by_topic["the sea"]["metrics"]["retries"] == 1
    assert by_topic["dragons"]["metrics"]["retries"] == 0
    summary = json.loads((topics / "m.json").read_text())
    assert summary["batches"]["resubmitted"] == 2 and summary["retries"] == 2
    assert server.stats()["batches"]["row_status_counts"] == {"200": 6, "500": 1}  # six answers, each billed once


def test_a_row_the_provider_refuses_fails_its_input_with_the_providers_words(topics: Path, server: FaultServer) -> None:
    server.add_batch_fault("row_error", match="robots", status=400, message="max_tokens is too large for this model")
    run = cli(*_story(server, "--output", "out.jsonl", "-q"), cwd=topics)
    assert run.returncode == 1
    by_topic = _by_topic(topics / "out.jsonl")
    assert by_topic["robots"]["error"]["status"] == 400
    assert "max_tokens is too large" in by_topic["robots"]["error"]["message"]
    assert by_topic["dragons"]["error"] is None and by_topic["the sea"]["error"] is None
    assert server.stats()["batches"]["created"][0]["rows"] == 3 and len(server.stats()["batches"]["created"]) == 2


def test_a_batch_that_fails_validation_fails_its_inputs_with_the_reason(topics: Path, server: FaultServer) -> None:
    server.add_batch_fault("validation_failed", times=1, code="invalid_value", message="model test-model not batchable")
    run = cli(*_story(server, "--output", "out.jsonl", "-q"), cwd=topics)
    assert run.returncode == 1
    for record in records(topics / "out.jsonl"):
        assert "model test-model not batchable" in record["error"]["message"]
    assert len(server.stats()["batches"]["created"]) == 1  # not resubmitted: it would fail again


def test_tier_flags_that_do_not_fit_are_one_line(topics: Path, server: FaultServer) -> None:
    for args, words in (
        (_story(server), "--tier batch needs --output"),
        (["story", "--topics", "topics.txt", "--tier", "batch", "--output", "o.jsonl"], "--tier batch needs an OpenAI"),
        (_story(server, "--cancel-on-interrupt", tier="online"), "--cancel-on-interrupt cancels"),
        (_story(server, "--flex-fallback", "--output", "o.jsonl"), "--flex-fallback sends"),
    ):
        run = cli(*args, cwd=topics)
        assert run.returncode == 2, run.stderr
        assert words in one_error_line(run.stderr)
    assert server.stats()["batches"]["created"] == [] and server.stats()["requests"] == 0


def _start(topics: Path, server: FaultServer, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "runner.py"), *_story(server, "--output", "out.jsonl", "-q", *extra)],
        cwd=topics,
        env=runner_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _batches_in_journal(topics: Path) -> int:
    path = topics / "out.jsonl.batches"
    return sum(1 for e in _journal(path) if e["event"] == "batch") if path.exists() else 0


@pytest.mark.parametrize("stage", ["outlines", "stories"])
def test_kill_9_while_a_batch_runs_then_resume_submits_no_request_twice(
    topics: Path, server: FaultServer, stage: str
) -> None:
    stalled = "Write an outline" if stage == "outlines" else "Outline:"
    server.add_batch_fault("stall", match=stalled, times=1)  # until released
    run = _start(topics, server)
    _wait_for(lambda: _batches_in_journal(topics) == (1 if stage == "outlines" else 2))
    time.sleep(0.2)  # polling the stalled batch
    run.send_signal(signal.SIGKILL)
    run.communicate(timeout=10)
    assert records(topics / "out.jsonl") == [] if (topics / "out.jsonl").exists() else True
    server.release_batches()

    resumed = cli(*_story(server, "--output", "out.jsonl", "--resume", "--metrics-out", "m.json", "-q"), cwd=topics)
    assert resumed.returncode == 0, resumed.stderr
    successes = [r for r in records(topics / "out.jsonl") if r["error"] is None]
    assert sorted(r["input"]["topic"] for r in successes) == sorted(TOPICS)  # one success per input
    assert set(server.batch_submissions().values()) == {1} and len(server.batch_submissions()) == 6
    assert set(server.batches.answers().values()) == {1}
    assert len(server.stats()["batches"]["created"]) == 2  # the resumed run adopted, never resubmitted
    assert json.loads((topics / "m.json").read_text())["batches"]["adopted"] >= 1


def test_a_batch_created_but_not_journaled_is_found_at_the_provider_not_submitted_again(
    topics: Path, server: FaultServer
) -> None:
    first = cli(*_story(server, "--output", "out.jsonl", "-q"), cwd=topics)
    assert first.returncode == 0, first.stderr
    journal = topics / "out.jsonl.batches"
    # as if killed between creating each batch and journaling it, and before any record was written
    journal.write_text("".join(json.dumps(e) + "\n" for e in _journal(journal) if e["event"] == "file"))
    (topics / "out.jsonl").write_text("")
    again = cli(*_story(server, "--output", "out.jsonl", "--resume", "-q"), cwd=topics)
    assert again.returncode == 0, again.stderr
    assert len([r for r in records(topics / "out.jsonl") if r["error"] is None]) == 3
    assert set(server.batch_submissions().values()) == {1} and len(server.stats()["batches"]["created"]) == 2


@pytest.mark.parametrize("cancel", [False, True])
def test_ctrl_c_says_how_to_resume_or_cancels_the_batches(topics: Path, server: FaultServer, cancel: bool) -> None:
    server.add_batch_fault("stall", times=1)
    run = _start(topics, server, *(["--cancel-on-interrupt"] if cancel else []))
    _wait_for(lambda: _batches_in_journal(topics) == 1)
    time.sleep(0.2)
    run.send_signal(signal.SIGINT)
    _, stderr = run.communicate(timeout=20)
    assert run.returncode == 130, stderr
    statuses = [b["status"] for b in server.stats()["batches"]["created"]]
    if cancel:
        assert statuses[0] in ("cancelling", "cancelled") and "still running" not in stderr
    else:
        assert statuses == ["in_progress"]
        assert "1 batch(es) still running at the provider" in stderr and "--resume" in stderr


def test_dry_run_counts_requests_and_cost_per_tier_and_sends_nothing(topics: Path, server: FaultServer) -> None:
    run = cli(*_story(server, "--dry-run", tier="online"), cwd=topics)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert "3 inputs, 3 first-step requests" in lines[0]
    online = next(line for line in lines if "online tier" in line)
    batch = next(line for line in lines if "batch tier" in line)
    assert "$" in online and "$" in batch
    assert float(batch.split("$")[1]) == pytest.approx(float(online.split("$")[1]) / 2, rel=0.02)
    assert server.stats()["requests"] == 0 and server.stats()["batches"]["files"] == []


async def test_a_consumer_streaming_a_batch_tier_model_gets_the_batch_answer_not_an_online_request(
    server: FaultServer,
) -> None:
    from chains.providers.models import ModelSession
    from chains.settings import RunSettings

    settings = RunSettings(
        model="openai:test-model", base_url=server.base_url, api_key="x", tier="batch", batch_poll_s=0.05
    )
    async with ModelSession(settings) as session:
        chunks = [chunk async for chunk in session.model.astream("hello there")]
    assert server.stats()["requests"] == 0 and len(server.stats()["batches"]["created"]) == 1
    message = chunks[0]
    for chunk in chunks[1:]:
        message += chunk
    assert str(message.content).startswith("echo: hello there")
    assert message.usage_metadata is not None and message.usage_metadata["input_tokens"] > 0


def test_max_cost_reserves_at_batch_prices(topics: Path, server: FaultServer) -> None:
    # a story request reserves about $0.0052 online (its prompt and max_tokens) and half that in a batch
    online = cli(*_story(server, "--output", "online.jsonl", "--max-cost", "0.009", "-q", tier="online"), cwd=topics)
    assert online.returncode == 1
    assert any(r["metrics"]["status"] == "not_run" for r in records(topics / "online.jsonl"))
    batch = cli(*_story(server, "--output", "batch.jsonl", "--max-cost", "0.009", "--metrics-out", "m.json", "-q"),
                cwd=topics)  # fmt: skip
    assert batch.returncode == 0, batch.stderr
    assert all(r["error"] is None for r in records(topics / "batch.jsonl"))
    assert json.loads((topics / "m.json").read_text())["cost_usd"] <= 0.009
