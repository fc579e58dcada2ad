"""Resilience end to end: real HTTP through ``ChatOpenAI`` to the fault-injecting server.

Nothing is patched: each test opens a ``ModelSession`` on the fault server's
``base_url`` (127.0.0.1), runs a prompt-only ``echo`` chain whose human
message is exactly ``{text}`` with ``run_batch``, and checks the records
against what the server saw.  The server keys each request by its last user
message, so the key of every request is the input's text, and the answer to
input ``x`` is ``"echo: x t1 ... t{chunks-1}"``: an output can only belong to
its own input.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from fault_server import FaultServer
from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler

from chains.engine.callbacks import TokenStreamHandler
from chains.engine.execution import Record, run_batch
from chains.engine.retry import BackoffWait
from chains.providers.models import ModelSession
from chains.settings import RunSettings
from chains.spec.prompts_library import PromptLibrary
from chains.spec.registry import get_chain

CHUNKS = 4
STREAM_MODES = [pytest.param(False, id="json"), pytest.param(True, id="sse")]
BACKENDS = pytest.mark.parametrize("backend", ["lean", "aiohttp"])
"""The default (lean) and ChatOpenAI on the SDK's aiohttp transport: both are selectable, both are tested."""

ECHO_PROMPT = """\
name: echo
description: Send the text as it is; the fault server echoes it back.
input_variables: [text]
messages:
  - role: human
    content: "{text}"
"""


# ----------------------------------------------------------------------------- helpers


def echo_library(root: Path) -> PromptLibrary:
    """A prompt library with one chain, ``echo``, whose only message is ``{text}``."""
    directory = root / "resilience-prompts"
    directory.mkdir(exist_ok=True)
    (directory / "echo.yaml").write_text(ECHO_PROMPT, encoding="utf-8")
    return PromptLibrary([directory])


def answer(text: str, chunks: int = CHUNKS) -> str:
    """The fault server's full reply to ``text``."""
    return "echo: " + text + "".join(f" t{i}" for i in range(1, chunks))


@asynccontextmanager
async def echo_session(
    server: FaultServer,
    *,
    stream: bool,
    max_retries: int = 5,
    timeout: float = 10.0,
    max_concurrency: int = 4,
    http_backend: str = "lean",
) -> AsyncIterator[tuple[ModelSession, Any]]:
    """A session on the fault server with fast backoff, and the ``echo`` chain built on it."""
    settings = RunSettings(
        model="openai:test-model",
        base_url=server.base_url,
        http_backend=http_backend,  # type: ignore[arg-type]
        max_retries=max_retries,
        timeout=timeout,
        max_concurrency=max_concurrency,
        stream=stream,
    )
    async with ModelSession(settings) as session:
        session.model.wait = BackoffWait(base=0.01, cap=0.05, retry_after_cap=2)
        assert isinstance(session.model.wait, BackoffWait)
        chain = get_chain("echo", session.model, library=echo_library(Path.cwd()))
        yield session, chain


async def run_texts(
    session: ModelSession,
    chain: Any,
    texts: Sequence[str],
    callbacks: Sequence[BaseCallbackHandler] = (),
) -> tuple[dict[str, Record], dict[str, Any]]:
    """Run ``texts`` through ``chain``; records by input text (exactly one each), and the summary."""
    batch = run_batch(
        chain,
        [{"text": text} for text in texts],
        settings=session.settings,
        limits=session.limits,
        callbacks=callbacks,
    )
    records = [record async for record in batch]
    counts = Counter(record.input["text"] for record in records)
    assert sorted(counts) == sorted(texts), f"inputs without a record: {sorted(set(texts) - set(counts))}"
    repeated = {text: n for text, n in counts.items() if n != 1}
    assert not repeated, f"inputs with more than one record: {repeated}"
    assert sorted(record.index for record in records) == list(range(len(texts)))
    for record in records:
        assert record.input == {"text": texts[record.index]}, f"record {record.index} carries the wrong input"
    return {record.input["text"]: record for record in records}, batch.summary.to_dict()


def requests_log(server: FaultServer, key: str) -> list[dict[str, Any]]:
    return [entry for entry in server.stats()["log"] if entry["key"] == key]


