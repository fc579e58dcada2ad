"""The same run in N worker processes, or on a Ray cluster: ``run_on_ray(chain_name, inputs, ...)``.

``RayRun`` is what ``run_batch``'s ``BatchRun`` is, an async iterable of ``Record``s with ``summary`` and
``in_flight``, so a caller (the CLI) drives either the same way.  The driver (this process) reads the inputs
lazily and hands each to the least loaded worker, at most a window of them per worker, so the file is never in
memory; records come back in completion order with the same keys, ``skip`` (``--resume``) and error records as
in one process, and the summary is the sum of the records.

Faults: a worker that dies (kill -9, its node gone) loses only the inputs it had in flight; the driver sends
each again to another worker (a replacement is started while the budget lasts) and, since only the driver
writes records, an input still gets exactly one.  An input whose worker died under it ``max_losses`` times gets
an error record instead (it may be what kills them).  ``stop()`` (a first Ctrl-C) admits no new input and
cancels those in flight; closing the iterator early or cancelling its task kills the workers at once.  Either
way the inputs in flight are counted as cancelled with no record (as in one process: ``--resume`` runs them),
and Ray is shut down if the run started it.

Ray is imported only when a run starts (``chains.scale.cluster``).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable, Container, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chains.engine.execution import Record, error_dict
from chains.engine.metrics import ItemMetrics
from chains.engine.shard import Shard, as_shard
from chains.errors import BudgetExceededError, ChainRunnerError, UsageError
from chains.scale.cluster import Cluster, connect
from chains.scale.governor import start_governor
from chains.scale.pool import Worker, WorkerPool
from chains.scale.throughput import ScaleSummary, WorkerStats
from chains.scale.wire import from_wire
from chains.scale.worker import WorkerSpec
from chains.settings import RunSettings

MAX_LOSSES = 3
"""An input whose worker died under it this many times gets an error record instead of a fourth try."""


class WorkerLostError(ChainRunnerError):
    """An input's worker died under it too often, or every worker died: ``--resume`` runs the rest again."""

    exit_code = 1
    http_status = 503


@dataclass(slots=True)
class _Job:
    index: int
    value: Any
    key: str | None
    losses: int = 0


@dataclass(slots=True)
class _Sent:
    """A job on its way: the worker it went to and its Ray task (``stop`` cancels that)."""

    jobs: list[_Job]
    worker: Worker
    ref: Any


