"""Anthropic, first class: ``--model anthropic:NAME`` streams with usage, is retried, falls back, is priced with its
cache reads and writes, and runs at ``--tier batch`` through Message Batches — through the real ``ChatAnthropic``
and the anthropic SDK, against the Anthropic-compatible test server (tests/fault_anthropic.py) on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, cli, one_error_line, records, runner_env
from fault_anthropic import API_KEY, AnthropicServer, anthropic_server_fixture
from hypothesis import given, settings
from hypothesis import strategies as st
from langchain_core.language_models.chat_models import generate_from_stream
from langchain_core.messages import HumanMessage

from chains.engine.execution import run_batch
from chains.engine.pricing import DEFAULT_PRICES, PriceTable
from chains.errors import ChainRunnerError
from chains.providers.accounting import response_headers
from chains.providers.batch.anthropic import AnthropicBatches, parse_result_line
from chains.providers.batch.backend import RowAnswer
from chains.providers.batch.collector import BatchCollector
from chains.providers.factories import create_other
from chains.providers.model_spec import ModelSpec
from chains.providers.models import ModelSession
from chains.providers.streaming import finish_reason
from chains.settings import RunSettings
from chains.spec.registry import get_chain

MODEL = "anthropic:claude-test"
TOPICS = ["dragons", "robots"]
PRICES: dict[str, Any] = {  # Message Batches halve the cache prices too
    "claude-test": {"input": 3.0, "output": 15.0, "cached_input": 0.3, "cache_write": 3.75,
                    "batch": {"cached_input": 0.15, "cache_write": 1.875}},
    "claude-big": {"input": 15.0, "output": 75.0, "cached_input": 15.0, "cache_write": 15.0},
}  # fmt: skip


@pytest.fixture
def server() -> Iterator[AnthropicServer]:
    for started in anthropic_server_fixture():
        started.configure(chunks=4)
        yield started


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "topics.txt").write_text("\n".join(TOPICS) + "\n")
    (tmp_path / "prices.json").write_text(json.dumps(PRICES))
    return tmp_path


def _story(server: AnthropicServer, *extra: str) -> list[str]:
    return ["story", "--topics", "topics.txt", "--model", MODEL, "--base-url", server.base_url,
            "--prices", "prices.json", "--output", "out.jsonl", *extra]  # fmt: skip


def _run(work: Path, server: AnthropicServer, *extra: str, key: str = API_KEY) -> Any:
    return cli(*_story(server, *extra), cwd=work, env=runner_env(ANTHROPIC_API_KEY=key))


def _by_topic(path: Path) -> dict[str, dict[str, Any]]:
    return {r["input"]["topic"]: r for r in records(path)}


def _cost(p: dict[str, float], tokens_in: int, tokens_out: int, read: int = 0, written: int = 0) -> float:
    usd = (tokens_in - read - written) * p["input"] + read * p["cached_input"] + written * p["cache_write"]
    return (usd + tokens_out * p["output"]) / 1e6


# ----------------------------------------------------------------------------- online


def test_a_streamed_run_records_the_providers_usage_in_every_record(work: Path, server: AnthropicServer) -> None:
    run = _run(work, server, "--stream", "-q")
    assert run.returncode == 0, run.stderr
    log = server.stats()["log"]
    assert len(log) == 4 and all(e["stream"] and e["model"] == "claude-test" for e in log)
    for topic, record in _by_topic(work / "out.jsonl").items():
        metrics = record["metrics"]
        assert record["error"] is None and record["output"].startswith(f"echo: Topic: {topic}")
        assert record["output"].endswith(" t1 t2 t3")  # the story call's whole answer, streamed
        sent = [e["usage"] for e in log if topic in e["key"]]
        assert metrics["input_tokens"] == sum(u["input_tokens"] for u in sent) > 0  # the server's own counts
        assert metrics["output_tokens"] == sum(u["output_tokens"] for u in sent) == 8
        assert not metrics["tokens_estimated"] and metrics["ttft_s"] is not None and metrics["model_calls"] == 2
        assert metrics["model"] == MODEL and metrics["tier"] == "online"
        expected = _cost(PRICES["claude-test"], metrics["input_tokens"], metrics["output_tokens"])
        assert metrics["cost_usd"] == pytest.approx(expected)


def test_cache_reads_and_writes_are_priced_at_their_own_rates(work: Path, server: AnthropicServer) -> None:
    server.cache_usage(read=12, creation=5)
    run = _run(work, server, "-q")
    assert run.returncode == 0, run.stderr
    for record in records(work / "out.jsonl"):
        metrics = record["metrics"]  # two calls, each with 12 tokens read from the cache and 5 written to it
        expected = _cost(PRICES["claude-test"], metrics["input_tokens"], metrics["output_tokens"], 24, 10)
        assert metrics["cost_usd"] == pytest.approx(expected)
        assert metrics["cost_usd"] < _cost(PRICES["claude-test"], metrics["input_tokens"], metrics["output_tokens"])


def test_the_built_in_claude_prices_know_dated_snapshots_and_halve_every_kind_in_batches() -> None:
    table = PriceTable()
    claude = [name for name in DEFAULT_PRICES if name.startswith("claude-")]
    assert claude
    for name in claude:
        online, batch = table.rates(name), table.rates(name, "batch")
        assert online is not None and batch is not None
        assert batch == tuple(price / 2 for price in online)  # Message Batches: the cache prices are halved too
        assert online.cached_input < online.input < online.cache_write
    assert table.rates("claude-sonnet-4-5-20250929") == table.rates("claude-sonnet-4-5")
    assert table.price("claude-sonnet-4-5-preview") is None  # another suffix is another model


async def test_the_response_headers_and_the_stop_reason_reach_the_runner(server: AnthropicServer) -> None:
    settings = RunSettings(model=MODEL, api_key=API_KEY, base_url=server.base_url)
    model: Any = create_other(ModelSpec("anthropic", "claude-test"), settings, server.base_url + "/v1")
    try:
        result = await model._agenerate([HumanMessage("hello")])
        assert response_headers(result)["request-id"].startswith("req_test")
        chunks = [chunk async for chunk in model._astream([HumanMessage("hello")])]
        assert finish_reason(chunks) == "end_turn"
        streamed = generate_from_stream(iter(chunks))
        assert response_headers(streamed)["request-id"].startswith("req_test")
        assert streamed.generations[0].message.text == result.generations[0].message.text == "echo: hello t1 t2 t3"
    finally:
        await model.aclose_http()


@pytest.mark.parametrize("stream", [False, True])
def test_overloaded_and_rate_limited_requests_are_retried_with_one_reason_each(
    work: Path, server: AnthropicServer, stream: bool
) -> None:
    server.add_fault("529", match="dragons", times=1)
    server.add_fault("429", match="robots", times=1, retry_after=0.4)
    run = _run(work, server, "-v", *(["--stream"] if stream else []))
    assert run.returncode == 0, run.stderr
    retries = [line for line in run.stderr.splitlines() if re.search(r"retry \d+/\d+ in", line)]
    assert len(retries) == 2, run.stderr
    assert any("HTTP 529 overloaded_error" in line for line in retries), retries
    assert any("HTTP 429 rate_limit_error" in line and "Retry-After 0.4s" in line for line in retries), retries
    assert all(r["error"] is None and r["metrics"]["retries"] == 1 for r in records(work / "out.jsonl"))
    robots = [e for e in server.stats()["log"] if "robots" in e["key"]]
    assert robots[1]["t"] - (robots[0]["t"] + robots[0]["duration"]) >= 0.4 * 0.95  # the server's wait, honoured


@pytest.mark.parametrize(("kind", "said"), [("cut", "broken stream"), ("error_event", "HTTP 529 overloaded_error"),
                                            ("reset", "connection error")])  # fmt: skip
def test_a_stream_that_breaks_mid_answer_is_retried(work: Path, server: AnthropicServer, kind: str, said: str) -> None:
    server.add_fault(kind, match="dragons", times=1, after_chunks=2)
    run = _run(work, server, "-v", "--stream")
    assert run.returncode == 0, run.stderr
    assert said in run.stderr, run.stderr
    by_topic = _by_topic(work / "out.jsonl")
    assert by_topic["dragons"]["metrics"]["retries"] == 1 and by_topic["robots"]["metrics"]["retries"] == 0
    clean = by_topic["robots"]["output"].replace("robots", "dragons")
    assert by_topic["dragons"]["output"] == clean  # nothing of the broken attempt is kept


def test_a_prompt_too_long_for_one_model_falls_back_to_the_next(work: Path, server: AnthropicServer) -> None:
    server.add_fault("too_long", match="dragons", model="claude-test", maximum=100)
    run = _run(work, server, "--fallback-model", "anthropic:claude-big", "--max-retries", "1", "-q")
    assert run.returncode == 0, run.stderr
    by_topic = _by_topic(work / "out.jsonl")
    dragons, robots = by_topic["dragons"]["metrics"], by_topic["robots"]["metrics"]
    assert dragons["model"] == "anthropic:claude-big" and robots["model"] == MODEL
    assert dragons["fallbacks"][0]["model"] == MODEL and dragons["fallbacks"][0]["reason"] == "context_length_exceeded"
    assert "prompt is too long" in dragons["fallbacks"][0]["error"] and robots["fallbacks"] == []
    asked = [e["model"] for e in server.stats()["log"] if "dragons" in e["key"]]
    assert asked == ["claude-test", "claude-big", "claude-test", "claude-big"]  # no retry of the 400
    assert dragons["cost_usd"] == pytest.approx(_cost(PRICES["claude-big"], dragons["input_tokens"], dragons["output_tokens"]))  # fmt: skip


def test_a_wrong_key_fails_each_input_in_one_line_naming_the_variable(work: Path, server: AnthropicServer) -> None:
    run = _run(work, server, "-q", key="not-the-key-0123")
    assert run.returncode == 1 and "Traceback" not in run.stderr
    for record in records(work / "out.jsonl"):
        message = record["error"]["message"]
        assert record["error"]["status"] == 401 and "\n" not in message
        assert "ANTHROPIC_API_KEY" in message and "not-the-key-0123" not in message
    assert server.stats()["status_counts"] == {401: 2}  # refused at once, never retried


def test_no_key_is_one_line_naming_the_variable(work: Path) -> None:
    args = ["story", "--topics", "topics.txt", "--model", MODEL]
    run = cli(*args, cwd=work, env=runner_env(OPENAI_API_KEY="sk-an-openai-key"))  # not Anthropic's
    assert run.returncode == 2
    assert "ANTHROPIC_API_KEY" in one_error_line(run.stderr)


# ----------------------------------------------------------------------------- batch tier


@asynccontextmanager
async def _session(settings: RunSettings) -> AsyncIterator[ModelSession]:
    """A session closed at the end, the Anthropic model's own HTTP pool with it (``LoopPools`` holds its closer)."""
    async with ModelSession(settings) as session:
        yield session