def describe(record: Record) -> str:
    if record.error is None:
        return f"ok {record.output!r} (retries {record.metrics.retries})"
    return f"{record.error.get('type')}: {record.error.get('message')!r} (attempts {record.error.get('attempts')})"


# ----------------------------------------------------------------------------- 1. the HTTP path


@pytest.mark.parametrize("stream", STREAM_MODES)
@BACKENDS
async def test_http_path_gives_the_answer_and_the_servers_usage(
    fault_server: FaultServer, stream: bool, backend: str
) -> None:
    fault_server.configure(chunks=CHUNKS)
    texts = ["alpha", "two words", "three short words"]
    async with echo_session(fault_server, stream=stream, http_backend=backend) as (session, chain):
        records, summary = await run_texts(session, chain, texts)

    for text in texts:
        record = records[text]
        assert record.error is None, describe(record)
        assert record.output == answer(text)
        [entry] = requests_log(fault_server, text)
        assert entry["stream"] is stream
        assert entry["status"] == 200 and entry["fault"] is None
        metrics = record.metrics
        assert metrics.input_tokens == entry["prompt_tokens"] == len(text.split())
        assert metrics.output_tokens == entry["completion_tokens"] == CHUNKS
        assert metrics.tokens_estimated is False, "the server reported usage: it must be used, not estimated"
        assert metrics.model_calls == 1
        assert metrics.retries == 0
        assert (metrics.ttft_s is not None) is stream
    assert summary["ok"] == len(texts) and summary["failed"] == 0
    assert summary["input_tokens"] == sum(len(text.split()) for text in texts)
    assert summary["output_tokens"] == CHUNKS * len(texts)
    assert summary["tokens_estimated"] is False
    assert summary["retries"] == 0


# ----------------------------------------------------------------------------- 2. a mix of faults

# (fault kind, times, extra rule options, streamed requests only)
FAULT_MIX: dict[str, tuple[str, int, dict[str, Any], bool]] = {
    "item-01": ("429", 1, {"retry_after": 0.05}, False),
    "item-03": ("500", 2, {}, False),
    "item-05": ("503", 1, {}, False),
    "item-07": ("reset", 1, {}, False),
    "item-09": ("429", 2, {"retry_after_ms": 30}, False),
    "item-11": ("502", 1, {}, False),
    "item-12": ("reset_mid_stream", 1, {"after_chunks": 2}, True),
    "item-14": ("truncate", 2, {"after_chunks": 2}, True),
    "item-16": ("malformed", 1, {"after_chunks": 1}, True),
    "item-18": ("truncate", 1, {"after_chunks": 0}, True),
}


@pytest.mark.parametrize("stream", STREAM_MODES)
async def test_every_input_ends_with_its_own_record_under_a_mix_of_faults(
    fault_server: FaultServer, stream: bool
) -> None:
    fault_server.configure(chunks=CHUNKS)
    texts = [f"item-{i:02d}" for i in range(20)]
    injected: dict[str, int] = dict.fromkeys(texts, 0)
    for text, (kind, times, options, stream_only) in FAULT_MIX.items():
        if stream_only and not stream:
            continue  # the server never cuts a JSON answer mid-stream
        fault_server.add_fault(kind, match=text, times=times, **options)
        injected[text] = times

    async with echo_session(fault_server, stream=stream, max_retries=4) as (session, chain):
        records, summary = await run_texts(session, chain, texts)

    wrong = {}
    for text in texts:
        record = records[text]
        requests = fault_server.requests_for(text)
        if record.error is not None or record.output != answer(text) or record.metrics.retries != injected[text]:
            kind = FAULT_MIX[text][0] if text in FAULT_MIX else "no fault"
            wrong[text] = (
                f"fault {kind} x{injected[text]}, {requests} request(s): {describe(record)}; "
                f"expected {answer(text)!r} after {injected[text]} retries"
            )
    assert not wrong, "inputs that did not recover from their injected failures:\n" + "\n".join(
        f"  {text}: {problem}" for text, problem in wrong.items()
    )
    for text in texts:
        assert fault_server.requests_for(text) == injected[text] + 1, text
    rules = fault_server.faults()
    assert all(rule["remaining"] == 0 for rule in rules), f"faults not used up: {rules}"
    assert summary["ok"] == len(texts) and summary["failed"] == 0
    assert summary["retries"] == sum(injected.values()) == sum(r.metrics.retries for r in records.values())
    assert session.limits.concurrency.peak <= 4
    assert fault_server.stats()["peak_in_flight"] <= 4


