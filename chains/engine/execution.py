"""The one library API the CLI, the server and notebooks call.

``run_batch(chain, inputs, ...)`` runs a chain over any number of inputs and yields one ``Record`` per input as
each finishes; ``stream_one(chain, input)`` streams one input's tokens and ends with its record.  Both are async
and run inside an already-running event loop (a notebook cell: ``async for ...``).

Why not ``Runnable.abatch_as_completed``: it creates one task per input up front, so 100,000 inputs mean 100,000
coroutines and their configs in memory.  Here a pool of ``max_concurrency`` workers pulls inputs lazily; each
worker calls the chain's own ``ainvoke`` with a per-input ``RunnableConfig`` (its ``max_concurrency`` still bounds
the chain's internal fan-out), or, for a ``prompt | model | parser`` nobody else watches, its compiled path
(``chains.engine.compiled``); the run's ``Limits`` bound the model requests in flight across all of them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Container, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.runnables import Runnable

from chains.engine.callbacks import MetricsHandler, TokenStreamHandler
from chains.engine.compiled import invoker
from chains.engine.limits import Limits, install_limits
from chains.engine.metrics import ItemMetrics, ItemStatus, RunSummary, set_current_item, set_current_key
from chains.engine.shard import Shard, as_shard
from chains.errors import BudgetExceededError, ProviderError, UsageError
from chains.settings import RunSettings

Input = dict[str, Any]


RecordField = Literal["index", "input", "output", "error", "metrics", "key", "usage", "latency_s", "ttft_s", "status"]
"""What a record can show: its own parts, and (for the generation log) a flat view of its metrics."""

RECORD_FIELDS: tuple[RecordField, ...] = ("index", "input", "output", "error", "metrics", "key")
"""An ``--output`` line (``key`` only when the run has keys)."""
ANSWER_FIELDS: tuple[RecordField, ...] = ("output", "metrics")
"""The server's answer to one input (``invoke``, the ``end`` event of ``stream``)."""
BATCH_FIELDS: tuple[RecordField, ...] = ("index", "output", "error", "metrics")
"""One record of the server's ``batch`` answer (the client sent the inputs: they are not repeated)."""
LOG_FIELDS: tuple[RecordField, ...] = ("index", "input", "output", "usage", "latency_s", "ttft_s", "status", "error")
"""A line of the server's generation log."""


@dataclass(slots=True)
class Record:
    """The outcome of one input: exactly one per input, success or error.

    A failure is kept whole: ``exception`` is what the input failed with (so the server can answer it by
    its class), ``error`` its JSON-safe description.
    """

    index: int
    input: Any
    output: Any = None
    error: dict[str, Any] | None = None
    metrics: ItemMetrics = field(default_factory=ItemMetrics)
    key: str | None = None
    """Identifies the input for ``--resume`` (chain, prompt files, input, model, parameters)."""
    exception: BaseException | None = field(default=None, repr=False, compare=False)

    @classmethod
    def failure(cls, index: int, value: Any, exc: BaseException, metrics: ItemMetrics) -> Record:
        return cls(index, value, None, error_dict(exc), metrics, exception=exc)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def outcome(self) -> ItemStatus:
        """ok, failed, cancelled or not_run (the budget was spent before it could run)."""
        if self.metrics.status in ("cancelled", "not_run", "skipped"):
            return self.metrics.status
        return "ok" if self.ok else "failed"

    def to_dict(self, fields: Sequence[RecordField] = RECORD_FIELDS) -> dict[str, Any]:
        """The record as JSON-ready data, in the order of ``fields``: the one shape of a record everywhere
        (the ``--output`` file, the server's answers and its log)."""
        return {name: self._part(name) for name in fields if name != "key" or self.key is not None}

    def _part(self, name: RecordField) -> Any:
        m = self.metrics
        match name:
            case "metrics":
                return m.to_dict()
            case "usage":
                return {
                    "input_tokens": m.input_tokens,
                    "output_tokens": m.output_tokens,
                    "estimated": m.tokens_estimated,
                }
            case "latency_s" | "ttft_s":
                return _rounded(getattr(m, name))
            case "status":
                return self.outcome
            case _:  # index, input, output, error, key: the record's own attributes
                return getattr(self, name)


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 4)


def error_dict(exc: BaseException) -> dict[str, Any]:
    """A JSON-safe description of why an input failed."""
    message = str(exc).strip() or type(exc).__name__
    data: dict[str, Any] = {"type": type(exc).__name__, "message": message}
    if isinstance(exc, ProviderError):
        data["status"] = exc.status
        data["attempts"] = exc.attempts
    raw = getattr(exc, "llm_output", None)  # a parser's refusal (OutputParserException): the answer it refused
    if isinstance(raw, str):
        data["raw"] = raw if len(raw) <= RAW_CHARS else raw[: RAW_CHARS - 1] + "…"
    return data