async def _story_records(session: ModelSession, settings: RunSettings) -> dict[str, Any]:
    chain = get_chain("story", session.model)
    batch = run_batch(chain, [{"topic": t} for t in TOPICS], settings=settings, limits=session.limits)
    return {r.input["topic"]: r async for r in batch}


async def test_a_batch_run_through_message_batches_gives_the_records_of_an_online_run(
    work: Path, server: AnthropicServer
) -> None:
    server.cache_usage(read=3, creation=2)
    settings = RunSettings(model=MODEL, base_url=server.base_url, api_key=API_KEY, prices=str(work / "prices.json"))
    async with _session(settings) as session:
        online = await _story_records(session, settings)
    assert len(server.stats()["log"]) == 4
    async with _session(settings) as session:
        limits = session.limits
        session.model.batches = BatchCollector(
            AnthropicBatches.for_model, poll_s=0.05, active=lambda: limits.inputs_in_flight
        )
        batched = await _story_records(session, settings.model_copy(update={"tier": "batch"}))
        stats = session.model.batches.stats
    assert len(server.stats()["log"]) == 4  # nothing more was sent online
    assert server.stats()["message_batches"]["created"] == [2, 2]  # the outlines, then the stories
    assert set(server.stats()["message_batches"]["submissions"].values()) == {1}
    assert stats.batches == 2 and stats.requests == 4
    for topic in TOPICS:
        a, b = online[topic], batched[topic]
        assert b.error is None and b.output == a.output  # the same answer, through ChatAnthropic's own parser
        for name in ("input_tokens", "output_tokens", "model_calls"):
            assert getattr(b.metrics, name) == getattr(a.metrics, name)
        assert (a.metrics.tier, b.metrics.tier) == ("online", "batch")
        assert b.metrics.cost_usd == pytest.approx(a.metrics.cost_usd / 2)  # cache reads and writes halved too


