"""``Service``: what the routes share (the one ``ModelSession``, built chains, metrics, the generation log) and
the three ways to run a chain: invoke, batch, stream (SSE), each cancelled when its client goes away."""

import asyncio
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Sequence
from contextlib import aclosing, asynccontextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from fastapi import BackgroundTasks, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from langchain_core.runnables import Runnable
from sse_starlette import EventSourceResponse
from starlette.background import BackgroundTask

from chains.engine.execution import ANSWER_FIELDS, BATCH_FIELDS, LOG_FIELDS, Record, StreamEvent, run_batch, stream_one
from chains.errors import ChainRunnerError, HttpAnswer, PayloadTooLarge, http_answer
from chains.io.sinks import JsonlSink, json_text
from chains.providers.models import ModelSession
from chains.server.metrics import ServerMetrics
from chains.server.middleware import (
    ErrorJSONResponse,
)
from chains.server.routes import RunConfig
from chains.settings import RunSettings
from chains.spec.prompts_library import PromptLibrary
from chains.spec.registry import get_chain

log = logging.getLogger("chains.server")
T = TypeVar("T")
FAREWELL_S = 0.5  # an open stream is told the server is stopping this long before --grace ends


SHUTTING_DOWN = {
    "type": "ServiceUnavailable",
    "message": "the server is shutting down and stopped this stream before it finished; retry the request",
    "status": 503,
}


class _ClientGone(Exception):
    """The client disconnected before its response was ready."""


# ----------------------------------------------------------------------------- helpers


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work`` in a task; cancel it (and its model requests) if the client goes away."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
        await asyncio.gather(task, watcher, return_exceptions=True)
    if task.cancelled():
        raise _ClientGone
    return task.result()


async def _until_stopped(source: AsyncIterator[T], stopping: asyncio.Event, after: float) -> AsyncIterator[T | None]:
    """``source``'s items until ``after`` seconds past ``stopping``; then one ``None``, and ``source`` is closed.

    A stream still open when the shutdown grace ends is cancelled by uvicorn mid-sentence; stopping it
    a moment before lets the caller tell the client why.  ``source`` is read by a task of its own so
    that waiting for its next item never holds up the deadline.
    """
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    async def pump() -> None:
        try:
            async with aclosing(cast(AsyncGenerator[T, None], source)) as items:
                async for item in items:
                    queue.put_nowait(("item", item))
            queue.put_nowait(("end", None))
        except Exception as exc:
            queue.put_nowait(("error", exc))

    async def deadline() -> None:
        await stopping.wait()
        await asyncio.sleep(after)
        queue.put_nowait(("stop", None))

    tasks = [asyncio.ensure_future(pump()), asyncio.ensure_future(deadline())]
    try:
        while True:
            kind, item = await queue.get()
            if kind == "error":
                raise item
            if kind == "end":
                return
            yield item  # None when the deadline has come
            if kind == "stop":
                return
    finally:
        for task in tasks:
            task.cancel()  # cancels the source's model request, if it is still running
        await asyncio.gather(*tasks, return_exceptions=True)


# ----------------------------------------------------------------------------- the service


