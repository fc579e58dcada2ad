"""Every chain over HTTP: ``create_app(settings)`` builds the FastAPI app, ``serve`` runs it.

One ``ModelSession`` (one model client, one connection pool, one set of
limits) is built when the app starts and shared by every request: each run is
given ``limits=session.limits``, so ``--max-concurrency`` holds across all
concurrent HTTP requests together.  Chains are built once per name.

Routes: ``GET /chains``, ``POST /chains/{name}/invoke|batch|stream`` (one
route per chain, with request and response models built from the chain's
declared inputs, so ``/docs`` shows them), ``GET /healthz`` and ``GET /metrics``.
A client that disconnects cancels its upstream model request.  Each finished
input is logged as one JSONL line in a background task after the response.
On SIGTERM, open streams run on for ``--grace`` seconds, then get an ``error``
event saying the server is stopping; ``serve`` then exits 130, like the CLI.

The docs work offline: ``/docs`` (Swagger UI 5, which renders FastAPI's OpenAPI 3.1) and ``/redoc`` load
their scripts and styles from the ``fastapi-offline`` package, served under ``/static-offline-docs/``,
never from a CDN.  With a key (``RUNNER_API_KEY``), every route needs ``Authorization: Bearer <key>`` except
``/healthz`` and the docs themselves: the pages, their assets and ``/openapi.json``.  A person has to load
the page before they can press Authorize and paste the key, and the page reads ``/openapi.json`` without
it; what that shows (chain names, input fields, descriptions) is the shape of the API, never a model call,
a metric or a record.  Every chain route, ``/chains`` and ``/metrics`` still need the key; an unknown path
needs it too, so nothing new is public by accident.  The key is declared in the OpenAPI document as an
HTTP bearer scheme on exactly those routes, which gives ``/docs`` its Authorize button; the scheme only
documents (``auto_error=False``): ``_AuthMiddleware`` does the checking, so a 401 has our own body.  The two
pages carry a Content-Security-Policy that lets the browser fetch from this server only, so a URL built
into a bundle (ReDoc's logo) or written in a prompt's description is never requested from elsewhere.
"""

# No ``from __future__ import annotations``: the per-chain routes annotate their
# bodies with models built at run time, which FastAPI must see as classes.

import asyncio
import hmac
import json
import logging
import math
import os
import re
import signal
import sys
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Iterator, Sequence
from contextlib import aclosing, asynccontextmanager, contextmanager
from datetime import UTC, datetime
from enum import Enum
from http import HTTPStatus
from types import FrameType
from typing import Annotated, Any, TypeVar, cast

import uvicorn
from fastapi import BackgroundTasks, FastAPI, Request, Security, params
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPBearer
from fastapi_offline import FastAPIOffline
from langchain_core.runnables import Runnable
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model
from pydantic_core import PydanticCustomError
from sse_starlette import EventSourceResponse
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chains.errors import ChainRunnerError, HttpAnswer, PayloadTooLarge, UnknownChainError, http_answer
from chains.execution import ANSWER_FIELDS, BATCH_FIELDS, LOG_FIELDS, Record, StreamEvent, run_batch, stream_one
from chains.metrics import ItemMetrics
from chains.models import ModelSession
from chains.prompts_library import PromptLibrary
from chains.registry import ChainInfo, get_chain, list_chains
from chains.server_metrics import MetricsMiddleware, ServerMetrics
from chains.settings import RunSettings
from chains.sinks import JsonlSink, check_writable, json_text

