"""Every model request of the inputs in flight, gathered into provider batches and answered from them.

``ManagedChatModel`` hands a request here instead of sending it (``request``): it is queued, and the
queue is submitted as one batch when every input in flight is waiting on the collector (nothing more
will arrive until answers come back), when it reaches the provider's limits (requests, bytes), or when
no request has arrived for ``collect_s``.  A two-step chain therefore runs as two batch stages (all
first steps, then all second steps) without changing its code.  Each batch is watched with growing
poll intervals; when it finishes, every request it carried is answered from its result rows.  A row
that errored for a reason that is not the request's (expired, cancelled, 429, 5xx) goes into a later
batch, at most ``resubmits`` times; any other error fails its input with the provider's words.  The
collector is the batch tier's one retry layer.

Nothing is paid twice: ids and batches are journaled (``journal``) before waiting, and a request whose
``custom_id`` an earlier run already submitted in a batch that is still good waits for that batch.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatResult

from chains.engine.metrics import ItemMetrics, current_item
from chains.engine.retry import BackoffWait, classify
from chains.errors import ProviderError
from chains.providers.batch.backend import BatchBackend, BatchState, RowAnswer
from chains.providers.batch.journal import BatchJournal

log = logging.getLogger("chains.batch")
T = TypeVar("T")

TICK_S = 0.05
"""How often the queue is looked at: cheap, and far below any batch's latency."""


@dataclass
class BatchStats:
    """The batch tier's own numbers, for the summary."""

    batches: int = 0
    adopted: int = 0
    requests: int = 0
    resubmitted: int = 0
    failed_rows: int = 0
    first_submit: float | None = None
    last_answer: float | None = None

    def to_dict(self) -> dict[str, Any]:
        wall = (self.last_answer or time.monotonic()) - self.first_submit if self.first_submit else 0.0
        return {
            "batches": self.batches,
            "adopted": self.adopted,
            "requests": self.requests,
            "resubmitted": self.resubmitted,
            "failed_rows": self.failed_rows,
            "batch_wall_s": round(wall, 3),
        }


@dataclass(eq=False)
class _Request:
    custom_id: str
    line: bytes
    future: asyncio.Future[RowAnswer]
    item: ItemMetrics | None
    submissions: int = 0


@dataclass(eq=False)
class _Batch:
    id: str
    ids: list[str]
    state: BatchState
    waiting: dict[str, list[_Request]] = field(default_factory=dict)
    rows: dict[str, RowAnswer] | None = None
    adopted: bool = False
    watcher: asyncio.Task[None] | None = None


