"""How the fault server answers one chat request: the answer, the injected fault, the stream.

``_chat`` in ``fault_server`` decides once per request what the answer is (its fault rule, its
length, the rate limiter's verdict) and builds one ``Reply``; the ``Reply``'s methods write it,
each one kind of response.  A ``Reply`` accounts the end of its request through ``end`` (the
server's bookkeeping) right *before* its last bytes go out, so that a client which received a
complete response always finds it in the server's stats.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from fault_rules import ODD_KINDS, STATUS_ERRORS, STATUS_KINDS, Rule
from fault_settings import Config, ceil_ms, fmt_seconds

__all__ = ["Reply", "abort", "error_body", "send_json"]

_DONE = "data: [DONE]\n\n"
_MALFORMED = "data: {not json\n\n"
_LINGER_RST = struct.pack("ii", 1, 0)
_dumps = json.dumps

End = Callable[[dict[str, Any], str], None]
"""The server's ``_end(entry, outcome)``: accounts a request's end (idempotent)."""


def error_body(message: str, type_: str, code: str | None, param: str | None = None) -> bytes:
    return _dumps({"error": {"message": message, "type": type_, "param": param, "code": code}}).encode()


def abort(request: web.BaseRequest) -> None:
    """Abort the connection with a TCP RST (SO_LINGER 0), discarding unsent data."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    transport.abort()


