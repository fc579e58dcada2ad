"""``LeanChatOpenAI`` against ``ChatOpenAI``: the same server answer gives the same messages and the same failures.

Both models are built by ``chains.providers.factories`` as a run builds them (``http_backend="aiohttp"``: the
project's ``ChatOpenAI`` over the SDK's aiohttp transport; ``"lean"``: ours), against servers on 127.0.0.1: a
``Canned`` server of our own that answers each request with the next scripted answer (JSON, SSE, an error
status, a cut connection), and the project's fault server.  Compared: the request bodies the server received,
the ``ChatResult`` / chunks each model makes of the same answer (content, tool calls, invalid tool calls, usage
with its token details, metadata and response headers), structured output, and how ``classify`` sorts each
failure.  Property tests: any bytes as a stream or a body raise only the expected errors, within bounds.
"""

from __future__ import annotations

import asyncio
import json
import threading
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from fault_server import FaultServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from pydantic import BaseModel

from chains.engine.retry import BrokenStreamError, NoAnswerError, classify
from chains.errors import ProviderError
from chains.providers.factories import build_inner
from chains.providers.lean import LeanChatOpenAI
from chains.providers.lean.convert import AnswerError, chat_result, chunk_generation
from chains.providers.lean.sse import SSEDecoder
from chains.providers.model_spec import parse_model_spec
from chains.settings import RunSettings

pytestmark = pytest.mark.allow_hosts(["127.0.0.1"])


# ----------------------------------------------------------------------------- a server of scripted answers


@dataclass
class Answer:
    """One scripted answer: a status, headers, the body in pieces; ``cut``: the connection is reset after them."""

    pieces: list[bytes]
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    sse: bool = False
    cut: bool = False


def json_answer(body: Any, status: int = 200, **headers: str) -> Answer:
    return Answer([json.dumps(body).encode()], status, {"x-ratelimit-remaining-requests": "99", **headers})


def sse_answer(chunks: list[Any], *, done: bool = True, cut: bool = False) -> Answer:
    frames = [f"data: {json.dumps(c)}\n\n".encode() for c in chunks] + ([b"data: [DONE]\n\n"] if done else [])
    return Answer(frames, 200, {"x-ratelimit-remaining-tokens": "5000"}, sse=True, cut=cut)


class Canned:
    """Answers every request with ``answer`` (the same script for both models); keeps the bodies it got."""

    def __init__(self) -> None:
        self.answer: Answer = json_answer({})
        self.bodies: list[dict[str, Any]] = []
        self.port = 0
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.bodies.append(json.loads(await request.read()))
        answer = self.answer
        content_type = "text/event-stream" if answer.sse else "application/json"
        response = web.StreamResponse(status=answer.status, headers={**answer.headers, "Content-Type": content_type})
        await response.prepare(request)
        for piece in answer.pieces:
            await response.write(piece)
        if answer.cut:
            await asyncio.sleep(0.05)
            assert request.transport is not None
            request.transport.abort()
            return response
        await response.write_eof()
        return response

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = runner.addresses[0][1]
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def __enter__(self) -> Canned:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@pytest.fixture(scope="module")
def canned() -> Iterator[Canned]:
    with Canned() as server:
        yield server


@dataclass
class Pair:
    """The project's ChatOpenAI and the lean model, built as a run builds them, for one endpoint."""

    sdk: BaseChatModel
    lean: LeanChatOpenAI
    closers: list[Any]


@pytest.fixture
async def pair(canned: Canned) -> AsyncIterator[Pair]:
    built = _pair(canned.url)
    yield built
    for http in built.closers:  # closed on the test's own loop
        await http.aclose()


def _pair(url: str, sdk_backend: str = "aiohttp", **options: Any) -> Pair:
    built = []
    for backend in (sdk_backend, "lean"):
        run = RunSettings(model="openai:m", base_url=url, api_key="sk-test", http_backend=backend, **options)  # type: ignore[arg-type]
        built.append(build_inner(parse_model_spec("openai:m"), run, url))
    (sdk, sdk_http), (lean, lean_http) = built
    assert isinstance(lean, LeanChatOpenAI) and type(sdk).__name__ == "CompatibleChatOpenAI"
    return Pair(sdk, lean, [sdk_http, lean_http])


# ----------------------------------------------------------------------------- what "the same" means


def _headers(info: dict[str, Any] | None) -> dict[str, Any]:
    """Response headers that are the same for two answers of one script (not the date, not the server's name)."""
    headers = dict((info or {}).get("headers") or {})
    for name in ("date", "server", "content-length", "transfer-encoding", "connection", "keep-alive"):
        headers.pop(name, None)
    return headers


