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
plus its own calls; it holds one CPU, so a cluster places at most one worker per CPU.  A worker gets inputs once it
is up (its chain built), each as soon as it is: the run starts with the first, and a worker that waits for a place
on a busy or scaling cluster holds nobody back.  Until one worker is up, a worker that cannot start stops the run
with its line (a bad prompt directory, chain-runner missing on the node); later, one that cannot build its chain
still does (every node must run the same chain), while one whose process died before it was up is a worker lost
with nothing in flight (replaced while the budget lasts).  A dead worker is
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
"""How long the run waits for its first worker to start and build its chain (a cluster may have to make room)."""
CLOSE_TIMEOUT_S = 10.0
"""A finished run's workers get this long to give their leases back and close their pools; then they are killed."""


class WorkerFailedError(ChainRunnerError):
    """A worker could not do its job at all (not one input's failure): the run stops with this one line."""


@dataclass(eq=False)
class Worker:
    handle: Any
    stats: WorkerStats
    load: int = 0
    info: Any = None
    """Its ``info()`` call (a Ray object ref) while it builds its chain; None once it is up (or gone)."""
    starting: asyncio.Future[Any] | None = None
    """That call as a future of the driver's loop (made there, on first use)."""

    @property
    def up(self) -> bool:
        """Built its chain (its pid is known only then: ``WorkerPool.started``) and not dead: it gets inputs."""
        return self.stats.pid is not None and self.stats.alive


class WorkerPool:
    """``count`` workers with at most ``window`` inputs each; ``replacements`` new ones for those that die."""

    def __init__(
        self, ray: Any, spec: WorkerSpec, *, window: int, replacements: int, start_timeout_s: float = READY_TIMEOUT_S
    ) -> None:
        self.ray = ray
        self.start_timeout_s = start_timeout_s
        """How long the run waits for a worker to come up when none is (at the start, or after every worker died)."""
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
            self._add()

    async def first_up(self, within_s: float | None = None) -> None:
        """Wait until a worker has built its chain (the others join as each is up: ``starting``, ``started``); one
        that cannot before then, or no worker up within ``within_s`` (``start_timeout_s``), is one error line."""
        within_s = self.start_timeout_s if within_s is None else within_s
        deadline = asyncio.get_running_loop().time() + within_s
        while not self.any_up:
            starting = self.starting()
            if not starting:  # cannot be: before one is up, a failed start raises (``started``)
                raise WorkerFailedError("no Ray worker could start; see the Ray logs (/tmp/ray/session_latest/logs)")
            left = deadline - asyncio.get_running_loop().time()
            done, _ = await asyncio.wait(starting, timeout=max(0.0, left), return_when=asyncio.FIRST_COMPLETED)
            if not done:
                raise WorkerFailedError(
                    f"no Ray worker started within {within_s:g} s (each needs a free CPU, and chain-runner "
                    "installed on its node); free CPUs on the cluster or pass fewer --workers"
                )
            for future in done:
                self.started(starting[future])

    def starting(self) -> dict[asyncio.Future[Any], Worker]:
        """The live workers still building their chains, by the future of that (``started`` when it is done)."""
        waiting: dict[asyncio.Future[Any], Worker] = {}
        for worker in self.workers:
            if worker.info is not None and worker.stats.alive:
                if worker.starting is None:
                    worker.starting = _future(worker.info)
                waiting[worker.starting] = worker
        return waiting

    def started(self, worker: Worker) -> None:
        """``worker``'s start is over (its ``starting`` future is done): up, so it gets inputs from now on; or it
        failed: a worker whose process died after another was up is lost (replaced while the budget lasts), any
        other failure stops the run with its line."""
        future, worker.starting, worker.info = worker.starting, None, None
        assert future is not None
        error = asyncio.CancelledError() if future.cancelled() else future.exception()
        if error is None:
            info = future.result()
            worker.stats.pid, worker.stats.node = info["pid"], info["node"]
        elif isinstance(error, self.ray.exceptions.RayActorError) and self.any_up:
            self.lost(worker, 0)
        else:
            raise self.failure(error) from error

    @property
    def live(self) -> list[Worker]:
        return [w for w in self.workers if w.stats.alive]

    @property
    def any_up(self) -> bool:
        return any(w.up for w in self.workers)

    def free(self) -> Worker | None:
        """The least loaded live worker with room for another chunk, if any."""
        room = [w for w in self.live if w.up and self.room(w) > 0]
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
            self._add()

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
        """A finished run: each worker up gives back its leases and closes its pools, briefly, then all go."""
        closing = [_future(w.handle.close.remote()) for w in self.live if w.up]
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

    def _add(self) -> Worker:
        name = f"w{len(self.workers)}"
        try:
            handle = self._actor.remote(self.spec, name, own_process=True)
        except Exception as exc:  # the spec (key function, callbacks) could not be sent
            raise UsageError(
                f"cannot send the run to a Ray worker ({one_line(str(exc), 160)}); the key function and the "
                "callbacks of a Ray run must pickle: they run in the workers"
            ) from exc
        worker = Worker(handle, WorkerStats(name), info=handle.info.remote())
        self.workers.append(worker)
        self.stats.append(worker.stats)
        return worker


def _future(ref: Any) -> asyncio.Future[Any]:
    """A Ray object ref as an asyncio future of this loop (cancelling it does not cancel the Ray task)."""
    return asyncio.wrap_future(ref.future())


__all__ = ["Worker", "WorkerFailedError", "WorkerPool"]
