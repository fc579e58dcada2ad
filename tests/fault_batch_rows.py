"""Answering a batch: each row as ``POST /v1/chat/completions`` answers its body, the batch's statuses in time,
and the batch and row faults on the way (see ``fault_batches`` for what each does).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, cast

from aiohttp import web
from fault_batch_input import Row, batch_error
from fault_batch_rules import ROW_KINDS, BatchRule
from fault_batch_store import BatchRecord, BatchState, now
from fault_replies import Reply
from fault_rules import ODD_KINDS, STATUS_KINDS, Rule
from fault_settings import Config

__all__ = ["BatchRows", "Digest", "Length", "PickFault"]

EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."
_ANSWERS_AS_ODD = ODD_KINDS - {"endless"}
_POLL_S = 0.01

PickFault = Callable[[str, bool, str | None], Rule | None]
Digest = Callable[[list[Any]], tuple[str, int]]
Length = Callable[[dict[str, Any], Config], tuple[int, str]]

_CAPTURED = web.Response()


def _no_end(entry: dict[str, Any], outcome: str) -> None:
    """A batch row has no connection whose end the server's online bookkeeping would count."""


@dataclass(slots=True)
class _Captured(Reply):
    """The chat answer to a row, kept instead of sent: the same ``Reply``, so the same answer."""

    status: int = 0
    payload: bytes = b"null"

    async def send_json(self, status: int, payload: bytes) -> web.Response:
        self.status, self.payload = status, payload
        return _CAPTURED


async def _respond(reply: _Captured, rule: Rule | None, answer_id: str) -> None:
    kind = None if rule is None else rule.kind
    if rule is None or kind == "stall":  # a stall only delays; a batch row has no deadline to miss
        reply.model = str(reply.body.get("model") or reply.cfg.models[0])
        reply.id = answer_id
        await reply.completion()
    elif kind in STATUS_KINDS:
        await reply.status_error(rule)
    elif kind == "context_length":
        await reply.context_length(rule)
    elif kind in _ANSWERS_AS_ODD:
        await reply.odd_answer(rule)
    else:  # reset, endless: the model's connection died, which a batch worker reports as a 500
        await reply.status_error(Rule("500"))


