"""One Ray worker process of a scaled-out run: it builds its own chain and runs inputs the in-process way.

A chain is never pickled (LCEL objects with HTTP pools inside do not travel well): the worker gets the chain's
name, the settings (prompt directories included) and the run's key function, and builds the chain from them as
the CLI does, once, on first use, on the actor's own event loop.  Each input then goes through the same
``BatchRun`` path as in one process (key, budget, limits, metrics, failures as records); what comes back is
plain data (``chains.scale.wire``).

A worker runs at most its window of inputs at once (``--max-concurrency``, as one process does); the driver sends it a
chunk more (``chains.scale.pool``), and those wait here for a place, so that no place stands idle while the next
chunk is on its way.

The chain's prompt files are checked against the driver's digest: a node whose ``--prompts-dir`` differs would
answer with other prompts under the same resume keys.

A worker process holds a large heap for the whole run (Ray, LangChain, pydantic, the chain), and LangChain allocates
many small containers per model call, so Python's cyclic garbage collector kept walking that heap (about 140,000
objects): nearly a third of a worker's CPU on the offline model.  The actor's process is ours, so it freezes that
heap once the chain is built and again after the first inputs (``chains.engine.heap``, as the CLI does; measured in
a Ray worker, ``story`` on the offline model: 2.2 → 1.5 ms of CPU per input, the collector's share 0.65 → 0.1 ms).
Langsmith's generated API types wait for their first use there too (``chains.engine.lazy_imports``), which a
run without LangSmith never makes.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from chains.engine.heap import HeapFreeze, claim_process
from chains.engine.lazy_imports import defer_all
from chains.errors import UsageError
from chains.settings import RunSettings


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs to build its chain and run inputs (sent once, when the actor is created)."""

    chain: str
    settings: RunSettings
    digest: str
    """The chain's digest on the driver (``ChainInfo.digest``): its prompt files must be the same here."""
    key: Callable[[Any], str] | None = None
    callbacks: Sequence[Any] = ()
    """LangChain callback handlers; they run here, in the worker process."""
    governor: Any = None
    """The run's governor actor (``chains.scale.governor``); None: the worker's own in-process limits."""
    window: int | None = None
    """Inputs the worker runs at once (None: ``settings.inputs_in_flight``); the driver sends a chunk more, which
    waits here for a place (``chains.scale.pool``)."""


class ChainWorker:
    """The actor class (made a Ray actor by the driver, ``ray.remote(ChainWorker)``): Ray is not imported here."""

    def __init__(self, spec: WorkerSpec, name: str, *, own_process: bool = False) -> None:
        """``own_process``: this is a Ray actor's process (the pool says so), whose heap the worker may freeze and whose
        imports it may defer."""
        if own_process:
            claim_process()
            defer_all()
        self.spec = spec
        self.name = name
        self._run: Any = None
        self._session: Any = None
        self._lock: asyncio.Lock | None = None
        self._gate = asyncio.Semaphore(spec.window or spec.settings.inputs_in_flight)
        self._heap = HeapFreeze()

    async def info(self) -> dict[str, Any]:
        """The worker's process and node, once its chain is built (a worker that cannot build it fails here)."""
        await self._ready()
        import ray

        return {"pid": os.getpid(), "node": ray.util.get_node_ip_address()}

    async def run(self, index: int, value: Any) -> dict[str, Any]:
        """One input to its record's data (``chains.scale.wire``); its failures are records, never raised."""
        from chains.engine.limits import install_limits
        from chains.scale.wire import to_wire

        run = await self._ready()
        async with self._gate:  # at most a window at once: what the driver sent ahead waits for a place here
            install_limits(run.limits)  # this call's own task context
            record = await run._process(index, value)  # the one in-process path: key, budget, run_one
        self._heap.count()
        return to_wire(record)

    async def run_many(self, inputs: list[tuple[int, Any]]) -> list[dict[str, Any]]:
        """A chunk of inputs, run at once, to their records' data, in the order given."""
        return list(await asyncio.gather(*(self.run(index, value) for index, value in inputs)))

    async def close(self) -> None:
        """Give back what the worker holds (leased limits, HTTP pools) before the actor is killed."""
        if self._session is None:
            return
        closing = getattr(self._session.limits, "aclose", None)
        if closing is not None:
            await closing()
        await self._session.aclose()
        self._session = None

    async def _ready(self) -> Any:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._run is None:
                self._run = self._build()
                self._heap.start()  # what lives for the whole run is walked by no later collection (above)
        return self._run

    def _build(self) -> Any:
        from chains.engine.execution import BatchRun
        from chains.providers.models import ModelSession
        from chains.spec.prompts_library import PromptLibrary
        from chains.spec.registry import chain_info, get_chain

        spec, settings = self.spec, self.spec.settings
        library = PromptLibrary(settings.prompts_dirs)
        if chain_info(spec.chain, library).digest != spec.digest:
            raise UsageError(
                f"the prompt files of chain {spec.chain} on Ray worker {self.name} are not the driver's; "
                "put the same prompt files (--prompts-dir, at the same path) on every node"
            )
        session = ModelSession(settings, limits=self._limits(settings))
        self._session = session
        chain = get_chain(spec.chain, session.model, library=library)
        return BatchRun(
            chain, (), settings=settings, limits=session.limits, callbacks=list(spec.callbacks), key=spec.key
        )

    def _limits(self, settings: RunSettings) -> Any:
        """The governor's leased limits, shared by every worker of the run; None: ModelSession's own (per worker)."""
        if self.spec.governor is None:
            return None
        from chains.engine.pricing import PriceTable
        from chains.providers.models import builtin_prices_apply, resolve_model_spec
        from chains.scale.leased_limits import worker_limits

        model, _ = resolve_model_spec(settings)
        prices = PriceTable.load(settings.prices, builtin=builtin_prices_apply(model, settings.base_url))
        return worker_limits(self.spec.governor, settings, self.name, prices)


__all__ = ["ChainWorker", "WorkerSpec"]