def _no_nones(value: Any) -> Any:
    """``token_usage`` as the server sent it: the SDK's dump adds every field it knows as None."""
    if isinstance(value, dict):
        return {k: _no_nones(v) for k, v in value.items() if v is not None}
    return value


def _result_view(result: ChatResult) -> dict[str, Any]:
    generations = []
    for generation in result.generations:
        info = dict(generation.generation_info or {})
        if info.get("logprobs") is not None:  # the dump's None fields again
            info["logprobs"] = _no_nones(info["logprobs"])
        generations.append({"message": generation.message.model_dump(), "info": {**info, "headers": _headers(info)}})
    llm_output = dict(result.llm_output or {})
    llm_output["token_usage"] = _no_nones(llm_output.get("token_usage"))
    return {"generations": generations, "llm_output": llm_output}


def _chunk_view(chunk: ChatGenerationChunk) -> dict[str, Any]:
    info = chunk.generation_info
    view = {"message": chunk.message.model_dump(), "info": None if info is None else {**info}}
    if info and "headers" in info:
        view["info"]["headers"] = _headers(info)
    return view


async def _both_generate(pair: Pair, canned: Canned, answer: Answer, messages: Any, **kwargs: Any) -> list[Any]:
    canned.answer = answer
    canned.bodies.clear()
    views = []
    for model in (pair.sdk, pair.lean):
        views.append(_result_view(await model._agenerate(messages, **kwargs)))
    assert canned.bodies[0] == canned.bodies[1], "both models send the same request body"
    return views


async def _both_stream(pair: Pair, canned: Canned, answer: Answer, messages: Any, **kwargs: Any) -> list[Any]:
    canned.answer = answer
    canned.bodies.clear()
    views = []
    for model in (pair.sdk, pair.lean):
        views.append([_chunk_view(c) async for c in model._astream(messages, **kwargs)])
    assert canned.bodies[0] == canned.bodies[1], "both models send the same request body"
    return views


def completion(message: dict[str, Any], *, usage: dict[str, Any] | None = None, **top: Any) -> dict[str, Any]:
    choice = {"index": 0, "message": {"role": "assistant", **message}, "finish_reason": top.pop("finish", "stop")}
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "m-served",
        "choices": [choice],
        **({"usage": usage} if usage else {}),
        **top,
    }


USAGE = {
    "prompt_tokens": 11,
    "completion_tokens": 7,
    "total_tokens": 18,
    "prompt_tokens_details": {"cached_tokens": 4, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 3},
}
ASK = [SystemMessage("be brief"), HumanMessage("hello there")]


# ----------------------------------------------------------------------------- the same answers


async def test_a_whole_answer_is_the_same_message_usage_and_metadata(pair: Pair, canned: Canned) -> None:
    body = completion(
        {"content": "hi!", "refusal": None}, usage=USAGE, system_fingerprint="fp_1", service_tier="default"
    )
    sdk, lean = await _both_generate(pair, canned, json_answer(body), ASK, max_tokens=5, temperature=0.2, stop=["x"])
    assert sdk == lean
    message = lean["generations"][0]["message"]
    assert message["usage_metadata"]["input_token_details"] == {"audio": 0, "cache_read": 4}
    assert message["usage_metadata"]["output_token_details"] == {"reasoning": 3}
    assert lean["generations"][0]["info"]["headers"]["x-ratelimit-remaining-requests"] == "99"
    assert lean["llm_output"]["system_fingerprint"] == "fp_1"
    assert canned.bodies[1]["max_tokens"] == 5 and "max_completion_tokens" not in canned.bodies[1]


async def test_flex_usage_and_odd_fields_are_read_alike(pair: Pair, canned: Canned) -> None:
    body = completion({"content": "", "name": "bot"}, usage=USAGE, service_tier="flex", finish="length")
    body["choices"][0]["logprobs"] = {"content": []}
    body["timings"] = {"predicted_ms": 3.5}  # llama.cpp's extra field
    sdk, lean = await _both_generate(pair, canned, json_answer(body), "hello")
    assert sdk == lean
    details = lean["generations"][0]["message"]["usage_metadata"]["input_token_details"]
    assert details == {"audio": 0, "flex_cache_read": 4, "flex": 7}