log = logging.getLogger("chains.server")
T = TypeVar("T")
FAREWELL_S = 0.5  # an open stream is told the server is stopping this long before --grace ends
DOCS_URL, REDOC_URL, OPENAPI_URL = "/docs", "/redoc", "/openapi.json"
DOCS_ASSETS = "/static-offline-docs"  # Swagger UI's and ReDoc's files, from the fastapi-offline package
# Routes that answer without the key (see the module docstring for why the docs are among them).
PUBLIC_PATHS = frozenset({"/healthz", DOCS_URL, f"{DOCS_URL}/oauth2-redirect", REDOC_URL, OPENAPI_URL})
# The docs pages may load nothing but this server's own files: a URL hard-coded in a bundle (ReDoc's logo,
# on a CDN) is refused by the browser instead of leaving the machine.
DOCS_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; worker-src 'self' blob:"
)
SHUTTING_DOWN = {
    "type": "ServiceUnavailable",
    "message": "the server is shutting down and stopped this stream before it finished; retry the request",
    "status": 503,
}


class _ClientGone(Exception):
    """The client disconnected before its response was ready."""


# ----------------------------------------------------------------------------- models


class RunConfig(BaseModel):
    """Per-request run options, passed to the chain's ``RunnableConfig``."""

    model_config = ConfigDict(extra="forbid")
    tags: list[str] = Field(default_factory=list, max_length=32)
    metadata: dict[str, str | int | float | bool] = Field(default_factory=dict)
    run_name: str | None = None


# The response schema of a record's metrics is the library's own dataclass: one definition.
ItemMetricsOut = ItemMetrics


class ErrorDetail(BaseModel):
    type: str
    message: str


class ErrorOut(BaseModel):
    error: ErrorDetail


class ChainOut(BaseModel):
    name: str
    description: str
    kind: str
    required: list[str]
    optional: list[str]
    input_schema: dict[str, Any]
    output_schema: dict[str, Any] | None = None


class BatchRecordOut(BaseModel):
    index: int
    output: Any = None
    error: dict[str, Any] | None = None
    metrics: ItemMetricsOut


class BatchOut(BaseModel):
    records: list[BatchRecordOut]
    summary: dict[str, Any]


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (400, 401, 402, 404, 413, 422, 500, 502, 503)
}


_SURROGATE = re.compile("[\ud800-\udfff]")
_A_KEY = object()  # in a path: the item is a key of the dict, not one of its values


def _well_formed(value: Any) -> Any:
    """Rejects text with a lone surrogate (JSON ``"\\ud800"``): valid JSON, but no UTF-8 encoder can write
    it, so the provider request, the response and the log would each fail on it later."""
    # A loop, not recursion (no nesting depth overflows it); each item keeps a link to its parent so
    # that the path to it is only built for the error.
    stack: list[tuple[Any, Any]] = [(value, None)]
    while stack:
        item, link = stack.pop()
        if isinstance(item, str):
            if bad := _SURROGATE.search(item):
                where = f"in {_path(link)} " if link else ""
                raise PydanticCustomError(
                    "lone_surrogate",
                    "not valid Unicode (lone surrogate) {where}at character {at} ({code}); send well-formed UTF-8 text",
                    {"where": where, "at": bad.start(), "code": ascii(bad[0])},
                )
        elif isinstance(item, dict):
            stack += [(k, (link, _A_KEY)) for k in item]
            stack += [(v, (link, k)) for k, v in item.items()]
        elif isinstance(item, list):
            stack += [(v, (link, i)) for i, v in enumerate(item)]
    return value


def _path(link: Any) -> str:
    parts: list[str] = []
    while link is not None:
        link, part = link
        parts.append(" (a key)" if part is _A_KEY else f"[{ascii(part) if isinstance(part, str) else part}]")
    path = "".join(reversed(parts))
    return path if len(path) <= 60 else "..." + path[-60:]  # one line, however deep the nesting