RAW_CHARS = 4000
"""A refused answer is kept in its record up to this many characters."""


StreamKind = Literal["token", "discard", "end", "error"]


@dataclass(slots=True)
class StreamEvent:
    """One event of ``stream_one``: a ``token``, a ``discard`` (a failed attempt's
    tokens, about to be retried), or the final ``end`` with the record."""

    kind: StreamKind
    text: str = ""
    record: Record | None = None


class BatchRun:
    """An async iterable of records; ``summary`` holds the run's numbers."""

    def __init__(
        self,
        chain: Runnable[Any, Any],
        inputs: Iterable[Any] | AsyncIterable[Any],
        *,
        settings: RunSettings | None = None,
        limits: Limits | None = None,
        callbacks: Sequence[BaseCallbackHandler] = (),
        start_index: int = 0,
        key: Callable[[Any], str] | None = None,
        skip: Container[str] = (),
        shard: Shard | tuple[int, int] | None = None,
    ) -> None:
        self.chain = chain
        self.key = key
        self.skip = skip
        self.shard = _checked_shard(shard, key)
        self.other_shards = 0
        """Inputs read and passed over: another shard's (they get no record and are in no count of the summary)."""
        self.inputs = inputs
        self.settings = settings or RunSettings()
        self.limits = limits or Limits.create(self.settings.max_concurrency)
        self.callbacks = list(callbacks)
        self.start_index = start_index
        self.summary = RunSummary()
        self.in_flight = 0
        self.invoke = invoker(chain)  # the chain's ainvoke, or its compiled path (nobody else watches its steps)

    async def run_one(self, index: int, value: Any, extra: Sequence[BaseCallbackHandler] = ()) -> Record:
        """Run one input to its record; failures become error records, never exceptions."""
        item = ItemMetrics()
        if isinstance(value, BaseException):
            item.status = "not_run" if isinstance(value, BudgetExceededError) else "failed"
            return Record.failure(index, getattr(value, "input", None), value, item)
        set_current_item(item)  # task-local: each input runs in its own task
        started = time.perf_counter()
        config = self.settings.to_runnable_config(
            callbacks=[MetricsHandler(item, started), *self.callbacks, *extra],
            metadata={"chain_runner_index": index},
        )
        try:
            output = await self.invoke(value, config)
        except asyncio.CancelledError:
            item.status = "cancelled"
            raise
        except Exception as exc:  # one failing input never stops the others
            item.status = "not_run" if isinstance(exc, BudgetExceededError) else "failed"
            item.latency_s = time.perf_counter() - started
            return Record.failure(index, value, exc, item)
        item.latency_s = time.perf_counter() - started
        return Record(index, value, output, None, item)

    def _record_done(self, record: Record) -> Record:
        self.summary.add(record.index, record.metrics, record.error)
        return record

    async def __aiter__(self) -> AsyncIterator[Record]:
        """A pool of ``max_concurrency`` workers, each pulling its next input as soon as it is free.

        Records reach the caller through a bounded queue, so at most about two windows of inputs
        are read ahead of the caller, and a worker never waits for a slow sibling to refill.
        """
        window = self.settings.inputs_in_flight
        queue: asyncio.Queue[Record | BaseException | None] = asyncio.Queue(maxsize=window)
        source = _aiter(self.inputs)
        lock = asyncio.Lock()
        position = [self.start_index]

        async def next_input() -> tuple[int, Any] | None:
            async with lock:  # an async generator cannot be advanced by two tasks at once
                try:
                    value = await source.__anext__()
                except StopAsyncIteration:
                    return None
                position[0] += 1
                return position[0] - 1, value

        async def worker() -> None:
            install_limits(self.limits)  # this task's own context: nothing to reset afterwards
            while (item := await next_input()) is not None:
                index, value = item
                record = await self._process(index, value)
                if record is not None:
                    await queue.put(record)

        async def supervise() -> None:
            try:
                await asyncio.gather(*workers)
            except BaseException as exc:  # a reader failing mid-file: hand it to the caller
                await queue.put(exc)
            else:
                await queue.put(None)

        workers = [asyncio.create_task(worker()) for _ in range(window)]
        supervisor = asyncio.create_task(supervise())
        try:
            while (got := await queue.get()) is not None:
                if isinstance(got, BaseException):
                    raise got
                yield self._record_done(got)
        finally:
            for task in (*workers, supervisor):
                task.cancel()
            await asyncio.gather(*workers, supervisor, return_exceptions=True)
            self.in_flight = 0
            self.summary.finish()

    async def _process(self, index: int, value: Any) -> Record | None:
        """One input to its record (None when ``--resume`` skips it, or it is another shard's)."""
        key = self.key(value) if self.key is not None and not isinstance(value, BaseException) else None
        if self.shard is not None and not self.shard.owns(key):
            self.other_shards += 1
            return None
        if key is not None and key in self.skip:
            self.summary.skipped += 1  # already has a success record: no request
            return None
        if isinstance(value, BaseException):
            record = await self.run_one(index, value)
        elif self.limits.budget is not None and self.limits.budget.exhausted:
            record = await self.run_one(index, self._not_run(value))
        else:
            set_current_key(key)  # task-local, like the item's metrics
            self.in_flight += 1
            self.limits.inputs_in_flight += 1
            try:
                record = await self.run_one(index, value)
            finally:
                self.in_flight -= 1
                self.limits.inputs_in_flight -= 1
        record.key = key
        return record

    def _not_run(self, value: Any) -> BudgetExceededError:
        budget = self.limits.budget
        assert budget is not None
        error = BudgetExceededError(
            f"not run: --max-cost ${budget.max_usd:g} reached (spent ${budget.spent:.4f}); "
            "raise --max-cost and use --resume to run the rest"
        )
        error.input = value  # type: ignore[attr-defined]
        return error