async def test_tool_calls_parallel_and_invalid_are_the_same(pair: Pair, canned: Canned) -> None:
    calls = [
        {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}},
        {"id": "call_2", "type": "function", "function": {"name": "add", "arguments": '{"a": 3, "b": 4}'}},
        {"id": "call_3", "type": "function", "function": {"name": "add", "arguments": '{"a": 3,'}},
    ]
    body = completion({"content": None, "tool_calls": calls}, usage=USAGE, finish="tool_calls")

    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    canned.answer = json_answer(body)
    canned.bodies.clear()
    views = []
    for model in (pair.sdk, pair.lean):
        bound = model.bind_tools([add], tool_choice="add", parallel_tool_calls=True)
        views.append(_result_view(await model._agenerate([HumanMessage("add")], **bound.kwargs)))  # type: ignore[attr-defined]
    assert canned.bodies[0] == canned.bodies[1]
    assert canned.bodies[1]["tool_choice"] == {"type": "function", "function": {"name": "add"}}
    assert views[0] == views[1]
    message = views[1]["generations"][0]["message"]
    assert [c["args"] for c in message["tool_calls"]] == [{"a": 1, "b": 2}, {"a": 3, "b": 4}]
    assert [c["id"] for c in message["invalid_tool_calls"]] == ["call_3"]


async def test_a_conversation_with_tool_results_is_sent_alike(pair: Pair, canned: Canned) -> None:
    call = {"name": "add", "args": {"a": 1, "b": 2}, "id": "call_1", "type": "tool_call"}
    history = [
        SystemMessage("you add"),
        HumanMessage([{"type": "text", "text": "what is 1 + 2?"}]),
        AIMessage("", tool_calls=[call]),
        ToolMessage("3", tool_call_id="call_1"),
        AIMessage([{"type": "text", "text": "It is 3."}]),
        HumanMessage("thanks", name="ann"),
    ]
    sdk, lean = await _both_generate(pair, canned, json_answer(completion({"content": "ok"})), history)
    assert sdk == lean
    assert [m["role"] for m in canned.bodies[1]["messages"]] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
        "user",
    ]


async def test_a_streamed_answer_is_the_same_chunks(pair: Pair, canned: Canned) -> None:
    head = {"id": "chatcmpl-2", "object": "chat.completion.chunk", "created": 1, "model": "m-served"}
    chunks = [
        {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
        {**head, "choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}]},
        {**head, "choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": None}]},
        {
            **head,
            "system_fingerprint": "fp_2",
            "service_tier": "flex",
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        },
        {**head, "choices": [], "usage": USAGE, "service_tier": "flex"},
    ]
    sdk, lean = await _both_stream(pair, canned, sse_answer(chunks), ASK)
    assert sdk == lean
    assert canned.bodies[1]["stream_options"] == {"include_usage": True}
    assert lean[0]["info"]["headers"]["x-ratelimit-remaining-tokens"] == "5000"
    assert lean[3]["info"] == {
        "finish_reason": "stop",
        "model_name": "m-served",
        "system_fingerprint": "fp_2",
        "service_tier": "flex",
    }


async def test_streamed_tool_call_chunks_are_the_same(pair: Pair, canned: Canned) -> None:
    head = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}

    def delta(d: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**head, "choices": [{"index": 0, "delta": d, "finish_reason": finish}]}

    chunks = [
        delta(
            {
                "role": "assistant",
                "tool_calls": [
                    {"index": 0, "id": "call_1", "type": "function", "function": {"name": "add", "arguments": ""}}
                ],
            }
        ),
        delta({"tool_calls": [{"index": 0, "function": {"arguments": '{"a": 1,'}}]}),
        delta({"tool_calls": [{"index": 0, "function": {"arguments": ' "b": 2}'}}]}),
        delta({"tool_calls": [{"index": 1, "id": "call_2", "function": {"name": "add", "arguments": "{}"}}]}),
        delta({}, "tool_calls"),
    ]
    sdk, lean = await _both_stream(pair, canned, sse_answer(chunks), "add")
    assert sdk == lean


async def test_through_the_managed_model_the_final_messages_are_equal(canned: Canned) -> None:
    from chains import ModelSession

    body = completion({"content": "hello back"}, usage=USAGE, system_fingerprint="fp")
    canned.answer = json_answer(body)
    answers = []
    for backend in ("aiohttp", "lean"):
        settings = RunSettings(model="openai:m", base_url=canned.url, http_backend=backend, max_retries=0)  # type: ignore[arg-type]
        async with ModelSession(settings) as session:
            message = await session.model.ainvoke("hello")
        dumped = message.model_dump()
        dumped.pop("id")
        dumped["response_metadata"]["headers"] = _headers(dumped["response_metadata"])
        dumped["response_metadata"]["token_usage"] = _no_nones(dumped["response_metadata"]["token_usage"])
        answers.append(dumped)
    assert answers[0] == answers[1]
    assert answers[1]["response_metadata"]["finish_reason"] == "stop"


