"""What the lean model's tests share: ``Canned``, a server of scripted answers on 127.0.0.1, and the pair of models.

``Canned`` answers each request with its current ``Answer`` (JSON, SSE, an error status, a cut connection) and keeps
the bodies it got; ``Pair`` is the project's ``ChatOpenAI`` (the SDK's aiohttp transport) and ``LeanChatOpenAI``,
built by ``chains.providers.factories`` as a run builds them; the views say what "the same" means for two answers
of one script (no date, no server name, the SDK dump's None fields left out).
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult

from chains.providers.factories import build_inner
from chains.providers.lean import LeanChatOpenAI
from chains.providers.model_spec import parse_model_spec
from chains.settings import RunSettings

# ----------------------------------------------------------------------------- a server of scripted answers


@dataclass
class Answer:
    """One scripted answer: a status, headers, the body in pieces; ``cut``: the connection is reset after them."""

    pieces: list[bytes]
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    sse: bool = False
    cut: bool = False
    tail_s: float = 0.0
    """A pause before the body's end (a proxy or server that sends the last bytes later)."""


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
        self.peers: list[Any] = []
        """The client address of each request (the same one: a connection the client reused)."""
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
        self.peers.append(request.transport.get_extra_info("peername") if request.transport else None)
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
        if answer.tail_s:
            await asyncio.sleep(answer.tail_s)
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


@dataclass
class Pair:
    """The project's ChatOpenAI and the lean model, built as a run builds them, for one endpoint."""

    sdk: BaseChatModel
    lean: LeanChatOpenAI
    closers: list[Any]


def make_pair(url: str, sdk_backend: str = "aiohttp", **options: Any) -> Pair:
    built = []
    for backend in (sdk_backend, "lean"):
        run = RunSettings(model="openai:m", base_url=url, api_key="sk-test", http_backend=backend, **options)  # type: ignore[arg-type]
        built.append(build_inner(parse_model_spec("openai:m"), run, url))
    (sdk, sdk_http), (lean, lean_http) = built
    assert isinstance(lean, LeanChatOpenAI) and type(sdk).__name__ == "CompatibleChatOpenAI"
    return Pair(sdk, lean, [sdk_http, lean_http])


# ----------------------------------------------------------------------------- what "the same" means


def same_headers(info: dict[str, Any] | None) -> dict[str, Any]:
    """Response headers that are the same for two answers of one script (not the date, not the server's name)."""
    headers = dict((info or {}).get("headers") or {})
    for name in ("date", "server", "content-length", "transfer-encoding", "connection", "keep-alive"):
        headers.pop(name, None)
    return headers


def no_nones(value: Any) -> Any:
    """``token_usage`` as the server sent it: the SDK's dump adds every field it knows as None."""
    if isinstance(value, dict):
        return {k: no_nones(v) for k, v in value.items() if v is not None}
    return value


def result_view(result: ChatResult) -> dict[str, Any]:
    generations = []
    for generation in result.generations:
        info = dict(generation.generation_info or {})
        if info.get("logprobs") is not None:  # the dump's None fields again
            info["logprobs"] = no_nones(info["logprobs"])
        generations.append(
            {"message": generation.message.model_dump(), "info": {**info, "headers": same_headers(info)}}
        )
    llm_output = dict(result.llm_output or {})
    llm_output["token_usage"] = no_nones(llm_output.get("token_usage"))
    return {"generations": generations, "llm_output": llm_output}


def chunk_view(chunk: ChatGenerationChunk) -> dict[str, Any]:
    info = chunk.generation_info
    view = {"message": chunk.message.model_dump(), "info": None if info is None else {**info}}
    if info and "headers" in info:
        view["info"]["headers"] = same_headers(info)
    return view


async def both_generate(pair: Pair, canned: Canned, answer: Answer, messages: Any, **kwargs: Any) -> list[Any]:
    canned.answer = answer
    canned.bodies.clear()
    views = []
    for model in (pair.sdk, pair.lean):
        views.append(result_view(await model._agenerate(messages, **kwargs)))
    assert canned.bodies[0] == canned.bodies[1], "both models send the same request body"
    return views


async def both_stream(pair: Pair, canned: Canned, answer: Answer, messages: Any, **kwargs: Any) -> list[Any]:
    canned.answer = answer
    canned.bodies.clear()
    views = []
    for model in (pair.sdk, pair.lean):
        views.append([chunk_view(c) async for c in model._astream(messages, **kwargs)])
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