def _checked_shard(shard: Shard | tuple[int, int] | None, key: Callable[[Any], str] | None) -> Shard | None:
    if shard is None:
        return None
    if key is None:
        raise UsageError("run_batch(shard=...) needs key=...: an input's shard is the hash of its key")
    return as_shard(shard)


async def _aiter(values: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[Any]:
    if isinstance(values, AsyncIterable):
        async for value in values:
            yield value
    else:
        for value in values:
            yield value


def run_batch(
    chain: Runnable[Any, Any],
    inputs: Iterable[Any] | AsyncIterable[Any],
    *,
    settings: RunSettings | None = None,
    max_concurrency: int | None = None,
    limits: Limits | None = None,
    callbacks: Sequence[BaseCallbackHandler] = (),
    key: Callable[[Any], str] | None = None,
    skip: Container[str] = (),
    shard: Shard | tuple[int, int] | None = None,
) -> BatchRun:
    """Run ``chain`` over ``inputs``; ``async for record in run_batch(...)``.

    Inputs are read lazily.  At most ``max_concurrency`` inputs run at once and, through the run's ``Limits``, at
    most that many model requests are in flight however the chain fans out.  An input that is an exception (e.g. a
    bad row from a reader) becomes an error record without running.  With ``key``, each record carries its input's
    key and inputs whose key is in ``skip`` (already done) are skipped without a request.  Once the run's budget is
    exhausted, the remaining inputs get "not run" records.

    ``shard=(I, N)`` (needs ``key``) runs only the inputs whose key hashes to shard I of N
    (``chains.engine.shard``), so N runs with their own outputs cover every input once; the others are read
    and passed over (no record, not counted as skipped), and each record keeps its place in the whole input
    as its ``index``.
    """
    settings = settings or RunSettings()
    if max_concurrency is not None:
        settings = settings.model_copy(update={"max_concurrency": max_concurrency})
    return BatchRun(
        chain, inputs, settings=settings, limits=limits, callbacks=callbacks, key=key, skip=skip, shard=shard
    )


async def stream_one(
    chain: Runnable[Any, Any],
    value: Input,
    *,
    settings: RunSettings | None = None,
    limits: Limits | None = None,
    callbacks: Sequence[BaseCallbackHandler] = (),
    index: int = 0,
) -> AsyncIterator[StreamEvent]:
    """Stream one input: ``token`` events as generated, then one ``end`` event.

    The model must stream for tokens to arrive (``RunSettings(stream=True)`` on
    the session's model).  Closing the iterator early cancels the request.
    """
    queue: asyncio.Queue[StreamEvent] = asyncio.Queue()

    def on_token(run_id: UUID, token: str) -> None:
        queue.put_nowait(StreamEvent("token", token))

    def on_discard(run_id: UUID, text: str) -> None:
        queue.put_nowait(StreamEvent("discard", text))

    run = BatchRun(chain, (), settings=settings, limits=limits, callbacks=callbacks)
    handler = TokenStreamHandler(on_token, on_discard)

    async def work() -> None:
        try:
            install_limits(run.limits)  # this task's own context
            record = run._record_done(await run.run_one(index, value, [handler]))
            run.summary.finish()
            queue.put_nowait(StreamEvent("end", record=record))
        except BaseException as exc:
            queue.put_nowait(StreamEvent("error", text=str(exc) or type(exc).__name__))
            raise

    task = asyncio.create_task(work())
    try:
        while True:
            event = await queue.get()
            if event.kind == "error":
                await task  # re-raises what stopped the worker
            yield event
            if event.kind == "end":
                return
    finally:
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)


__all__ = [
    "ANSWER_FIELDS",
    "BATCH_FIELDS",
    "LOG_FIELDS",
    "RECORD_FIELDS",
    "BatchRun",
    "Record",
    "RecordField",
    "StreamEvent",
    "StreamKind",
    "error_dict",
    "run_batch",
    "stream_one",
]
