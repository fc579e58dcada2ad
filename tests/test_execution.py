"""The execution engine: limits, one record per input, laziness, streaming and metrics."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from pathlib import Path
from uuid import UUID

import pytest
from fakes import ProbeModel
from langchain_core.runnables import RunnableParallel

from chains import (
    FakeChatModel,
    Limits,
    ManagedChatModel,
    RunSettings,
    TokenStreamHandler,
    build_story_chain,
    build_summarize_chain,
    get_chain,
    run_batch,
    stream_one,
)
from chains.engine.retry import BackoffWait

ROOT = Path(__file__).resolve().parent.parent


def managed(inner: FakeChatModel, **kwargs: object) -> ManagedChatModel:
    return ManagedChatModel(inner=inner, wait=BackoffWait(base=0.001, cap=0.01), **kwargs)  # type: ignore[arg-type]


async def collect(batch) -> list:  # type: ignore[no-untyped-def]
    return [record async for record in batch]


async def test_max_concurrency_bounds_model_requests_of_a_multi_step_chain() -> None:
    probe = ProbeModel(delay=0.02)
    chain = build_story_chain(managed(probe))
    records = await collect(run_batch(chain, [{"topic": f"topic {i}"} for i in range(24)], max_concurrency=3))
    assert len(records) == 24 and all(r.ok for r in records)
    assert probe.calls == 48  # outline + story per input
    assert probe.peak == 3


async def test_max_concurrency_holds_when_the_chain_fans_out() -> None:
    probe = ProbeModel(delay=0.02)
    story = build_story_chain(managed(probe))
    fan_out = RunnableParallel(first=story, second=story, third=story)
    records = await collect(run_batch(fan_out, [{"topic": f"t{i}"} for i in range(6)], max_concurrency=2))
    assert all(r.ok for r in records)
    assert probe.peak == 2

    # The reason the limit lives at the model request: LangChain's own max_concurrency
    # bounds one fan-out level, so the same chain on a bare model overshoots it.
    bare = ProbeModel(delay=0.02)
    plain = RunnableParallel(first=build_story_chain(bare), second=build_story_chain(bare))
    await plain.abatch([{"topic": f"t{i}"} for i in range(4)], config={"max_concurrency": 2})
    assert bare.peak > 2


async def test_one_record_per_input_when_some_inputs_fail() -> None:
    probe = ProbeModel()
    chain = build_summarize_chain(managed(probe))
    texts = [f"text number {i}" + (" FAIL" if i % 3 == 0 else "") for i in range(10)]
    records = await collect(run_batch(chain, [{"text": t} for t in texts], max_concurrency=4))
    assert sorted(r.index for r in records) == list(range(10))
    for record in records:
        assert record.input == {"text": texts[record.index]}
        if record.index % 3 == 0:
            assert record.output is None
            assert record.error is not None and record.error["type"] == "ValueError"
            assert "FAIL" in record.error["message"]
        else:
            assert record.error is None
            # The output belongs to this input: the offline model is deterministic per prompt.
            expected = await build_summarize_chain(FakeChatModel()).ainvoke({"text": texts[record.index]})
            assert record.output == expected


async def test_error_items_become_error_records_without_running() -> None:
    probe = ProbeModel()
    chain = build_summarize_chain(managed(probe))
    bad = ValueError("line 2: missing 'text'")
    records = await collect(run_batch(chain, [{"text": "a"}, bad, {"text": "b"}]))
    by_index = {r.index: r for r in records}
    assert by_index[1].error == {"type": "ValueError", "message": "line 2: missing 'text'"}
    assert by_index[0].ok and by_index[2].ok
    assert probe.calls == 2


async def test_transient_errors_are_retried_per_input_and_counted() -> None:
    probe = ProbeModel(transient={"flaky": 2})
    chain = build_summarize_chain(managed(probe, max_retries=3))
    batch = run_batch(chain, [{"text": "flaky one"}, {"text": "steady"}])
    records = {r.index: r for r in await collect(batch)}
    assert records[0].ok and records[1].ok
    assert records[0].metrics.retries == 2 and records[1].metrics.retries == 0
    assert batch.summary.to_dict()["retries"] == 2


async def test_retries_give_up_with_a_provider_error_after_max_retries() -> None:
    probe = ProbeModel(transient={"flaky": 10})
    chain = build_summarize_chain(managed(probe, max_retries=2))
    [record] = await collect(run_batch(chain, [{"text": "flaky"}]))
    assert record.error is not None
    assert record.error["type"] == "ProviderError"
    assert record.error["status"] == 503 and record.error["attempts"] == 3
    assert "after 3 attempts" in record.error["message"]


async def test_inputs_are_consumed_lazily() -> None:
    pulled = 0

    def inputs():  # type: ignore[no-untyped-def]
        nonlocal pulled
        for i in range(600):
            pulled += 1
            yield {"text": f"item {i}"}

    chain = build_summarize_chain(managed(ProbeModel()))
    seen = 0
    most_tasks = 0
    async for _record in run_batch(chain, inputs(), max_concurrency=4):
        seen += 1
        assert pulled - seen <= 2 * 4 + 1  # in progress (4) + finished, waiting for the caller (4) + one
        most_tasks = max(most_tasks, len(asyncio.all_tasks()))
    assert seen == 600
    assert most_tasks < 20


async def test_tokens_are_kept_apart_per_run_id() -> None:
    tokens: dict[UUID, list[str]] = defaultdict(list)
    handler = TokenStreamHandler(lambda run_id, token: tokens[run_id].append(token))
    model = managed(FakeChatModel(token_delay=0.001), streaming=True)
    chain = build_story_chain(model)
    topics = [f"a story about animal {i}" for i in range(6)]
    records = await collect(run_batch(chain, [{"topic": t} for t in topics], max_concurrency=6, callbacks=[handler]))
    # Only the visible (final) step streams; each run's tokens rebuild exactly one output.
    assert len(tokens) == 6
    assert sorted("".join(parts) for parts in tokens.values()) == sorted(r.output for r in records)


async def test_metrics_against_a_model_with_known_delays() -> None:
    delay, n_tokens = 0.01, 20
    model = managed(FakeChatModel(token_delay=delay), streaming=True, overrides={"max_tokens": n_tokens})
    chain = build_summarize_chain(model)
    batch = run_batch(chain, [{"text": "the quick brown fox"}, {"text": "jumps over the dog"}], max_concurrency=2)
    records = await collect(batch)
    for record in records:
        m = record.metrics
        assert m.output_tokens == n_tokens
        assert m.input_tokens > 0 and not m.tokens_estimated
        assert m.model_calls == 1
        assert delay * 0.9 <= m.ttft_s < delay * 5
        assert delay * n_tokens * 0.9 <= m.latency_s < delay * n_tokens * 3
    summary = batch.summary.to_dict()
    assert summary["ok"] == 2 and summary["failed"] == 0
    assert summary["output_tokens"] == 2 * n_tokens
    assert delay * n_tokens * 0.9 <= summary["latency_p50_s"] <= summary["latency_p95_s"]
    assert summary["ttft_p50_s"] is not None
    # Two inputs ran side by side: the wall time is about one latency, not two.
    assert summary["wall_s"] < 2 * summary["latency_p95_s"]


async def test_no_time_to_first_token_without_streaming() -> None:
    chain = build_summarize_chain(managed(FakeChatModel()))
    [record] = await collect(run_batch(chain, [{"text": "hello"}]))
    assert record.metrics.ttft_s is None and record.metrics.output_tokens > 0


async def test_stream_one_yields_tokens_then_the_record() -> None:
    model = managed(FakeChatModel(token_delay=0.001), streaming=True)
    events = [e async for e in stream_one(build_summarize_chain(model), {"text": "a small red boat"})]
    assert [e.kind for e in events][-1] == "end"
    tokens = [e.text for e in events if e.kind == "token"]
    assert len(tokens) > 3
    record = events[-1].record
    assert record is not None and record.ok and "".join(tokens) == record.output


async def test_closing_stream_one_early_cancels_the_request() -> None:
    probe = ProbeModel(token_delay=0.01)
    model = managed(probe, streaming=True)
    stream = stream_one(build_summarize_chain(model), {"text": "long story"})
    async for event in stream:
        assert event.kind == "token"
        break
    await stream.aclose()  # type: ignore[attr-defined]
    await asyncio.sleep(0.05)
    assert probe.in_flight == 0


async def test_limits_can_be_shared_between_runs() -> None:
    probe = ProbeModel(delay=0.02)
    chain = build_summarize_chain(managed(probe))
    shared = Limits.create(2)
    settings = RunSettings(max_concurrency=5)
    runs = [
        collect(run_batch(chain, [{"text": f"{k}-{i}"} for i in range(6)], settings=settings, limits=shared))
        for k in range(3)
    ]
    results = await asyncio.gather(*runs)
    assert sum(len(r) for r in results) == 18
    assert probe.peak == 2 and shared.concurrency.peak == 2


async def test_get_chain_default_model_is_offline_without_a_key(caplog: pytest.LogCaptureFixture) -> None:
    chain = get_chain("summarize")
    assert isinstance(await chain.ainvoke({"text": "a cat on a mat"}), str)
    assert any("offline 'fake' model" in r.getMessage() for r in caplog.records)


def test_the_library_never_calls_asyncio_run() -> None:
    for path in (ROOT / "chains").rglob("*.py"):
        assert "asyncio.run(" not in path.read_text(), f"{path} calls asyncio.run; only runner.py may"
