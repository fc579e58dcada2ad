"""``LeanChatOpenAI``'s failures as ``ChatOpenAI``'s, and outside data giving only the expected errors.

Each failure of the fault server (``tests/fault_server.py``: error statuses, error bodies, resets, cut or
malformed streams) and of ``Canned`` (``tests/lean_canned.py``) must be sorted by ``classify`` the same for both
models, and retried the same by the managed model.  Property tests: any JSON as an answer or a chunk, any bytes as
a stream or a body raise only the expected errors, within bounds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import cli, records
from fault_server import FaultServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import HumanMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from lean_canned import Answer, Canned, make_pair

from chains.engine.callbacks import MetricsHandler, TokenStreamHandler
from chains.engine.compiled import compile_chain
from chains.engine.interrupt import RunStop
from chains.engine.metrics import ItemMetrics
from chains.engine.retry import BrokenStreamError, NoAnswerError, classify
from chains.errors import ProviderError
from chains.providers.lean import LeanChatOpenAI
from chains.providers.lean.convert import AnswerError, chat_result, chunk_generation
from chains.providers.lean.sse import SSEDecoder
from chains.providers.models import ModelSession
from chains.settings import RunSettings
from chains.spec.registry import get_chain

pytestmark = pytest.mark.allow_hosts(["127.0.0.1"])


@pytest.fixture(scope="module")
def canned() -> Iterator[Canned]:
    with Canned() as server:
        yield server


# ----------------------------------------------------------------------------- the same failures


def _failure_view(exc: BaseException) -> tuple[Any, ...]:
    """How the retry layer sees a failure; a transport error's reason names its class, so only its kind counts."""
    failure = classify(exc)
    return (
        failure.retryable,
        failure.reason.split(" (")[0],
        failure.status,
        failure.retry_after,
        failure.code,
        failure.provider,
    )


async def _failure_of(model: BaseChatModel, stream: bool, text: str) -> BaseException:
    try:
        if stream:
            chunks = [c async for c in model._astream([HumanMessage(text)])]
            if not any(c.generation_info and c.generation_info.get("finish_reason") for c in chunks):
                raise BrokenStreamError("the stream ended without a finish reason")  # what the managed model says
        else:
            await model._agenerate([HumanMessage(text)])
    except Exception as exc:
        return exc
    raise AssertionError(f"{type(model).__name__} did not fail on {text!r}")


FAULTS = [
    ("429", {"retry_after": 0.5}, False),
    ("429", {"retry_after_ms": 250.0}, True),
    ("500", {}, False),
    ("503", {}, True),
    ("400", {}, False),
    ("401", {}, False),
    ("404", {}, True),
    ("context_length", {}, False),
    ("validation_500", {}, False),
    ("error_body", {}, False),
    ("error_body", {}, True),
    ("reset", {}, False),
    ("reset_mid_stream", {"after_chunks": 2}, True),
    ("malformed", {"after_chunks": 2}, True),
    ("truncate", {"after_chunks": 2}, True),
]


@pytest.mark.parametrize(
    ("fault", "options", "stream"), FAULTS, ids=[f"{f}-{'stream' if s else 'json'}" for f, _, s in FAULTS]
)
async def test_each_failure_classifies_as_chatopenais(
    fault_server: FaultServer, fault: str, options: dict[str, Any], stream: bool
) -> None:
    # A reset before the answer: the SDK's aiohttp transport calls it a connect *timeout* (httpx2.ConnectTimeout
    # over aiohttp's ClientOSError); its httpx transport, as the lean model, a connection error.
    pair = make_pair(fault_server.base_url, "httpx" if fault == "reset" else "aiohttp")
    try:
        views = []
        for model in (pair.sdk, pair.lean):
            fault_server.add_fault(fault, match="boom", times=1, **options)
            views.append(_failure_view(await _failure_of(model, stream, "boom")))
        assert views[0] == views[1]
        assert fault_server.requests_for("boom") == 2
    finally:
        for http in pair.closers:
            await http.aclose()


async def test_an_answer_without_choices_is_no_answer_for_both(fault_server: FaultServer) -> None:
    from chains import ModelSession

    seen = []
    for backend in ("aiohttp", "lean"):
        fault_server.add_fault("empty_choices", match="boom", times=1)
        settings = RunSettings(model="openai:m", base_url=fault_server.base_url, http_backend=backend, max_retries=0)  # type: ignore[arg-type]
        async with ModelSession(settings) as session:
            with pytest.raises(ProviderError) as caught:
                await session.model.ainvoke("boom")
        seen.append((caught.value.status, caught.value.retryable, str(caught.value)))
    assert seen[0] == seen[1]


async def test_a_refused_connection_is_a_refusal_for_both() -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    pair = make_pair(f"http://127.0.0.1:{port}/v1")
    try:
        views = [_failure_view(await _failure_of(m, s, "x")) for m in (pair.sdk, pair.lean) for s in (False, True)]
    finally:
        for http in pair.closers:
            await http.aclose()
    assert views[0] == views[1] == views[2] == views[3]
    assert views[0][:2] == (True, "connection refused")


