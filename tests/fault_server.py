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

It also serves OpenAI's Files + Batches API (``/v1/files``, ``/v1/batches``) with batch faults
(``add_batch_fault``, ``release_batches``, ``batch_submissions``): see ``fault_batches``.

Reply content: the first piece is ``"echo: " + <last user message>``, followed by
``chunks - 1`` pieces ``" t1"``, ``" t2"``, ...; ``completion_tokens`` is the number of
pieces sent and ``prompt_tokens`` the number of whitespace-separated words over all
request messages.

Per request, fault rules are checked first (in insertion order, first match wins);
a request that matched a fault does not count against ``rpm_limit`` / ``tpm_limit``.
Requests rejected by the rate limiter are not recorded in the limiter window either.
Latency (``latency_ms`` / ``latency_range_ms``) is applied before *every* response,
error responses and resets included.

The pieces: ``fault_settings`` (the settings, the rate limiter), ``fault_rules`` (the fault
kinds and one rule), ``fault_replies`` (writing one answer: a ``Reply`` per request); this
module is the server itself (bookkeeping, control API, the standalone ``main``; its lifecycle: ``threaded_server``).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

from aiohttp import web
from fault_batches import Batches
from fault_replies import Reply, error_body, send_json
from fault_rules import FAULT_KINDS, MID_STREAM_KINDS, Rule, RuleBook
from fault_settings import DEFAULT_SETTINGS, Config, RateLimiter, normalize_settings
from threaded_server import ThreadedServer

__all__ = [
    "DEFAULT_SETTINGS",
    "FAULT_KINDS",
    "FaultServer",
    "fault_server_fixture",
    "main",
]


# ----------------------------------------------------------------------------- requests


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


def _length(body: dict[str, Any], cfg: Config) -> tuple[int, str]:
    """Pieces in the answer and its finish reason: ``max_tokens`` below the configured length cuts it."""
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    n = len(cfg.pieces) + 1
    if isinstance(max_tokens, int) and 0 < max_tokens < n:
        return max_tokens, "length"
    return n, "stop"


# ----------------------------------------------------------------------------- server


