"""``LeanChatOpenAI`` against ``ChatOpenAI``: the same server answer gives the same messages.

Both models are built by ``chains.providers.factories`` as a run builds them (``http_backend="aiohttp"``: the
project's ``ChatOpenAI`` over the SDK's aiohttp transport; ``"lean"``: ours), against ``Canned``
(``tests/lean_canned.py``), a server on 127.0.0.1 that answers each request with the next scripted answer.
Compared: the request bodies the server received, the ``ChatResult`` / chunks each model makes of the same answer
(content, tool calls, invalid tool calls, usage with its token details, metadata and response headers) and
structured output.  Failures and property tests: ``tests/test_lean_failures.py``.
"""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from fault_server import FaultServer
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from lean_canned import (
    ASK,
    USAGE,
    Answer,
    Canned,
    Pair,
    both_generate,
    both_stream,
    completion,
    json_answer,
    make_pair,
    no_nones,
    result_view,
    same_headers,
    sse_answer,
)
from pydantic import BaseModel

from chains.engine.callbacks import MetricsHandler
from chains.engine.compiled import compile_chain
from chains.engine.execution import Record, run_batch
from chains.engine.interrupt import RunStop
from chains.engine.metrics import ItemMetrics
from chains.providers.models import ModelSession
from chains.settings import RunSettings
from chains.spec.registry import get_chain

pytestmark = pytest.mark.allow_hosts(["127.0.0.1"])


@pytest.fixture(scope="module")
def canned() -> Iterator[Canned]:
    with Canned() as server:
        yield server


@pytest.fixture
async def pair(canned: Canned) -> AsyncIterator[Pair]:
    built = make_pair(canned.url)
    yield built
    for http in built.closers:  # closed on the test's own loop
        await http.aclose()


# ----------------------------------------------------------------------------- the same answers


async def test_a_whole_answer_is_the_same_message_usage_and_metadata(pair: Pair, canned: Canned) -> None:
    body = completion(
        {"content": "hi!", "refusal": None}, usage=USAGE, system_fingerprint="fp_1", service_tier="default"
    )
    sdk, lean = await both_generate(pair, canned, json_answer(body), ASK, max_tokens=5, temperature=0.2, stop=["x"])
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
    sdk, lean = await both_generate(pair, canned, json_answer(body), "hello")
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
        views.append(result_view(await model._agenerate([HumanMessage("add")], **bound.kwargs)))  # type: ignore[attr-defined]
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
    sdk, lean = await both_generate(pair, canned, json_answer(completion({"content": "ok"})), history)
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
    sdk, lean = await both_stream(pair, canned, sse_answer(chunks), ASK)
    assert sdk == lean
    assert canned.bodies[1]["stream_options"] == {"include_usage": True}
    assert lean[0]["info"]["headers"]["x-ratelimit-remaining-tokens"] == "5000"
    assert lean[3]["info"] == {
        "finish_reason": "stop",
        "model_name": "m-served",
        "system_fingerprint": "fp_2",
        "service_tier": "flex",
    }


async def test_a_streamed_answer_leaves_its_connection_for_the_next_request(pair: Pair, canned: Canned) -> None:
    """After ``[DONE]`` the body's end is read too: aiohttp closes a connection left unread, and every streamed
    request would open a new one (a new TLS handshake at a provider)."""
    head = {"id": "chatcmpl-3", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    canned.answer = sse_answer(
        [
            {**head, "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}]},
            {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        ]
    )
    canned.answer.tail_s = 0.05  # the body's end comes a moment after [DONE]
    canned.peers.clear()
    for _ in range(3):
        assert "".join([chunk.text async for chunk in pair.lean.astream(ASK)]) == "Hi"
    assert len(canned.peers) == 3 and len(set(canned.peers)) == 1, canned.peers


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
    sdk, lean = await both_stream(pair, canned, sse_answer(chunks), "add")
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
        dumped["response_metadata"]["headers"] = same_headers(dumped["response_metadata"])
        dumped["response_metadata"]["token_usage"] = no_nones(dumped["response_metadata"]["token_usage"])
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
                raw["response_metadata"]["headers"] = same_headers(raw["response_metadata"])
                raw["response_metadata"]["token_usage"] = no_nones(raw["response_metadata"].get("token_usage"))
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


# ----------------------------------------------------------------------------- the compiled path


class Watcher(BaseCallbackHandler):
    """A user's handler (it declares nothing it ``watches``): its inputs go through the chain's own runs."""

    def __init__(self) -> None:
        self.chains = 0

    def on_chain_start(self, *args: Any, **kwargs: Any) -> None:
        self.chains += 1


def _record_view(record: Record) -> dict[str, Any]:
    m = record.metrics
    tokens = (m.input_tokens, m.output_tokens, m.tokens_estimated)
    return {"output": record.output, "error": record.error, "status": record.outcome, "tokens": tokens,
            "retries": m.retries, "ttft": m.ttft_s is not None}  # fmt: skip


@pytest.mark.parametrize("backend", ["lean", "aiohttp"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_the_compiled_path_gives_the_chains_own_records(
    fault_server: FaultServer, backend: str, stream: bool
) -> None:
    """A prompt file's chain (bound parameters, a retried 429, a 400, a missing variable), run by ``run_batch`` on
    its compiled path and through LangChain's runs (a user's handler watches): the same records, tokens, retries."""
    inputs = [
        {"text": "hello", "language": "French"},
        {"text": "again", "language": "German"},
        {"text": "boom", "language": "Dutch"},
        {"language": "Dutch"},
    ]
    views, watchers = [], []
    for watcher in (None, Watcher()):
        fault_server.add_fault("429", match="again", times=1, retry_after=0.05)
        fault_server.add_fault("400", match="boom", times=1)
        settings = RunSettings(model="openai:m", base_url=fault_server.base_url, http_backend=backend, stream=stream)  # type: ignore[arg-type]
        async with ModelSession(settings) as session:
            chain = get_chain("translate", session.model)
            compiled = compile_chain(chain)
            assert compiled is not None and compiled.usable([MetricsHandler(ItemMetrics()), RunStop().tracker])
            batch = run_batch(chain, inputs, settings=session.settings, limits=session.limits,
                              callbacks=[watcher] if watcher else [])  # fmt: skip
            views.append(sorted([(r.index, _record_view(r)) async for r in batch]))
        watchers.append(watcher.chains if watcher else 0)
    assert views[0] == views[1]
    (_, hello), (_, again), (_, boom), (_, missing) = views[0]
    assert hello["output"].startswith("echo: Translate the following text into French.") and "again" in again["output"]
    assert hello["output"].endswith("hello t1 t2 t3 t4 t5 t6 t7") and hello["tokens"][1] == 8
    assert (again["status"], again["retries"], boom["status"], boom["error"]["status"]) == ("ok", 1, "failed", 400)
    assert missing["error"]["type"] == "KeyError" and "text" in missing["error"]["message"]
    assert hello["ttft"] is stream
    assert watchers[1] == 3 + 3 + 2 + 2, "watched: the sequence's, the prompt's and (answered) the parser's runs"