# ----------------------------------------------------------------------------- structured output


class Person(BaseModel):
    name: str
    age: int | None = None
    tags: list[str] = []


def _strip_ids(value: Any) -> Any:
    """Run ids differ between two calls; nothing else may."""
    if isinstance(value, dict):
        return {k: _strip_ids(v) for k, v in value.items() if k != "id"}
    if isinstance(value, list):
        return [_strip_ids(v) for v in value]
    if isinstance(value, BaseModel):
        return _strip_ids(value.model_dump())
    if isinstance(value, BaseException):
        return repr(value)
    return value


async def _both_structured(
    pair: Pair, canned: Canned, answer: Answer, *, stream: bool = False, **options: Any
) -> list[Any]:
    canned.answer = answer
    canned.bodies.clear()
    outputs = []
    for model in (pair.sdk, pair.lean):
        runnable = model.with_structured_output(Person, **options)
        if stream:
            with warnings.catch_warnings():  # ChatOpenAI's own, on this path: no headers, pydantic's on `parsed`
                warnings.simplefilter("ignore")
                outputs.append([_strip_ids(part) async for part in runnable.astream("who?")][-1])
        else:
            output = await runnable.ainvoke("who?")
            if isinstance(output, dict) and "raw" in output:
                raw = output["raw"].model_dump()
                raw["response_metadata"]["headers"] = _headers(raw["response_metadata"])
                raw["response_metadata"]["token_usage"] = _no_nones(raw["response_metadata"].get("token_usage"))
                output = {**output, "raw": raw}
            outputs.append(_strip_ids(output))
    assert canned.bodies[0] == canned.bodies[1], "both models send the same request body"
    return outputs


@pytest.mark.parametrize("include_raw", [False, True])
async def test_structured_output_by_json_schema_is_the_same(pair: Pair, canned: Canned, include_raw: bool) -> None:
    body = completion({"content": '{"name": "Ann", "age": 7, "tags": ["a"]}', "refusal": None}, usage=USAGE)
    sdk, lean = await _both_structured(pair, canned, json_answer(body), include_raw=include_raw)
    assert sdk == lean
    assert (lean["parsed"] if include_raw else lean) == {"name": "Ann", "age": 7, "tags": ["a"]}
    sent = canned.bodies[1]["response_format"]
    assert sent["json_schema"]["strict"] is True and sent["json_schema"]["schema"]["required"] == [
        "name",
        "age",
        "tags",
    ]


async def test_structured_output_by_function_calling_and_json_mode_is_the_same(pair: Pair, canned: Canned) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "Person", "arguments": '{"name": "Bo"}'}}
    body = completion({"content": None, "tool_calls": [call]}, finish="tool_calls")
    sdk, lean = await _both_structured(pair, canned, json_answer(body), method="function_calling")
    assert sdk == lean == {"name": "Bo", "age": None, "tags": []}
    assert canned.bodies[1]["parallel_tool_calls"] is False
    body = completion({"content": '{"name": "Cy"}'})
    sdk, lean = await _both_structured(pair, canned, json_answer(body), method="json_mode")
    assert sdk == lean == {"name": "Cy", "age": None, "tags": []}
    assert canned.bodies[1]["response_format"] == {"type": "json_object"}


async def test_a_refusal_is_refused_alike(pair: Pair, canned: Canned) -> None:
    body = completion({"content": None, "refusal": "I can't help with that."})
    canned.answer = json_answer(body)
    refusals = []
    for model in (pair.sdk, pair.lean):
        with pytest.raises(Exception) as caught:
            await model.with_structured_output(Person).ainvoke("who?")
        refusals.append((caught.value.__class__.__mro__[1:3], str(caught.value)))
    assert refusals[0][1] == refusals[1][1] == "I can't help with that."


async def test_streamed_structured_output_ends_in_the_same_value(pair: Pair, canned: Canned) -> None:
    head = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    pieces = ['{"name": ', '"Di", "age": 3', ', "tags": []}']
    chunks = [{**head, "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]} for p in pieces]
    chunks[0]["choices"][0]["delta"]["role"] = "assistant"  # without it ChatOpenAI's own path fails here
    chunks.append({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    chunks.append({**head, "choices": [], "usage": USAGE})
    sdk, lean = await _both_structured(pair, canned, sse_answer(chunks), stream=True)
    assert sdk == lean == {"name": "Di", "age": 3, "tags": []}


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
    pair = _pair(fault_server.base_url, "httpx" if fault == "reset" else "aiohttp")
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
    pair = _pair(f"http://127.0.0.1:{port}/v1")
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