async def test_the_managed_model_retries_the_lean_model_as_chatopenai(fault_server: FaultServer) -> None:
    """429 with Retry-After, then an answer: one retry after the server's wait, the same answer, for both."""
    from chains import ModelSession

    texts = []
    for backend in ("aiohttp", "lean"):
        fault_server.add_fault("429", match="again", times=1, retry_after=0.05)
        settings = RunSettings(model="openai:m", base_url=fault_server.base_url, http_backend=backend, max_retries=2)  # type: ignore[arg-type]
        async with ModelSession(settings) as session:
            texts.append((await session.model.ainvoke("again")).text)
    assert texts[0] == texts[1] == "echo: again t1 t2 t3 t4 t5 t6 t7"
    assert fault_server.requests_for("again") == 4


# ----------------------------------------------------------------------------- outside data: only the expected errors

_KEYS = (
    "choices", "delta", "message", "content", "role", "tool_calls", "function", "arguments", "name", "index", "id",
    "type", "usage", "prompt_tokens", "completion_tokens", "total_tokens", "prompt_tokens_details", "cached_tokens",
    "completion_tokens_details", "reasoning_tokens", "finish_reason", "logprobs", "refusal", "error", "model",
    "service_tier", "system_fingerprint", "function_call", "audio",
)  # fmt: skip
_scalars = st.none() | st.booleans() | st.integers(-3, 10**12) | st.floats(allow_nan=False) | st.text(max_size=6)
_json = st.recursive(
    _scalars | st.sampled_from(["assistant", "stop", "flex", "function", '{"a": 1}', "{"]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=3), inner, max_size=5)
    ),
    max_leaves=30,
)
_EXPECTED = (BrokenStreamError, NoAnswerError, AnswerError)


@settings(max_examples=400, deadline=None)
@given(value=_json)
def test_any_json_as_an_answer_or_a_chunk_is_a_result_or_an_expected_error(value: Any) -> None:
    try:
        result = chat_result(value, {}, "m")
        assert isinstance(result, ChatResult)
    except _EXPECTED:
        pass
    try:
        chunk = chunk_generation(value, {})
        assert chunk is None or isinstance(chunk, ChatGenerationChunk)
    except _EXPECTED:
        pass


_frames = st.lists(
    st.sampled_from([b"data: ", b"data:", b"\n", b"\r\n", b"\n\n", b": ping\n", b"event: x\n", b"[DONE]", b"{", b"}"])
    | st.binary(max_size=40),
    max_size=30,
)


@settings(max_examples=400, deadline=None)
@given(pieces=_frames, cuts=st.lists(st.integers(0, 400), max_size=8))
def test_any_bytes_as_a_stream_give_bounded_events_however_they_are_split(pieces: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(pieces)
    whole, split = SSEDecoder(max_line=64), SSEDecoder(max_line=64)
    try:
        expected = whole.feed(stream) + whole.close()
    except BrokenStreamError:
        expected = None
    got: list[bytes] = []
    try:
        start = 0
        for cut in [*sorted(c for c in cuts if c < len(stream)), len(stream)]:
            got += split.feed(stream[start:cut])
            start = cut
            assert split._pending_len <= 64, "a partial line is kept only up to the limit"
        got += split.close()
    except BrokenStreamError:
        got = None  # type: ignore[assignment]
    if expected is not None and got is not None:
        assert got == expected
        assert all(len(event) <= 64 for event in got)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=300) | _json.map(lambda v: json.dumps(v).encode()), stream=st.booleans())
async def test_any_answer_over_http_is_an_answer_or_an_expected_error(
    canned: Canned, body: bytes, stream: bool
) -> None:
    canned.answer = Answer([body], sse=stream)
    model = LeanChatOpenAI(model="m", base_url=canned.url, api_key="k", stream_usage=True)
    try:
        if stream:
            [c async for c in model._astream([HumanMessage("x")])]
        else:
            await model._agenerate([HumanMessage("x")])
    except _EXPECTED:
        pass
    finally:
        await model.transport.aclose()


async def test_an_answer_past_the_size_limit_is_refused_in_one_line(canned: Canned) -> None:
    model = LeanChatOpenAI(model="m", base_url=canned.url, api_key="k")
    model.transport.max_body = 1000
    canned.answer = Answer([b" " * 600, b" " * 600])
    try:
        with pytest.raises(ProviderError, match="larger than"):
            await model._agenerate([HumanMessage("x")])
    finally:
        await model.transport.aclose()
    decoder = SSEDecoder(max_line=50)
    with pytest.raises(BrokenStreamError, match="longer than 50 bytes"):
        for _ in range(10):  # a line that never ends is refused once past the limit, not kept
            decoder.feed(b"data: " + b"x" * 10)


# ----------------------------------------------------------------------------- who keeps the compiled path away


class _UserHandler(BaseCallbackHandler):
    """Declares nothing it ``watches``."""


