"""Per-chain routes (``/chains/{name}/invoke|batch|stream``) and their request and response models, built from
each chain's declared inputs so that ``/docs`` shows them."""

# No ``from __future__ import annotations``: the per-chain routes annotate their
# bodies with models built at run time, which FastAPI must see as classes.

import re
from collections.abc import Sequence
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import BackgroundTasks, FastAPI, Request, params
from fastapi.responses import Response
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model
from pydantic_core import PydanticCustomError
from sse_starlette import EventSourceResponse

from chains.engine.metrics import ItemMetrics
from chains.spec.registry import ChainInfo

if TYPE_CHECKING:
    from chains.server.service import Service


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


ERRORS: dict[int | str, dict[str, Any]] = {
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


def chain_models(info: ChainInfo) -> tuple[type[BaseModel], ...]:
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


def add_chain_routes(
    app: FastAPI,
    service: "Service",
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
        responses=ERRORS,
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
        responses=ERRORS,
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
            **ERRORS,
        },
        tags=tags,
        dependencies=dependencies,
        summary=f"Stream {name}'s tokens as Server-Sent Events",
        response_class=EventSourceResponse,
    )
    async def stream(body: InvokeRequest) -> Response:  # type: ignore[valid-type]
        return service.stream(name, _values(body.input), body.config)  # type: ignore[attr-defined]
