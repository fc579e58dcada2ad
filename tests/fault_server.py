"""Fault-injecting, OpenAI-compatible HTTP server for tests and benchmarks.

Serves ``POST /v1/chat/completions`` (JSON and SSE streaming) and ``GET /v1/models``
with deterministic replies, configurable latency, server-side rate limits and a list of
fault rules (HTTP error statuses, connection resets, truncated / malformed / stalled
streams, answers that are not answers: ``empty_choices``, ``error_body`` (a 200 whose body
is an error), ``validation_500`` (llama.cpp's answer to an unsupported ``response_format``),
``endless`` (bytes that keep trickling for ``stall_s``), and raw header values).

In-process use (tests)::

    with FaultServer().start() as server:
        server.configure(latency_ms=20, chunks=4)
        server.add_fault("429", match="hello", times=1, retry_after=0.1)
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="test")
        ...
        assert server.requests_for("hello") == 2

Out-of-process use (benchmarks)::

    python tests/fault_server.py --host 127.0.0.1 --port 0 --latency-ms 50
    # prints "READY http://127.0.0.1:PORT/v1", runs until SIGTERM / SIGINT

and drive it over HTTP: ``GET /_control/stats``, ``POST /_control/configure``,
``POST /_control/faults``, ``DELETE /_control/faults``, ``POST /_control/reset``.

Reply content: the first piece is ``"echo: " + <last user message>``, followed by
``chunks - 1`` pieces ``" t1"``, ``" t2"``, ...; ``completion_tokens`` is the number of
pieces sent and ``prompt_tokens`` the number of whitespace-separated words over all
request messages.

Per request, fault rules are checked first (in insertion order, first match wins);
a request that matched a fault does not count against ``rpm_limit`` / ``tpm_limit``.
Requests rejected by the rate limiter are not recorded in the limiter window either.
Latency (``latency_ms`` / ``latency_range_ms``) is applied before *every* response,
error responses and resets included.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import random
import signal
import socket
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from aiohttp import web

__all__ = [
    "DEFAULT_SETTINGS",
    "FAULT_KINDS",
    "FaultServer",
    "fault_server_fixture",
    "main",
]

DEFAULT_SETTINGS: dict[str, Any] = {
    "latency_ms": 0.0,
    "latency_range_ms": None,
    "chunk_delay_ms": 0.0,
    "chunks": 8,
    "rpm_limit": None,
    "tpm_limit": None,
    "time_scale": 1.0,
    "send_ratelimit_headers": False,
    "models": ["fake-model"],
}

# status -> (error type, error code, message)
_STATUS_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request (injected fault)."),
    401: (
        "invalid_request_error",
        "invalid_api_key",
        "Incorrect API key provided: test. You can find your API key at https://platform.openai.com/account/api-keys.",
    ),
    403: ("permission_error", "unsupported_country_region_territory", "Forbidden."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist."),
    408: ("timeout", "request_timeout", "Request timed out."),
    409: ("conflict_error", "conflict", "Conflict (injected fault)."),
    422: ("invalid_request_error", "unprocessable_entity", "Unprocessable entity."),
    429: (
        "requests",
        "rate_limit_exceeded",
        "Rate limit reached for requests (injected fault). Please try again later.",
    ),
    500: (
        "server_error",
        None,
        "The server had an error while processing your request. Sorry about that!",
    ),
    502: ("server_error", "bad_gateway", "Bad gateway."),
    503: (
        "server_error",
        "service_unavailable",
        "The server is overloaded or not ready yet.",
    ),
}
_STATUS_KINDS = frozenset(str(s) for s in _STATUS_ERRORS)
_MID_STREAM_KINDS = frozenset({"reset_mid_stream", "truncate", "malformed"})
# Answers that are not answers: a 200 whose body has no choices or is an error object, a 500 whose
# body is a request validation error (llama.cpp on an unsupported response_format), and an answer that
# never ends (bytes keep trickling in, so no read ever times out).
_ODD_KINDS = frozenset({"empty_choices", "error_body", "validation_500", "endless"})
FAULT_KINDS = frozenset(_STATUS_KINDS | _MID_STREAM_KINDS | _ODD_KINDS | {"context_length", "reset", "stall"})
_RULE_KEYS = frozenset(
    {
        "fault",
        "match",
        "times",
        "retry_after",
        "retry_after_ms",
        "after_chunks",
        "stall_s",
        "stream",
        "message",
        "headers",
        "error_type",
    }
)

_DONE = "data: [DONE]\n\n"
_MALFORMED = "data: {not json\n\n"
_LINGER_RST = struct.pack("ii", 1, 0)
_dumps = json.dumps


# ----------------------------------------------------------------------------- helpers


def _ceil_ms(seconds: float) -> int:
    """Whole milliseconds, rounded up (so a client sleeping that long is never early)."""
    return max(0, math.ceil(seconds * 1000 - 1e-6))


def _fmt_seconds(value: float) -> str:
    """Retry-After style number of seconds, rounded up to the ms: '2', '0.25', '0.001'."""
    ms = max(1, _ceil_ms(value))
    whole, frac = divmod(ms, 1000)
    return str(whole) if not frac else f"{whole}.{frac:03d}".rstrip("0")


def _fmt_reset(seconds: float) -> str:
    """OpenAI x-ratelimit-reset-* style duration, rounded up: '120ms', '1.5s', '6m0s'."""
    ms = _ceil_ms(seconds)
    if ms < 1000:
        return f"{ms}ms"
    if ms < 60_000:
        return _fmt_seconds(ms / 1000) + "s"
    minutes, secs = divmod(math.ceil(ms / 1000), 60)
    return f"{minutes}m{secs}s"


def _text_of(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # multi-part content: [{"type": "text", "text": ...}]
        parts = []
        for part in content:
            if isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    parts.append(text)
            elif isinstance(part, str):
                parts.append(part)
        return " ".join(parts)
    return str(content)


def _digest(messages: list[Any]) -> tuple[str, int]:
    """(content of the last user message, whitespace word count over all messages)."""
    key = ""
    words = 0
    for msg in messages:
        if not isinstance(msg, dict):
            continue
        text = _text_of(msg.get("content"))
        words += len(text.split())
        if msg.get("role") == "user":
            key = text
    return key, words


def _error_body(message: str, type_: str, code: str | None, param: str | None = None) -> bytes:
    return _dumps({"error": {"message": message, "type": type_, "param": param, "code": code}}).encode()


class _Config:
    """Immutable, precomputed view of the settings (swapped atomically on configure)."""

    __slots__ = (
        "chunk_delay_s",
        "latency_range_s",
        "latency_s",
        "models",
        "pieces",
        "ratelimit_headers",
        "rpm",
        "settings",
        "tpm",
        "window_s",
    )

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings
        self.latency_s = float(settings["latency_ms"] or 0) / 1000.0
        rng = settings["latency_range_ms"]
        self.latency_range_s = (float(rng[0]) / 1000.0, float(rng[1]) / 1000.0) if rng else None
        self.chunk_delay_s = float(settings["chunk_delay_ms"] or 0) / 1000.0
        chunks = max(1, int(settings["chunks"]))
        self.pieces = tuple(f" t{i}" for i in range(1, chunks))
        self.rpm = settings["rpm_limit"]
        self.tpm = settings["tpm_limit"]
        self.window_s = 60.0 * float(settings["time_scale"])
        self.ratelimit_headers = bool(settings["send_ratelimit_headers"])
        self.models = tuple(settings["models"])

    def latency(self) -> float:
        if self.latency_range_s is not None:
            return random.uniform(*self.latency_range_s)
        return self.latency_s


def _normalize_settings(base: dict[str, Any], updates: dict[str, Any]) -> dict[str, Any]:
    unknown = set(updates) - set(DEFAULT_SETTINGS)
    if unknown:
        raise ValueError(f"unknown setting(s): {sorted(unknown)}")
    out = dict(base)
    for name, value in updates.items():
        if name in ("latency_ms", "chunk_delay_ms"):
            value = float(value or 0)
            if value < 0:
                raise ValueError(f"{name} must be >= 0")
        elif name == "latency_range_ms":
            if value is not None:
                lo, hi = (float(v) for v in value)
                if lo < 0 or hi < lo:
                    raise ValueError("latency_range_ms must be [lo, hi] with 0 <= lo <= hi")
                value = [lo, hi]
        elif name == "chunks":
            value = int(value)
            if value < 1:
                raise ValueError("chunks must be >= 1")
        elif name in ("rpm_limit", "tpm_limit"):
            if value is not None:
                value = int(value)
                if value < 1:
                    raise ValueError(f"{name} must be >= 1 or None")
        elif name == "time_scale":
            value = float(value)
            if value <= 0:
                raise ValueError("time_scale must be > 0")
        elif name == "send_ratelimit_headers":
            value = bool(value)
        elif name == "models":
            value = [str(m) for m in ([value] if isinstance(value, str) else value)]
        out[name] = value
    return out


class _Rule:
    __slots__ = (
        "after_chunks",
        "applied",
        "error_type",
        "headers",
        "kind",
        "match",
        "message",
        "remaining",
        "retry_after",
        "retry_after_ms",
        "stall_s",
        "stream",
        "times",
    )

    def __init__(
        self,
        fault: str,
        match: str | None = None,
        times: int | None = None,
        retry_after: float | None = None,
        retry_after_ms: float | None = None,
        after_chunks: int | None = None,
        stall_s: float | None = None,
        stream: bool | None = None,
        message: str | None = None,
        headers: dict[str, str] | None = None,
        error_type: str | None = None,
    ) -> None:
        kind = str(fault)
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {fault!r}; expected one of {sorted(FAULT_KINDS)}")
        if times is not None and int(times) < 0:
            raise ValueError("times must be >= 0 or None")
        self.kind = kind
        self.match = None if match is None else str(match)
        self.times = None if times is None else int(times)
        self.remaining = self.times
        self.retry_after = None if retry_after is None else float(retry_after)
        self.retry_after_ms = None if retry_after_ms is None else float(retry_after_ms)
        if after_chunks is None and kind in _MID_STREAM_KINDS:
            after_chunks = 1
        self.after_chunks = None if after_chunks is None else max(0, int(after_chunks))
        self.stall_s = 3600.0 if stall_s is None else float(stall_s)
        self.stream = None if stream is None else bool(stream)
        self.message = message
        self.headers = {str(k): str(v) for k, v in (headers or {}).items()}
        """Sent verbatim with the fault's response (e.g. a Retry-After of 'soon')."""
        self.error_type = error_type
        self.applied = 0

    @classmethod
    def from_dict(cls, data: Any) -> _Rule:
        if not isinstance(data, dict) or "fault" not in data:
            raise ValueError("a fault rule must be an object with a 'fault' key")
        unknown = set(data) - _RULE_KEYS
        if unknown:
            raise ValueError(f"unknown fault rule key(s): {sorted(unknown)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return {
            "fault": self.kind,
            "match": self.match,
            "times": self.times,
            "remaining": self.remaining,
            "applied": self.applied,
            "retry_after": self.retry_after,
            "retry_after_ms": self.retry_after_ms,
            "after_chunks": self.after_chunks,
            "stall_s": self.stall_s,
            "stream": self.stream,
            "message": self.message,
            "headers": dict(self.headers),
            "error_type": self.error_type,
        }


