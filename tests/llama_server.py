"""A real OpenAI-compatible model server for the slow tests: llama.cpp (llama-cpp-python) on 127.0.0.1.

``llama_server_fixture()`` starts ``python -m llama_cpp.server`` on a free port
with the tiny real model from ``../shared/models`` (or ``$CHAIN_RUNNER_TEST_MODEL``),
waits until ``GET /v1/models`` answers, yields the base URL
(``http://127.0.0.1:PORT/v1``) and stops the server afterwards.  Register it in
``tests/conftest.py`` as a session fixture called ``llama_server``.

Server flags, and why:

- ``--interrupt_requests False``: llama-cpp-python runs one request at a time
  (a lock around its single model context; concurrent requests queue).  By
  default it *cuts a streaming answer short* as soon as another request is
  waiting: the stream ends with ``[DONE]`` and no finish reason.  With
  ``--max-concurrency 2 --stream`` every stream would be broken and retried.
- ``--n_ctx 512``: an answer ends at the end of the context window at the
  latest, which keeps every request short (llama-cpp-python ignores
  ``max_completion_tokens``, the name langchain-openai gives ``max_tokens``).
  The story chain's outline fills what its prompt leaves (~127 tokens); the
  story prompt, which holds the outline, then leaves 25-27 tokens for the
  story: short, but never empty and never over the window (80 runs measured).
- ``--n_threads``: one thread per two cores, so the test process keeps a core.

``RecordingProxy`` sits between a client and the server and keeps every chat
completion exchange as it went over the wire (request body, JSON answer or SSE
events), so tests compare records with what the server itself reported.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
MODEL_ENV = "CHAIN_RUNNER_TEST_MODEL"
DEFAULT_MODEL = ROOT.parent / "shared" / "models" / "stories260K.gguf"
MODEL_ALIAS = "stories260K"
"""The name the server lists in /v1/models; use ``--model openai:stories260K``."""
N_CTX = 512
STARTUP_TIMEOUT_S = 120.0


def model_path() -> Path:
    """The GGUF model to serve: ``$CHAIN_RUNNER_TEST_MODEL`` or ``../shared/models/stories260K.gguf``."""
    configured = os.environ.get(MODEL_ENV)
    path = Path(configured).expanduser() if configured else DEFAULT_MODEL
    if not path.is_file():
        where = f"${MODEL_ENV}={configured}" if configured else f"the default path (set ${MODEL_ENV} to override)"
        pytest.fail(
            f"the test model is missing: {path} ({where}); the slow tests need a real GGUF model, "
            "e.g. ../shared/models/stories260K.gguf beside the repository",
            pytrace=False,
        )
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LlamaServer:
    """One ``python -m llama_cpp.server`` process; ``start()`` returns once it answers."""

    def __init__(self, model: Path, *, port: int | None = None, n_ctx: int = N_CTX) -> None:
        self.model = model
        self.port = port or free_port()
        self.n_ctx = n_ctx
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._logdir = Path(tempfile.mkdtemp(prefix="llama-server-"))
        self.log_path = self._logdir / "server.log"
        self._log: Any = None
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        threads = max(1, (os.cpu_count() or 2) // 2)
        return [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(self.model),
            "--model_alias",
            MODEL_ALIAS,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--n_ctx",
            str(self.n_ctx),
            "--n_threads",
            str(threads),
            "--n_threads_batch",
            str(threads),
            "--interrupt_requests",
            "False",
            "--verbose",
            "True",
        ]

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def start(self, timeout: float = STARTUP_TIMEOUT_S) -> str:
        self._log = self.log_path.open("wb")
        env = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")}
        self.process = subprocess.Popen(
            self.command(), stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
        deadline = time.monotonic() + timeout
        with httpx.Client(trust_env=False, timeout=2.0) as client:
            while True:
                code = self.process.poll()
                if code is not None:
                    self.stop(keep_log=True)
                    raise RuntimeError(
                        f"llama.cpp server exited with code {code} before it was ready "
                        f"(log: {self.log_path}):\n{self.log_tail()}"
                    )
                try:
                    response = client.get(f"{self.base_url}/models")
                    if response.status_code == 200:
                        return self.base_url
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    self.stop(keep_log=True)
                    raise RuntimeError(
                        f"llama.cpp server did not answer GET {self.base_url}/models within {timeout:g}s "
                        f"(log: {self.log_path}):\n{self.log_tail()}"
                    )
                time.sleep(0.2)

    def stop(self, *, keep_log: bool = False) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if not keep_log:
            shutil.rmtree(self._logdir, ignore_errors=True)


def llama_server_fixture() -> Iterator[str]:
    """Start the server for the session, yield its base URL, stop it afterwards.

    In ``tests/conftest.py``::

        from llama_server import llama_server_fixture
        llama_server = pytest.fixture(scope="session", name="llama_server")(llama_server_fixture)
    """
    try:
        import llama_cpp.server  # noqa: F401
    except ImportError as exc:
        pytest.fail(
            f"llama-cpp-python's server is not installed ({exc}); pip install 'llama-cpp-python[server]'",
            pytrace=False,
        )
    server = LlamaServer(model_path())
    try:
        yield server.start()
    finally:
        server.stop()


# --- what went over the wire ----------------------------------------------------


@dataclass
class Exchange:
    """One chat completion request and the server's answer, as sent."""

    request: dict[str, Any]
    status: int = 0
    response: dict[str, Any] | None = None
    """The JSON body of a non-streamed answer."""
    events: list[dict[str, Any]] = field(default_factory=list)
    """The SSE ``data:`` objects of a streamed answer (without ``[DONE]``)."""
    done: bool = False
    """A streamed answer ended with ``data: [DONE]``."""
    error: str | None = None
    """The body of an answer that was not a success."""

    @property
    def streamed(self) -> bool:
        return bool(self.request.get("stream"))

    @property
    def usage(self) -> dict[str, Any] | None:
        """The usage the server reported (in the answer, or in any stream chunk)."""
        if self.response is not None:
            return self.response.get("usage")
        for event in self.events:
            if event.get("usage"):
                return dict(event["usage"])
        return None

    @property
    def text(self) -> str:
        """The answer's text: the message content, or every streamed delta joined."""
        if self.response is not None:
            return str(self.response["choices"][0]["message"].get("content") or "")
        parts = []
        for event in self.events:
            for choice in event.get("choices") or []:
                parts.append((choice.get("delta") or {}).get("content") or "")
        return "".join(parts)

    @property
    def finish_reason(self) -> str | None:
        if self.response is not None:
            return self.response["choices"][0].get("finish_reason")
        for event in reversed(self.events):
            for choice in event.get("choices") or []:
                if choice.get("finish_reason"):
                    return str(choice["finish_reason"])
        return None

    def prompt_text(self) -> str:
        return "\n".join(str(m.get("content") or "") for m in self.request.get("messages", []))


