"""One small interface for a provider's batch API, and OpenAI's (``/v1/files`` + ``/v1/batches``).

A backend turns one chat request into one line of the provider's batch input format, and one line of its
results back into the ``ChatResult`` an online answer gives: the request body is built by the chat
integration's own payload builder and the answer read by its own result parser (for ``ChatOpenAI``:
``_get_request_payload`` and ``_create_chat_result``), so ``response_format``, tools, stop and max
tokens go out as online, and usage, tool calls and metadata come back as online.  Anthropic's Message
Batches are the next implementation of the same interface.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatResult

from chains.errors import ModelConfigError, ProviderError, clip

BatchStatus = Literal[
    "validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled"
]
TERMINAL: frozenset[str] = frozenset({"failed", "completed", "expired", "cancelled"})
"""Statuses after which a batch changes no more: its output and error files are final."""
RESUBMITTABLE_CODES: frozenset[str] = frozenset({"batch_expired", "batch_cancelled"})
"""Row errors that say nothing about the request itself: it may be sent again in a later batch."""


@dataclass(frozen=True)
class BatchState:
    """What the provider says about one batch."""

    id: str
    status: str
    input_file_id: str = ""
    output_file_id: str | None = None
    error_file_id: str | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    errors: tuple[str, ...] = ()
    """Why the batch itself failed (validation): one line per error."""
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


@dataclass(frozen=True)
class RowAnswer:
    """One request's line of a batch's results: an answer (``status`` 200 and a body) or an error."""

    custom_id: str
    status: int | None
    body: Any
    error_code: str | None = None
    error_message: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200 and isinstance(self.body, Mapping) and not self.error_code

    @property
    def resubmittable(self) -> bool:
        """Expired or cancelled before it ran, or a transient status (429, 5xx): worth a later batch."""
        if self.error_code in RESUBMITTABLE_CODES:
            return True
        return self.status is not None and (self.status == 429 or self.status >= 500)

    def describe(self) -> str:
        message = self.error_message
        if message is None and isinstance(self.body, Mapping):
            error = self.body.get("error")
            message = error.get("message") if isinstance(error, Mapping) else None
        parts = [f"HTTP {self.status}" if self.status is not None else None, self.error_code, message]
        return clip(": ".join(str(p) for p in parts if p) or "no answer", 300)


class BatchBackend(Protocol):
    """A provider's batch API, as the collector uses it."""

    max_requests: int
    max_bytes: int

    def build_body(self, model: BaseChatModel, messages: list[BaseMessage], params: dict[str, Any]) -> dict[str, Any]:
        """The request body an online request would send."""

    def line(self, custom_id: str, body: Mapping[str, Any]) -> bytes:
        """One request as one line (with its newline) of the batch input file."""

    def to_result(self, model: BaseChatModel, row: RowAnswer) -> ChatResult:
        """An answered row as the ``ChatResult`` an online request would have given."""

    async def upload(self, data: bytes) -> str:
        """Upload one batch input file; its id."""

    async def create(self, file_id: str, metadata: Mapping[str, str]) -> BatchState:
        """Start a batch over an uploaded file."""

    async def poll(self, batch_id: str) -> BatchState: ...

    async def find(self, file_id: str) -> BatchState | None:
        """The batch created over ``file_id``, if any (a run killed between creating and journaling it)."""

    async def results(self, state: BatchState) -> list[RowAnswer]:
        """Every result line of a finished batch (output and error files)."""

    async def cancel(self, batch_id: str) -> None: ...


OPENAI_MAX_REQUESTS = 50_000
OPENAI_MAX_BYTES = 200 * 1024 * 1024
CHAT_ENDPOINT = "/v1/chat/completions"