class _RateLimiter:
    """Sliding-window request/token counter. Only touched from the server loop."""

    __slots__ = ("events", "tokens")

    def __init__(self) -> None:
        self.events: deque[tuple[float, int]] = deque()
        self.tokens = 0

    def _prune(self, now: float, window: float) -> None:
        events = self.events
        cutoff = now - window
        while events and events[0][0] <= cutoff:
            self.tokens -= events.popleft()[1]

    def admit(self, now: float, cfg: _Config, tokens: int) -> tuple[str, float] | None:
        """Record the request, or return (limit kind, retry-after seconds) if over a limit."""
        window = cfg.window_s
        self._prune(now, window)
        events = self.events
        if cfg.rpm is not None and len(events) >= cfg.rpm:
            idx = len(events) - cfg.rpm  # the slot that has to expire
            return "requests", max(0.001, events[idx][0] + window - now)
        if cfg.tpm is not None and self.tokens + tokens > cfg.tpm:
            if tokens > cfg.tpm or not events:
                return "tokens", window
            need = self.tokens + tokens - cfg.tpm
            freed = 0
            for t, n in events:
                freed += n
                if freed >= need:
                    return "tokens", max(0.001, t + window - now)
            return "tokens", window
        events.append((now, tokens))
        self.tokens += tokens
        return None

    def headers(self, now: float, cfg: _Config) -> dict[str, str]:
        self._prune(now, cfg.window_s)
        out: dict[str, str] = {}
        events = self.events
        oldest = events[0][0] + cfg.window_s - now if events else 0.0
        if cfg.rpm is not None:
            out["x-ratelimit-limit-requests"] = str(cfg.rpm)
            out["x-ratelimit-remaining-requests"] = str(max(0, cfg.rpm - len(events)))
            out["x-ratelimit-reset-requests"] = _fmt_reset(oldest)
        if cfg.tpm is not None:
            out["x-ratelimit-limit-tokens"] = str(cfg.tpm)
            out["x-ratelimit-remaining-tokens"] = str(max(0, cfg.tpm - self.tokens))
            out["x-ratelimit-reset-tokens"] = _fmt_reset(oldest)
        return out