class RecordingProxy:
    """A pass-through HTTP proxy to ``upstream`` (a ``.../v1`` URL) that records chat completions."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.exchanges: list[Exchange] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="recording-proxy", daemon=True
        )

    def __enter__(self) -> RecordingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def chat(self) -> list[Exchange]:
        """Every chat completion exchange so far, in the order the requests arrived."""
        with self._lock:
            return list(self.exchanges)

    def about(self, needle: str) -> list[Exchange]:
        """The exchanges whose prompt mentions ``needle`` (e.g. one input's topic)."""
        return [e for e in self.chat() if needle in e.prompt_text()]

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # keep the test output quiet
                pass

            def do_GET(self) -> None:
                self._forward()

            def do_POST(self) -> None:
                self._forward()

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                exchange: Exchange | None = None
                if self.command == "POST" and self.path.rstrip("/").endswith("/chat/completions"):
                    exchange = Exchange(request=json.loads(body or b"{}"))
                    with proxy._lock:
                        proxy.exchanges.append(exchange)
                        proxy.in_flight += 1
                        proxy.max_in_flight = max(proxy.max_in_flight, proxy.in_flight)
                try:
                    self._relay(body, exchange)
                finally:
                    if exchange is not None:
                        with proxy._lock:
                            proxy.in_flight -= 1

            def _relay(self, body: bytes, exchange: Exchange | None) -> None:
                upstream = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=300)
                try:
                    headers = {
                        k: v
                        for k, v in self.headers.items()
                        if k.lower() in ("content-type", "accept", "authorization")
                    }
                    upstream.request(self.command, self.path, body=body or None, headers=headers)
                    answer = upstream.getresponse()
                    content_type = answer.getheader("Content-Type", "")
                    if exchange is not None:
                        exchange.status = answer.status
                    self.send_response(answer.status)
                    self.send_header("Content-Type", content_type)
                    if "text/event-stream" in content_type:
                        self.send_header("Transfer-Encoding", "chunked")
                        self.end_headers()
                        pending = b""
                        while chunk := answer.read1(65536):
                            # recorded before it is passed on: a client that stops at [DONE] may be done before
                            # the proxy's next line runs
                            pending += chunk
                            *lines, pending = pending.split(b"\n")
                            if exchange is not None:
                                _parse_sse(lines, exchange)
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                            self.wfile.flush()
                        if exchange is not None:
                            _parse_sse([pending], exchange)
                        self.wfile.write(b"0\r\n\r\n")
                        self.wfile.flush()
                    else:
                        data = answer.read()
                        self.send_header("Content-Length", str(len(data)))
                        self.end_headers()
                        self.wfile.write(data)
                        self.wfile.flush()
                        if exchange is not None and answer.status == 200:
                            exchange.response = json.loads(data)
                        elif exchange is not None:
                            exchange.error = data.decode("utf-8", errors="replace")
                finally:
                    upstream.close()

        return Handler


def _parse_sse(lines: list[bytes], exchange: Exchange) -> None:
    """Whole lines of the stream into ``exchange`` (``data: [DONE]`` sets ``done``)."""
    for raw in lines:
        line = raw.decode("utf-8").rstrip("\r")
        if not line.startswith("data:"):
            continue
        payload = line[len("data:") :].strip()
        if payload == "[DONE]":
            exchange.done = True
        elif payload:
            exchange.events.append(json.loads(payload))