async def send_json(
    request: web.Request,
    entry: dict[str, Any],
    end: End,
    status: int,
    payload: bytes,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """A whole JSON response (also used before a ``Reply`` exists: a body that is not JSON)."""
    resp = web.Response(status=status, body=payload, headers=headers, content_type="application/json")
    entry["status"] = status
    await resp.prepare(request)
    end(entry, "completed")
    await resp.write_eof()
    return resp


@dataclass(slots=True)
class Reply:
    """One chat request as its answer sees it: built once per request by the server's ``_chat``."""

    request: web.Request
    body: dict[str, Any]
    entry: dict[str, Any]
    """The request's log entry (``key``, ``stream``, ``prompt_tokens``, ``completion_tokens``, ...)."""
    cfg: Config
    headers: dict[str, str]
    rule: Rule | None
    """The fault rule this request matched, if any."""
    n: int
    """Pieces in the answer (``max_tokens`` may cut it)."""
    finish_reason: str
    created: int
    end: End
    model: str = ""
    id: str = ""
    cut: Rule | None = None
    """The rule that cuts or stalls the stream part-way (a mid-stream fault, a ``stall`` after chunks)."""

    @property
    def stream(self) -> bool:
        return bool(self.entry["stream"])

    async def send_json(self, status: int, payload: bytes) -> web.Response:
        return await send_json(self.request, self.entry, self.end, status, payload, self.headers)

    async def send_error(
        self, status: int, message: str, type_: str, code: str | None, param: str | None = None
    ) -> web.Response:
        return await self.send_json(status, error_body(message, type_, code, param))

    # ------------------------------------------------------------------ faults

    async def rate_limited(self, what: str, retry: float) -> web.Response:
        """The server's own ``rpm_limit`` / ``tpm_limit`` said no: a 429 with OpenAI's headers and words."""
        self.headers["retry-after"] = fmt_seconds(retry)
        self.headers["retry-after-ms"] = str(max(1, ceil_ms(retry)))
        limit = self.cfg.rpm if what == "requests" else self.cfg.tpm
        msg = (
            f"Rate limit reached for {self.body.get('model')} on {what} per min (RPM/TPM): "
            f"Limit {limit}. Please try again in {fmt_seconds(retry)}s."
        )
        return await self.send_error(429, msg, what, "rate_limit_exceeded")

    async def fault(self) -> web.StreamResponse | None:
        """The matched rule's response, or None when the answer follows (after a stall, or cut by ``cut``)."""
        rule = self.rule
        assert rule is not None
        kind = rule.kind
        if kind == "reset":
            self.end(self.entry, "aborted")
            abort(self.request)
            return web.Response()
        if kind == "context_length":
            return await self.context_length(rule)
        if kind in STATUS_KINDS:
            return await self.status_error(rule)
        if kind in ODD_KINDS:
            self.headers.update(rule.headers)
            return await self.odd_answer(rule)
        if kind == "stall" and (not self.stream or rule.after_chunks is None):
            await asyncio.sleep(rule.stall_s)
        else:
            self.cut = rule
        return None

    async def context_length(self, rule: Rule) -> web.Response:
        msg = rule.message or (
            "This model's maximum context length is 8192 tokens. However, your "
            f"messages resulted in {max(8193, self.entry['prompt_tokens'])} tokens. "
            "Please reduce the length of the messages."
        )
        return await self.send_error(400, msg, "invalid_request_error", "context_length_exceeded", "messages")

    async def status_error(self, rule: Rule) -> web.Response:
        status = int(rule.kind)
        type_, code, msg = STATUS_ERRORS[status]
        if status == 401:  # like OpenAI, the message echoes the key it was given
            given = self.request.headers.get("Authorization", "").removeprefix("Bearer ")
            msg = msg.replace("provided: test.", f"provided: {given}.")
        if rule.retry_after is not None:
            self.headers["retry-after"] = fmt_seconds(rule.retry_after)
        if rule.retry_after_ms is not None:
            self.headers["retry-after-ms"] = fmt_seconds(rule.retry_after_ms)
        self.headers.update(rule.headers)
        return await self.send_error(status, rule.message or msg, rule.error_type or type_, code)

    async def odd_answer(self, rule: Rule) -> web.StreamResponse:
        """The answers that are not answers (see ``fault_rules.ODD_KINDS``)."""
        if rule.kind == "validation_500":  # what llama-cpp-python's server says to a json_schema response_format
            message = rule.message or (  # word for word what llama-cpp-python 0.3 sends
                "1 validation error:\n  {'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), "
                "'msg': \"Input should be 'text' or 'json_object'\", 'input': 'json_schema', "
                "'ctx': {'expected': \"'text' or 'json_object'\"}}\n"
            )
            return await self.send_error(500, message, rule.error_type or "internal_server_error", None)
        if rule.kind == "endless":
            return await self.endless(rule)
        if rule.kind == "reply":
            return await self.verbatim(rule.message or "")
        if rule.kind == "empty_choices":
            body: dict[str, Any] = {"id": "chatcmpl-empty", "object": "chat.completion", "choices": []}
        else:  # error_body: a 200 whose body is an error object
            message = rule.message or "The server had an error while processing your request."
            body = {"error": {"message": message, "type": rule.error_type or "server_error", "code": None}}
        if not self.stream:
            return await self.send_json(200, _dumps(body).encode())
        resp = await self._prepare_sse({**self.headers, "Cache-Control": "no-cache"}, charset=None)
        self.end(self.entry, "completed")
        await resp.write(f"data: {_dumps(body)}\n\n{_DONE}".encode())
        await resp.write_eof()
        return resp

    async def verbatim(self, text: str) -> web.StreamResponse:
        """A normal answer whose content is ``text`` (JSON or SSE, with usage and a finish reason)."""
        self.entry["completion_tokens"] = completion = max(1, len(text.split()))
        usage = {"prompt_tokens": self.entry["prompt_tokens"], "completion_tokens": completion}
        usage["total_tokens"] = usage["prompt_tokens"] + completion
        base = {"id": "chatcmpl-reply", "created": self.created, "model": "m"}
        if not self.stream:
            message = {"role": "assistant", "content": text}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            body = {**base, "object": "chat.completion", "choices": [choice], "usage": usage}
            return await self.send_json(200, _dumps(body).encode())
        resp = await self._prepare_sse({**self.headers, "Cache-Control": "no-cache"}, charset=None)
        chunks = [
            {"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": None},
            {"index": 0, "delta": {}, "finish_reason": "stop"},
        ]
        self.end(self.entry, "completed")
        for choice in chunks:
            await resp.write(
                f"data: {_dumps({**base, 'object': 'chat.completion.chunk', 'choices': [choice]})}\n\n".encode()
            )
        final = {**base, "object": "chat.completion.chunk", "choices": [], "usage": usage}
        await resp.write(f"data: {_dumps(final)}\n\n{_DONE}".encode())
        await resp.write_eof()
        return resp

    async def endless(self, rule: Rule) -> web.StreamResponse:
        """An answer that keeps trickling bytes for ``stall_s`` seconds (never a finish reason), then a reset."""
        stream = self.stream
        resp = web.StreamResponse(status=200, headers=self.headers)
        resp.content_type = "text/event-stream" if stream else "application/json"
        self.entry["status"] = 200
        await resp.prepare(self.request)
        interval = self.cfg.chunk_delay_s or 0.01
        piece = (
            'data: {"id":"chatcmpl-endless","object":"chat.completion.chunk","created":0,"model":"m",'
            '"choices":[{"index":0,"delta":{"content":" again"},"finish_reason":null}]}\n\n'
            if stream
            else " "
        ).encode()
        deadline = time.monotonic() + rule.stall_s
        while time.monotonic() < deadline:
            await resp.write(piece)
            self.entry["completion_tokens"] += 1 if stream else 0
            await asyncio.sleep(interval)
        self.end(self.entry, "aborted")
        abort(self.request)
        return resp

    async def drain_then_abort(self) -> None:
        transport = self.request.transport
        # Let already-written chunks reach the socket before the RST discards them.
        for _ in range(200):
            if transport is None or transport.is_closing():
                break
            if transport.get_write_buffer_size() == 0:
                break
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.002)  # margin for the kernel to put the bytes on the wire
        self.end(self.entry, "aborted")
        abort(self.request)

    # ------------------------------------------------------------------ the answer

    @property
    def usage(self) -> dict[str, int]:
        prompt = self.entry["prompt_tokens"]
        return {"prompt_tokens": prompt, "completion_tokens": self.n, "total_tokens": prompt + self.n}

    async def completion(self) -> web.Response:
        """The whole answer as one ``chat.completion`` object."""
        self.entry["completion_tokens"] = self.n
        text = "echo: " + self.entry["key"] + "".join(self.cfg.pieces[: self.n - 1])
        message = {"role": "assistant", "content": text, "refusal": None, "annotations": []}
        payload = {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": self.finish_reason}],
            "usage": self.usage,
            "service_tier": "default",
            "system_fingerprint": None,
        }
        return await self.send_json(200, _dumps(payload).encode())

    async def _prepare_sse(self, headers: dict[str, str], charset: str | None = "utf-8") -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers=headers)
        resp.content_type = "text/event-stream"
        if charset is not None:
            resp.charset = charset
        self.entry["status"] = 200
        await resp.prepare(self.request)
        return resp

    async def stream_answer(self) -> web.StreamResponse:
        """The answer as SSE chunks, cut or stalled part-way by ``cut``; batched into few writes."""
        frames = _Frames(self)
        buf = [frames.first()]
        self.headers["Cache-Control"] = "no-cache"
        resp = await self._prepare_sse(self.headers)
        n, cut_rule, delay = self.n, self.cut, self.cfg.chunk_delay_s
        cut = min(cut_rule.after_chunks or 0, n) if cut_rule is not None else -1
        for i in range(n + 1):
            if i == cut:
                assert cut_rule is not None
                if await self._cut(resp, buf, cut_rule):
                    return resp
            if i == n:
                break
            if delay > 0 and i:
                await _flush(resp, buf)
                await asyncio.sleep(delay)
            buf.append(frames.piece(i))
            self.entry["completion_tokens"] = i + 1
        buf.extend(frames.last())
        data = "".join(buf).encode()
        self.end(self.entry, "completed")
        await resp.write(data)
        await resp.write_eof()
        return resp

    async def _cut(self, resp: web.StreamResponse, buf: list[str], rule: Rule) -> bool:
        """The mid-stream fault at its chunk; True when the response is over."""
        if rule.kind == "malformed":
            buf.append(_MALFORMED)
            return False
        await resp.write("".join(buf).encode())
        buf.clear()
        if rule.kind == "reset_mid_stream":
            await self.drain_then_abort()
            return True
        if rule.kind == "truncate":
            self.end(self.entry, "completed")
            await resp.write(_DONE.encode())
            await resp.write_eof()
            return True
        await asyncio.sleep(rule.stall_s)  # "stall"
        return False