class FaultServer(ThreadedServer, RuleBook):
    """OpenAI-compatible fault-injecting server running on its own loop/thread (``threaded_server``).

    Fault rules: ``add_fault(kind, match=None, times=None, **kw)`` (kw: see ``fault_rules.Rule``), ``faults()``,
    ``clear_faults()``.
    """

    _rule_type = Rule

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        shutdown_timeout: float = 0.1,
        log_limit: int | None = 200_000,
        **settings: Any,
    ) -> None:
        self._init_server(host, port, shutdown_timeout)
        self._cfg = Config(normalize_settings(DEFAULT_SETTINGS, settings))
        self._lock = threading.Lock()
        self._rules: list[Rule] = []
        self._limiter = RateLimiter()
        self._ids = itertools.count(1)
        self._created = int(time.time())
        self._log: deque[dict[str, Any]] = deque(maxlen=log_limit)
        self._reset_counters()
        self._batches = Batches(self._pick_fault, _digest, _length, lambda: self._cfg, self._created)

    # ------------------------------------------------------------------ lifecycle

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def _app(self) -> web.Application:
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
        self._batches.add_routes(app.router)
        return app

    # ------------------------------------------------------------------ control API

    def configure(self, **settings: Any) -> dict[str, Any]:
        """Update settings (see DEFAULT_SETTINGS); returns the full new settings."""
        new = normalize_settings(self._cfg.settings, settings)
        if {"rpm_limit", "tpm_limit", "time_scale"} & set(settings):
            self._limiter = RateLimiter()
        self._cfg = Config(new)
        return dict(new)

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self._cfg.settings)

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
        self._batches.reset_stats()

    def reset(self) -> None:
        """Full reset: stats, fault rules, rate-limit window and default settings."""
        self._batches.reset()
        with self._lock:
            self._reset_counters()
            self._rules.clear()
        self._cfg = Config(dict(DEFAULT_SETTINGS))
        self._limiter = RateLimiter()

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
                "batches": self._batches.stats(),
            }

    def requests_for(self, key: str) -> int:
        """Number of chat requests whose last user message was exactly ``key``."""
        with self._lock:
            return self._per_key.get(key, 0)

    # ------------------------------------------------------------------ batches (the logic is in fault_batches)

    @property
    def batches(self) -> Batches:
        return self._batches

    def add_batch_fault(
        self, fault: str, match: str | None = None, times: int | None = None, **kw: Any
    ) -> dict[str, Any]:
        return self._batches.add_fault(fault, match, times, **kw)

    def configure_batches(self, **settings: Any) -> dict[str, float]:
        return self._batches.configure(**settings)

    def release_batches(self) -> int:
        return self._batches.release()

    def batch_submissions(self) -> dict[str, int]:
        return self._batches.submissions()

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

    def _pick_fault(self, key: str, stream: bool, model: str | None = None) -> Rule | None:
        if not self._rules:
            return None
        with self._lock:
            for rule in self._rules:
                if rule.remaining == 0:
                    continue
                if rule.match is not None and rule.match not in key:
                    continue
                if rule.model is not None and rule.model != model:
                    continue
                if rule.stream is not None and rule.stream != stream:
                    continue
                if not stream and rule.kind in MID_STREAM_KINDS:
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
            "service_tier": body.get("service_tier"),
            "model": body.get("model"),
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
                payload = error_body(f"Invalid request body: {bad}", "invalid_request_error", None)
                return await send_json(request, entry, self._end, 400, payload)
            return await self._chat(request, body, entry)
        except ConnectionError:  # client went away while we were writing
            self._end(entry, "cancelled")
            self._recount_cancelled(entry)
            return web.Response()
        finally:
            # no-op unless the handler was cancelled (client disconnect / shutdown)
            self._end(entry, "cancelled")

    async def _chat(self, request: web.Request, body: dict[str, Any], entry: dict[str, Any]) -> web.StreamResponse:
        """Decide once what this request gets (fault, length, rate limit), wait the latency, then answer."""
        cfg = self._cfg
        rule = self._pick_fault(entry["key"], entry["stream"], body.get("model"))
        n, finish_reason = _length(body, cfg)
        limited = self._admit(entry, cfg, rule, n)
        delay = cfg.latency()
        if delay > 0:
            await asyncio.sleep(delay)
        reply = Reply(
            request, body, entry, cfg, self._reply_headers(cfg), rule, n, finish_reason, self._created, self._end
        )
        if limited is not None:
            return await reply.rate_limited(*limited)
        if rule is not None:
            response = await reply.fault()
            if response is not None:
                return response
        reply.model = body.get("model") or cfg.models[0]
        reply.id = f"chatcmpl-fault{next(self._ids)}"
        return await (reply.stream_answer() if reply.stream else reply.completion())

    def _admit(self, entry: dict[str, Any], cfg: Config, rule: Rule | None, n: int) -> tuple[str, float] | None:
        """Mark the request's fault; one that matched no fault rule goes through the rate limiter."""
        if rule is not None:
            entry["fault"] = rule.kind
            return None
        if cfg.rpm is None and cfg.tpm is None:
            return None
        limited = self._limiter.admit(time.monotonic(), cfg, entry["prompt_tokens"] + n)
        if limited is not None:
            entry["fault"] = "rate_limit"
        return limited

    def _reply_headers(self, cfg: Config) -> dict[str, str]:
        headers = {"x-request-id": f"req_fault_{next(self._ids)}"}
        if cfg.ratelimit_headers and (cfg.rpm is not None or cfg.tpm is not None):
            headers.update(self._limiter.headers(time.monotonic(), cfg))
        return headers

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
            self.add_faults(await self._read_json(request))
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
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
