"""The one library API the CLI, the server and notebooks call.

``run_batch(chain, inputs, ...)`` runs a chain over any number of inputs and
yields one ``Record`` per input as each finishes; ``stream_one(chain, input)``
streams one input's tokens and ends with its record.  Both are async and run
inside an already-running event loop (a notebook cell: ``async for ...``).

Why not ``Runnable.abatch_as_completed``: it creates one task per input up
front, so 100,000 inputs mean 100,000 coroutines and their configs in memory.
Here inputs are pulled lazily into a window of ``max_concurrency`` tasks, each
of which calls the chain's own ``ainvoke`` with a per-input ``RunnableConfig``
(its ``max_concurrency`` still bounds the chain's internal fan-out), and the
run's ``Limits`` bound the model requests in flight across all of them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Container, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.runnables import Runnable

from chains.callbacks import MetricsHandler, TokenStreamHandler
from chains.errors import BudgetExceededError, ProviderError
from chains.limits import Limits, use_limits
from chains.metrics import ItemMetrics, RunSummary, set_current_item
from chains.settings import RunSettings

Input = dict[str, Any]


@dataclass(slots=True)
class Record:
    """The outcome of one input: exactly one per input, success or error."""

    index: int
    input: Any
    output: Any = None
    error: dict[str, Any] | None = None
    metrics: ItemMetrics = field(default_factory=ItemMetrics)
    key: str | None = None
    """Identifies the input for ``--resume`` (chain, prompt files, input, model, parameters)."""

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        data = {
            "index": self.index,
            "input": self.input,
            "output": self.output,
            "error": self.error,
            "metrics": self.metrics.to_dict(),
        }
        if self.key is not None:
            data["key"] = self.key
        return data


def error_dict(exc: BaseException) -> dict[str, Any]:
    """A JSON-safe description of why an input failed."""
    message = str(exc).strip() or type(exc).__name__
    data: dict[str, Any] = {"type": type(exc).__name__, "message": message}
    if isinstance(exc, ProviderError):
        data["status"] = exc.status
        data["attempts"] = exc.attempts
    return data


@dataclass(slots=True)
class StreamEvent:
    """One event of ``stream_one``: a ``token``, a ``discard`` (a failed attempt's
    tokens, about to be retried), or the final ``end`` with the record."""

    kind: str
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
    ) -> None:
        self.chain = chain
        self.key = key
        self.skip = skip
        self.inputs = inputs
        self.settings = settings or RunSettings()
        self.limits = limits or Limits.create(self.settings.max_concurrency)
        self.callbacks = list(callbacks)
        self.start_index = start_index
        self.summary = RunSummary()
        self.in_flight = 0

    async def run_one(self, index: int, value: Any, extra: Sequence[BaseCallbackHandler] = ()) -> Record:
        """Run one input to its record; failures become error records, never exceptions."""
        item = ItemMetrics()
        if isinstance(value, BaseException):
            item.status = "not_run" if isinstance(value, BudgetExceededError) else "failed"
            return Record(index, getattr(value, "input", None), None, error_dict(value), item)
        set_current_item(item)  # task-local: each input runs in its own task
        started = time.perf_counter()
        config = self.settings.to_runnable_config(
            callbacks=[MetricsHandler(item, started), *self.callbacks, *extra],
            metadata={"chain_runner_index": index},
        )
        output: Any = None
        error: dict[str, Any] | None = None
        try:
            output = await self.chain.ainvoke(value, config)
        except asyncio.CancelledError:
            item.status = "cancelled"
            raise
        except Exception as exc:  # one failing input never stops the others
            error = error_dict(exc)
            item.status = "not_run" if isinstance(exc, BudgetExceededError) else "failed"
        item.latency_s = time.perf_counter() - started
        return Record(index, value, output, error, item)

    def _record_done(self, record: Record) -> Record:
        self.summary.add(record.index, record.metrics, record.error)
        return record

    async def __aiter__(self) -> AsyncIterator[Record]:
        window = self.settings.max_concurrency
        pending: set[asyncio.Task[Record]] = set()
        with use_limits(self.limits):
            source = _aiter(self.inputs)
            index = self.start_index
            exhausted = False
            try:
                while True:
                    while not exhausted and len(pending) < window:
                        try:
                            value = await source.__anext__()
                        except StopAsyncIteration:
                            exhausted = True
                            break
                        key = self.key(value) if self.key is not None and not isinstance(value, BaseException) else None
                        if key is not None and key in self.skip:
                            self.summary.skipped += 1  # already has a success record: no request
                        elif isinstance(value, BaseException):
                            yield self._keyed(await self.run_one(index, value), key)
                        elif self.limits.budget is not None and self.limits.budget.exhausted:
                            yield self._keyed(await self.run_one(index, self._not_run(value)), key)
                        else:
                            pending.add(asyncio.create_task(self._run_keyed(index, value, key)))
                        index += 1
                    self.in_flight = len(pending)
                    if not pending:
                        break
                    done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    self.in_flight = len(pending)
                    for task in done:
                        yield self._record_done(task.result())

            finally:
                for task in pending:
                    task.cancel()
                if pending:
                    await asyncio.gather(*pending, return_exceptions=True)
                self.in_flight = 0
                self.summary.finish()

    def _keyed(self, record: Record, key: str | None) -> Record:
        record.key = key
        return self._record_done(record)

    async def _run_keyed(self, index: int, value: Any, key: str | None) -> Record:
        record = await self.run_one(index, value)
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
) -> BatchRun:
    """Run ``chain`` over ``inputs``; ``async for record in run_batch(...)``.

    Inputs are read lazily.  At most ``max_concurrency`` inputs run at once and,
    through the run's ``Limits``, at most that many model requests are in
    flight however the chain fans out.  An input that is an exception (e.g. a
    bad row from a reader) becomes an error record without running.  With
    ``key``, each record carries its input's key and inputs whose key is in
    ``skip`` (already done) are skipped without a request.  Once the run's
    budget is exhausted, the remaining inputs get "not run" records.
    """
    settings = settings or RunSettings()
    if max_concurrency is not None:
        settings = settings.model_copy(update={"max_concurrency": max_concurrency})
    return BatchRun(chain, inputs, settings=settings, limits=limits, callbacks=callbacks, key=key, skip=skip)


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
            with use_limits(run.limits):
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


__all__ = ["BatchRun", "Record", "StreamEvent", "error_dict", "run_batch", "stream_one"]