class BatchRows(BatchState):
    """How a batch runs: its statuses in time, its rows answered one by one, and where its faults fire.

    A row is answered through the server's own parts (``_pick_fault``, ``_digest``, ``_length``, ``_config``,
    given by ``Batches``), so it is answered exactly as an online request would be. The runners run on the
    server's loop.
    """

    _pick_fault: PickFault
    _digest: Digest
    _length: Length
    _config: Callable[[], Config]
    _created: int

    async def answer(
        self, row: Row, rule: Rule | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        """(status, body) of ``POST /v1/chat/completions`` non-streamed for the row's body; ``rule`` None: the
        server's own fault rules decide, as for an online request."""
        key, prompt_tokens = self._digest(row.body["messages"])
        if rule is None:
            model = row.body.get("model")
            rule = self._pick_fault(key, False, model if isinstance(model, str) else None)
        cfg = self._config()
        n, finish_reason = self._length(row.body, cfg)
        entry: dict[str, Any] = {"key": key, "stream": False, "prompt_tokens": prompt_tokens, "completion_tokens": 0}
        entry.update(status=None, fault=None if rule is None else rule.kind)
        request = cast(web.Request, SimpleNamespace(headers=headers or {}))  # only a 401 reads it (the key)
        reply = _Captured(
            request=request,
            body=row.body,
            entry=entry,
            cfg=cfg,
            headers={},
            rule=rule,
            n=n,
            finish_reason=finish_reason,
            created=self._created,
            end=_no_end,
        )
        await _respond(reply, rule, f"chatcmpl-batch{self._token()}")
        return reply.status, json.loads(reply.payload)

    # ------------------------------------------------------------------ the runner

    def _set(self, batch: BatchRecord, **fields: Any) -> None:
        with self._lock:
            if batch.status == "cancelling" and fields.get("status") not in (None, "cancelled"):
                return  # a cancel wins over whatever the runner was about to do
            for name, value in fields.items():
                setattr(batch, name, value)

    async def _run(self, batch: BatchRecord) -> None:
        try:
            await self._lifecycle(batch)
        except Exception as exc:  # a bug in here must show in the batch, not leave a test polling forever
            self._set(batch, status="failed", failed_at=now(), errors=[batch_error("internal_error", repr(exc))])

    async def _lifecycle(self, batch: BatchRecord) -> None:
        """validating → in_progress → finalizing → completed (or failed, expired, cancelled on the way)."""
        if not await self._wait(batch, batch.settings["validating_s"]):
            return await self._cancelled(batch)
        errors = self._validation_errors(batch)
        if errors:
            self._set(batch, status="failed", failed_at=now(), errors=errors)
            return None
        self._set(batch, status="in_progress", in_progress_at=now(), total=len(batch.rows))
        expired = await self._answer_rows(batch, batch.settings["in_progress_s"])
        if batch.cancel_requested or batch.dropped:
            return await self._cancelled(batch)
        if expired:
            self._expire(batch, expired)
            return None
        self._set(batch, status="finalizing", finalizing_at=now())
        if not await self._wait(batch, self._finalizing_s(batch)):
            return await self._cancelled(batch)
        self._write_files(batch)
        self._set(batch, status="completed", completed_at=now())
        return None

    async def _wait(
        self, batch: BatchRecord, seconds: float | None, release_gen: int | None = None, cancellable: bool = True
    ) -> bool:
        """Sleep ``seconds`` (None: until released); False when a cancel or a reset cut it short."""
        deadline = None if seconds is None else time.monotonic() + seconds
        while True:
            if batch.dropped or (cancellable and batch.cancel_requested):
                return False
            if release_gen is not None and self._release_gen != release_gen:
                return True
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return True
            await asyncio.sleep(_POLL_S if deadline is None else min(_POLL_S, deadline - now))

    async def _cancelled(self, batch: BatchRecord) -> None:
        """cancelling → cancelled: the rows answered so far are kept in the output and error files."""
        if batch.dropped:
            return
        await self._wait(batch, batch.settings["cancelling_s"], cancellable=False)
        self._write_files(batch)
        self._set(batch, status="cancelled", cancelled_at=now())

    def _validation_errors(self, batch: BatchRecord) -> list[dict[str, Any]]:
        if batch.validation is None:
            message = (
                f"Cannot find file {batch.input_file_id}, or organization org-fault-server does not have access to it."
            )
            return [batch_error("invalid_request", message, param="file_id")]
        if batch.validation.errors:
            return list(batch.validation.errors)
        taken = self._batch_rule("validation_failed", batch)
        if taken is None:
            return []
        rule, row = taken
        line = rule.line if rule.line is not None or rule.match is None else row.line
        message = rule.message or "The batch failed validation (injected fault)."
        return [batch_error(rule.code, message, line, rule.param)]

    def _finalizing_s(self, batch: BatchRecord) -> float:
        taken = self._batch_rule("slow_finalizing", batch)
        return batch.settings["finalizing_s"] if taken is None else taken[0].seconds

    def _batch_rule(
        self, kind: str, batch: BatchRecord, rows: Iterable[Row] | None = None, at: int | None = None
    ) -> tuple[BatchRule, Row] | None:
        """The first rule of ``kind`` that matches a row of the batch (fires once per batch), and that row.

        ``at``: the index of the row the batch has reached (a ``stall`` waits for its ``after_rows``)."""
        if not self._rules:
            return None
        with self._lock:
            for rule in self._rules:
                if rule.kind != kind or rule.id in batch.fired or (at is not None and at < rule.after_rows):
                    continue
                row = next((r for r in (batch.rows if rows is None else rows) if rule.matches(r.key)), None)
                if row is not None:
                    batch.fired.add(rule.id)
                    self._count_fault(kind)
                    return rule.fire(), row
        return None

    def _row_rule(self, key: str) -> BatchRule | None:
        if not self._rules:
            return None
        with self._lock:
            for rule in self._rules:
                if rule.kind in ROW_KINDS and rule.matches(key):
                    self._count_fault(rule.kind)
                    return rule.fire()
        return None

    def _count_fault(self, kind: str) -> None:
        self._fault_counts[kind] = self._fault_counts.get(kind, 0) + 1

    async def _answer_rows(self, batch: BatchRecord, seconds: float) -> list[Row]:
        """Answer the rows one by one, spread over ``seconds``; returns the rows left to expire."""
        rows = batch.rows
        step = seconds / len(rows) if rows else 0.0
        due = time.monotonic()
        expired: list[Row] = []
        for index, row in enumerate(rows):
            if batch.cancel_requested or batch.dropped:
                break
            # decided with no await since the last row was counted: a client that sees N rows done sees it held
            stall = self._batch_rule("stall", batch, [row], at=index)
            if stall is not None:
                if not await self._stall(batch, stall[0]):
                    break
                due = time.monotonic()
            due += step
            delay = due - time.monotonic()
            if delay > 0.001:
                if not await self._wait(batch, delay):
                    break
            elif index % 64 == 63:
                await asyncio.sleep(0)  # many rows due at once: let the polls in between
            rule = self._row_rule(row.key)
            if rule is not None and rule.kind == "row_expire":
                expired.append(row)
                continue
            status, body = await self.answer(row, None if rule is None else rule.as_chat_rule(), batch.headers)
            self._record(batch, row, status, body)
        return expired

    async def _stall(self, batch: BatchRecord, rule: BatchRule) -> bool:
        with self._lock:
            batch.stalled = True
            gen = self._release_gen
        try:
            return await self._wait(batch, rule.stall_s, release_gen=gen)
        finally:
            batch.stalled = False

    def _record(self, batch: BatchRecord, row: Row, status: int, body: Any) -> None:
        response = {"status_code": status, "request_id": f"req_{self._token()}", "body": body}
        line = {"id": f"batch_req_{self._token()}", "custom_id": row.custom_id, "response": response, "error": None}
        encoded = json.dumps(line).encode()
        usage = body.get("usage") if isinstance(body, dict) else None
        with self._lock:
            if status == 200:
                batch.output.append(encoded)
                batch.completed += 1
                if isinstance(usage, dict):
                    batch.input_tokens += int(usage.get("prompt_tokens") or 0)
                    batch.output_tokens += int(usage.get("completion_tokens") or 0)
            else:
                batch.error_lines.append(encoded)
                batch.failed += 1
            self._rows += 1
            self._rows_per_key[row.key] = self._rows_per_key.get(row.key, 0) + 1
            self._row_status[status] = self._row_status.get(status, 0) + 1
            self._answers[row.custom_id] = self._answers.get(row.custom_id, 0) + 1

    def _expire(self, batch: BatchRecord, rows: list[Row]) -> None:
        """The window closed on these rows: they come back as ``batch_expired`` errors, the batch ends expired."""
        for row in rows:
            error = {"code": "batch_expired", "message": EXPIRED_MESSAGE}
            line = {"id": f"batch_req_{self._token()}", "custom_id": row.custom_id, "response": None, "error": error}
            batch.error_lines.append(json.dumps(line).encode())
        self._write_files(batch)
        self._set(batch, status="expired", expired_at=now(), failed=batch.failed + len(rows))

    def _write_files(self, batch: BatchRecord) -> None:
        """The output and error files, each only when it has lines (as OpenAI: no file, no id)."""
        for lines, suffix, attr in (
            (batch.output, "output", "output_file_id"),
            (batch.error_lines, "error", "error_file_id"),
        ):
            if lines:
                record = self._store_file(f"{batch.id}_{suffix}.jsonl", "batch_output", b"\n".join(lines) + b"\n")
                setattr(batch, attr, record.id)
                lines.clear()  # the file holds them now: a 50,000-row batch is not kept twice