# Every input a client sends: any JSON value, as long as its text is well-formed.
_InputValue = Annotated[Any, AfterValidator(_well_formed)]


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def _chain_models(info: ChainInfo) -> tuple[type[BaseModel], ...]:
    """Input, invoke request, batch request and invoke response models of one chain."""
    # Fields are aliased so a variable called e.g. ``json`` cannot clash with BaseModel.
    fields: dict[str, Any] = {}
    for i, var in enumerate(info.required):
        fields[f"v{i}"] = (_InputValue, Field(..., alias=var, title=var, description="required input"))
    for i, var in enumerate(info.optional):
        fields[f"o{i}"] = (_InputValue, Field(None, alias=var, title=var, description="optional: has a default"))
    camel = _camel(info.name)
    strict = ConfigDict(extra="forbid")
    inputs = create_model(f"{camel}Input", __config__=strict, **fields)
    invoke = create_model(f"{camel}InvokeRequest", __config__=strict, input=(inputs, ...), config=(RunConfig, None))
    batch = create_model(
        f"{camel}BatchRequest",
        __config__=strict,
        inputs=(list[inputs], ...),  # type: ignore[valid-type]
        config=(RunConfig, None),
    )
    schema = info.output_schema or {"type": "string"}
    response = create_model(
        f"{camel}InvokeResponse", output=(Any, Field(json_schema_extra=schema)), metrics=(ItemMetricsOut, ...)
    )
    return inputs, invoke, batch, response


def _values(body: BaseModel) -> dict[str, Any]:
    return body.model_dump(by_alias=True, exclude_unset=True)  # unset optionals keep the prompt's default


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


class _JSONResponse(JSONResponse):
    """Error JSON that can always be sent: a lone surrogate (say, in an unknown field's name) is written
    as the JSON escape ``\\ud800`` instead of failing the UTF-8 encoding."""

    def render(self, content: Any) -> bytes:
        text = json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":"))
        return text.encode("utf-8", "backslashreplace")  # surrogates only occur inside JSON strings