# ----------------------------------------------------------------------------- 3. Retry-After


@pytest.mark.parametrize("stream", STREAM_MODES)
@pytest.mark.parametrize(
    "header", [pytest.param({"retry_after": 0.3}, id="retry-after"), pytest.param({"retry_after_ms": 300}, id="ms")]
)
@BACKENDS
async def test_retry_after_is_honoured(
    fault_server: FaultServer, stream: bool, header: dict[str, float], backend: str
) -> None:
    fault_server.configure(chunks=CHUNKS)
    fault_server.add_fault("429", match="slow down", times=1, **header)
    async with echo_session(fault_server, stream=stream, http_backend=backend) as (session, chain):
        records, summary = await run_texts(session, chain, ["slow down", "go ahead"])

    record = records["slow down"]
    assert record.error is None, describe(record)
    assert record.output == answer("slow down")
    assert record.metrics.retries == 1 and summary["retries"] == 1
    first, second = requests_log(fault_server, "slow down")
    assert first["status"] == 429 and second["status"] == 200
    gap = second["t"] - first["t"]
    # the jittered backoff alone is at most 0.05 s here: only the header explains the wait
    assert gap >= 0.3, f"retried {gap:.3f}s after a 429 that asked for 0.3s"
    assert gap < 1.5, f"waited {gap:.3f}s for a Retry-After of 0.3s"
    assert records["go ahead"].output == answer("go ahead")
    assert fault_server.requests_for("go ahead") == 1


# ----------------------------------------------------------------------------- 4. no 4xx retried

# fault kind → (HTTP status, a fragment of the fix the message must name)
CLIENT_ERRORS: dict[str, tuple[int, str]] = {
    "400": (400, "check the model parameters"),
    "401": (401, "OPENAI_API_KEY"),
    "403": (403, "no access to this model"),
    "404": (404, "--model"),
    "422": (422, "check the model parameters"),
    "context_length": (400, "context window"),
}


@pytest.mark.parametrize("stream", STREAM_MODES)
async def test_client_errors_are_never_retried_and_say_what_to_fix(fault_server: FaultServer, stream: bool) -> None:
    fault_server.configure(chunks=CHUNKS)
    for kind in CLIENT_ERRORS:
        fault_server.add_fault(kind, match=f"bad-{kind}")  # on every attempt
    texts = [f"bad-{kind}" for kind in CLIENT_ERRORS] + ["fine-1", "fine-2"]
    async with echo_session(fault_server, stream=stream, max_retries=3) as (session, chain):
        records, summary = await run_texts(session, chain, texts)

    for kind, (status, fix) in CLIENT_ERRORS.items():
        text = f"bad-{kind}"
        record = records[text]
        assert fault_server.requests_for(text) == 1, f"{kind} was retried: {fault_server.requests_for(text)} requests"
        assert record.output is None
        assert record.error is not None, f"{kind}: no error record"
        assert record.error["type"] == "ProviderError", describe(record)
        assert record.error["status"] == status
        assert record.error["attempts"] == 1
        assert fix in record.error["message"], (
            f"{kind}: the message does not say what to fix: {record.error['message']!r}"
        )
        assert record.metrics.retries == 0
        assert record.metrics.status == "failed"
    for text in ("fine-1", "fine-2"):
        assert records[text].output == answer(text)
    assert summary["ok"] == 2 and summary["failed"] == len(CLIENT_ERRORS)
    assert summary["retries"] == 0
    assert sorted(f["index"] for f in summary["failures"]) == list(range(len(CLIENT_ERRORS)))
    assert "context window" in records["bad-context_length"].error["message"]


# ----------------------------------------------------------------------------- 5. truncated streams