class OpenAIBatches:
    """OpenAI's Batch API (and any server with the same ``/v1/files`` + ``/v1/batches``), through the
    inner ``ChatOpenAI``'s own ``AsyncOpenAI`` client: one connection pool, one key, one base URL."""

    def __init__(
        self, client: Any, *, max_requests: int = OPENAI_MAX_REQUESTS, max_bytes: int = OPENAI_MAX_BYTES
    ) -> None:
        self.client = client
        self.max_requests = max_requests
        self.max_bytes = max_bytes

    @classmethod
    def for_model(cls, model: BaseChatModel, **limits: int) -> OpenAIBatches:
        client = getattr(model, "root_async_client", None)
        if client is None or not hasattr(model, "_get_request_payload"):
            raise ModelConfigError(
                f"--tier batch needs an OpenAI-compatible model (--model openai:NAME), not {model._llm_type}; "
                "use --tier online"
            )
        return cls(client, **limits)

    def build_body(self, model: BaseChatModel, messages: list[BaseMessage], params: dict[str, Any]) -> dict[str, Any]:
        params = dict(params)
        stop = params.pop("stop", None)
        body: dict[str, Any] = model._get_request_payload(messages, stop=stop, **params)  # type: ignore[attr-defined]
        body.pop("stream", None)  # a batch row is answered whole
        body.pop("stream_options", None)
        return body

    def line(self, custom_id: str, body: Mapping[str, Any]) -> bytes:
        line = {"custom_id": custom_id, "method": "POST", "url": CHAT_ENDPOINT, "body": body}
        return json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"

    def to_result(self, model: BaseChatModel, row: RowAnswer) -> ChatResult:
        try:
            return model._create_chat_result(row.body)  # type: ignore[attr-defined]
        except Exception as exc:  # a 200 whose body is not an answer
            raise ProviderError(
                f"batch answer for {row.custom_id} is not a chat completion ({clip(str(exc), 200)})", status=200
            ) from exc

    async def upload(self, data: bytes) -> str:
        file = await self.client.files.create(file=("chain-runner-batch.jsonl", data), purpose="batch")
        return str(file.id)

    async def create(self, file_id: str, metadata: Mapping[str, str]) -> BatchState:
        batch = await self.client.batches.create(
            input_file_id=file_id, endpoint=CHAT_ENDPOINT, completion_window="24h", metadata=dict(metadata)
        )
        return _state(batch)

    async def poll(self, batch_id: str) -> BatchState:
        return _state(await self.client.batches.retrieve(batch_id))

    async def find(self, file_id: str) -> BatchState | None:
        async for batch in self.client.batches.list(limit=100):
            if batch.input_file_id == file_id:
                return _state(batch)
        return None

    async def results(self, state: BatchState) -> list[RowAnswer]:
        rows: list[RowAnswer] = []
        for file_id in (state.output_file_id, state.error_file_id):
            if file_id:
                content = await self.client.files.content(file_id)
                rows.extend(parse_result_lines(content.content))
        return rows

    async def cancel(self, batch_id: str) -> None:
        await self.client.batches.cancel(batch_id)


def _state(batch: Any) -> BatchState:
    counts = batch.request_counts
    errors = tuple(
        clip(f"line {e.line}: {e.message}" if e.line is not None else str(e.message), 300)
        for e in ((batch.errors.data or []) if batch.errors else [])
    )
    return BatchState(
        id=batch.id,
        status=batch.status,
        input_file_id=batch.input_file_id,
        output_file_id=batch.output_file_id,
        error_file_id=batch.error_file_id,
        total=counts.total if counts else 0,
        completed=counts.completed if counts else 0,
        failed=counts.failed if counts else 0,
        errors=errors,
        metadata=dict(batch.metadata or {}),
    )


def parse_result_lines(data: bytes) -> list[RowAnswer]:
    """The rows of a batch output or error file; a line that is not a result row is skipped (it names no
    request, so no input can take it as its answer)."""
    rows: list[RowAnswer] = []
    for raw in data.splitlines():
        row = parse_result_line(raw)
        if row is not None:
            rows.append(row)
    return rows


def parse_result_line(raw: bytes) -> RowAnswer | None:
    try:
        line = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(line, Mapping) or not isinstance(line.get("custom_id"), str):
        return None
    response = line.get("response")
    error = line.get("error")
    status = response.get("status_code") if isinstance(response, Mapping) else None
    body = response.get("body") if isinstance(response, Mapping) else None
    code = error.get("code") if isinstance(error, Mapping) else None
    message = error.get("message") if isinstance(error, Mapping) else None
    return RowAnswer(
        custom_id=line["custom_id"],
        status=status if isinstance(status, int) and not isinstance(status, bool) else None,
        body=body,
        error_code=str(code) if code is not None else None,
        error_message=str(message) if message is not None else None,
    )
