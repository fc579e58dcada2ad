"""``create_app(settings)``: the FastAPI app (its lifespan opens the service's ``ModelSession``), the service
routes (``/chains``, ``/healthz``, ``/metrics``), the error handlers and the middleware, in order."""

# No ``from __future__ import annotations``: the per-chain routes annotate their
# bodies with models built at run time, which FastAPI must see as classes.

import logging
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request, Security, params
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from chains.errors import ChainRunnerError, UnknownChainError, json_path
from chains.server.metrics import MetricsMiddleware, ServerMetrics
from chains.server.middleware import (
    BEARER,
    DOCS_ASSETS,
    DOCS_URL,
    OPENAPI_URL,
    REDOC_URL,
    AuthMiddleware,
    BodyLimitMiddleware,
    DocsPolicyMiddleware,
    error_json,
)
from chains.server.routes import ChainOut, add_chain_routes, chain_models
from chains.server.service import Service
from chains.settings import Environment, RunSettings
from chains.spec.prompts_library import PromptLibrary
from chains.spec.registry import list_chains

log = logging.getLogger("chains.server")


def _where(loc: Sequence[Any]) -> str:
    return json_path(loc) or "body"


# ----------------------------------------------------------------------------- the app


def create_app(
    settings: RunSettings,
    *,
    api_key: str | None = None,
    log_path: str | None = None,
    max_body_bytes: int = 1_000_000,
    max_batch: int = 1000,
    grace: float = 10.0,
) -> FastAPI:
    """The FastAPI app serving every chain (the packaged ones and those in ``settings.prompts_dirs``); its lifespan opens
    the one ``ModelSession``.  Without ``api_key``, the key is ``RUNNER_API_KEY`` (``chains.settings.Environment``)."""
    library = PromptLibrary(settings.prompts_dirs)
    infos = list_chains(library)
    key = api_key if api_key is not None else Environment.read().runner_api_key
    provider_keys = [k.get_secret_value() for k in (settings.api_key, *settings.provider_keys.values()) if k]
    metrics = ServerMetrics()
    service = Service(settings, library, metrics, log_path, [*provider_keys, key or ""], grace)
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
    # Shown on the routes middleware._needs_key guards, so that the docs say which need the key.
    keyed: list[params.Depends] = [Security(BEARER)] if key else []
    catalogue: list[dict[str, Any]] = []
    for info in infos:
        models = chain_models(info)
        add_chain_routes(app, service, info, models, max_batch, keyed)
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
        return error_json(exc.http_status, type(exc).__name__, service.redact(exc.message))

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
        return error_json(422, "InputError", "; ".join(problems) + hint, fields=fields)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        phrase = HTTPStatus(exc.status_code).phrase.replace(" ", "")
        detail = str(exc.detail)
        if exc.status_code == 400 and detail == "There was an error parsing the body":  # FastAPI's words
            detail = "the request body cannot be read as JSON (not UTF-8, or nested too deeply); send a JSON object"
        return error_json(exc.status_code, phrase, detail, headers=dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled %s on %s: %s", type(exc).__name__, request.url.path, service.redact(str(exc)))
        return error_json(500, "InternalError", "internal server error; see the server log")

    # Outermost first: count every response, check the key, mark the docs pages, then bound the body.
    app.add_middleware(BodyLimitMiddleware, limit=max_body_bytes)
    app.add_middleware(DocsPolicyMiddleware)
    if key:
        app.add_middleware(AuthMiddleware, key=key)
    app.add_middleware(MetricsMiddleware, metrics=metrics, chains=frozenset(known))
    app.state.service = service
    return app
