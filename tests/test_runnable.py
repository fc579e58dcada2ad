"""The chains as a LangChain app uses them: sync and async, invoke, batch, stream, events, tools.

Every chain is built on a ``ManagedChatModel`` (the runner's limits, retries and usage
accounting); these tests use it the way LangChain documents Runnables, with no runner
API in between.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fakes import ProbeModel
from fault_server import FaultServer
from pydantic import BaseModel

from chains import ModelSession, RunSettings, get_chain
from chains.engine.limits import Limits
from chains.engine.retry import BackoffWait
from chains.errors import ProviderError
from chains.providers.fake import FakeChatModel
from chains.providers.managed import ManagedChatModel

TEXT = {"text": "The sea was calm and the boats stayed in the harbour all day."}


def offline_summarize() -> Any:
    return get_chain("summarize", ManagedChatModel(inner=FakeChatModel()))


# ----------------------------------------------------------------------------- sync


def test_invoke_batch_and_stream_in_plain_sync_code() -> None:
    chain = offline_summarize()
    answer = chain.invoke(TEXT)
    assert isinstance(answer, str) and answer
    assert chain.batch([TEXT, {"text": "A fox ran."}]) == [answer, chain.invoke({"text": "A fox ran."})]
    chunks = list(chain.stream(TEXT))
    assert len(chunks) > 1, "stream gave the whole answer as one chunk"
    assert "".join(chunks) == answer


def test_get_chain_with_no_model_works_synchronously() -> None:
    """The README's example: the offline default model, no key, plain sync code."""
    answer = get_chain("summarize").invoke({"text": "The sea was calm."})
    assert isinstance(answer, str) and answer


async def test_sync_invoke_inside_a_running_event_loop() -> None:
    """A Jupyter cell without ``await``: the thread already runs a loop."""
    chain = offline_summarize()
    assert chain.invoke(TEXT) == await chain.ainvoke(TEXT)


def test_sync_invoke_from_a_thread_pool_shares_the_runs_limits() -> None:
    probe = ProbeModel(delay=0.02)
    model = ManagedChatModel(inner=probe, limits=Limits.create(3))
    chain = get_chain("summarize", model)
    with ThreadPoolExecutor(max_workers=12) as pool:
        answers = list(pool.map(lambda i: chain.invoke({"text": f"text number {i}"}), range(24)))
    assert len(answers) == 24 and all(answers)
    assert probe.calls == 24
    assert probe.peak <= 3, f"{probe.peak} requests in flight with a cap of 3"
    assert threading.active_count() < 40


# ----------------------------------------------------------------------------- async


async def test_astream_yields_tokens_as_they_arrive_whatever_the_settings_say() -> None:
    """langchain-core: a model given ``streaming=False`` explicitly never streams; ours must."""
    async with ModelSession(RunSettings(model="fake", stream=False)) as session:
        chain = get_chain("summarize", session.model)
        chunks = [chunk async for chunk in chain.astream(TEXT)]
        assert len(chunks) > 3, f"astream gave {len(chunks)} chunk(s)"
        assert "".join(chunks) == await chain.ainvoke(TEXT)


async def test_astream_events_has_a_chat_model_stream_event_per_token() -> None:
    chain = offline_summarize()
    tokens = [
        event["data"]["chunk"].text
        async for event in chain.astream_events(TEXT, version="v2")
        if event["event"] == "on_chat_model_stream"
    ]
    assert len([t for t in tokens if t]) > 3, tokens
    assert "".join(tokens) == await chain.ainvoke(TEXT)


async def test_abatch_max_concurrency_and_the_run_wide_cap_both_hold() -> None:
    probe = ProbeModel(delay=0.02)
    chain = get_chain("summarize", ManagedChatModel(inner=probe, limits=Limits.create(2)))
    answers = await chain.abatch([{"text": f"t{i}"} for i in range(12)], config={"max_concurrency": 6})
    assert len(answers) == 12 and probe.peak <= 2, probe.peak

    probe = ProbeModel(delay=0.02)
    chain = get_chain("summarize", ManagedChatModel(inner=probe, limits=Limits.create(50)))
    await chain.abatch([{"text": f"t{i}"} for i in range(12)], config={"max_concurrency": 3})
    assert probe.peak <= 3, f"max_concurrency 3 but {probe.peak} in flight"


async def test_abatch_as_completed_gives_every_input_its_own_answer() -> None:
    chain = offline_summarize()
    inputs = [{"text": f"text number {i}"} for i in range(6)]
    done = {i: out async for i, out in chain.abatch_as_completed(inputs)}
    assert done == {i: await chain.ainvoke(value) for i, value in enumerate(inputs)}


# ----------------------------------------------------------------------------- tools, structured output


class Verdict(BaseModel):
    sentiment: str
    score: int


@pytest.mark.parametrize("inner", ["fake", "managed"])
async def test_with_structured_output_on_the_offline_model(inner: str) -> None:
    model: Any = FakeChatModel() if inner == "fake" else ManagedChatModel(inner=FakeChatModel())
    structured = model.with_structured_output(Verdict)
    verdict = await structured.ainvoke("How does this read: what a lovely day")
    assert isinstance(verdict, Verdict)
    assert verdict == structured.invoke("How does this read: what a lovely day")