class Tokens:
    """What a ``TokenStreamHandler`` showed: tokens and discarded partial texts, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, UUID, str]] = []

    def handler(self) -> TokenStreamHandler:
        return TokenStreamHandler(
            lambda run_id, token: self.events.append(("token", run_id, token)),
            lambda run_id, text: self.events.append(("discard", run_id, text)),
        )

    def discards(self) -> list[str]:
        return [text for kind, _, text in self.events if kind == "discard"]

    def shown_after_last_discard(self) -> str:
        last = max((i for i, (kind, _, _) in enumerate(self.events) if kind == "discard"), default=-1)
        return "".join(text for kind, _, text in self.events[last + 1 :] if kind == "token")


@BACKENDS
async def test_a_truncated_stream_is_retried_and_its_partial_text_never_saved(
    fault_server: FaultServer, backend: str
) -> None:
    chunks = 6
    fault_server.configure(chunks=chunks)
    fault_server.add_fault("truncate", match="cut short", times=1, after_chunks=3)
    shown = Tokens()
    async with echo_session(fault_server, stream=True, http_backend=backend) as (session, chain):
        records, summary = await run_texts(session, chain, ["cut short"], callbacks=[shown.handler()])

    record = records["cut short"]
    assert record.error is None, describe(record)
    assert record.output == answer("cut short", chunks), "the output must be the full answer of the retry"
    first, second = requests_log(fault_server, "cut short")
    assert first["fault"] == "truncate" and first["completion_tokens"] == 3
    assert second["fault"] is None
    assert record.metrics.retries == 1 and summary["retries"] == 1
    # the three pieces shown before the cut were announced as discarded, then the retry was shown whole
    assert shown.discards() == ["echo: cut short t1 t2"]
    assert shown.shown_after_last_discard() == answer("cut short", chunks)
    # usage is the successful attempt's only
    assert record.metrics.output_tokens == chunks


async def test_a_stream_truncated_on_every_attempt_ends_as_an_error_record(fault_server: FaultServer) -> None:
    fault_server.configure(chunks=CHUNKS)
    fault_server.add_fault("truncate", match="always cut", after_chunks=2)  # on every attempt
    shown = Tokens()
    max_retries = 2
    async with echo_session(fault_server, stream=True, max_retries=max_retries) as (session, chain):
        records, summary = await run_texts(session, chain, ["always cut", "whole"], callbacks=[shown.handler()])

    record = records["always cut"]
    assert fault_server.requests_for("always cut") == max_retries + 1
    assert record.output is None, f"a partial answer was saved: {record.output!r}"
    assert record.error is not None
    assert record.error["type"] == "ProviderError", describe(record)
    assert record.error["attempts"] == max_retries + 1
    assert "broken stream" in record.error["message"]
    assert record.metrics.retries == max_retries
    assert shown.discards() == ["echo: always cut t1"] * max_retries
    assert records["whole"].output == answer("whole")
    assert summary["ok"] == 1 and summary["failed"] == 1


# ----------------------------------------------------------------------------- 6. stalled requests


@pytest.mark.parametrize(
    ("stream", "after_chunks"),
    [
        pytest.param(False, None, id="json"),
        pytest.param(True, None, id="sse-before-headers"),
        pytest.param(True, 2, id="sse-mid-stream"),
    ],
)
async def test_a_stalled_request_times_out_and_is_retried(
    fault_server: FaultServer, stream: bool, after_chunks: int | None
) -> None:
    fault_server.configure(chunks=CHUNKS)
    options = {} if after_chunks is None else {"after_chunks": after_chunks}
    fault_server.add_fault("stall", match="hang once", times=1, stall_s=5, **options)
    async with echo_session(fault_server, stream=stream, timeout=0.5, max_retries=1) as (session, chain):
        records, summary = await run_texts(session, chain, ["hang once", "quick"])

    record = records["hang once"]
    requests = fault_server.requests_for("hang once")
    assert record.error is None and requests == 2, (
        f"a request that stalled past --timeout 0.5s must be retried: {requests} request(s), {describe(record)}"
    )
    assert record.output == answer("hang once")
    assert record.metrics.retries == 1 and summary["retries"] == 1
    assert records["quick"].output == answer("quick")


@pytest.mark.parametrize("stream", STREAM_MODES)
async def test_a_request_stalled_on_every_attempt_fails_with_a_timeout(fault_server: FaultServer, stream: bool) -> None:
    fault_server.configure(chunks=CHUNKS)
    fault_server.add_fault("stall", match="hang forever", stall_s=5)  # on every attempt
    async with echo_session(fault_server, stream=stream, timeout=0.5, max_retries=1) as (session, chain):
        records, summary = await run_texts(session, chain, ["hang forever", "quick"])

    record = records["hang forever"]
    requests = fault_server.requests_for("hang forever")
    assert record.output is None
    assert record.error is not None
    assert requests == 2 and record.error["type"] == "ProviderError" and record.error["attempts"] == 2, (
        f"expected a ProviderError after max_retries+1 = 2 attempts; got {requests} request(s), {describe(record)}"
    )
    assert "timed out" in record.error["message"] and "--timeout" in record.error["message"], record.error
    assert record.metrics.retries == 1
    assert records["quick"].output == answer("quick")
    assert summary["ok"] == 1 and summary["failed"] == 1


# ----------------------------------------------------------------------------- 7. AIMD concurrency


class WindowProbe(AsyncCallbackHandler):
    """Samples the run's concurrency window at every retry and every finished model call."""

    run_inline = True

    def __init__(self, session: ModelSession) -> None:
        self.concurrency = session.limits.concurrency
        self.samples: list[float] = []

    async def on_retry(self, retry_state: Any, **kwargs: Any) -> None:
        self.samples.append(self.concurrency.current)

    async def on_llm_end(self, response: Any, **kwargs: Any) -> None:
        self.samples.append(self.concurrency.current)