def _abort(request: web.BaseRequest) -> None:
    """Abort the connection with a TCP RST (SO_LINGER 0), discarding unsent data."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    transport.abort()


# ----------------------------------------------------------------------------- server


class FaultServer:
    """OpenAI-compatible fault-injecting server running on its own loop/thread."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        shutdown_timeout: float = 0.1,
        log_limit: int | None = 200_000,
        **settings: Any,
    ) -> None:
        self.host = host
        self.port = port
        self._shutdown_timeout = shutdown_timeout
        self._cfg = _Config(_normalize_settings(DEFAULT_SETTINGS, settings))
        self._lock = threading.Lock()
        self._rules: list[_Rule] = []
        self._limiter = _RateLimiter()
        self._ids = itertools.count(1)
        self._created = int(time.time())
        self._log: deque[dict[str, Any]] = deque(maxlen=log_limit)
        self._reset_counters()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def root_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> FaultServer:
        """Start serving on a daemon thread; returns self once the port is bound."""
        if self._thread is not None:
            raise RuntimeError("FaultServer already started")
        self._ready.clear()
        self._thread = threading.Thread(target=self._thread_main, name="fault-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("FaultServer did not start in time")
        if self._startup_error is not None:
            self._thread.join()
            self._thread = None
            raise RuntimeError("FaultServer failed to start") from self._startup_error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving: cancel in-flight handlers, clean up the runner, join the thread."""
        thread, loop, stop_event = self._thread, self._loop, self._stop_event
        if thread is None:
            return
        if loop is not None and stop_event is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop closed in between
                loop.call_soon_threadsafe(stop_event.set)
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError("FaultServer thread did not stop in time")
        self._thread = None

    def __enter__(self) -> FaultServer:
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._serve(self._ready.set))
        except BaseException as exc:
            if not self._ready.is_set():
                self._startup_error = exc
                self._ready.set()
            else:  # pragma: no cover - unexpected crash after startup
                raise

    async def _serve(self, on_ready: Callable[[], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._handle_chat)
        app.router.add_get("/v1/models", self._handle_models)
        app.router.add_get("/v1/models/{model}", self._handle_model)
        app.router.add_get("/_control/stats", self._handle_stats)
        app.router.add_post("/_control/configure", self._handle_configure)
        app.router.add_get("/_control/faults", self._handle_list_faults)
        app.router.add_post("/_control/faults", self._handle_add_faults)
        app.router.add_delete("/_control/faults", self._handle_clear_faults)
        app.router.add_post("/_control/reset", self._handle_reset)
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            handler_cancellation=True,
            shutdown_timeout=self._shutdown_timeout,
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port, backlog=1024)
            await site.start()
            self.port = runner.addresses[0][1]
            on_ready()
            await self._stop_event.wait()
        finally:
            await runner.cleanup()

    # ------------------------------------------------------------------ control API

    def configure(self, **settings: Any) -> dict[str, Any]:
        """Update settings (see DEFAULT_SETTINGS); returns the full new settings."""
        new = _normalize_settings(self._cfg.settings, settings)
        if {"rpm_limit", "tpm_limit", "time_scale"} & set(settings):
            self._limiter = _RateLimiter()
        self._cfg = _Config(new)
        return dict(new)

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self._cfg.settings)

    def add_fault(
        self,
        fault: str,
        match: str | None = None,
        times: int | None = None,
        **kw: Any,
    ) -> dict[str, Any]:
        """Append a fault rule; kw: retry_after, retry_after_ms, after_chunks, stall_s,
        stream (only match streamed / non-streamed requests), message, error_type (the error
        body's ``type``), headers (sent verbatim: e.g. ``{"retry-after": "soon"}``)."""
        rule = _Rule.from_dict({"fault": fault, "match": match, "times": times, **kw})
        with self._lock:
            self._rules.append(rule)
        return rule.to_dict()

    def clear_faults(self) -> None:
        with self._lock:
            self._rules.clear()

    def faults(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r.to_dict() for r in self._rules]

    def _reset_counters(self) -> None:
        self._requests = 0
        self._per_key: dict[str, int] = {}
        self._in_flight = getattr(self, "_in_flight", 0)
        self._peak = self._in_flight
        self._completed = 0
        self._cancelled = 0
        self._aborted = 0
        self._rate_limited = 0
        self._status_counts: dict[int, int] = {}
        self._fault_counts: dict[str, int] = {}
        self._log.clear()

    def reset_stats(self) -> None:
        """Zero all counters and the request log (in-flight requests stay in flight)."""
        with self._lock:
            self._reset_counters()

    def reset(self) -> None:
        """Full reset: stats, fault rules, rate-limit window and default settings."""
        with self._lock:
            self._reset_counters()
            self._rules.clear()
        self._cfg = _Config(dict(DEFAULT_SETTINGS))
        self._limiter = _RateLimiter()

    def stats(self, include_log: bool = True) -> dict[str, Any]:
        """A plain-dict snapshot of the counters (safe to call from any thread)."""
        with self._lock:
            return {
                "requests": self._requests,
                "per_key": dict(self._per_key),
                "in_flight": self._in_flight,
                "peak_in_flight": self._peak,
                "completed": self._completed,
                "cancelled": self._cancelled,
                "aborted": self._aborted,
                "rate_limited": self._rate_limited,
                "status_counts": dict(self._status_counts),
                "fault_counts": dict(self._fault_counts),
                "log": [dict(e) for e in self._log] if include_log else [],
            }

    def requests_for(self, key: str) -> int:
        """Number of chat requests whose last user message was exactly ``key``."""
        with self._lock:
            return self._per_key.get(key, 0)

    # ------------------------------------------------------------------ bookkeeping

    def _begin(self, entry: dict[str, Any]) -> None:
        key = entry["key"]
        with self._lock:
            self._requests += 1
            self._per_key[key] = self._per_key.get(key, 0) + 1
            self._log.append(entry)
            self._in_flight += 1
            if self._in_flight > self._peak:
                self._peak = self._in_flight

    def _end(self, entry: dict[str, Any], outcome: str) -> None:
        """Account the end of a request (idempotent).

        Called right *before* the last bytes are handed to the transport, so that a
        client which has received a complete response always sees it in stats().
        """
        if entry["duration"] is not None:
            return
        status = entry["status"]
        fault = entry["fault"]
        with self._lock:
            entry["outcome"] = outcome
            entry["duration"] = time.monotonic() - entry["t"]
            self._in_flight -= 1
            if outcome == "completed":
                self._completed += 1
            elif outcome == "aborted":
                self._aborted += 1
            else:
                self._cancelled += 1
            if status is not None:
                self._status_counts[status] = self._status_counts.get(status, 0) + 1
            if fault is not None:
                self._fault_counts[fault] = self._fault_counts.get(fault, 0) + 1
                if fault == "rate_limit":
                    self._rate_limited += 1

    def _recount_cancelled(self, entry: dict[str, Any]) -> None:
        """The final write of a request already counted as completed failed."""
        with self._lock:
            if entry["outcome"] == "completed":
                entry["outcome"] = "cancelled"
                self._completed -= 1
                self._cancelled += 1

    def _pick_fault(self, key: str, stream: bool) -> _Rule | None:
        if not self._rules:
            return None
        with self._lock:
            for rule in self._rules:
                if rule.remaining == 0:
                    continue
                if rule.match is not None and rule.match not in key:
                    continue
                if rule.stream is not None and rule.stream != stream:
                    continue
                if not stream and rule.kind in _MID_STREAM_KINDS:
                    continue
                if rule.remaining is not None:
                    rule.remaining -= 1
                rule.applied += 1
                return rule
        return None

    # ------------------------------------------------------------------ HTTP handlers

    async def _handle_chat(self, request: web.Request) -> web.StreamResponse:
        t0 = time.monotonic()
        bad: str | None = None
        try:
            body = json.loads(await request.read())
            messages = body["messages"]
            if not isinstance(messages, list):
                raise TypeError("messages must be a list")
        except (ValueError, KeyError, TypeError) as exc:
            body, messages, bad = {}, [], str(exc)
        key, prompt_tokens = _digest(messages)
        stream = bool(body.get("stream"))
        entry: dict[str, Any] = {
            "t": t0,
            "key": key,
            "stream": stream,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": 0,
            "status": None,
            "fault": None,
            "outcome": "in_flight",
            "duration": None,
        }
        self._begin(entry)
        try:
            if bad is not None:
                entry["fault"] = "bad_request"
                return await self._send(
                    request,
                    entry,
                    400,
                    _error_body(f"Invalid request body: {bad}", "invalid_request_error", None),
                )
            return await self._chat(request, body, entry)
        except ConnectionError:  # client went away while we were writing
            self._end(entry, "cancelled")
            self._recount_cancelled(entry)
            return web.Response()
        finally:
            # no-op unless the handler was cancelled (client disconnect / shutdown)
            self._end(entry, "cancelled")

    async def _send(
        self,
        request: web.Request,
        entry: dict[str, Any],
        status: int,
        payload: bytes,
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        resp = web.Response(status=status, body=payload, headers=headers, content_type="application/json")
        entry["status"] = status
        await resp.prepare(request)
        self._end(entry, "completed")
        await resp.write_eof()
        return resp

    async def _chat(self, request: web.Request, body: dict[str, Any], entry: dict[str, Any]) -> web.StreamResponse:
        cfg = self._cfg
        key = entry["key"]
        stream = entry["stream"]
        rule = self._pick_fault(key, stream)
        limited: tuple[str, float] | None = None
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        n = len(cfg.pieces) + 1
        if isinstance(max_tokens, int) and 0 < max_tokens < n:
            n, finish_reason = max_tokens, "length"
        else:
            finish_reason = "stop"
        if rule is not None:
            entry["fault"] = rule.kind
        elif cfg.rpm is not None or cfg.tpm is not None:
            limited = self._limiter.admit(time.monotonic(), cfg, entry["prompt_tokens"] + n)
            if limited is not None:
                entry["fault"] = "rate_limit"

        delay = cfg.latency()
        if delay > 0:
            await asyncio.sleep(delay)

        headers = {"x-request-id": f"req_fault_{next(self._ids)}"}
        if cfg.ratelimit_headers and (cfg.rpm is not None or cfg.tpm is not None):
            headers.update(self._limiter.headers(time.monotonic(), cfg))

        if limited is not None:
            what, retry = limited
            headers["retry-after"] = _fmt_seconds(retry)
            headers["retry-after-ms"] = str(max(1, _ceil_ms(retry)))
            limit = cfg.rpm if what == "requests" else cfg.tpm
            msg = (
                f"Rate limit reached for {body.get('model')} on {what} per min (RPM/TPM): "
                f"Limit {limit}. Please try again in {_fmt_seconds(retry)}s."
            )
            return await self._send(request, entry, 429, _error_body(msg, what, "rate_limit_exceeded"), headers)

        mid: _Rule | None = None
        if rule is not None:
            kind = rule.kind
            if kind == "reset":
                self._end(entry, "aborted")
                _abort(request)
                return web.Response()
            if kind == "context_length":
                msg = rule.message or (
                    "This model's maximum context length is 8192 tokens. However, your "
                    f"messages resulted in {max(8193, entry['prompt_tokens'])} tokens. "
                    "Please reduce the length of the messages."
                )
                payload = _error_body(msg, "invalid_request_error", "context_length_exceeded", "messages")
                return await self._send(request, entry, 400, payload, headers)
            if kind in _STATUS_KINDS:
                status = int(kind)
                type_, code, msg = _STATUS_ERRORS[status]
                if status == 401:  # like OpenAI, the message echoes the key it was given
                    given = request.headers.get("Authorization", "").removeprefix("Bearer ")
                    msg = msg.replace("provided: test.", f"provided: {given}.")
                if rule.retry_after is not None:
                    headers["retry-after"] = _fmt_seconds(rule.retry_after)
                if rule.retry_after_ms is not None:
                    headers["retry-after-ms"] = _fmt_seconds(rule.retry_after_ms)
                headers.update(rule.headers)
                payload = _error_body(rule.message or msg, rule.error_type or type_, code)
                return await self._send(request, entry, status, payload, headers)
            if kind in _ODD_KINDS:
                headers.update(rule.headers)
                return await self._odd_answer(request, entry, rule, headers)
            if kind == "stall" and (not stream or rule.after_chunks is None):
                await asyncio.sleep(rule.stall_s)
            else:
                mid = rule

        model = body.get("model") or cfg.models[0]
        cid = f"chatcmpl-fault{next(self._ids)}"
        first = "echo: " + key
        usage = {
            "prompt_tokens": entry["prompt_tokens"],
            "completion_tokens": n,
            "total_tokens": entry["prompt_tokens"] + n,
        }
        if not stream:
            entry["completion_tokens"] = n
            text = first + "".join(cfg.pieces[: n - 1])
            payload = _dumps(
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": self._created,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {
                                "role": "assistant",
                                "content": text,
                                "refusal": None,
                                "annotations": [],
                            },
                            "logprobs": None,
                            "finish_reason": finish_reason,
                        }
                    ],
                    "usage": usage,
                    "service_tier": "default",
                    "system_fingerprint": None,
                }
            ).encode()
            return await self._send(request, entry, 200, payload, headers)
        return await self._stream(request, body, entry, cfg, headers, mid, model, cid, n, finish_reason, usage)

    async def _stream(
        self,
        request: web.Request,
        body: dict[str, Any],
        entry: dict[str, Any],
        cfg: _Config,
        headers: dict[str, str],
        mid: _Rule | None,
        model: str,
        cid: str,
        n: int,
        finish_reason: str,
        usage: dict[str, int],
    ) -> web.StreamResponse:
        opts = body.get("stream_options")
        include_usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
        head = (
            f'data: {{"id":"{cid}","object":"chat.completion.chunk","created":{self._created},'
            f'"model":{_dumps(model)},"system_fingerprint":null,"choices":['
        )
        tail = "}\n\n" if not include_usage else ',"usage":null}\n\n'
        piece_head = head + '{"index":0,"delta":{"content":'
        piece_tail = '},"logprobs":null,"finish_reason":null}]' + tail
        buf = [
            head + '{"index":0,"delta":{"role":"assistant","content":"","refusal":null},'
            '"logprobs":null,"finish_reason":null}]' + tail
        ]
        headers["Cache-Control"] = "no-cache"
        resp = web.StreamResponse(status=200, headers=headers)
        resp.content_type = "text/event-stream"
        resp.charset = "utf-8"
        entry["status"] = 200
        await resp.prepare(request)

        pieces = cfg.pieces
        delay = cfg.chunk_delay_s
        cut = min(mid.after_chunks or 0, n) if mid is not None else -1
        for i in range(n + 1):
            if i == cut:
                assert mid is not None
                if mid.kind == "malformed":
                    buf.append(_MALFORMED)
                else:
                    await resp.write("".join(buf).encode())
                    buf.clear()
                    if mid.kind == "reset_mid_stream":
                        await self._drain_then_abort(request, entry)
                        return resp
                    if mid.kind == "truncate":
                        self._end(entry, "completed")
                        await resp.write(_DONE.encode())
                        await resp.write_eof()
                        return resp
                    await asyncio.sleep(mid.stall_s)  # "stall"
            if i == n:
                break
            if delay > 0 and i:
                if buf:
                    await resp.write("".join(buf).encode())
                    buf.clear()
                await asyncio.sleep(delay)
            buf.append(piece_head + _dumps(pieces[i - 1] if i else "echo: " + entry["key"]) + piece_tail)
            entry["completion_tokens"] = i + 1
        buf.append(head + f'{{"index":0,"delta":{{}},"logprobs":null,"finish_reason":"{finish_reason}"}}]' + tail)
        if include_usage:
            buf.append(head + f'],"usage":{_dumps(usage)}}}\n\n')
        buf.append(_DONE)
        data = "".join(buf).encode()
        self._end(entry, "completed")
        await resp.write(data)
        await resp.write_eof()
        return resp

    async def _odd_answer(
        self, request: web.Request, entry: dict[str, Any], rule: _Rule, headers: dict[str, str]
    ) -> web.StreamResponse:
        """The answers that are not answers (see ``_ODD_KINDS``)."""
        stream = entry["stream"]
        if rule.kind == "validation_500":  # what llama-cpp-python's server says to a json_schema response_format
            message = rule.message or (  # word for word what llama-cpp-python 0.3 sends
                "1 validation error:\n  {'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), "
                "'msg': \"Input should be 'text' or 'json_object'\", 'input': 'json_schema', "
                "'ctx': {'expected': \"'text' or 'json_object'\"}}\n"
            )
            payload = _error_body(message, rule.error_type or "internal_server_error", None)
            return await self._send(request, entry, 500, payload, headers)
        if rule.kind == "endless":
            return await self._endless(request, entry, rule, headers)
        if rule.kind == "empty_choices":
            body: dict[str, Any] = {"id": "chatcmpl-empty", "object": "chat.completion", "choices": []}
        else:  # error_body: a 200 whose body is an error object
            message = rule.message or "The server had an error while processing your request."
            body = {"error": {"message": message, "type": rule.error_type or "server_error", "code": None}}
        if not stream:
            return await self._send(request, entry, 200, _dumps(body).encode(), headers)
        resp = web.StreamResponse(status=200, headers={**headers, "Cache-Control": "no-cache"})
        resp.content_type = "text/event-stream"
        entry["status"] = 200
        await resp.prepare(request)
        self._end(entry, "completed")
        await resp.write(f"data: {_dumps(body)}\n\n{_DONE}".encode())
        await resp.write_eof()
        return resp

    async def _endless(
        self, request: web.Request, entry: dict[str, Any], rule: _Rule, headers: dict[str, str]
    ) -> web.StreamResponse:
        """An answer that keeps trickling bytes for ``stall_s`` seconds (never a finish reason), then a reset."""
        stream = entry["stream"]
        resp = web.StreamResponse(status=200, headers=headers)
        resp.content_type = "text/event-stream" if stream else "application/json"
        entry["status"] = 200
        await resp.prepare(request)
        interval = self._cfg.chunk_delay_s or 0.01
        piece = (
            'data: {"id":"chatcmpl-endless","object":"chat.completion.chunk","created":0,"model":"m",'
            '"choices":[{"index":0,"delta":{"content":" again"},"finish_reason":null}]}\n\n'
            if stream
            else " "
        ).encode()
        deadline = time.monotonic() + rule.stall_s
        while time.monotonic() < deadline:
            await resp.write(piece)
            entry["completion_tokens"] += 1 if stream else 0
            await asyncio.sleep(interval)
        self._end(entry, "aborted")
        _abort(request)
        return resp

    async def _drain_then_abort(self, request: web.Request, entry: dict[str, Any]) -> None:
        transport = request.transport
        # Let already-written chunks reach the socket before the RST discards them.
        for _ in range(200):
            if transport is None or transport.is_closing():
                break
            if transport.get_write_buffer_size() == 0:
                break
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.002)  # margin for the kernel to put the bytes on the wire
        self._end(entry, "aborted")
        _abort(request)

    async def _handle_models(self, request: web.Request) -> web.Response:
        data = [
            {"id": m, "object": "model", "created": self._created, "owned_by": "fault-server"} for m in self._cfg.models
        ]
        return web.json_response({"object": "list", "data": data})

    async def _handle_model(self, request: web.Request) -> web.Response:
        model = request.match_info["model"]
        return web.json_response({"id": model, "object": "model", "created": self._created, "owned_by": "fault-server"})

    async def _handle_stats(self, request: web.Request) -> web.Response:
        include_log = request.query.get("log", "1").lower() not in ("0", "false", "no")
        data = self.stats(include_log=include_log)
        data["status_counts"] = {str(k): v for k, v in data["status_counts"].items()}
        data["faults"] = self.faults()
        data["settings"] = self.settings
        return web.json_response(data)

    async def _read_json(self, request: web.Request) -> Any:
        raw = await request.read()
        return json.loads(raw) if raw.strip() else {}

    async def _handle_configure(self, request: web.Request) -> web.Response:
        try:
            data = await self._read_json(request)
            if not isinstance(data, dict):
                raise ValueError("expected a JSON object of settings")
            settings = self.configure(**data)
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"settings": settings})

    async def _handle_list_faults(self, request: web.Request) -> web.Response:
        return web.json_response({"faults": self.faults()})

    async def _handle_add_faults(self, request: web.Request) -> web.Response:
        try:
            data = await self._read_json(request)
            rules = [_Rule.from_dict(d) for d in (data if isinstance(data, list) else [data])]
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        with self._lock:
            self._rules.extend(rules)
        return web.json_response({"faults": self.faults()})

    async def _handle_clear_faults(self, request: web.Request) -> web.Response:
        self.clear_faults()
        return web.json_response({"faults": []})

    async def _handle_reset(self, request: web.Request) -> web.Response:
        try:
            data = await self._read_json(request)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        if isinstance(data, dict) and data.get("all"):
            self.reset()
        else:
            self.reset_stats()
        return web.json_response({"ok": True})

    # ------------------------------------------------------------------ standalone

    async def serve_forever(self, on_ready: Callable[[], None] | None = None) -> None:
        """Serve on the current loop until SIGTERM/SIGINT (standalone mode)."""
        loop = asyncio.get_running_loop()

        def ready() -> None:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._request_stop)
            if on_ready is not None:
                on_ready()

        try:
            await self._serve(ready)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    def _request_stop(self) -> None:
        if self._stop_event is not None:
            self._stop_event.set()


