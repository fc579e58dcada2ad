"""Anthropic's Message Batches (``/v1/messages/batches``) behind the batch interface of ``backend``.

The request body is ``ChatAnthropic``'s own ``_get_request_payload`` and an answered row is read by its own
``_format_output``, so a batch record is the record an online request gives.  The calls go through the inner
model's own ``AsyncAnthropic`` client: one pool, one key, one base URL.

Message Batches have no file upload: a batch is created with its requests inline.  ``upload`` therefore keeps the
lines in memory under a local id (``local-<ms>-<rows>-<digest>``: when it was staged and how many rows) and
``create`` sends them; the collector journals that id before ``create`` as it journals an OpenAI file.  A run
killed between creating the batch and journaling it leaves that id without a batch: ``find`` then asks
``GET /v1/messages/batches`` for the batch with that many requests created closest to that time, within minutes
(Anthropic keeps no metadata on a batch, so this is the closest evidence there is; a batch adopted wrongly has none
of the run's ids, which come back missing and are submitted again).

Statuses map onto OpenAI's names, which the collector speaks: ``in_progress``; ``canceling`` → ``cancelling``;
``ended`` → ``completed`` (``cancelled`` if it was cancelled).  ``BatchState.output_file_id`` holds the batch's
``results_url``.  A row's ``errored`` result carries Anthropic's error type, mapped to its HTTP status, so a 429
or 5xx row (``rate_limit_error``, ``api_error``, ``overloaded_error``) goes into a later batch as OpenAI's would;
``canceled`` and ``expired`` rows are ``batch_cancelled`` / ``batch_expired``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatResult

from chains.errors import ModelConfigError, ProviderError, clip
from chains.providers.batch.backend import BatchState, RowAnswer

ANTHROPIC_MAX_REQUESTS = 100_000
ANTHROPIC_MAX_BYTES = 256 * 1024 * 1024
FIND_WINDOW_S = (-120.0, 900.0)
"""A batch found for a staged id was created this long before/after the staging (clock skew; create's retries)."""

ERROR_STATUS: dict[str, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}
"""Anthropic's error types and the statuses its Messages API answers them with."""
_ROW_CODES = {"canceled": "batch_cancelled", "expired": "batch_expired"}


class AnthropicBatches:
    """Message Batches through the inner ``ChatAnthropic``'s ``AsyncAnthropic`` client."""

    def __init__(
        self, client: Any, *, max_requests: int = ANTHROPIC_MAX_REQUESTS, max_bytes: int = ANTHROPIC_MAX_BYTES
    ) -> None:
        self.client = client
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self._staged: dict[str, bytes] = {}

    @classmethod
    def for_model(cls, model: BaseChatModel, **limits: int) -> AnthropicBatches:
        if not all(hasattr(model, name) for name in ("_get_request_payload", "_format_output", "_async_client")):
            raise ModelConfigError(
                f"--tier batch with Message Batches needs an Anthropic model (--model anthropic:NAME), not "
                f"{model._llm_type}; use --tier online"
            )
        return cls(model._async_client, **limits)  # type: ignore[attr-defined]

    def build_body(self, model: BaseChatModel, messages: list[BaseMessage], params: dict[str, Any]) -> dict[str, Any]:
        params = dict(params)
        stop = params.pop("stop", None)
        body: dict[str, Any] = model._get_request_payload(messages, stop=stop, **params)  # type: ignore[attr-defined]
        body.pop("stream", None)  # a batch row is answered whole
        if "betas" in body:
            raise ModelConfigError(
                f"--tier batch: this request needs Anthropic beta features ({', '.join(map(str, body['betas']))}), "
                "which Message Batches are not sent with here; use --tier online"
            )
        return body

    def line(self, custom_id: str, body: Mapping[str, Any]) -> bytes:
        line = {"custom_id": custom_id, "params": body}
        return json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"

    def to_result(self, model: BaseChatModel, row: RowAnswer) -> ChatResult:
        try:
            from anthropic.types import Message

            result: ChatResult = model._format_output(Message.model_validate(row.body))  # type: ignore[attr-defined]
        except Exception as exc:  # a succeeded row whose message is not one
            raise ProviderError(
                f"batch answer for {row.custom_id} is not a message ({clip(str(exc), 200)})", status=200
            ) from exc
        return result

    async def upload(self, data: bytes) -> str:
        """No upload at Anthropic: the lines are kept until ``create`` sends them (see the module)."""
        rows = data.count(b"\n")
        local_id = f"local-{int(time.time() * 1000)}-{rows}-{hashlib.sha256(data).hexdigest()[:16]}"
        self._staged[local_id] = data
        return local_id

    async def create(self, file_id: str, metadata: Mapping[str, str]) -> BatchState:
        """The batch over the staged lines (Message Batches keep no metadata)."""
        data = self._staged[file_id]
        requests = [json.loads(raw) for raw in data.splitlines() if raw.strip()]
        batch = await self.client.messages.batches.create(requests=requests)
        del self._staged[file_id]
        return _state(batch, file_id)

    async def poll(self, batch_id: str) -> BatchState:
        return _state(await self.client.messages.batches.retrieve(batch_id))

    async def find(self, file_id: str) -> BatchState | None:
        staged = _staged_at(file_id)
        if staged is None:
            return None
        at, rows = staged
        found: list[tuple[float, BatchState]] = []
        async for batch in self.client.messages.batches.list(limit=100):  # newest first
            created = _timestamp(getattr(batch, "created_at", None))
            if created is None:
                continue
            if created < at + FIND_WINDOW_S[0]:
                break
            state = _state(batch, file_id)
            if created <= at + FIND_WINDOW_S[1] and state.total == rows:
                found.append((abs(created - at), state))
        return min(found, key=lambda pair: pair[0])[1] if found else None

    async def results(self, state: BatchState) -> list[RowAnswer]:
        if not state.output_file_id:
            return []
        data = await self.client.get(
            state.output_file_id, cast_to=bytes, options={"headers": {"Accept": "application/binary"}}
        )
        return parse_result_lines(data)

    async def cancel(self, batch_id: str) -> None:
        await self.client.messages.batches.cancel(batch_id)


def _state(batch: Any, file_id: str = "") -> BatchState:
    counts = batch.request_counts
    succeeded, errored = counts.succeeded, counts.errored
    canceled, expired = counts.canceled, counts.expired
    status = {"canceling": "cancelling", "ended": "completed"}.get(batch.processing_status, batch.processing_status)
    if status == "completed" and batch.cancel_initiated_at is not None:
        status = "cancelled"
    return BatchState(
        id=batch.id,
        status=status,
        input_file_id=file_id,
        output_file_id=batch.results_url,
        total=counts.processing + succeeded + errored + canceled + expired,
        completed=succeeded,
        failed=errored + canceled + expired,
    )


def _staged_at(file_id: str) -> tuple[float, int] | None:
    """When a staged id was made (seconds) and how many rows it holds; None for an id that is not one."""
    parts = file_id.split("-")
    if len(parts) != 4 or parts[0] != "local" or not (parts[1].isdigit() and parts[2].isdigit()):
        return None
    return int(parts[1]) / 1000.0, int(parts[2])


def _timestamp(value: Any) -> float | None:
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def parse_result_lines(data: bytes) -> list[RowAnswer]:
    """The rows of a batch's results (JSONL); a line that is not a result row is skipped (it names no request,
    so no input can take it as its answer)."""
    rows: list[RowAnswer] = []
    for raw in data.splitlines():
        row = parse_result_line(raw)
        if row is not None:
            rows.append(row)
    return rows


def parse_result_line(raw: bytes) -> RowAnswer | None:
    """``{"custom_id": ..., "result": {"type": "succeeded", "message": {...}}}`` (or ``errored`` with an error,
    ``canceled``, ``expired``) as a ``RowAnswer``; None for a line that is not one."""
    try:
        line = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(line, Mapping) or not isinstance(line.get("custom_id"), str):
        return None
    custom_id = line["custom_id"]
    result = line.get("result")
    kind = result.get("type") if isinstance(result, Mapping) else None
    if kind == "succeeded" and isinstance(result, Mapping) and isinstance(result.get("message"), Mapping):
        return RowAnswer(custom_id, 200, result["message"])
    if isinstance(kind, str) and kind in _ROW_CODES:
        return RowAnswer(custom_id, None, None, _ROW_CODES[kind], f"the request was {kind} before it ran")
    error = result.get("error") if isinstance(result, Mapping) else None
    inner = error.get("error") if isinstance(error, Mapping) else None
    details = inner if isinstance(inner, Mapping) else error if isinstance(error, Mapping) else {}
    error_type = details.get("type")
    message = details.get("message")
    if not isinstance(error_type, str) or not error_type:
        error_type = "invalid_result" if kind != "errored" else "api_error"
        message = message if isinstance(message, str) else f"a result of type {clip(str(kind), 40)!r}"
    return RowAnswer(
        custom_id,
        ERROR_STATUS.get(error_type),
        None,
        error_code=clip(error_type, 80),
        error_message=clip(str(message), 300) if message is not None else None,
    )