def test_anyone_watching_keeps_an_input_on_the_chains_own_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only our own watchers are served by the compiled path; a user's handler, run collectors, debug, tracing and
    a cache each send the input through LangChain's runs, and only ``prompt | model | parser`` compiles at all.
    (The look for global handlers stands for ``GLOBAL_CHECK_S``: 0 here, so every switch is seen at once.)"""
    monkeypatch.setattr("chains.engine.compiled.GLOBAL_CHECK_S", 0.0)
    from langchain_core.caches import InMemoryCache
    from langchain_core.globals import set_debug, set_llm_cache
    from langchain_core.tracers.context import collect_runs, tracing_v2_enabled

    settings = RunSettings(model="openai:m", base_url="http://127.0.0.1:9/v1", api_key="k", http_backend="lean")  # type: ignore[arg-type]
    session = ModelSession(settings)
    chain = get_chain("translate", session.model)
    compiled = compile_chain(chain)
    assert compiled is not None and compiled.kwargs == {"temperature": 0.2, "max_tokens": 800}
    ours = [MetricsHandler(ItemMetrics()), TokenStreamHandler(lambda run_id, token: None), RunStop().tracker]
    assert compiled.usable(ours)
    assert not compiled.usable([*ours, _UserHandler()])
    with collect_runs():
        assert not compiled.usable(ours)
    monkeypatch.setenv("LANGSMITH_API_KEY", "lsv2-test")  # a tracer is made, never sends: nothing is run here
    monkeypatch.setenv("LANGSMITH_ENDPOINT", "http://127.0.0.1:9")  # and were it to send, never off this machine
    with tracing_v2_enabled(project_name="t"):
        assert not compiled.usable(ours)
    for switch_on, switch_off in ((lambda: set_debug(True), lambda: set_debug(False)),
                                  (lambda: set_llm_cache(InMemoryCache()), lambda: set_llm_cache(None))):  # fmt: skip
        switch_on()
        try:
            assert not compiled.usable(ours)
        finally:
            switch_off()
    assert compiled.usable(ours)

    def compiles(runnable: Any) -> bool:
        return compile_chain(runnable) is not None

    assert not compiles(get_chain("story", session.model)) and not compiles(get_chain("keywords", session.model))
    assert not compiles(chain | StrOutputParser()) and not compiles(chain.with_config(tags=["x"]))
    assert not compiles(chain.bound.with_config(callbacks=[_UserHandler()]))  # type: ignore[attr-defined]
    assert compiles(chain.bound) and compiles(chain.with_config(run_name="again"))  # type: ignore[attr-defined]


def test_a_global_switch_mid_run_is_seen_within_the_global_check_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Global switches (debug, tracing by environment) are looked up once per ``GLOBAL_CHECK_S``, not per input
    (context-variable tracers cannot change within a run: its workers' contexts are fixed when they start): a run
    that switches debug on part way sends the inputs after the next look through LangChain's own runs."""
    from langchain_core.globals import set_debug

    monkeypatch.setattr("chains.engine.compiled.GLOBAL_CHECK_S", 0.2)
    settings = RunSettings(model="openai:m", base_url="http://127.0.0.1:9/v1", api_key="k", http_backend="lean")  # type: ignore[arg-type]
    compiled = compile_chain(get_chain("translate", ModelSession(settings).model))
    assert compiled is not None
    ours = [MetricsHandler(ItemMetrics()), RunStop().tracker]
    seen = [compiled.usable(ours)]
    set_debug(True)
    try:
        seen.append(compiled.usable(ours))  # within the look's time: still the last look's answer
        time.sleep(0.25)
        seen.append(compiled.usable(ours))
    finally:
        set_debug(False)
    time.sleep(0.25)
    seen.append(compiled.usable(ours))
    assert seen == [True, True, False, True]


# ----------------------------------------------------------------------------- the CLI's end

_ECHO = "name: echo\ndescription: Echo.\ninput_variables: [text]\nmessages:\n  - role: human\n    content: '{text}'\n"


def test_the_cli_ends_at_once_with_every_record_line_and_exit_code(fault_server: FaultServer, tmp_path: Path) -> None:
    """``runner.finish`` skips the interpreter's finalization: nothing written may be lost by it, in a file or
    on a pipe, and the exit code is the command's (1: an input failed)."""
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "echo.yaml").write_text(_ECHO)
    (tmp_path / "in.txt").write_text("".join(f"text {i}\n" for i in range(300)) + "boom\n")
    fault_server.add_fault("400", match="boom", times=10)
    base = ["run", "echo", "--input", "in.txt", "--prompts-dir", "prompts", "--base-url", fault_server.base_url]
    base += ["--model", "openai:m", "--http-backend", "lean", "--no-stream"]
    to_file = cli(*base, "--output", "o.jsonl", "--metrics-out", "m.json", "-q", cwd=tmp_path)
    assert to_file.returncode == 1, to_file.stderr
    written = records(tmp_path / "o.jsonl")
    assert len(written) == 301 and sum(r["error"] is None for r in written) == 300
    assert json.loads((tmp_path / "m.json").read_text())["ok"] == 300
    to_pipe = cli(*base, cwd=tmp_path)
    assert to_pipe.returncode == 1
    assert all(f"echo: text {i} " in to_pipe.stdout for i in range(300)), to_pipe.stdout[-300:]
    assert "Traceback" not in to_pipe.stderr and "Exception ignored" not in to_pipe.stderr