async def test_tool_calls_stream_as_chunks_that_add_up() -> None:
    def lookup(city: str, days: int) -> str:
        """Look up the weather."""
        return city

    model = ManagedChatModel(inner=FakeChatModel()).bind_tools([lookup])
    whole = await model.ainvoke("weather in Oslo")
    [call] = whole.tool_calls
    assert call["name"] == "lookup" and set(call["args"]) == {"city", "days"}
    merged = None
    async for chunk in model.astream("weather in Oslo"):
        merged = chunk if merged is None else merged + chunk
    assert merged is not None and merged.tool_calls == whole.tool_calls


# ----------------------------------------------------------------------------- tracing


def test_tracing_sees_the_inner_models_provider_and_name() -> None:
    settings = RunSettings(model="openai:gpt-4o-mini", api_key="sk-test-not-used", temperature=0.3, max_tokens=50)
    session = ModelSession(settings)
    params = session.model._get_ls_params()
    assert params["ls_provider"] == "openai" and params["ls_model_name"] == "gpt-4o-mini", params
    assert params.get("ls_temperature") == 0.3 and params.get("ls_max_tokens") == 50, params
    asyncio.run(session.aclose())


# ----------------------------------------------------------------------------- a stream that breaks


@pytest.fixture
def fast_session(fault_server: FaultServer) -> Any:
    async def open_session(**values: Any) -> ModelSession:
        settings = RunSettings(model="openai:m", base_url=fault_server.base_url, **values)
        session = ModelSession(settings)
        session.model.wait = BackoffWait(base=0.01, cap=0.02)
        return session

    return open_session


async def test_astream_retries_a_failure_before_the_first_token(fault_server: FaultServer, fast_session: Any) -> None:
    fault_server.configure(chunks=4)
    fault_server.add_fault("503", match="flaky", times=1)
    session = await fast_session(max_retries=2)
    try:
        chunks = [c.text async for c in session.model.astream("flaky")]
    finally:
        await session.aclose()
    assert "".join(chunks) == "echo: flaky t1 t2 t3"
    assert fault_server.requests_for("flaky") == 2


async def test_astream_never_retries_after_tokens_reached_the_consumer(
    fault_server: FaultServer, fast_session: Any
) -> None:
    fault_server.configure(chunks=6)
    fault_server.add_fault("truncate", match="cut", after_chunks=3)
    session = await fast_session(max_retries=3)
    seen: list[str] = []
    try:
        with pytest.raises(ProviderError, match="already seen"):
            async for chunk in session.model.astream("cut"):
                seen.append(chunk.text)
    finally:
        await session.aclose()
    assert "".join(seen).startswith("echo: cut")
    assert fault_server.requests_for("cut") == 1, "a stream the consumer had already seen was sent again"


def test_sync_and_async_calls_mix_on_one_session_over_http(fault_server: FaultServer) -> None:
    """Each event loop gets its own HTTP pool: sync calls (the portal loop) then async ones (another loop),
    as a notebook mixes them, and the session closes every pool on its own loop."""
    settings = RunSettings(model="openai:m", base_url=fault_server.base_url, max_concurrency=2)
    session = ModelSession(settings)
    chain = get_chain("summarize", session.model)
    sync_answer = chain.invoke(TEXT)
    sync_stream = "".join(chain.stream(TEXT))

    async def main() -> tuple[str, str]:
        answer = await chain.ainvoke(TEXT)
        streamed = "".join([c async for c in chain.astream(TEXT)])
        await session.aclose()
        return answer, streamed

    async_answer, async_stream = asyncio.run(main())
    assert sync_answer == async_answer == sync_stream == async_stream
    assert sync_answer.startswith("echo: ")
    assert fault_server.stats()["requests"] == 4


# ----------------------------------------------------------------------------- metrics on every path


@pytest.mark.parametrize("path", ["astream", "astream_events", "stream", "invoke"])
async def test_the_metrics_handler_works_on_every_path(path: str) -> None:
    """Time to first token when streaming, and usage (reported or estimated) however the chain is run."""
    import time as clock

    from chains.engine.callbacks import MetricsHandler
    from chains.engine.metrics import ItemMetrics

    item = ItemMetrics()
    config: Any = {"callbacks": [MetricsHandler(item, clock.perf_counter())]}
    chain = offline_summarize()
    if path == "astream":
        _ = [c async for c in chain.astream(TEXT, config)]
    elif path == "astream_events":
        _ = [e async for e in chain.astream_events(TEXT, config, version="v2")]
    elif path == "stream":
        _ = await asyncio.to_thread(lambda: list(chain.stream(TEXT, config)))
    else:
        await asyncio.to_thread(chain.invoke, TEXT, config)
    assert item.input_tokens > 0 and item.output_tokens > 0, item
    if path != "invoke":
        assert item.ttft_s is not None and item.ttft_s > 0, item