class BatchCollector:
    """One run's batch tier: a queue, the batches in flight, and what earlier runs left (the journal)."""

    def __init__(
        self,
        backend_for: Callable[[BaseChatModel], BatchBackend],
        *,
        journal: BatchJournal | None = None,
        poll_s: float = 30.0,
        collect_s: float = 2.0,
        resubmits: int = 2,
        max_retries: int = 5,
        active: Callable[[], int] | None = None,
        wait: BackoffWait | None = None,
    ) -> None:
        self._backend_for = backend_for
        self._backend: BatchBackend | None = None
        self.journal = journal
        self.poll_s = poll_s
        self.collect_s = collect_s
        self.resubmits = resubmits
        self.max_retries = max_retries
        self.active = active
        self.wait = wait or BackoffWait()
        self.stats = BatchStats()
        self.batches: dict[str, _Batch] = {}
        self._pending: list[_Request] = []
        self._pending_bytes = 0
        self._last_added = 0.0
        self._issued: dict[str, int] = {}
        self._known: dict[str, str] = {}
        self._orphans: dict[str, list[str]] = {}
        self._flusher: asyncio.Task[None] | None = None
        self._loading: asyncio.Task[None] | None = None
        self._adopting: dict[str, asyncio.Task[_Batch | None]] = {}

    # ------------------------------------------------------------------ the request path

    async def request(
        self, model: BaseChatModel, messages: list[BaseMessage], params: dict[str, Any], key: str | None
    ) -> ChatResult:
        """One model request, answered from a batch: the ``ChatResult`` an online request would give."""
        backend = self._backend_here(model)
        if self._loading is None:  # once, and every request waits for it: none may pass before the journal is read
            self._loading = asyncio.create_task(self._load_journal(backend))
        await asyncio.shield(self._loading)
        body = backend.build_body(model, messages, params)
        custom_id = self._custom_id(key, body)
        loop = asyncio.get_running_loop()
        request = _Request(custom_id, backend.line(custom_id, body), loop.create_future(), current_item())
        batch_id = self._known.pop(custom_id, None)
        if batch_id is not None:
            await self._attach(backend, batch_id, request)
        else:
            self._queue(request)
        row = await request.future
        return backend.to_result(model, row)

    def _backend_here(self, model: BaseChatModel) -> BatchBackend:
        if self._backend is None:
            self._backend = self._backend_for(model)
        return self._backend

    def _custom_id(self, key: str | None, body: Mapping[str, Any]) -> str:
        """Derived from the input's resume key and the request body, so a resumed run asks for the same id;
        a second identical request in one run (a duplicate input) gets a suffix: ids are unique per file."""
        digest = hashlib.sha256()
        digest.update((key or "").encode("utf-8") + b"\n")
        digest.update(json.dumps(body, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8"))
        base = "cr-" + digest.hexdigest()[:32]
        seen = self._issued.get(base, 0)
        self._issued[base] = seen + 1
        return base if seen == 0 else f"{base}-{seen}"

    def _queue(self, request: _Request) -> None:
        self._pending.append(request)
        self._pending_bytes += len(request.line)
        self._last_added = time.monotonic()
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_loop(), name="chain-runner-batch-flusher")

    # ------------------------------------------------------------------ submitting

    async def _flush_loop(self) -> None:
        while self._pending:
            await asyncio.sleep(TICK_S)
            if self._should_flush():
                await self._submit(self._take())

    def _should_flush(self) -> bool:
        backend = self._backend
        assert backend is not None
        if len(self._pending) >= backend.max_requests or self._pending_bytes >= backend.max_bytes:
            return True
        if self.active is not None and self._blocked_inputs() >= self.active():
            return True  # every input in flight waits on us: nothing more will come until answers do
        return time.monotonic() - self._last_added >= self.collect_s

    def _blocked_inputs(self) -> int:
        owners = {id(r.item) for r in self._pending}
        for batch in self.batches.values():
            for requests in batch.waiting.values():
                owners.update(id(r.item) for r in requests if not r.future.done())
        return len(owners)

    def _take(self) -> list[_Request]:
        backend = self._backend
        assert backend is not None
        chunk: list[_Request] = []
        size = 0
        while self._pending and len(chunk) < backend.max_requests:
            request = self._pending[0]
            if chunk and size + len(request.line) > backend.max_bytes:
                break
            chunk.append(self._pending.pop(0))
            size += len(request.line)
        self._pending_bytes -= size
        return [r for r in chunk if not r.future.done()]  # an input cancelled meanwhile sends nothing

    async def _submit(self, chunk: list[_Request]) -> None:
        backend = self._backend
        assert backend is not None
        if not chunk:
            return
        ids = [r.custom_id for r in chunk]
        try:
            file_id = await self._call("upload", backend.upload, b"".join(r.line for r in chunk))
            if self.journal is not None:
                self.journal.file(file_id, ids)
            state = await self._call("create", backend.create, file_id, {"created_by": "chain-runner"})
            if self.journal is not None:
                self.journal.batch(file_id, state.id)
        except Exception as exc:
            for request in chunk:
                _fail(request, exc)
            return
        for request in chunk:
            request.submissions += 1
        self.stats.batches += 1
        self.stats.requests += len(chunk)
        self.stats.first_submit = self.stats.first_submit or time.monotonic()
        batch = _Batch(state.id, ids, state)
        for request in chunk:
            batch.waiting.setdefault(request.custom_id, []).append(request)
        self._watch(backend, batch)
        log.info("batch %s submitted: %d requests", state.id, len(chunk))

    def _watch(self, backend: BatchBackend, batch: _Batch) -> None:
        self.batches[batch.id] = batch
        batch.watcher = asyncio.create_task(self._watch_batch(backend, batch), name=f"chain-runner-batch-{batch.id}")

    # ------------------------------------------------------------------ waiting and answering

    async def _watch_batch(self, backend: BatchBackend, batch: _Batch) -> None:
        delay = min(1.0, self.poll_s)
        try:
            while not batch.state.terminal:
                await asyncio.sleep(delay)
                delay = min(self.poll_s, delay * 1.5)
                batch.state = await self._call("poll", backend.poll, batch.id)
            rows = await self._call("results", backend.results, batch.state)
        except Exception as exc:
            for requests in batch.waiting.values():
                for request in requests:
                    _fail(request, exc)
            batch.waiting.clear()
            return
        batch.rows = {row.custom_id: row for row in rows}
        self.stats.last_answer = time.monotonic()
        waiting, batch.waiting = batch.waiting, {}
        for requests in waiting.values():
            for request in requests:
                self._answer(batch, request)
        if not batch.adopted:
            batch.rows = None  # every request it carried is answered: free the rows

    def _answer(self, batch: _Batch, request: _Request) -> None:
        if request.future.done():
            return
        assert batch.rows is not None
        row = batch.rows.pop(request.custom_id, None) if batch.adopted else batch.rows.get(request.custom_id)
        if row is None:
            row = _missing_row(batch.state, request.custom_id)
        if row.ok:
            request.future.set_result(row)
            return
        self.stats.failed_rows += 1
        if row.resubmittable and request.submissions <= self.resubmits:
            self.stats.resubmitted += 1
            if request.item is not None:
                request.item.retries += 1
            log.info("batch %s: %s resubmitted: %s", batch.id, request.custom_id, row.describe())
            self._queue(request)
            return
        request.future.set_exception(
            ProviderError(f"batch {batch.id}: {row.describe()}", status=row.status, attempts=request.submissions)
        )

    async def _attach(self, backend: BatchBackend, batch_id: str, request: _Request) -> None:
        """A request an earlier run already submitted: wait for that batch instead of paying again."""
        if batch_id not in self._adopting:  # the first of its requests looks the batch up; the others wait for it
            self._adopting[batch_id] = asyncio.create_task(self._adopt(backend, batch_id))
        batch = await asyncio.shield(self._adopting[batch_id])
        if batch is None:
            self._queue(request)
            return
        request.submissions = 1
        if batch.rows is not None:
            self._answer(batch, request)
        else:
            batch.waiting.setdefault(request.custom_id, []).append(request)

    async def _adopt(self, backend: BatchBackend, batch_id: str) -> _Batch | None:
        try:
            state = await self._call("poll", backend.poll, batch_id)
        except Exception as exc:
            log.info("batch %s from the journal cannot be read (%s): its requests are submitted again", batch_id, exc)
            return None
        batch = _Batch(batch_id, [], state, adopted=True)
        self.stats.adopted += 1
        self.stats.first_submit = self.stats.first_submit or time.monotonic()
        self._watch(backend, batch)
        return batch

    async def _load_journal(self, backend: BatchBackend) -> None:
        """What earlier runs submitted (a file uploaded but never seen as a batch is looked up)."""
        if self.journal is None:
            return
        state = self.journal.load()
        for file_id, ids in state.orphan_files.items():
            try:
                found = await self._call("find", backend.find, file_id)
            except Exception as exc:
                log.info("cannot look up batch of file %s (%s)", file_id, exc)
                continue
            if found is not None:
                self.journal.batch(file_id, found.id)
                state.batches[found.id] = ids
        for batch_id, ids in state.batches.items():
            for custom_id in ids:
                self._known[custom_id] = batch_id

    async def _call(self, what: str, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """A batch API call, retried on transient failures like any request (each retry logged)."""
        for attempt in range(1, self.max_retries + 2):
            try:
                return await fn(*args)
            except Exception as exc:
                failure = classify(exc)
                if not failure.retryable or attempt > self.max_retries:
                    raise
                delay = self.wait.for_failure(failure, attempt)
                log.info("batch %s retry %d/%d in %.2fs: %s", what, attempt, self.max_retries, delay, failure.reason)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ the run's end

    def open_batches(self) -> list[str]:
        """Batches still running at the provider (what a stopped run leaves there)."""
        return [b.id for b in self.batches.values() if not b.state.terminal]

    def status_line(self) -> str:
        """Each status with its batches and rows: ``2 in_progress (1,200/5,000 rows), 1 completed``."""
        by_status: dict[str, list[BatchState]] = {}
        for batch in self.batches.values():
            by_status.setdefault(batch.state.status, []).append(batch.state)
        parts = []
        for status, states in by_status.items():
            total = sum(s.total for s in states)
            done = sum(s.completed + s.failed for s in states)
            rows = f" ({done:,}/{total:,} rows)" if total and status != "completed" else ""
            parts.append(f"{len(states)} {status}{rows}")
        queued = f", {len(self._pending)} queued" if self._pending else ""
        return "batches: " + (", ".join(parts) or "none yet") + queued

    async def aclose(self, *, cancel: bool = False) -> list[str]:
        """Stop watching; with ``cancel``, cancel the provider's open batches.  The batches left open."""
        tasks: list[asyncio.Task[Any]] = [b.watcher for b in self.batches.values() if b.watcher is not None]
        tasks += [task for task in (self._flusher, self._loading, *self._adopting.values()) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        left = self.open_batches()
        if cancel and self._backend is not None:
            for batch_id in left:
                try:
                    await self._call("cancel", self._backend.cancel, batch_id)
                except Exception as exc:
                    log.warning("cannot cancel batch %s: %s", batch_id, exc)
            left = []
        if self.journal is not None:
            self.journal.close()
        return left


def _missing_row(state: BatchState, custom_id: str) -> RowAnswer:
    """A request the finished batch has no line for: why depends on how the batch ended."""
    if state.status == "failed":
        reason = "; ".join(state.errors) or "the batch failed validation"
        return RowAnswer(custom_id, None, None, "batch_failed", reason)
    code = {"expired": "batch_expired", "cancelled": "batch_cancelled"}.get(state.status, "batch_expired")
    return RowAnswer(custom_id, None, None, code, f"no result in batch ({state.status})")


def _fail(request: _Request, exc: BaseException) -> None:
    if not request.future.done():
        request.future.set_exception(exc)
