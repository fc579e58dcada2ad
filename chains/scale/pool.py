"""The run's worker actors: started, handed inputs (the least loaded first, in chunks, never more than a window and a
chunk each), replaced when one dies, and killed at the end.

A Ray call costs about a millisecond of a worker's CPU (Ray's own thread takes the GIL to start it and to send its
records back), as much as a short chain on the offline model, so a fast worker gets its inputs in chunks (one call,
``CHUNK`` at most), as many as keep it near ``CALLS_PER_S`` calls a second: 1 for model calls that take a while
(every record back as soon as it is done), up to ``CHUNK`` for a worker that finishes hundreds of inputs a second.

A chunk's records come back together, when its slowest input is done, and a call reaches a busy worker's event loop
only tens of milliseconds after it was sent (Ray's thread waits for the GIL).  Neither leaves a worker's places idle:
it runs at most its window of inputs at once (``ChainWorker``), and it is sent its next whole chunk as soon as it
holds no more than its window, so that chunk waits in the worker and takes each place as an input ends.  (Measured,
``story`` on the offline model: chunks cut to the one place a record freed and no chunk ahead kept a worker's loop
at about 12 of its 32 inputs, and 1 input in 5 paid for a Ray call.)  Before a worker's first records come back
nobody knows its rate, so each call carries twice the last (1, 2, 4, ...): one call per place had cost a fast
worker its first ~0.15 s, 33 calls to fill a window of 32; and 32 inputs a call at the offline model's pace cost
about half the Ray calls of 16.

Each worker is an async Ray actor (``chains.scale.worker.ChainWorker``) with room for its window of inputs
plus its own calls; it holds one CPU, so a cluster places at most one worker per CPU.  A dead worker is
killed for good (``ray.kill``: a worker that was only unreachable must not deliver a second record for an
input the driver has sent elsewhere) and, while the run's replacement budget lasts, a new one takes its place.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from dataclasses import dataclass
from typing import Any

from chains.errors import ChainRunnerError, UsageError, one_line
from chains.scale.throughput import WorkerStats
from chains.scale.worker import ChainWorker, WorkerSpec

CHUNK = 32
"""Inputs per Ray call at most."""
CALLS_PER_S = 20.0
"""Chunks grow with a worker's rate so that it gets about this many calls a second at most (a few % of a core)."""
READY_TIMEOUT_S = 120.0
"""How long the run waits for its workers to start and build their chains (a cluster may have to make room)."""
CLOSE_TIMEOUT_S = 10.0
"""A finished run's workers get this long to give their leases back and close their pools; then they are killed."""


class WorkerFailedError(ChainRunnerError):
    """A worker could not do its job at all (not one input's failure): the run stops with this one line."""


@dataclass(eq=False)
class Worker:
    handle: Any
    stats: WorkerStats
    load: int = 0


