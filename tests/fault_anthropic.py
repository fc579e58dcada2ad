"""An Anthropic-compatible test server on 127.0.0.1: the Messages API (JSON and SSE) and Message Batches, with faults.

Shapes from Anthropic's API reference and the SDK's types (``types/message.py``, ``raw_message_*``, ``message_batch*``):

- ``POST /v1/messages``: the key (``x-api-key``, or ``Authorization: Bearer`` as anthropic 2.x sends it) must be
  ``api_key`` (else 401 ``authentication_error``), ``anthropic-version`` is required, ``model`` one it serves (404),
  ``max_tokens`` required and cutting the answer (``echo: <last user message>`` then `` t1``, `` t2``, ...).  Usage:
  whitespace words of the system prompt and messages, the ``cache_usage`` tokens apart.  Streamed: ``message_start``
  (usage with the cache counts), ``content_block_start``, ``ping``, a ``text_delta`` per piece, ``content_block_stop``,
  ``message_delta`` (``stop_reason``, the usage), ``message_stop``.
- Faults (``add_fault(kind, match=None, times=None, model=None, ...)``, first match wins): ``529`` overloaded_error,
  ``429`` rate_limit_error (``retry_after``), ``500`` api_error, ``too_long`` (400 "prompt is too long: N tokens > M
  maximum"); in a stream after ``after_chunks`` deltas: ``cut`` (it just ends), ``reset`` (connection reset),
  ``error_event`` (an ``error`` event, overloaded_error).  ``latency_ms``, ``chunks``: ``configure`` as for FaultServer.
- Message Batches: create (``requests`` of ``{custom_id, params}``), get, ``results`` (JSONL of ``{custom_id, result:
  {type: succeeded|errored|canceled|expired}}``, each row answered as ``/v1/messages`` answers it, faults included),
  cancel, list (newest first).  A batch ends after ``processing_s``, or at ``release_batches()`` with ``hold=True``;
  ``expire`` (``match``) ends matched rows ``expired``.

``stats()``: the fault server's counters (``requests``, ``peak_in_flight``, ``status_counts``, ``log`` with each
answer's ``usage``) and ``message_batches``: rows and status per batch, ``submissions`` (custom_id → batches it was in).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

from aiohttp import web
from fault_replies import abort
from fault_server import FaultServer, _digest, _text_of

API_KEY = "test-anthropic-key"
MODELS = ["claude-test", "claude-big"]
STREAM_FAULTS = frozenset({"cut", "reset", "error_event"})
FAULTS = frozenset({"529", "429", "500", "too_long", "expire"}) | STREAM_FAULTS
_STATUS = {"529": (529, "overloaded_error", "Overloaded"), "500": (500, "api_error", "Internal server error")}
_dumps = json.dumps


def error(type_: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": type_, "message": message}}


def _stamp(at: float | None) -> str | None:
    return None if at is None else datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")


class Answer(NamedTuple):
    """What one request body gets: its status, JSON body (a message or an error), headers, stream fault, pieces."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] | None = None
    fault: Fault | None = None
    pieces: tuple[str, ...] = ()


@dataclass
class Fault:
    kind: str
    match: str | None = None
    times: int | None = None
    model: str | None = None
    retry_after: float | None = None
    after_chunks: int = 1
    maximum: int = 200_000
    applied: int = 0

    def fires(self, key: str, model: str | None) -> bool:
        spent = self.times is not None and self.applied >= self.times
        fires = not spent and (not self.match or self.match in key) and self.model in (None, model)
        self.applied += fires
        return fires


