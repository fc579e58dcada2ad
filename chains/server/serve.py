"""``serve``: the app under uvicorn; SIGTERM is an interrupt (exit 130) and open streams get ``--grace`` seconds."""

import math
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

import uvicorn

from chains.errors import UsageError
from chains.io.sinks import check_writable
from chains.providers.models import ModelSession
from chains.server.app import create_app
from chains.server.service import Service
from chains.settings import RunSettings

# ----------------------------------------------------------------------------- serving


class _Server(uvicorn.Server):
    """uvicorn's server, which also tells the service the moment a shutdown signal arrives: open streams
    are then stopped, with a reason, before uvicorn's graceful-shutdown timeout cuts them."""

    def __init__(self, config: uvicorn.Config, service: Service) -> None:
        super().__init__(config)
        self.service = service

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self.service.begin_shutdown()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM is an interrupt, like Ctrl-C: a ``KeyboardInterrupt``, which the CLI reports as one line, exit 130.

    uvicorn handles the signal while it serves and raises it again after its graceful shutdown; with
    SIGTERM's default action that (like a SIGTERM before uvicorn starts) ended the process, status 143.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


async def serve(
    settings: RunSettings,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    log_path: str | None = None,
    grace: float = 10.0,
    quiet: bool = False,
) -> int:
    """Run the app under uvicorn until SIGTERM/SIGINT (then ``KeyboardInterrupt``); in-flight requests get
    ``grace`` seconds."""
    with _sigterm_interrupts():
        from chains.providers.tracing import disable_unreachable_tracing

        if warning := disable_unreachable_tracing():
            print(warning, file=sys.stderr)
        if settings.tier == "batch":
            raise UsageError(
                "serve answers each request as it comes: --tier batch is for file runs; use online or flex"
            )
        notice = ModelSession.check(settings)  # a bad --model, a missing key or price: one line, before serving
        if notice and not quiet:
            print(notice, file=sys.stderr)
        if log_path:
            check_writable(log_path, "--log")  # before serving: a FIFO without a reader is refused, not waited on
        app = create_app(settings, api_key=api_key, log_path=log_path, grace=grace)
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            timeout_graceful_shutdown=math.ceil(grace),
            server_header=False,
            log_level="warning" if quiet else "info",
            access_log=not quiet,
        )
        server = _Server(config, app.state.service)
        await server.serve()
        return 0 if server.started else 1