async def test_rows_that_expired_go_into_a_later_batch_and_a_refused_row_fails_with_the_providers_words(
    work: Path, server: AnthropicServer
) -> None:
    server.add_fault("expire", match="dragons", times=1)
    server.add_fault("too_long", match="robots", maximum=10)
    settings = RunSettings(model=MODEL, base_url=server.base_url, api_key=API_KEY)
    async with _session(settings) as session:
        limits = session.limits
        session.model.batches = BatchCollector(
            AnthropicBatches.for_model, poll_s=0.05, active=lambda: limits.inputs_in_flight
        )
        batched = await _story_records(session, settings.model_copy(update={"tier": "batch"}))
    assert batched["dragons"].error is None and batched["dragons"].metrics.retries == 1
    assert batched["robots"].error is not None and batched["robots"].error["status"] == 400
    assert "prompt is too long" in batched["robots"].error["message"]
    assert server.stats()["message_batches"]["created"] == [2, 1, 1]  # outlines, dragons again, its story


async def test_a_batch_created_but_never_journaled_is_found_by_its_staged_id(server: AnthropicServer) -> None:
    import anthropic

    async with anthropic.AsyncAnthropic(api_key=API_KEY, base_url=server.base_url, max_retries=0) as client:
        backend = AnthropicBatches(client)
        body = {"model": "claude-test", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}
        staged = await backend.upload(backend.line("cr-1", body) + backend.line("cr-2", body))
        created = await backend.create(staged, {})
        other = await AnthropicBatches(client).upload(backend.line("cr-3", body))
        assert created.total == 2 and created.status == "in_progress"
        after_a_kill = AnthropicBatches(client)  # a new run: only the journal's staged id is known
        found = await after_a_kill.find(staged)
        assert found is not None and found.id == created.id
        assert await after_a_kill.find(other) is None  # staged, never created: submitted again
        assert await after_a_kill.find("file-abc") is None