class RayRun:
    """An async iterable of records from Ray workers; ``summary`` (a ``ScaleSummary``) holds the run's numbers."""

    def __init__(
        self,
        chain_name: str,
        inputs: Iterable[Any] | AsyncIterable[Any],
        *,
        settings: RunSettings,
        workers: int | None = None,
        address: str | None = None,
        key: Callable[[Any], str] | None = None,
        skip: Container[str] = (),
        callbacks: Sequence[Any] = (),
        shard: Shard | tuple[int, int] | None = None,
        window: int | None = None,
        governed: bool = True,
        max_losses: int = MAX_LOSSES,
        rate_window_s: float = 60.0,
    ) -> None:
        if settings.tier == "batch":
            raise UsageError(
                "--tier batch runs in one process (its batches are the scale): drop --workers/--ray-address"
            )
        self.chain_name = chain_name
        self.inputs = inputs
        self.settings = portable(settings)
        self.workers_wanted = workers
        self.address = address
        self.rate_window_s = rate_window_s
        """The window of ``--rpm``/``--tpm`` (60 s; tests shrink it)."""
        self.key = key
        self.skip = skip
        if shard is not None and key is None:
            raise UsageError("run_on_ray(shard=...) needs key=...: an input's shard is the hash of its key")
        self.shard = as_shard(shard) if shard is not None else None
        self.other_shards = 0
        """Inputs read and passed over: another shard's (as in ``BatchRun``; records keep their place in the file)."""
        self.callbacks = list(callbacks)
        self._window = window
        self.window = window or self.settings.inputs_in_flight
        """Inputs a worker runs at once (default: its share of ``settings.inputs_in_flight`` when one governor holds the
        run's in-flight cap, so the run has as many inputs in flight as one process would, else all of it); the driver
        sends it up to a chunk more, which waits there for a place (``chains.scale.pool``)."""
        self.governed = governed
        """One governor actor holds the run's limits for every worker; False: each worker has its own."""
        self.max_losses = max_losses
        self.summary = ScaleSummary()
        self.in_flight = 0
        self._cluster: Cluster | None = None
        self._pool: WorkerPool | None = None
        self._governor: Any = None
        self._pending: dict[asyncio.Future[Any], _Sent] = {}
        self._retry: deque[_Job] = deque()
        self._position = 0
        self._exhausted = False
        self._stopping = False

    @property
    def workers(self) -> list[WorkerStats]:
        """Every worker of the run so far, replacements included (pid and node once each is up)."""
        return self.summary.workers

    def start(self) -> RayRun:
        """Connect to (or start) Ray and create the workers; a bad address or a missing Ray is one line, now.

        Iterating starts the run if this was not called; calling it first lets a caller fail before it shows
        anything."""
        if self._pool is not None:
            return self
        digest = _digest(self.chain_name, self.settings)
        self._cluster = cluster = connect(self.workers_wanted, self.address)
        if self._window is None and self.governed:
            self.window = max(1, math.ceil(self.settings.inputs_in_flight / cluster.workers))
        try:
            self._governor = start_governor(self.settings, window_s=self.rate_window_s) if self.governed else None
            spec = WorkerSpec(
                self.chain_name, self.settings, digest, self.key, tuple(self.callbacks), self._governor, self.window
            )
            pool = WorkerPool(cluster.ray, spec, window=self.window, replacements=cluster.workers)
            self.summary.workers = pool.stats  # the same list: replacements appear as they start
            pool.start(cluster.workers)
        except BaseException:
            self._release(None)
            raise
        self._pool = pool
        return self

    def stop(self) -> None:
        """Stop part-way (a first Ctrl-C): no new input, those in flight cancelled and counted; the iteration
        then ends as a finished run does (records so far delivered, workers closed)."""
        self._stopping = True
        if self._pool is None:
            return
        for sent in self._pending.values():
            with contextlib.suppress(Exception):  # already done, or its worker is gone
                self._pool.ray.cancel(sent.ref)

    async def __aiter__(self) -> AsyncIterator[Record]:
        self.start()
        pool = self._pool
        assert pool is not None
        finished = False
        try:
            await pool.first_up()
            self.summary.startup_s = time.perf_counter() - self.summary.started
            async with contextlib.aclosing(self._records(pool)) as records:
                async for record in records:
                    yield self._record_done(record)
            finished = True
        finally:
            self._abandon()
            closing = time.perf_counter()
            await self._shutdown(pool, graceful=finished)
            self.summary.shutdown_s = time.perf_counter() - closing
            self.summary.finish()

    async def _records(self, pool: WorkerPool) -> AsyncGenerator[Record, None]:
        """Keep every worker's window full (inputs lost with a worker first), yield records as they finish."""
        source = _aiter(self.inputs)
        try:
            while True:
                for record in await self._fill(pool, source):
                    yield record
                self.in_flight = len(self._pending)
                starting = pool.starting() if self._more() else {}  # a worker coming up takes inputs at once
                if not self._pending:
                    if not self._more():
                        return
                    if pool.free() is not None:
                        continue  # only inputs that do not run so far: read on
                    if not starting:
                        raise WorkerLostError(
                            "every Ray worker died and no replacement could be started; the records so far are "
                            "kept: run again with --resume for the rest"
                        )
                # every worker died and only replacements are starting: one may never find a place (a node gone)
                alone = not pool.any_up
                done, _ = await asyncio.wait(
                    [*self._pending, *starting],
                    timeout=pool.start_timeout_s if alone else None,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if not done:
                    raise WorkerLostError(
                        f"every Ray worker died and no replacement started within {pool.start_timeout_s:g} s; the "
                        "records so far are kept: free CPUs on the cluster, then run again with --resume for the rest"
                    )
                for future in done:
                    if future in starting:
                        pool.started(starting[future])
                        continue
                    for record in self._outcome(pool, future, self._pending.pop(future)):
                        yield record
                self.in_flight = len(self._pending)
        finally:
            await source.aclose()

    async def _fill(self, pool: WorkerPool, source: AsyncGenerator[Any, None]) -> list[Record]:
        """Hand inputs to workers with room (lost ones first); the records of inputs that do not run (bad rows),
        at most a window of them at a time."""
        records: list[Record] = []
        while len(records) < self.window and self._more() and (worker := pool.free()) is not None:
            room = pool.room(worker)
            jobs: list[_Job] = []
            while len(jobs) < room and len(records) < self.window and self._more():
                job = self._retry.popleft() if self._retry else await self._next(source)
                if isinstance(job, Record):
                    records.append(job)
                elif job is not None:
                    jobs.append(job)
            if jobs:  # one Ray call for a chunk of inputs: the per-call cost is paid once for all of them
                if self.summary.first_input is None:
                    self.summary.first_input = time.perf_counter()
                future, ref = pool.submit(worker, [(job.index, job.value) for job in jobs])
                self._pending[future] = _Sent(jobs, worker, ref)
        return records

    def _more(self) -> bool:
        return not self._stopping and (bool(self._retry) or not self._exhausted)

    async def _next(self, source: AsyncGenerator[Any, None]) -> _Job | Record | None:
        """The next input as a job; a record when it does not run (a bad row); None: skipped, or no more input."""
        try:
            value = await source.__anext__()
        except StopAsyncIteration:
            self._exhausted = True
            return None
        self._position += 1
        if self.shard is not None and not self.shard.owns(self._key_of(value)):
            self.other_shards += 1  # another shard's: no record, no count, but its place in the file is kept
            return None
        return self._admit(self._position - 1, value)

    def _key_of(self, value: Any) -> str | None:
        return None if isinstance(value, BaseException) or self.key is None else self.key(value)

    def _admit(self, index: int, value: Any) -> _Job | Record | None:
        """An input read: a job to send, an error record without running (a bad row), or None (skipped)."""
        if isinstance(value, BaseException):
            item = ItemMetrics(status="not_run" if isinstance(value, BudgetExceededError) else "failed")
            return Record.failure(index, getattr(value, "input", None), value, item)
        key = self.key(value) if self.key is not None else None
        if key is not None and key in self.skip:
            self.summary.skipped += 1  # already has a success record: no request
            return None
        return _Job(index, value, key)

    def _outcome(self, pool: WorkerPool, future: asyncio.Future[Any], sent: _Sent) -> list[Record]:
        """The records of a finished chunk; none for inputs cancelled (``stop``), or whose worker died and that go
        round again."""
        jobs, worker = sent.jobs, sent.worker
        error = future.exception()
        if error is None:
            pool.delivered(worker, len(jobs))
            return [
                from_wire(job.index, job.value, job.key, data) for job, data in zip(jobs, future.result(), strict=True)
            ]
        if isinstance(error, pool.ray.exceptions.TaskCancelledError):
            pool.cancelled(worker, len(jobs))
            self.summary.cancelled += len(jobs)  # as in one process: counted, no record, --resume runs them again
            return []
        if not _is_death(pool.ray, error):
            raise pool.failure(error) from error  # the worker itself failed: not an input's fault
        pool.lost(worker, len(jobs))
        records: list[Record] = []
        for job in jobs:
            job.losses += 1
            if job.losses >= self.max_losses:
                lost = WorkerLostError(
                    f"lost: the Ray worker running this input died {job.losses} times (last: {type(error).__name__}); "
                    "run it again with --resume"
                )
                item = ItemMetrics(status="failed")
                records.append(Record(job.index, job.value, None, error_dict(lost), item, job.key, lost))
            else:
                self.summary.rerun += 1
                self._retry.append(job)
        return records

    def _record_done(self, record: Record) -> Record:
        self.summary.add(record.index, record.metrics, record.error)
        self.summary.last_record = time.perf_counter()
        return record

    def _abandon(self) -> None:
        """Inputs still in flight when the run stops early: counted as cancelled (no record, as in one process);
        their futures are dropped quietly (their workers are about to be killed)."""
        self.summary.cancelled += sum(len(sent.jobs) for sent in self._pending.values())
        for future in self._pending:
            future.cancel()
        self._pending.clear()
        self.in_flight = 0

    async def _shutdown(self, pool: WorkerPool, *, graceful: bool) -> None:
        """Workers closed (a finished run: leases given back) or killed (a stopped one), then Ray if we started it."""
        if graceful:
            await pool.close()
            self.summary.governor = await _governor_stats(self._governor)
        self._release(pool)

    def _release(self, pool: WorkerPool | None) -> None:
        if pool is not None:
            pool.kill()
        if self._governor is not None and self._cluster is not None:
            _kill(self._cluster.ray, self._governor)
            self._governor = None
        if self._cluster is not None:
            self._cluster.shutdown()


def run_on_ray(
    chain_name: str,
    inputs: Iterable[Any] | AsyncIterable[Any],
    *,
    settings: RunSettings,
    workers: int | None = None,
    address: str | None = None,
    key: Callable[[Any], str] | None = None,
    skip: Container[str] = (),
    callbacks: Sequence[Any] = (),
    shard: Shard | tuple[int, int] | None = None,
) -> RayRun:
    """Run chain ``chain_name`` over ``inputs`` in Ray workers; ``async for record in run_on_ray(...)``.

    ``workers=N`` uses N worker processes, starting a local Ray for them if none is running in this process;
    ``address=`` joins an existing cluster (``HOST:PORT``, ``ray://HOST:PORT``, ``auto``), one worker per CPU
    unless ``workers`` says otherwise.  ``key``, ``skip`` and inputs that are exceptions work as in
    ``run_batch``, and so does ``shard=(I, N)`` (needs ``key``: only shard I's inputs run, each record's index its
    place among all the inputs); ``callbacks`` run in the workers, so they must pickle.  The run's limits (``--max-concurrency``,
    ``--rpm``/``--tpm``, ``--max-cost``) hold across all workers: they live in one governor actor.
    """
    return RayRun(
        chain_name,
        inputs,
        settings=settings,
        workers=workers,
        address=address,
        key=key,
        skip=skip,
        callbacks=callbacks,
        shard=shard,
    )


def portable(settings: RunSettings) -> RunSettings:
    """The settings with their files as absolute paths: a worker's working directory is not the driver's."""
    files: dict[str, Any] = {"prompts_dirs": [str(Path(d).resolve()) for d in settings.prompts_dirs]}
    for name in ("prices", "cache"):
        value = getattr(settings, name)
        if value:
            files[name] = str(Path(value).resolve())
    return settings.model_copy(update=files)


def _digest(chain_name: str, settings: RunSettings) -> str:
    """The chain's digest from the driver's prompt files (an unknown chain is refused here, before Ray)."""
    from chains.spec.prompts_library import PromptLibrary
    from chains.spec.registry import chain_info

    return chain_info(chain_name, PromptLibrary(settings.prompts_dirs)).digest


def _is_death(ray: Any, error: BaseException) -> bool:
    """The worker (or its node) is gone, not the input's fault: the input may run again elsewhere."""
    exceptions = ray.exceptions
    return isinstance(
        error,
        (
            exceptions.RayActorError,
            exceptions.WorkerCrashedError,
            exceptions.NodeDiedError,
            exceptions.ObjectLostError,
            exceptions.OutOfMemoryError,
        ),
    )


async def _governor_stats(handle: Any) -> dict[str, Any] | None:
    if handle is None:
        return None
    try:
        stats: dict[str, Any] = await asyncio.wait_for(asyncio.wrap_future(handle.stats.remote().future()), 5.0)
    except Exception:  # the numbers are a report, not the run: a governor that cannot say is left out
        return None
    return stats


def _kill(ray: Any, handle: Any) -> None:
    try:
        ray.kill(handle, no_restart=True)
    except Exception:  # already gone with Ray
        return


async def _aiter(values: Iterable[Any] | AsyncIterable[Any]) -> AsyncGenerator[Any, None]:
    if isinstance(values, AsyncIterable):
        async for value in values:
            yield value
    else:
        for value in values:
            yield value


__all__ = ["MAX_LOSSES", "RayRun", "WorkerLostError", "run_on_ray"]