@dataclass
class Batch:
    id: str
    requests: list[dict[str, Any]]
    created: float
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    ended: float | None = None
    cancel_at: float | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when a held batch may go on: released, or cancelled."""

    def to_dict(self, root: str) -> dict[str, Any]:
        kinds = [r["type"] for r in self.results.values()]
        counts = {k: kinds.count(k) for k in ("succeeded", "errored", "canceled", "expired")}
        status = "ended" if self.ended else ("canceling" if self.cancel_at else "in_progress")
        url = f"{root}/v1/messages/batches/{self.id}/results" if self.ended else None
        return {"id": self.id, "type": "message_batch", "processing_status": status,
                "request_counts": {"processing": len(self.requests) - len(kinds), **counts},
                "ended_at": _stamp(self.ended), "created_at": _stamp(self.created),
                "expires_at": _stamp(self.created + 86400), "archived_at": None,
                "cancel_initiated_at": _stamp(self.cancel_at), "results_url": url}  # fmt: skip


class AnthropicServer(FaultServer):
    """The fault server's lifecycle and bookkeeping, answering as Anthropic's API does."""

    def __init__(self, **settings: Any) -> None:
        super().__init__(**{"models": MODELS, **settings})
        self.api_key: str | None = API_KEY
        self.cache_read = self.cache_creation = 0
        self._faults: list[Fault] = []
        self._batch_list: list[Batch] = []
        self._submissions: dict[str, int] = {}
        self._ids2 = itertools.count(1)
        self.processing_s = 0.05
        self.hold = self.released = False

    @property
    def base_url(self) -> str:
        return self.root_url

    def add_fault(self, fault: str, match: str | None = None, times: int | None = None, **kw: Any) -> dict[str, Any]:
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; expected one of {sorted(FAULTS)}")
        rule = Fault(fault, match, times, **kw)
        with self._lock:
            self._faults.append(rule)
        return vars(rule)

    def cache_usage(self, read: int = 0, creation: int = 0) -> None:
        self.cache_read, self.cache_creation = read, creation

    def configure_batches(self, processing_s: float | None = None, hold: bool | None = None) -> None:
        self.processing_s = self.processing_s if processing_s is None else processing_s
        self.hold = self.hold if hold is None else hold

    def release_batches(self) -> None:
        self.released = True
        for batch in list(self._batch_list):
            self._call_soon(batch.wake.set)

    def stats(self, include_log: bool = True) -> dict[str, Any]:
        data = super().stats(include_log)
        with self._lock:
            data["message_batches"] = {
                "created": [len(b.requests) for b in self._batch_list],
                "statuses": [b.to_dict("")["processing_status"] for b in self._batch_list],
                "submissions": dict(self._submissions),
            }
        return data

    def _fault(self, key: str, model: str | None, kinds: frozenset[str] = FAULTS) -> Fault | None:
        with self._lock:
            return next((f for f in self._faults if f.kind in kinds and f.fires(key, model)), None)

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_post("/v1/messages", self._handle_message)
        app.router.add_post("/v1/messages/batches", self._handle_create)
        app.router.add_get("/v1/messages/batches", self._handle_list)
        app.router.add_get("/v1/messages/batches/{id}", self._handle_get)
        app.router.add_get("/v1/messages/batches/{id}/results", self._handle_results)
        app.router.add_post("/v1/messages/batches/{id}/cancel", self._handle_cancel)
        return app

    # ------------------------------------------------------------------ one message

    def _refusal(self, request: web.Request) -> tuple[int, dict[str, Any]] | None:
        given = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ")
        if self.api_key is not None and given != self.api_key:  # anthropic 2.x sends the key as a Bearer token
            return 401, error("authentication_error", "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return 400, error("invalid_request_error", "anthropic-version: header is required")
        return None

    def _answer(self, body: Any, stream: bool = False) -> Answer:
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return Answer(400, error("invalid_request_error", "messages: Field required"))
        if not isinstance(body.get("max_tokens"), int) or body["max_tokens"] < 1:
            return Answer(400, error("invalid_request_error", "max_tokens: Field required"))
        model = body.get("model")
        if model not in self._cfg.models:
            return Answer(404, error("not_found_error", f"model: {model}"))
        key, words = _digest(body["messages"])
        words += len(_text_of(body.get("system")).split())
        fault = self._fault(key, model, FAULTS - {"expire"} - (frozenset() if stream else STREAM_FAULTS))
        if fault is not None and fault.kind in _STATUS:
            status, type_, message = _STATUS[fault.kind]
            return Answer(status, error(type_, message))
        if fault is not None and fault.kind == "429":
            retry = {"retry-after": str(fault.retry_after)} if fault.retry_after is not None else {}
            return Answer(
                429, error("rate_limit_error", "Number of request tokens has exceeded your rate limit"), retry
            )
        if fault is not None and fault.kind == "too_long":
            tokens = max(words, fault.maximum + 1)
            return Answer(
                400, error("invalid_request_error", f"prompt is too long: {tokens} tokens > {fault.maximum} maximum")
            )
        pieces = [f"echo: {key}", *self._cfg.pieces]
        cut = pieces[: body["max_tokens"]]
        cached = self.cache_read + self.cache_creation
        usage = {
            "input_tokens": max(0, words - cached),
            "output_tokens": len(cut),
            "cache_creation_input_tokens": self.cache_creation,
            "cache_read_input_tokens": self.cache_read,
        }
        message = {
            "id": f"msg_test{next(self._ids2):06d}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": "".join(cut)}],
            "stop_reason": "max_tokens" if len(cut) < len(pieces) else "end_turn",
            "stop_sequence": None,
            "usage": usage,
        }
        return Answer(200, message, {"request-id": f"req_test{next(self._ids2)}"}, fault, tuple(cut))

    async def _handle_message(self, request: web.Request) -> web.StreamResponse:
        try:
            body = json.loads(await request.read())
        except ValueError:
            body = None
        messages = body.get("messages") if isinstance(body, dict) else None
        key = _digest(messages)[0] if isinstance(messages, list) else ""
        stream = isinstance(body, dict) and body.get("stream") is True
        entry = {"t": time.monotonic(), "key": key, "stream": stream, "status": None, "fault": None}
        entry |= {"model": body.get("model") if isinstance(body, dict) else None, "duration": None}
        self._begin(entry)
        try:
            if self._cfg.latency() > 0:
                await asyncio.sleep(self._cfg.latency())
            refused = self._refusal(request)
            answer = Answer(*refused) if refused else self._answer(body, stream)
            entry["status"], entry["usage"] = answer.status, answer.body.get("usage")
            if answer.status != 200 or not stream:
                self._end(entry, "completed")
                return web.json_response(answer.body, status=answer.status, headers=answer.headers)
            return await self._stream(request, entry, answer)
        finally:
            self._end(entry, "cancelled")

    async def _stream(self, request: web.Request, entry: dict[str, Any], answer: Answer) -> web.StreamResponse:
        message, fault = answer.body, answer.fault
        response = web.StreamResponse(headers={**(answer.headers or {}), "Content-Type": "text/event-stream"})
        await response.prepare(request)

        async def send(event: str, data: dict[str, Any]) -> None:
            await response.write(f"event: {event}\ndata: {_dumps(data)}\n\n".encode())
            if self._cfg.chunk_delay_s:
                await asyncio.sleep(self._cfg.chunk_delay_s)

        start = {**message, "content": [], "stop_reason": None, "usage": {**message["usage"], "output_tokens": 1}}
        await send("message_start", {"type": "message_start", "message": start})
        await send("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})  # fmt: skip
        await send("ping", {"type": "ping"})
        pieces = answer.pieces[: fault.after_chunks] if fault is not None else answer.pieces
        for piece in pieces:
            await send("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}})  # fmt: skip
        if fault is not None and fault.after_chunks < len(answer.pieces):  # the stream breaks here
            entry["fault"] = fault.kind
            self._end(entry, "aborted" if fault.kind == "reset" else "completed")
            if fault.kind == "reset":
                abort(request)
                return response
            if fault.kind == "error_event":
                await send("error", error("overloaded_error", "Overloaded"))
        else:
            await send("content_block_stop", {"type": "content_block_stop", "index": 0})
            delta = {"stop_reason": message["stop_reason"], "stop_sequence": None}
            await send("message_delta", {"type": "message_delta", "delta": delta, "usage": message["usage"]})
            self._end(entry, "completed")
            await send("message_stop", {"type": "message_stop"})
        await response.write_eof()
        return response

    # ------------------------------------------------------------------ message batches

    def _batch(self, request: web.Request) -> Batch | None:
        return next((b for b in self._batch_list if b.id == request.match_info["id"]), None)

    async def _handle_create(self, request: web.Request) -> web.Response:
        refused = self._refusal(request)
        if refused:
            return web.json_response(refused[1], status=refused[0])
        try:
            requests = json.loads(await request.read())["requests"]
        except (ValueError, KeyError, TypeError):
            requests = None
        if not _valid(requests):
            return web.json_response(error("invalid_request_error", "requests: invalid"), status=400)
        ids = [r["custom_id"] for r in requests]
        if len(set(ids)) != len(ids):
            return web.json_response(error("invalid_request_error", "custom_id must be unique"), status=400)
        batch = Batch(f"msgbatch_test{next(self._ids2):08d}", requests, time.time())
        with self._lock:
            self._batch_list.append(batch)
            for custom_id in ids:
                self._submissions[custom_id] = self._submissions.get(custom_id, 0) + 1
        asyncio.get_running_loop().create_task(self._process(batch))
        return web.json_response(batch.to_dict(self.root_url))

    async def _process(self, batch: Batch) -> None:
        await asyncio.sleep(self.processing_s)
        if self.hold and not self.released:
            await batch.wake.wait()
        for request in batch.requests:
            if batch.cancel_at is not None:
                batch.results[request["custom_id"]] = {"type": "canceled"}
                continue
            batch.results[request["custom_id"]] = self._row(request["params"])
        batch.ended = time.time()

    def _row(self, params: dict[str, Any]) -> dict[str, Any]:
        """One request of a batch, answered as ``POST /v1/messages`` answers it (unless it expires)."""
        if params.get("stream"):
            return {"type": "errored", "error": error("invalid_request_error", "stream: not supported in batches")}
        messages = params.get("messages")
        key = _digest(messages)[0] if isinstance(messages, list) else ""
        if self._fault(key, params.get("model"), frozenset({"expire"})):
            return {"type": "expired"}
        answer = self._answer(params)
        if answer.status == 200:
            return {"type": "succeeded", "message": answer.body}
        return {"type": "errored", "error": answer.body}

    async def _handle_get(self, request: web.Request) -> web.Response:
        batch = self._batch(request)
        if batch is None:
            return _not_found("batch not found")
        return web.json_response(batch.to_dict(self.root_url))

    async def _handle_results(self, request: web.Request) -> web.Response:
        batch = self._batch(request)
        if batch is None or batch.ended is None:
            return _not_found("no results (yet)")
        lines = [_dumps({"custom_id": cid, "result": result}) for cid, result in batch.results.items()]
        return web.Response(body="\n".join(lines).encode() + b"\n", content_type="application/binary")

    async def _handle_cancel(self, request: web.Request) -> web.Response:
        batch = self._batch(request)
        if batch is None:
            return _not_found("batch not found")
        if batch.ended is None:
            batch.cancel_at = time.time()
            batch.wake.set()
        return web.json_response(batch.to_dict(self.root_url))

    async def _handle_list(self, request: web.Request) -> web.Response:
        items = list(reversed(self._batch_list))
        after = request.query.get("after_id")
        if after:
            index = next((i for i, b in enumerate(items) if b.id == after), len(items))
            items = items[index + 1 :]
        limit = max(1, min(1000, int(request.query.get("limit", "20"))))
        page = [b.to_dict(self.root_url) for b in items[:limit]]
        first, last = (page[0]["id"], page[-1]["id"]) if page else (None, None)
        return web.json_response({"data": page, "has_more": len(items) > limit, "first_id": first, "last_id": last})


def _not_found(message: str) -> web.Response:
    return web.json_response(error("not_found_error", message), status=404)


def _valid(requests: Any) -> bool:
    """A list of 1 to 100,000 ``{custom_id: 1-64 characters, params: {...}}``."""
    ok = isinstance(requests, list) and 1 <= len(requests) <= 100_000
    return ok and all(
        isinstance(r, dict) and isinstance(r.get("params"), dict) and _id(r.get("custom_id")) for r in requests
    )


def _id(value: Any) -> bool:
    return isinstance(value, str) and 1 <= len(value) <= 64


def anthropic_server_fixture() -> Iterator[AnthropicServer]:
    """Plain generator for a pytest fixture: yields a started server, then stops it."""
    server = AnthropicServer().start()
    try:
        yield server
    finally:
        server.stop()