def _batch_cli(work: Path, server: AnthropicServer, *extra: str) -> Any:
    return _run(work, server, "--tier", "batch", "--batch-poll", "0.05", "-q", *extra)


def _journal(work: Path) -> list[dict[str, Any]]:
    path = work / "out.jsonl.batches"
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")] if path.exists() else []


def test_tier_batch_on_the_command_line_gives_the_records_of_an_online_run(work: Path, server: AnthropicServer) -> None:
    assert _run(work, server, "-q").returncode == 0
    (work / "out.jsonl").rename(work / "online.jsonl")
    run = _batch_cli(work, server, "--metrics-out", "m.json")
    assert run.returncode == 0, run.stderr
    assert len(server.stats()["log"]) == 4 and server.stats()["message_batches"]["created"] == [2, 2]
    online, batched = _by_topic(work / "online.jsonl"), _by_topic(work / "out.jsonl")
    for topic in TOPICS:
        a, b = online[topic], batched[topic]
        assert b["error"] is None and b["output"] == a["output"] and b["metrics"]["tier"] == "batch"
        assert b["metrics"]["cost_usd"] == pytest.approx(a["metrics"]["cost_usd"] / 2)
    assert [e["event"] for e in _journal(work)] == ["file", "batch", "file", "batch"]
    assert json.loads((work / "m.json").read_text())["batches"]["batches"] == 2