@pytest.mark.parametrize("stream", STREAM_MODES)
async def test_concurrency_backs_off_on_429s_and_recovers(fault_server: FaultServer, stream: bool) -> None:
    fault_server.configure(chunks=CHUNKS, latency_ms=2)
    fault_server.add_fault("429", times=6, retry_after_ms=20)  # the first six requests, whatever their input
    texts = [f"burst-{i:03d}" for i in range(48)]
    async with echo_session(fault_server, stream=stream, max_concurrency=8, max_retries=8) as (session, chain):
        concurrency = session.limits.concurrency
        probe = WindowProbe(session)
        watched: list[float] = []

        async def watch() -> None:
            while True:
                watched.append(concurrency.current)
                await asyncio.sleep(0.005)

        watcher = asyncio.create_task(watch())
        try:
            records, summary = await run_texts(session, chain, texts, callbacks=[probe])
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

        lowest = min([*probe.samples, *watched])
        assert lowest < 8, f"the window never shrank below 8 during a burst of 429s (samples {probe.samples[:20]})"
        assert lowest >= 1
        assert concurrency.current == 8, f"the window did not grow back to 8 after {len(texts)} successes"
        assert concurrency.limit == 8 and concurrency.peak <= 8

    failed = {text: describe(record) for text, record in records.items() if record.error is not None}
    assert not failed, failed
    assert all(record.output == answer(text) for text, record in records.items())
    stats = fault_server.stats()
    assert stats["fault_counts"] == {"429": 6}
    assert stats["requests"] == len(texts) + 6
    assert summary["ok"] == len(texts) and summary["retries"] == 6
    assert stats["peak_in_flight"] <= 8


async def test_tools_are_bound_in_the_providers_format_and_still_managed(fault_server: FaultServer) -> None:
    from pydantic import BaseModel

    class Weather(BaseModel):
        """Weather in a city."""

        city: str

    settings = RunSettings(model="openai:test-model", base_url=fault_server.base_url, api_key="t")
    async with ModelSession(settings) as session:
        bound = session.model.bind_tools([Weather])
        assert bound.bound is session.model  # type: ignore[attr-defined]
        [tool] = bound.kwargs["tools"]  # type: ignore[attr-defined]
        assert tool["type"] == "function" and tool["function"]["name"] == "Weather"
        reply = await bound.ainvoke("what is the weather in Paris")
        assert reply.text.startswith("echo: what is the weather in Paris")
    assert fault_server.stats()["requests"] == 1