class Service:
    """What the routes share: the session, built chains, metrics and the log."""

    def __init__(
        self,
        settings: RunSettings,
        library: PromptLibrary,
        metrics: ServerMetrics,
        log_path: str | None,
        secrets: Sequence[str],
        grace: float,
    ) -> None:
        self.settings = settings
        self.library = library
        self.metrics = metrics
        self.grace = grace
        self.secrets = [s for s in secrets if len(s) >= 4]
        self.log_path = log_path
        self.log: JsonlSink | None = None  # the generation log, open while the app runs
        self.session: ModelSession | None = None
        self._chains: dict[tuple[str, bool], Runnable[Any, Any]] = {}
        self.stopping = asyncio.Event()  # set when the server starts to shut down
        self._loop: asyncio.AbstractEventLoop | None = None

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "[redacted]")
        return text

    @asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        self._loop = asyncio.get_running_loop()
        self.session = ModelSession(self.settings)
        if self.session.notice:
            log.info(self.session.notice)  # ``serve`` has printed it already
        self.metrics.bind_limits(self.session.limits)
        try:
            if self.log_path:  # the --output writer: appended, flushed, a line cut short by a crash left apart
                self.log = JsonlSink(self.log_path, flag="--log", append=True, lock=False, redact=self.redact)
            yield
        finally:
            session, self.session = self.session, None
            self._chains.clear()
            await session.aclose()
            if self.log is not None:
                self.log.close()

    def begin_shutdown(self) -> None:
        """Open streams get ``grace`` seconds from now.  Safe to call from a signal handler."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.stopping.set)

    def _session(self) -> ModelSession:
        if self.session is None:
            raise ChainRunnerError("the server is not started (no model session)")
        return self.session

    def chain(self, name: str, config: RunConfig | None, *, streaming: bool) -> Runnable[Any, Any]:
        key = (name, streaming)
        if key not in self._chains:
            model = self._session().model
            # The runner's own streaming (a failed attempt's tokens are reported discarded and retried).
            llm = model.model_copy(update={"stream_requests": True}) if streaming else model
            self._chains[key] = get_chain(name, llm, library=self.library)
        chain = self._chains[key]
        extra = config.model_dump(exclude_defaults=True) if config is not None else {}
        return chain.with_config(**extra) if extra else chain

    def run_kwargs(self) -> dict[str, Any]:
        session = self._session()
        return {"settings": session.settings, "limits": session.limits}

    # -- errors and log lines

    def failure(self, record: Record) -> tuple[HttpAnswer, dict[str, str]]:
        """The HTTP answer (``chains.errors.http_answer``) and ``{"type", "message"}`` body of a failed input."""
        error = record.error or {}
        answer = http_answer(record.exception) if record.exception is not None else HttpAnswer(500, {}, False)
        message = self.redact(str(error.get("message", "")))
        if not answer.explained:
            log.warning("chain failed: %s", message)
            message = f"the chain failed ({error.get('type', 'error')}); see the server log"
        return answer, {"type": str(error.get("type", "Error")), "message": message}

    def error_response(self, record: Record) -> JSONResponse:
        answer, body = self.failure(record)
        return ErrorJSONResponse({"error": body}, status_code=answer.status, headers=answer.headers)

    def entry(self, chain: str, endpoint: str, value: Any, record: Record | None) -> dict[str, Any]:
        """A generation-log line: a cancelled request (no record) has the same fields, empty."""
        head = {"time": datetime.now(UTC).isoformat(timespec="milliseconds"), "chain": chain, "endpoint": endpoint}
        if record is None:
            return {**head, **dict.fromkeys(LOG_FIELDS), "index": 0, "input": value, "status": "cancelled"}
        return {**head, **record.to_dict(LOG_FIELDS)}

    def log_later(self, background: BackgroundTasks, entries: list[dict[str, Any]]) -> None:
        if self.log is not None:
            background.add_task(self.log.write_entries, entries)

    # -- the three ways to run a chain

    async def invoke(
        self, name: str, request: Request, value: dict[str, Any], config: RunConfig | None, background: BackgroundTasks
    ) -> Any:
        batch = run_batch(self.chain(name, config, streaming=False), [value], **self.run_kwargs())
        try:
            [record] = await _unless_disconnected(request, _collect(batch))
        except _ClientGone:
            self.metrics.count_cancelled(name, "invoke")
            self.log_later(background, [self.entry(name, "invoke", value, None)])
            return Response(status_code=499)
        self.metrics.observe(name, record)
        self.log_later(background, [self.entry(name, "invoke", value, record)])
        if not record.ok:
            return self.error_response(record)
        return record.to_dict(ANSWER_FIELDS)

    async def batch(
        self,
        name: str,
        request: Request,
        values: list[dict[str, Any]],
        config: RunConfig | None,
        background: BackgroundTasks,
        max_batch: int,
    ) -> Any:
        if len(values) > max_batch:
            raise PayloadTooLarge(f"batch of {len(values)} inputs is over the limit of {max_batch}; split it")
        batch = run_batch(self.chain(name, config, streaming=False), values, **self.run_kwargs())
        try:
            records = await _unless_disconnected(request, _collect(batch))
        except _ClientGone:
            self.metrics.count_cancelled(name, "batch")
            return Response(status_code=499)
        summary = batch.summary.to_dict()
        for error in [*(r.error for r in records if r.error is not None), *summary["failures"]]:
            error["message"] = self.redact(str(error.get("message", "")))
        for record in records:
            self.metrics.observe(name, record)
        self.log_later(background, [self.entry(name, "batch", r.input, r) for r in records])
        return {"records": [r.to_dict(BATCH_FIELDS) for r in records], "summary": summary}

    def stream(self, name: str, value: dict[str, Any], config: RunConfig | None) -> Response:
        chain = self.chain(name, config, streaming=True)
        kwargs = self.run_kwargs()
        done: list[Record] = []

        async def events() -> AsyncIterator[dict[str, str]]:
            try:
                events_of = _until_stopped(
                    stream_one(chain, value, **kwargs), self.stopping, max(0.0, self.grace - FAREWELL_S)
                )
                async with aclosing(cast(AsyncGenerator[StreamEvent | None, None], events_of)) as stream:
                    async for event in stream:
                        if event is None:  # the grace period is nearly over: say why the stream ends
                            yield {"event": "error", "data": json.dumps(SHUTTING_DOWN)}
                            self.metrics.count_cancelled(name, "stream")
                            return
                        if event.kind in ("token", "discard"):
                            yield {"event": event.kind, "data": json.dumps({"text": event.text})}
                        elif event.kind == "end" and event.record is not None:
                            record = event.record
                            done.append(record)
                            self.metrics.observe(name, record)
                            if record.ok:
                                yield {"event": "end", "data": json_text(record.to_dict(ANSWER_FIELDS))}
                            else:
                                answer, body = self.failure(record)
                                yield {"event": "error", "data": json.dumps({**body, "status": answer.status})}
            except (asyncio.CancelledError, GeneratorExit):
                if not done:  # the client went away (or the server is stopping) mid-stream
                    self.metrics.count_cancelled(name, "stream")
                raise

        def write_log() -> None:
            if self.log is not None:
                self.log.write_entries([self.entry(name, "stream", value, done[0] if done else None)])

        # sse-starlette's own drain on shutdown stays as a backstop, after ours.
        return EventSourceResponse(events(), background=BackgroundTask(write_log), shutdown_grace_period=self.grace)


async def _collect(batch: Any) -> list[Record]:
    return sorted([record async for record in batch], key=lambda r: r.index)
