"""Tests for tests/fault_server.py (real HTTP on 127.0.0.1 only)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fault_server import FAULT_KINDS, FaultServer, fault_server_fixture
from langchain_core.messages import AIMessageChunk, HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI

MODEL = "fake-model"


@pytest.fixture
def fault_server() -> Iterator[FaultServer]:
    yield from fault_server_fixture()


def _client(base_url: str, **kw: Any) -> httpx.AsyncClient:
    # plain-HTTP client; verify=False skips loading the CA bundle (~0.1 s per client)
    return httpx.AsyncClient(base_url=base_url, verify=False, **kw)


def _body(text: str = "hello world", *, stream: bool = False, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "you are a test"},
            {"role": "user", "content": text},
        ],
    }
    if stream:
        body["stream"] = True
    body.update(extra)
    return body


def _sse_data(text: str) -> list[str]:
    return [line[len("data: ") :] for line in text.splitlines() if line.startswith("data: ")]


def _chunks(text: str) -> list[dict[str, Any]]:
    data = _sse_data(text)
    assert data[-1] == "[DONE]"
    return [json.loads(d) for d in data[:-1]]


def _content(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


async def _wait_for(predicate: Any, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


EXPECTED = "echo: hello world t1 t2 t3 t4 t5 t6 t7"


# ----------------------------------------------------------------------------- basics


async def test_models_endpoint(fault_server: FaultServer) -> None:
    async with _client(fault_server.base_url) as client:
        r = await client.get("/models")
    assert r.status_code == 200
    data = r.json()
    assert data["object"] == "list"
    assert [m["id"] for m in data["data"]] == [MODEL]


async def test_non_streamed_json_with_usage(fault_server: FaultServer) -> None:
    async with _client(fault_server.base_url) as client:
        r = await client.post("/chat/completions", json=_body(model="my-model"))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    data = r.json()
    assert data["object"] == "chat.completion"
    assert data["model"] == "my-model"
    choice = data["choices"][0]
    assert choice["message"] == {
        "role": "assistant",
        "content": EXPECTED,
        "refusal": None,
        "annotations": [],
    }
    assert choice["finish_reason"] == "stop"
    # prompt: "you are a test" (4 words) + "hello world" (2 words)
    assert data["usage"] == {"prompt_tokens": 6, "completion_tokens": 8, "total_tokens": 14}
    stats = fault_server.stats()
    assert stats["requests"] == 1 and stats["completed"] == 1
    assert fault_server.requests_for("hello world") == 1
    (entry,) = stats["log"]
    assert entry["key"] == "hello world" and entry["stream"] is False
    assert (entry["prompt_tokens"], entry["completion_tokens"]) == (6, 8)
    assert entry["status"] == 200 and entry["fault"] is None


@pytest.mark.parametrize("include_usage", [False, True])
async def test_streamed_sse_shape(fault_server: FaultServer, include_usage: bool) -> None:
    fault_server.configure(chunks=4)
    extra: dict[str, Any] = {"stream_options": {"include_usage": True}} if include_usage else {}
    async with _client(fault_server.base_url) as client:
        r = await client.post("/chat/completions", json=_body(stream=True, **extra))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.text.endswith("data: [DONE]\n\n")
    chunks = _chunks(r.text)
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert all(c["model"] == MODEL and isinstance(c["created"], int) for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    pieces = [c["choices"][0]["delta"]["content"] for c in chunks[1:5]]
    assert pieces == ["echo: hello world", " t1", " t2", " t3"]
    assert chunks[5]["choices"][0]["delta"] == {}
    assert chunks[5]["choices"][0]["finish_reason"] == "stop"
    if include_usage:
        assert len(chunks) == 7
        assert chunks[6]["choices"] == []
        assert chunks[6]["usage"] == {
            "prompt_tokens": 6,
            "completion_tokens": 4,
            "total_tokens": 10,
        }
    else:
        assert len(chunks) == 6
        assert all("usage" not in c for c in chunks)
    assert fault_server.stats()["log"][0]["completion_tokens"] == 4


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
async def test_max_tokens_gives_length(fault_server: FaultServer, field: str) -> None:
    async with _client(fault_server.base_url) as client:
        three: dict[str, Any] = {field: 3}
        r = await client.post("/chat/completions", json=_body(**three))
        data = r.json()
        assert data["choices"][0]["finish_reason"] == "length"
        assert data["choices"][0]["message"]["content"] == "echo: hello world t1 t2"
        assert data["usage"]["completion_tokens"] == 3
        r = await client.post(
            "/chat/completions",
            json=_body(stream=True, stream_options={"include_usage": True}, **{**three, field: 2}),
        )
    chunks = _chunks(r.text)
    assert _content(chunks) == "echo: hello world t1"
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == 2
    # a limit above the number of pieces changes nothing
    async with _client(fault_server.base_url) as client:
        r = await client.post("/chat/completions", json=_body(max_tokens=100))
    assert r.json()["choices"][0]["finish_reason"] == "stop"


async def test_latency_and_chunk_delay(fault_server: FaultServer) -> None:
    fault_server.configure(latency_ms=100, chunk_delay_ms=20, chunks=4)
    async with _client(fault_server.base_url) as client:
        t0 = time.monotonic()
        r = await client.post("/chat/completions", json=_body())
        assert r.status_code == 200
        assert time.monotonic() - t0 >= 0.1
        stamps = []
        t0 = time.monotonic()
        async with client.stream("POST", "/chat/completions", json=_body(stream=True)) as r:
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    stamps.append(time.monotonic() - t0)
    # role + first piece arrive after the latency, then 3 pieces 20 ms apart
    assert stamps[0] >= 0.1
    assert stamps[-1] - stamps[0] >= 0.05
    fault_server.configure(latency_ms=0, latency_range_ms=[30, 40], chunk_delay_ms=0)
    async with _client(fault_server.base_url) as client:
        t0 = time.monotonic()
        await client.post("/chat/completions", json=_body())
        assert time.monotonic() - t0 >= 0.03


# ----------------------------------------------------------------------------- real clients


async def test_openai_client(fault_server: FaultServer) -> None:
    async with openai.AsyncOpenAI(base_url=fault_server.base_url, api_key="test", max_retries=0) as client:
        messages: Any = [{"role": "user", "content": "hello world"}]
        completion = await client.chat.completions.create(model=MODEL, messages=messages)
        assert completion.choices[0].message.content == EXPECTED
        assert completion.choices[0].finish_reason == "stop"
        assert completion.usage is not None
        assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (2, 8)

        stream = await client.chat.completions.create(
            model=MODEL, messages=messages, stream=True, stream_options={"include_usage": True}
        )
        text, usage, finish = "", None, None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
            if chunk.usage is not None:
                usage = chunk.usage
        assert text == EXPECTED and finish == "stop"
        assert usage is not None and usage.total_tokens == 10

        stream = await client.chat.completions.create(model=MODEL, messages=messages, stream=True)
        chunks = [chunk async for chunk in stream]
        assert all(c.usage is None for c in chunks)
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == EXPECTED

        models = await client.models.list()
        assert [m.id for m in models.data] == [MODEL]
    assert fault_server.requests_for("hello world") == 3


async def test_openai_client_retries_honour_retry_after(fault_server: FaultServer) -> None:
    fault_server.add_fault("429", match="retry me", times=1, retry_after_ms=20)
    fault_server.add_fault("503", match="retry me", times=1, retry_after=0.02)
    async with openai.AsyncOpenAI(base_url=fault_server.base_url, api_key="test", max_retries=2) as client:
        t0 = time.monotonic()
        completion = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "retry me"}]
        )
        assert time.monotonic() - t0 < 2  # honoured the short Retry-After, no long backoff
    assert completion.choices[0].message.content == "echo: retry me t1 t2 t3 t4 t5 t6 t7"
    assert fault_server.requests_for("retry me") == 3
    assert [e["status"] for e in fault_server.stats()["log"]] == [429, 503, 200]


async def test_openai_client_sees_status_and_connection_errors(fault_server: FaultServer) -> None:
    fault_server.add_fault("429", match="limited", retry_after=1)
    fault_server.add_fault("context_length", match="long")
    fault_server.add_fault("reset", match="reset")
    fault_server.add_fault("malformed", match="garbage", after_chunks=1)
    async with openai.AsyncOpenAI(base_url=fault_server.base_url, api_key="test", max_retries=0) as client:
        with pytest.raises(openai.RateLimitError) as rate_exc:
            await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "limited"}])
        assert rate_exc.value.response.headers["retry-after"] == "1"
        with pytest.raises(openai.BadRequestError) as bad_exc:
            await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "too long"}])
        assert bad_exc.value.code == "context_length_exceeded"
        with pytest.raises(openai.APIConnectionError):
            await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "reset"}])
        stream = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "garbage"}], stream=True
        )
        seen = []
        with pytest.raises(json.JSONDecodeError):
            async for chunk in stream:
                seen.append(chunk)
        await stream.close()
        assert len(seen) == 2  # role chunk + one content chunk before the bad line


async def test_langchain_chat_openai(fault_server: FaultServer) -> None:
    async with openai.DefaultAsyncHttpxClient() as http_client:
        llm = ChatOpenAI(
            model=MODEL,
            base_url=fault_server.base_url,
            api_key="test",
            max_retries=0,
            stream_usage=True,
            http_async_client=http_client,
        )
        messages = [SystemMessage("you are a test"), HumanMessage("hello world")]
        result = await llm.ainvoke(messages)
        assert result.content == EXPECTED
        assert result.usage_metadata is not None
        assert result.usage_metadata["input_tokens"] == 6
        assert result.usage_metadata["output_tokens"] == 8
        assert result.usage_metadata["total_tokens"] == 14
        assert result.response_metadata["finish_reason"] == "stop"

        total: AIMessageChunk | None = None
        n_chunks = 0
        async for chunk in llm.astream(messages):
            assert isinstance(chunk, AIMessageChunk)
            n_chunks += 1
            total = chunk if total is None else total + chunk
        assert total is not None
        assert total.content == EXPECTED
        assert total.usage_metadata is not None
        assert total.usage_metadata["input_tokens"] == 6
        assert total.usage_metadata["output_tokens"] == 8
        assert total.response_metadata.get("finish_reason") == "stop"
        assert n_chunks >= 8

        short = await llm.bind(max_tokens=2).ainvoke(messages)
        assert short.content == "echo: hello world t1"
        assert short.response_metadata["finish_reason"] == "length"
    log = fault_server.stats()["log"]
    assert [e["stream"] for e in log] == [False, True, False]


async def test_langchain_sees_stream_faults(fault_server: FaultServer) -> None:
    fault_server.add_fault("truncate", match="cut", after_chunks=2)
    fault_server.add_fault("reset_mid_stream", match="drop", after_chunks=2)
    async with openai.DefaultAsyncHttpxClient() as http_client:
        llm = ChatOpenAI(
            model=MODEL,
            base_url=fault_server.base_url,
            api_key="test",
            max_retries=0,
            stream_usage=True,
            http_async_client=http_client,
        )
        # A truncated stream is NOT an error for the client: it just lacks
        # finish_reason and usage -- callers have to detect that themselves.
        total: AIMessageChunk | None = None
        async for chunk in llm.astream([HumanMessage("cut")]):
            total = chunk if total is None else total + chunk
        assert total is not None and total.content == "echo: cut t1"
        assert "finish_reason" not in total.response_metadata
        assert total.usage_metadata is None
        # A reset mid-stream surfaces as a connection error after partial output.
        received: list[str] = []
        with pytest.raises(openai.APIConnectionError):
            async for chunk in llm.astream([HumanMessage("drop")]):
                received.append(str(chunk.content))
        assert "".join(received) == "echo: drop t1"


async def test_client_closing_stream_early_counts_as_cancelled(fault_server: FaultServer) -> None:
    fault_server.configure(chunk_delay_ms=20, chunks=50)
    async with openai.AsyncOpenAI(base_url=fault_server.base_url, api_key="test", max_retries=0) as client:
        stream = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "bored"}], stream=True
        )
        n = 0
        async for _ in stream:
            n += 1
            if n == 3:
                break
        await stream.close()
    await _wait_for(lambda: fault_server.stats()["cancelled"] == 1)
    stats = fault_server.stats()
    assert stats["completed"] == 0 and stats["in_flight"] == 0
    assert 2 <= stats["log"][0]["completion_tokens"] < 50


async def test_invalid_body_is_400(fault_server: FaultServer) -> None:
    async with _client(fault_server.base_url) as client:
        r = await client.post("/chat/completions", content=b"{nope")
        r2 = await client.post("/chat/completions", json={"model": MODEL})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert r2.status_code == 400
    assert fault_server.stats()["requests"] == 2


# ----------------------------------------------------------------------------- faults


STATUS_KINDS = sorted(k for k in FAULT_KINDS if k.isdigit())


@pytest.mark.parametrize("kind", STATUS_KINDS)
async def test_status_faults(fault_server: FaultServer, kind: str) -> None:
    fault_server.add_fault(kind)
    async with _client(fault_server.base_url) as client:
        r = await client.post("/chat/completions", json=_body())
        r_stream = await client.post("/chat/completions", json=_body(stream=True))
    for resp in (r, r_stream):
        assert resp.status_code == int(kind)
        error = resp.json()["error"]
        assert set(error) >= {"message", "type", "code"}
        assert isinstance(error["message"], str) and error["message"]
        assert "retry-after" not in resp.headers
    log = fault_server.stats()["log"]
    assert [(e["status"], e["fault"]) for e in log] == [(int(kind), kind)] * 2


async def test_429_retry_after_headers(fault_server: FaultServer) -> None:
    fault_server.add_fault("429", match="a", times=1, retry_after=1.5)
    fault_server.add_fault("429", match="b", times=1, retry_after_ms=250)
    fault_server.add_fault("503", match="c", times=1, retry_after=2)
    async with _client(fault_server.base_url) as client:
        ra = await client.post("/chat/completions", json=_body("a"))
        rb = await client.post("/chat/completions", json=_body("b"))
        rc = await client.post("/chat/completions", json=_body("c"))
    assert ra.status_code == 429 and ra.headers["retry-after"] == "1.5"
    assert "retry-after-ms" not in ra.headers
    assert ra.json()["error"]["code"] == "rate_limit_exceeded"
    assert rb.status_code == 429 and rb.headers["retry-after-ms"] == "250"
    assert "retry-after" not in rb.headers
    assert rc.status_code == 503 and rc.headers["retry-after"] == "2"


async def test_context_length(fault_server: FaultServer) -> None:
    fault_server.add_fault("context_length")
    async with _client(fault_server.base_url) as client:
        r = await client.post("/chat/completions", json=_body())
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert error["type"] == "invalid_request_error"
    assert "maximum context length" in error["message"]


@pytest.mark.parametrize("stream", [False, True])
async def test_reset(fault_server: FaultServer, stream: bool) -> None:
    fault_server.add_fault("reset", times=1)
    async with _client(fault_server.base_url) as client:
        with pytest.raises(httpx.TransportError):
            await client.post("/chat/completions", json=_body(stream=stream))
        r = await client.post("/chat/completions", json=_body(stream=stream))
        assert r.status_code == 200
    stats = fault_server.stats()
    assert stats["aborted"] == 1 and stats["completed"] == 1
    assert stats["log"][0]["status"] is None and stats["log"][0]["fault"] == "reset"


async def test_reset_mid_stream(fault_server: FaultServer) -> None:
    fault_server.add_fault("reset_mid_stream", after_chunks=3)
    events: list[str] = []
    async with _client(fault_server.base_url) as client:
        with pytest.raises(httpx.TransportError):
            async with client.stream("POST", "/chat/completions", json=_body(stream=True)) as r:
                assert r.status_code == 200
                async for line in r.aiter_lines():
                    if line.startswith("data: "):
                        events.append(line)
    chunks = [json.loads(e[6:]) for e in events]
    assert len(chunks) == 4  # role + 3 content chunks
    assert _content(chunks) == "echo: hello world t1 t2"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks)
    # non-streamed requests are not affected by mid-stream faults
    async with _client(fault_server.base_url) as client:
        r = await client.post("/chat/completions", json=_body())
    assert r.status_code == 200
    stats = fault_server.stats()
    assert stats["aborted"] == 1
    assert stats["log"][0]["completion_tokens"] == 3


async def test_truncate(fault_server: FaultServer) -> None:
    fault_server.add_fault("truncate", after_chunks=2)
    async with _client(fault_server.base_url) as client:
        r = await client.post(
            "/chat/completions",
            json=_body(stream=True, stream_options={"include_usage": True}),
        )
    assert r.status_code == 200
    chunks = _chunks(r.text)  # ends cleanly with [DONE]
    assert _content(chunks) == "echo: hello world t1"
    assert all(c["choices"] and c["choices"][0]["finish_reason"] is None for c in chunks)
    assert all(c.get("usage") is None for c in chunks)
    assert fault_server.stats()["completed"] == 1


async def test_malformed(fault_server: FaultServer) -> None:
    fault_server.add_fault("malformed", after_chunks=2)
    async with _client(fault_server.base_url) as client:
        r = await client.post("/chat/completions", json=_body(stream=True))
    data = _sse_data(r.text)
    assert "{not json" in data
    assert data.index("{not json") == 3  # role + 2 content chunks first
    assert data[-1] == "[DONE]"
    good = [json.loads(d) for d in data[:-1] if d != "{not json"]
    assert _content(good) == EXPECTED  # the stream continues after the bad line


async def test_stall_and_cancelled(fault_server: FaultServer) -> None:
    fault_server.add_fault("stall", match="hang")
    async with _client(fault_server.base_url, timeout=0.2) as client:
        t0 = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            await client.post("/chat/completions", json=_body("hang"))
        assert time.monotonic() - t0 < 2
        await _wait_for(lambda: fault_server.stats()["cancelled"] == 1)
        r = await client.post("/chat/completions", json=_body("fine"))
        assert r.status_code == 200
    stats = fault_server.stats()
    assert stats["in_flight"] == 0 and stats["completed"] == 1
    assert stats["log"][0]["outcome"] == "cancelled" and stats["log"][0]["fault"] == "stall"


async def test_stall_mid_stream(fault_server: FaultServer) -> None:
    fault_server.add_fault("stall", after_chunks=2, stall_s=30)
    lines: list[str] = []
    async with _client(fault_server.base_url, timeout=0.2) as client:
        with pytest.raises(httpx.ReadTimeout):
            async with client.stream("POST", "/chat/completions", json=_body(stream=True)) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: "):
                        lines.append(line)
    assert len(lines) == 3  # role + 2 content chunks, then nothing
    await _wait_for(lambda: fault_server.stats()["cancelled"] == 1)
    assert fault_server.stats()["log"][0]["completion_tokens"] == 2


async def test_short_stall_then_normal_reply(fault_server: FaultServer) -> None:
    fault_server.add_fault("stall", stall_s=0.1)
    async with _client(fault_server.base_url) as client:
        t0 = time.monotonic()
        r = await client.post("/chat/completions", json=_body())
    assert time.monotonic() - t0 >= 0.1
    assert r.json()["choices"][0]["message"]["content"] == EXPECTED


async def test_times_and_match_honoured(fault_server: FaultServer) -> None:
    fault_server.add_fault("500", match="flaky", times=2)
    fault_server.add_fault("502", times=None, match="always")
    async with _client(fault_server.base_url) as client:
        statuses = [(await client.post("/chat/completions", json=_body("flaky one"))).status_code for _ in range(4)]
        other = await client.post("/chat/completions", json=_body("steady"))
        always = [(await client.post("/chat/completions", json=_body("always"))).status_code for _ in range(3)]
    assert statuses == [500, 500, 200, 200]
    assert other.status_code == 200
    assert always == [502, 502, 502]
    assert fault_server.requests_for("flaky one") == 4
    rules = fault_server.faults()
    assert [(r["remaining"], r["applied"]) for r in rules] == [(0, 2), (None, 3)]
    assert fault_server.stats()["fault_counts"] == {"500": 2, "502": 3}
    fault_server.clear_faults()
    async with _client(fault_server.base_url) as client:
        r = await client.post("/chat/completions", json=_body("always"))
    assert r.status_code == 200


async def test_invalid_fault_rule_rejected(fault_server: FaultServer) -> None:
    with pytest.raises(ValueError):
        fault_server.add_fault("418")
    with pytest.raises(ValueError):
        fault_server.add_fault("500", bogus=1)


# ----------------------------------------------------------------------------- stats


async def test_peak_in_flight(fault_server: FaultServer) -> None:
    fault_server.configure(latency_ms=200)
    async with _client(fault_server.base_url) as client:
        results = await asyncio.gather(*(client.post("/chat/completions", json=_body(f"q{i}")) for i in range(5)))
    assert [r.status_code for r in results] == [200] * 5
    stats = fault_server.stats()
    assert stats["peak_in_flight"] == 5
    assert stats["in_flight"] == 0
    assert stats["completed"] == 5 and stats["requests"] == 5
    assert stats["per_key"] == {f"q{i}": 1 for i in range(5)}
    fault_server.reset_stats()
    stats = fault_server.stats()
    assert stats["requests"] == 0 and stats["peak_in_flight"] == 0 and stats["log"] == []


async def test_stats_readable_from_other_thread_during_load(fault_server: FaultServer) -> None:
    fault_server.configure(chunk_delay_ms=1, chunks=3)
    stop = threading.Event()
    snapshots: list[int] = []

    def reader() -> None:
        while not stop.is_set():
            snapshots.append(fault_server.stats()["requests"])
            time.sleep(0.001)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        async with _client(fault_server.base_url) as client:
            await asyncio.gather(
                *(client.post("/chat/completions", json=_body(f"k{i % 3}", stream=True)) for i in range(30))
            )
    finally:
        stop.set()
        thread.join()
    assert snapshots == sorted(snapshots)
    assert fault_server.stats()["completed"] == 30


# ----------------------------------------------------------------------------- rate limits


async def test_rpm_limit_with_time_scale(fault_server: FaultServer) -> None:
    # a "minute" is 0.3 s
    fault_server.configure(rpm_limit=2, time_scale=0.005, send_ratelimit_headers=True)
    async with _client(fault_server.base_url) as client:
        r1 = await client.post("/chat/completions", json=_body())
        r2 = await client.post("/chat/completions", json=_body())
        r3 = await client.post("/chat/completions", json=_body())
        assert (r1.status_code, r2.status_code, r3.status_code) == (200, 200, 429)
        assert r1.headers["x-ratelimit-limit-requests"] == "2"
        assert r1.headers["x-ratelimit-remaining-requests"] == "1"
        assert r2.headers["x-ratelimit-remaining-requests"] == "0"
        assert r1.headers["x-ratelimit-reset-requests"].endswith("ms")
        assert "x-ratelimit-remaining-tokens" not in r1.headers
        retry = float(r3.headers["retry-after"])
        assert 0 < retry <= 0.3
        assert int(r3.headers["retry-after-ms"]) == pytest.approx(retry * 1000, abs=1)
        assert r3.json()["error"]["code"] == "rate_limit_exceeded"
        await asyncio.sleep(retry + 0.02)
        r4 = await client.post("/chat/completions", json=_body())
        assert r4.status_code == 200
    stats = fault_server.stats()
    assert stats["rate_limited"] == 1
    assert stats["status_counts"] == {200: 3, 429: 1}


async def test_tpm_limit(fault_server: FaultServer) -> None:
    # each request costs 6 prompt + 8 completion = 14 tokens
    fault_server.configure(tpm_limit=30, time_scale=0.01, send_ratelimit_headers=True)
    async with _client(fault_server.base_url) as client:
        r = [(await client.post("/chat/completions", json=_body())) for _ in range(3)]
    assert [x.status_code for x in r] == [200, 200, 429]
    assert r[0].headers["x-ratelimit-remaining-tokens"] == "16"
    assert r[1].headers["x-ratelimit-remaining-tokens"] == "2"
    assert r[0].headers["x-ratelimit-limit-tokens"] == "30"
    assert 0 < float(r[2].headers["retry-after"]) <= 0.6


# ----------------------------------------------------------------------------- control


async def test_http_control_api(fault_server: FaultServer) -> None:
    root = fault_server.base_url.removesuffix("/v1")
    async with _client(root) as client:
        r = await client.post("/_control/configure", json={"chunks": 2, "latency_ms": 1})
        assert r.status_code == 200 and r.json()["settings"]["chunks"] == 2
        assert (await client.post("/_control/configure", json={"nope": 1})).status_code == 400

        r = await client.post("/_control/faults", json={"fault": "503", "times": 1})
        assert r.status_code == 200 and len(r.json()["faults"]) == 1
        r = await client.post(
            "/_control/faults",
            json=[
                {"fault": "429", "match": "x", "retry_after": 0.5},
                {"fault": "reset", "match": "boom"},
            ],
        )
        assert [f["fault"] for f in r.json()["faults"]] == ["503", "429", "reset"]
        assert (await client.post("/_control/faults", json={"fault": "999"})).status_code == 400

        r1 = await client.post("/v1/chat/completions", json=_body("y"))
        r2 = await client.post("/v1/chat/completions", json=_body("y"))
        assert (r1.status_code, r2.status_code) == (503, 200)
        assert r2.json()["choices"][0]["message"]["content"] == "echo: y t1"

        stats = (await client.get("/_control/stats")).json()
        assert stats["requests"] == 2 and stats["per_key"] == {"y": 2}
        assert stats["status_counts"] == {"503": 1, "200": 1}
        assert stats["faults"][0]["remaining"] == 0 and stats["faults"][0]["applied"] == 1
        assert len(stats["log"]) == 2
        assert (await client.get("/_control/stats?log=0")).json()["log"] == []

        assert (await client.delete("/_control/faults")).json() == {"faults": []}
        assert fault_server.faults() == []
        assert (await client.post("/_control/reset")).status_code == 200
        stats = (await client.get("/_control/stats")).json()
        assert stats["requests"] == 0 and stats["settings"]["chunks"] == 2
        await client.post("/_control/reset", json={"all": True})
        assert fault_server.settings["chunks"] == 8
    # control requests are not counted as chat requests
    assert fault_server.stats()["requests"] == 0


def test_context_manager_and_restartable_stop() -> None:
    with FaultServer(chunks=2) as server:
        r = httpx.post(f"{server.base_url}/chat/completions", json=_body("cm"), verify=False)
        assert r.json()["choices"][0]["message"]["content"] == "echo: cm t1"
        server.add_fault("stall", match="hang")
        # a hanging request still in flight must not block stop()
        errors: list[BaseException] = []

        def hang() -> None:
            try:
                httpx.post(
                    f"{server.base_url}/chat/completions",
                    json=_body("hang"),
                    timeout=5,
                    verify=False,
                )
            except httpx.HTTPError as exc:
                errors.append(exc)

        blocked = threading.Thread(target=hang)
        blocked.start()
        deadline = time.monotonic() + 3
        while server.stats()["in_flight"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        t0 = time.monotonic()
    assert time.monotonic() - t0 < 3
    blocked.join()
    assert len(errors) == 1  # the server dropped the hanging connection on shutdown
    assert server.stats()["cancelled"] == 1
    server.stop()  # idempotent


# ----------------------------------------------------------------------------- standalone


def test_standalone_process() -> None:
    script = Path(__file__).with_name("fault_server.py")
    with subprocess.Popen(
        [
            sys.executable,
            str(script),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--chunks",
            "3",
            "--latency-ms",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            assert line.startswith("READY http://127.0.0.1:"), line
            base_url = line.split(" ", 1)[1]
            assert base_url.endswith("/v1")
            with httpx.Client(base_url=base_url, verify=False) as client:
                r = client.post("/chat/completions", json=_body("proc"))
                assert r.json()["choices"][0]["message"]["content"] == "echo: proc t1 t2"
                stats = client.get(base_url.removesuffix("/v1") + "/_control/stats").json()
                assert stats["requests"] == 1
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
            assert proc.stdout.read() == ""
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