def fault_server_fixture() -> Iterator[FaultServer]:
    """Plain generator for a pytest fixture: yields a started FaultServer, then stops it."""
    server = FaultServer().start()
    try:
        yield server
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--latency-range-ms", type=float, nargs=2, metavar=("LO", "HI"))
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0)
    parser.add_argument("--chunks", type=int, default=DEFAULT_SETTINGS["chunks"])
    parser.add_argument("--rpm-limit", type=int)
    parser.add_argument("--tpm-limit", type=int)
    parser.add_argument("--time-scale", type=float, default=1.0)
    parser.add_argument("--ratelimit-headers", action="store_true")
    args = parser.parse_args(argv)
    server = FaultServer(
        args.host,
        args.port,
        latency_ms=args.latency_ms,
        latency_range_ms=args.latency_range_ms,
        chunk_delay_ms=args.chunk_delay_ms,
        chunks=args.chunks,
        rpm_limit=args.rpm_limit,
        tpm_limit=args.tpm_limit,
        time_scale=args.time_scale,
        send_ratelimit_headers=args.ratelimit_headers,
    )

    def ready() -> None:
        sys.stdout.write(f"READY {server.base_url}\n")
        sys.stdout.flush()

    asyncio.run(server.serve_forever(ready))
    return 0


if __name__ == "__main__":
    sys.exit(main())