class WorkerPool:
    """``count`` workers with at most ``window`` inputs each; ``replacements`` new ones for those that die."""

    def __init__(self, ray: Any, spec: WorkerSpec, *, window: int, replacements: int) -> None:
        self.ray = ray
        self.spec = spec
        self.window = window
        self.replacements = replacements
        self.workers: list[Worker] = []
        self.stats: list[WorkerStats] = []
        """Every worker's numbers, in start order (replacements included)."""
        self._actor = ray.remote(ChainWorker).options(
            num_cpus=1, max_concurrency=window + CHUNK + 4, max_restarts=0, max_task_retries=0
        )

    def start(self, count: int) -> None:
        for _ in range(count):
            self._add(replacement=False)

    async def ready(self, within_s: float = READY_TIMEOUT_S) -> None:
        """Wait until every worker has built its chain; one that cannot (or finds no place) is one error line."""
        workers = [w for w in self.workers if w.stats.pid is None]
        waiting = asyncio.gather(*(_future(w.handle.info.remote()) for w in workers), return_exceptions=True)
        try:
            infos = await asyncio.wait_for(waiting, within_s)
        except TimeoutError:
            raise WorkerFailedError(
                f"{len(workers)} Ray workers did not start within {within_s:g} s (each needs a free CPU, and "
                "chain-runner installed on its node); free CPUs on the cluster or pass fewer --workers"
            ) from None
        for worker, info in zip(workers, infos, strict=True):
            if isinstance(info, BaseException):
                raise self.failure(info) from info
            worker.stats.pid, worker.stats.node = info["pid"], info["node"]

    @property
    def live(self) -> list[Worker]:
        return [w for w in self.workers if w.stats.alive]

    def free(self) -> Worker | None:
        """The least loaded live worker with room for another chunk, if any."""
        room = [w for w in self.live if self.room(w) > 0]
        return min(room, key=lambda w: w.load) if room else None

    def chunk(self, worker: Worker) -> int:
        """Inputs per call to ``worker``: sized by its rate (1 for slow model calls); until it has delivered, twice the
        last call's (1, 2, 4, ...): a slow model's first inputs still come back one by one, and a fast worker's window
        fills in a few calls, not one call per place."""
        rate = worker.stats.items_per_s
        size = 2 ** min(worker.stats.calls, 16) if rate is None else math.ceil(rate / CALLS_PER_S)
        return max(1, min(size, CHUNK))

    def room(self, worker: Worker) -> int:
        """How many inputs to send ``worker`` in its next call: a whole chunk while it holds no more than its window,
        else none.  So a worker holds at most a chunk beyond its window, which waits there for a place
        (``ChainWorker`` runs a window at once): its places never stand idle while the driver hears of a chunk done
        and sends the next, and a chunk is never cut to the one place a single record freed."""
        return self.chunk(worker) if worker.load <= self.window else 0

    def submit(self, worker: Worker, inputs: list[tuple[int, Any]]) -> tuple[asyncio.Future[Any], Any]:
        """Send a chunk of inputs to ``worker``: the future of their records here, and its Ray object ref (to cancel)."""
        worker.load += len(inputs)
        worker.stats.dispatched()
        ref = worker.handle.run_many.remote(inputs)
        return _future(ref), ref

    def delivered(self, worker: Worker, count: int = 1) -> None:
        worker.load -= count
        worker.stats.delivered(count)

    def cancelled(self, worker: Worker, count: int = 1) -> None:
        worker.load -= count

    def lost(self, worker: Worker, count: int = 1) -> None:
        """Inputs in flight on ``worker`` came back with its death; the first such news kills and replaces it."""
        worker.load -= count
        if not worker.stats.alive:
            worker.stats.lost += count
            return
        worker.stats.died(count)
        self._kill(worker)
        if self.spec.governor is not None:  # its leased slots and credit come back now, not after its lease times out
            self.spec.governor.forget.remote(worker.stats.name)
        if self.replacements > 0:
            self.replacements -= 1
            self._add(replacement=True)

    def failure(self, exc: BaseException) -> ChainRunnerError:
        """What a worker's own failure (not an input's) says: the project's error as it was raised, else one line."""
        cause = getattr(exc, "cause", None)
        if isinstance(cause, ChainRunnerError):
            return cause
        if isinstance(exc, self.ray.exceptions.RayActorError):
            return WorkerFailedError(
                f"a Ray worker died before it could start ({one_line(str(exc), 160)}); see the Ray logs "
                "(/tmp/ray/session_latest/logs) and check that chain-runner is installed on every node"
            )
        shown = cause if isinstance(cause, BaseException) else exc
        return WorkerFailedError(f"a Ray worker failed: {type(shown).__name__}: {one_line(str(shown), 160)}")

    async def close(self) -> None:
        """A finished run: each live worker gives back its leases and closes its pools, briefly, then all go."""
        closing = [_future(w.handle.close.remote()) for w in self.live]
        if closing:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.gather(*closing, return_exceptions=True), CLOSE_TIMEOUT_S)
        self.kill()

    def kill(self) -> None:
        for worker in self.workers:
            self._kill(worker)

    def _kill(self, worker: Worker) -> None:
        with contextlib.suppress(Exception):  # already gone, or Ray itself is (a Ctrl-C reached it too)
            self.ray.kill(worker.handle, no_restart=True)

    def _add(self, *, replacement: bool) -> Worker:
        name = f"w{len(self.workers)}"
        try:
            handle = self._actor.remote(self.spec, name, own_process=True)
        except Exception as exc:  # the spec (key function, callbacks) could not be sent
            raise UsageError(
                f"cannot send the run to a Ray worker ({one_line(str(exc), 160)}); the key function and the "
                "callbacks of a Ray run must pickle: they run in the workers"
            ) from exc
        worker = Worker(handle, WorkerStats(name))
        self.workers.append(worker)
        self.stats.append(worker.stats)
        if replacement:  # not waited for (``ready``): its process and node when it is up, or never
            _future(handle.info.remote()).add_done_callback(lambda f: _note_info(worker, f))
        return worker


def _future(ref: Any) -> asyncio.Future[Any]:
    """A Ray object ref as an asyncio future of this loop (cancelling it does not cancel the Ray task)."""
    return asyncio.wrap_future(ref.future())


def _note_info(worker: Worker, future: asyncio.Future[Any]) -> None:
    if future.cancelled() or future.exception() is not None:
        return
    info = future.result()
    worker.stats.pid, worker.stats.node = info["pid"], info["node"]


__all__ = ["Worker", "WorkerFailedError", "WorkerPool"]
