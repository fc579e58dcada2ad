"""Scaling a run out: the same chain in N worker processes on this machine, or on a Ray cluster.

``run_on_ray(chain_name, inputs, settings=..., workers=N | address=ADDR)`` is ``run_batch`` on Ray workers
(``chains.scale.ray_engine``); one governor actor holds the run's limits for every worker
(``chains.scale.governor``).  Importing this package imports neither Ray nor LangChain: names are loaded on use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "run_on_ray": "chains.scale.ray_engine",
    "RayRun": "chains.scale.ray_engine",
    "WorkerLostError": "chains.scale.ray_engine",
    "ScaleSummary": "chains.scale.throughput",
    "WorkerStats": "chains.scale.throughput",
}

if TYPE_CHECKING:
    from chains.scale.ray_engine import RayRun, WorkerLostError, run_on_ray
    from chains.scale.throughput import ScaleSummary, WorkerStats


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'chains.scale' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = ["RayRun", "ScaleSummary", "WorkerLostError", "WorkerStats", "run_on_ray"]
