"""An aiohttp application served on its own event loop and daemon thread (tests), or on the caller's loop until
SIGTERM/SIGINT (standalone, the benchmarks): the lifecycle the fault servers share.

A subclass gives its application (``_app``); ``start``/``stop`` (or ``with``) serve it on ``host:port`` (port 0:
a free one, known once ``start`` returns); ``serve_forever`` serves it in the foreground.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Callable
from typing import Any, Self

from aiohttp import web


class ThreadedServer:
    """Serves ``self._app()``; in-flight handlers are cancelled at ``stop`` (after ``shutdown_timeout``)."""

    host: str
    port: int

    def _init_server(self, host: str, port: int, shutdown_timeout: float) -> None:
        self.host = host
        self.port = port
        self._shutdown_timeout = shutdown_timeout
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None

    def _app(self) -> web.Application:
        raise NotImplementedError

    @property
    def root_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> Self:
        """Start serving on a daemon thread; returns self once the port is bound."""
        name = type(self).__name__
        if self._thread is not None:
            raise RuntimeError(f"{name} already started")
        self._ready.clear()
        self._thread = threading.Thread(target=self._thread_main, name=name, daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"{name} did not start in time")
        if self._startup_error is not None:
            self._thread.join()
            self._thread = None
            raise RuntimeError(f"{name} failed to start") from self._startup_error
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
            raise RuntimeError(f"{type(self).__name__} thread did not stop in time")
        self._thread = None

    def __enter__(self) -> Self:
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
        runner = web.AppRunner(
            self._app(),
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

    def _call_soon(self, callback: Callable[..., Any], *args: Any) -> None:
        """Run ``callback`` on the server's loop, from any thread (nothing when it is not serving)."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(callback, *args)