def _error_json(
    status: int, type_: str, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    return _JSONResponse({"error": {"type": type_, "message": message, **extra}}, status_code=status, headers=headers)


def _where(loc: Sequence[Any]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "body"


# ----------------------------------------------------------------------------- middleware


def _bearer_key(header: bytes) -> bytes | None:
    """The key of an ``Authorization: Bearer <key>`` header, else None.

    The scheme is matched in any case (RFC 7235: ``bearer``, ``BEARER``) and any spaces may follow it."""
    scheme, space, key = header.partition(b" ")
    if not space or scheme.lower() != b"bearer":
        return None
    return key.lstrip(b" ")


def _needs_key(path: str) -> bool:
    return path not in PUBLIC_PATHS and not path.startswith(DOCS_ASSETS + "/")


# Documents the key in the OpenAPI schema (the Authorize button of /docs); the middleware checks it.
_BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="The server's key: RUNNER_API_KEY (or --api-key) of `runner.py serve`.",
)


class _AuthMiddleware:
    """``Authorization: Bearer <key>`` on every route but ``/healthz`` and the docs (constant-time check)."""

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app = app
        self.expected = key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _needs_key(scope["path"]):
            header = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
            given = _bearer_key(header)
            if given is None or not hmac.compare_digest(given, self.expected):
                response = _error_json(
                    401,
                    "Unauthorized",
                    "missing or wrong API key; send 'Authorization: Bearer <key>'",
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _DocsPolicyMiddleware:
    """Sends ``DOCS_POLICY`` as the ``Content-Security-Policy`` of the docs pages."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in (DOCS_URL, REDOC_URL):
            await self.app(scope, receive, send)
            return

        async def with_policy(message: Message) -> None:
            if message["type"] == "http.response.start":
                policy = (b"content-security-policy", DOCS_POLICY.encode())
                message = {**message, "headers": [*message.get("headers", []), policy]}
            await send(message)

        await self.app(scope, receive, with_policy)


class _BodyLimitMiddleware:
    """Reads at most ``limit`` bytes of a request body, else answers 413; replays the body."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        too_large = _error_json(413, "PayloadTooLarge", f"request body is over the limit of {self.limit} bytes")
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if length is not None and length.isdigit() and int(length) > self.limit:
            await too_large(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client is gone: nobody to answer
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                await too_large(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        pending: list[Message] = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay() -> Message:
            return pending.pop() if pending else await receive()

        await self.app(scope, replay, send)


# ----------------------------------------------------------------------------- the service


class _Service:
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
        return _JSONResponse({"error": body}, status_code=answer.status, headers=answer.headers)

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


# ----------------------------------------------------------------------------- the app


def create_app(
    settings: RunSettings,
    *,
    prompts_dirs: Sequence[str] = (),
    api_key: str | None = None,
    log_path: str | None = None,
    max_body_bytes: int = 1_000_000,
    max_batch: int = 1000,
    grace: float = 10.0,
) -> FastAPI:
    """The FastAPI app serving every chain; its lifespan opens the one ``ModelSession``."""
    library = PromptLibrary(list(dict.fromkeys([*settings.prompts_dirs, *prompts_dirs])))
    infos = list_chains(library)
    key = api_key if api_key is not None else os.environ.get("RUNNER_API_KEY")
    provider_key = settings.api_key.get_secret_value() if settings.api_key is not None else ""
    metrics = ServerMetrics()
    service = _Service(settings, library, metrics, log_path, [provider_key, key or ""], grace)
    app = FastAPIOffline(
        title="chain-runner",
        summary="Declarative LangChain chains over HTTP",
        lifespan=service.lifespan,
        docs_url=DOCS_URL,
        redoc_url=REDOC_URL,
        openapi_url=OPENAPI_URL,
        static_url=DOCS_ASSETS,
        swagger_ui_parameters={"validatorUrl": None},  # no badge fetched from validator.swagger.io
    )
    # Shown on the routes _needs_key guards, so that the docs say which need the key.
    keyed: list[params.Depends] = [Security(_BEARER)] if key else []
    catalogue: list[dict[str, Any]] = []
    for info in infos:
        models = _chain_models(info)
        _add_chain_routes(app, service, info, models, max_batch, keyed)
        catalogue.append(
            ChainOut(
                name=info.name,
                description=info.description,
                kind=info.kind,
                required=list(info.required),
                optional=list(info.optional),
                input_schema=models[0].model_json_schema(),
                output_schema=info.output_schema,
            ).model_dump()
        )
    known = [info.name for info in infos]
    by_name = {info.name: info for info in infos}

    @app.get(
        "/chains",
        response_model=list[ChainOut],
        tags=["service"],
        summary="Every chain and its input schema",
        dependencies=keyed,
    )
    async def chains() -> Any:
        return catalogue

    @app.post("/chains/{name}/{endpoint}", include_in_schema=False)
    async def unknown(name: str, endpoint: str) -> Any:
        if name in by_name:
            raise StarletteHTTPException(404, f"no endpoint {endpoint!r}; use invoke, batch or stream")
        raise UnknownChainError(name, known)

    @app.get("/healthz", tags=["service"], summary="Liveness (no auth)")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", tags=["service"], summary="Prometheus metrics", response_class=Response, dependencies=keyed)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(ChainRunnerError)
    async def chain_error(request: Request, exc: ChainRunnerError) -> JSONResponse:
        return _error_json(exc.http_status, type(exc).__name__, service.redact(exc.message))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems, fields = [], []
        for err in exc.errors()[:20]:
            where = _where([p for p in err["loc"] if p != "body"])
            fields.append(where)
            if err["type"] == "missing":
                problems.append(f"{where}: missing required field")
            elif err["type"] == "extra_forbidden":
                problems.append(f"{where}: unknown field")
            elif err["type"] == "string_unicode":  # pydantic's own check, e.g. of a field's name
                problems.append(f"{where}: a field name is not valid Unicode (lone surrogate); send well-formed UTF-8")
            else:
                problems.append(f"{where}: {err['msg']}")
        parts = request.url.path.split("/")
        info = by_name.get(parts[2]) if len(parts) > 2 and parts[1] == "chains" else None
        hint = ""
        if info is not None:
            optional = f"; optional: {', '.join(info.optional)}" if info.optional else ""
            hint = f" ({info.name} takes: {', '.join(info.required) or 'nothing'}{optional})"
        return _error_json(422, "InputError", "; ".join(problems) + hint, fields=fields)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        phrase = HTTPStatus(exc.status_code).phrase.replace(" ", "")
        detail = str(exc.detail)
        if exc.status_code == 400 and detail == "There was an error parsing the body":  # FastAPI's words
            detail = "the request body cannot be read as JSON (not UTF-8, or nested too deeply); send a JSON object"
        return _error_json(exc.status_code, phrase, detail, headers=dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled %s on %s: %s", type(exc).__name__, request.url.path, service.redact(str(exc)))
        return _error_json(500, "InternalError", "internal server error; see the server log")

    # Outermost first: count every response, check the key, mark the docs pages, then bound the body.
    app.add_middleware(_BodyLimitMiddleware, limit=max_body_bytes)
    app.add_middleware(_DocsPolicyMiddleware)
    if key:
        app.add_middleware(_AuthMiddleware, key=key)
    app.add_middleware(MetricsMiddleware, metrics=metrics, chains=frozenset(known))
    app.state.service = service
    return app


def _add_chain_routes(
    app: FastAPI,
    service: _Service,
    info: ChainInfo,
    models: tuple[type[BaseModel], ...],
    max_batch: int,
    dependencies: Sequence[params.Depends],
) -> None:
    name = info.name
    _inputs, InvokeRequest, BatchRequest, InvokeResponse = models
    tags: list[str | Enum] = [name]

    @app.post(
        f"/chains/{name}/invoke",
        response_model=InvokeResponse,
        responses=_ERRORS,
        tags=tags,
        dependencies=dependencies,
        summary=f"Run {name} on one input",
        description=info.description,
    )
    async def invoke(request: Request, body: InvokeRequest, background: BackgroundTasks) -> Any:  # type: ignore[valid-type]
        return await service.invoke(name, request, _values(body.input), body.config, background)  # type: ignore[attr-defined]

    @app.post(
        f"/chains/{name}/batch",
        response_model=BatchOut,
        responses=_ERRORS,
        tags=tags,
        dependencies=dependencies,
        summary=f"Run {name} on many inputs (records in input order)",
    )
    async def batch(request: Request, body: BatchRequest, background: BackgroundTasks) -> Any:  # type: ignore[valid-type]
        values = [_values(item) for item in body.inputs]  # type: ignore[attr-defined]
        return await service.batch(name, request, values, body.config, background, max_batch)  # type: ignore[attr-defined]

    @app.post(
        f"/chains/{name}/stream",
        responses={
            200: {
                "content": {"text/event-stream": {}},
                "description": "SSE: `token` events ({text}), then `end` ({output, metrics}) or `error`",
            },
            **_ERRORS,
        },
        tags=tags,
        dependencies=dependencies,
        summary=f"Stream {name}'s tokens as Server-Sent Events",
        response_class=EventSourceResponse,
    )
    async def stream(body: InvokeRequest) -> Response:  # type: ignore[valid-type]
        return service.stream(name, _values(body.input), body.config)  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------- serving


class _Server(uvicorn.Server):
    """uvicorn's server, which also tells the service the moment a shutdown signal arrives: open streams
    are then stopped, with a reason, before uvicorn's graceful-shutdown timeout cuts them."""

    def __init__(self, config: uvicorn.Config, service: _Service) -> None:
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
        from chains.tracing import disable_unreachable_tracing

        if warning := disable_unreachable_tracing():
            print(warning, file=sys.stderr)
        probe = ModelSession(settings)  # a bad --model / missing key fails here, as one line
        if not quiet:
            probe.announce()
        await probe.aclose()
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