def _held_batch_run(work: Path, server: AnthropicServer, *extra: str) -> subprocess.Popen[str]:
    """A batch run started in the background, once its first (held) batch is journaled and being polled."""
    server.configure_batches(hold=True)
    args = [sys.executable, str(ROOT / "runner.py"), *_story(server, "--tier", "batch", "--batch-poll", "0.05", "-q")]
    env = runner_env(ANTHROPIC_API_KEY=API_KEY)
    run = subprocess.Popen([*args, *extra], cwd=work, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not any(e["event"] == "batch" for e in _journal(work)):
        assert time.monotonic() < deadline and run.poll() is None, "no batch was journaled"
        time.sleep(0.02)
    time.sleep(0.2)
    return run


def test_kill_9_while_a_message_batch_runs_then_resume_adopts_it(work: Path, server: AnthropicServer) -> None:
    run = _held_batch_run(work, server)
    run.kill()
    run.communicate(timeout=10)
    server.configure_batches(hold=False)
    server.release_batches()
    resumed = _batch_cli(work, server, "--resume", "--metrics-out", "m.json")
    assert resumed.returncode == 0, resumed.stderr
    assert sorted(r["input"]["topic"] for r in records(work / "out.jsonl") if r["error"] is None) == TOPICS
    submissions = server.stats()["message_batches"]["submissions"]
    assert len(submissions) == 4 and set(submissions.values()) == {1}  # nothing was paid twice
    assert server.stats()["message_batches"]["created"] == [2, 2]
    assert json.loads((work / "m.json").read_text())["batches"]["adopted"] == 1


@pytest.mark.parametrize("cancel", [False, True])
def test_ctrl_c_leaves_the_message_batch_to_resume_or_cancels_it(
    work: Path, server: AnthropicServer, cancel: bool
) -> None:
    run = _held_batch_run(work, server, *(["--cancel-on-interrupt"] if cancel else []))
    run.send_signal(signal.SIGINT)
    _, stderr = run.communicate(timeout=20)
    assert run.returncode == 130, stderr
    statuses = server.stats()["message_batches"]["statuses"]
    if cancel:
        assert statuses[0] in ("canceling", "ended") and "still running" not in stderr
    else:
        assert statuses == ["in_progress"] and "1 batch(es) still running at the provider" in stderr


def test_a_message_batch_created_but_not_journaled_is_found_not_submitted_again(
    work: Path, server: AnthropicServer
) -> None:
    assert _batch_cli(work, server).returncode == 0
    journal = work / "out.jsonl.batches"  # as if killed between creating each batch and journaling it
    journal.write_text("".join(json.dumps(e) + "\n" for e in _journal(work) if e["event"] == "file"))
    (work / "out.jsonl").write_text("")
    again = _batch_cli(work, server, "--resume")
    assert again.returncode == 0, again.stderr
    assert len([r for r in records(work / "out.jsonl") if r["error"] is None]) == 2
    assert server.stats()["message_batches"]["created"] == [2, 2]  # both stages found at the provider
    assert set(server.stats()["message_batches"]["submissions"].values()) == {1}


# ----------------------------------------------------------------------------- the result parser

_LEAF = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20)
_JSON = st.recursive(_LEAF, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=20)  # fmt: skip
_KIND = st.sampled_from(["succeeded", "errored", "canceled", "expired", "other"]) | _JSON
_RESULT = st.fixed_dictionaries(
    {"custom_id": st.text(max_size=10) | _JSON},
    optional={"result": st.fixed_dictionaries({}, optional={"type": _KIND, "message": _JSON, "error": _JSON}) | _JSON},
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | _RESULT.map(lambda line: json.dumps(line).encode()))
def test_a_result_line_is_a_row_or_nothing_and_never_an_outside_error(raw: bytes) -> None:
    try:
        row = parse_result_line(raw)
    except ChainRunnerError:
        return
    assert row is None or isinstance(row, RowAnswer)
    if row is not None:
        assert isinstance(row.custom_id, str) and (row.status is None or isinstance(row.status, int))
        assert row.ok == (row.status == 200) and isinstance(row.describe(), str)


@settings(max_examples=100, deadline=None)
@given(_JSON)
def test_an_answered_row_that_is_no_message_raises_only_a_project_error(body: Any) -> None:
    model = create_other(
        ModelSpec("anthropic", "claude-test"), RunSettings(model="anthropic:claude-test", api_key=API_KEY), None
    )
    with contextlib.suppress(ChainRunnerError):
        AnthropicBatches(None).to_result(model, RowAnswer("cr-1", 200, body))