async def _flush(resp: web.StreamResponse, buf: list[str]) -> None:
    if buf:
        await resp.write("".join(buf).encode())
        buf.clear()


class _Frames:
    """The SSE frames of one streamed answer, formatted by hand (the server must never be the bottleneck)."""

    __slots__ = ("head", "include_usage", "piece_head", "piece_tail", "reply", "tail")

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        opts = reply.body.get("stream_options")
        self.include_usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
        self.head = (
            f'data: {{"id":"{reply.id}","object":"chat.completion.chunk","created":{reply.created},'
            f'"model":{_dumps(reply.model)},"system_fingerprint":null,"choices":['
        )
        self.tail = "}\n\n" if not self.include_usage else ',"usage":null}\n\n'
        self.piece_head = self.head + '{"index":0,"delta":{"content":'
        self.piece_tail = '},"logprobs":null,"finish_reason":null}]' + self.tail

    def first(self) -> str:
        return (
            self.head + '{"index":0,"delta":{"role":"assistant","content":"","refusal":null},'
            '"logprobs":null,"finish_reason":null}]' + self.tail
        )

    def piece(self, i: int) -> str:
        text = self.reply.cfg.pieces[i - 1] if i else "echo: " + self.reply.entry["key"]
        return self.piece_head + _dumps(text) + self.piece_tail

    def last(self) -> list[str]:
        reason = self.reply.finish_reason
        frames = [self.head + f'{{"index":0,"delta":{{}},"logprobs":null,"finish_reason":"{reason}"}}]' + self.tail]
        if self.include_usage:
            frames.append(self.head + f'],"usage":{_dumps(self.reply.usage)}}}\n\n')
        frames.append(_DONE)
        return frames
