"""Where a scaled-out run's workers live: a local Ray started on demand, or an existing cluster.

Ray is imported here, only when a run asks for workers, so that nothing else pays for it (or needs it).  Each
way this can fail (Ray not installed, a bad or silent address, too few CPUs) is one ``UsageError`` line that
names the fix; the caller exits 2.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Any

from chains.errors import UsageError, one_line
from chains.scale.address import parse_address, probe

INSTALL = "pip install 'chain-runner[ray]'"


def import_ray() -> Any:
    """The ``ray`` module, or one line naming the extra to install."""
    try:
        import ray
    except ImportError as exc:
        missing = getattr(exc, "name", None) or ""
        if missing and missing.split(".")[0] != "ray":  # Ray is there, one of its own packages is not
            raise UsageError(f"--workers / --ray-address need Ray, which does not import ({exc}); {INSTALL}") from exc
        raise UsageError(f"--workers / --ray-address need Ray, which is not installed: {INSTALL}") from exc
    return ray


@dataclass
class Cluster:
    """The Ray this run uses; ``started`` when the run started it (and so shuts it down at the end)."""

    ray: Any
    started: bool
    workers: int

    def shutdown(self) -> None:
        if self.started and self.ray.is_initialized():
            stop_monitor(self.ray)
            self.ray.shutdown()
        self.started = False


def stop_monitor(ray: Any) -> None:
    """Kill the autoscaler monitor of a Ray this run started, before ``ray.shutdown``.

    Ray stops its GCS first, then sends the monitor SIGTERM and waits a second for it; with the GCS gone the
    monitor's handler never finishes, so every run paid that second (1.0 of the 1.4 s its shutdown took here).  It
    holds nothing of the run's.  Ray's private parts, so any change in them leaves the shutdown as it was."""
    with contextlib.suppress(Exception):
        from ray._private import ray_constants

        node = ray._private.worker._global_node
        node._kill_process_type(ray_constants.PROCESS_TYPE_MONITOR, check_alive=False)  # SIGKILL, then reaped


def connect(workers: int | None = None, address: str | None = None) -> Cluster:
    """Ray for ``workers`` worker processes: the one already initialised in this process, the cluster at
    ``address``, or a local one started with ``workers`` CPUs (default: this machine's)."""
    if workers is not None and workers < 1:
        raise UsageError(f"--workers {workers}: give at least 1 worker process")
    target = parse_address(address) if address is not None else None
    if target is not None:
        probe(target)  # before Ray, which would retry a silent address for minutes
    ray = import_ray()
    started = False
    if not ray.is_initialized():
        if target is not None:
            _join(ray, target.text)
        else:
            _start_local(ray, workers or os.cpu_count() or 1)
            started = True
    cluster = Cluster(ray, started, 0)
    try:
        cluster.workers = _worker_count(ray, workers, address)
    except BaseException:
        cluster.shutdown()
        raise
    return cluster


def _start_local(ray: Any, cpus: int) -> None:
    """A Ray of this run's own (``local``: not one that ``RAY_ADDRESS`` or a ``ray start`` on this machine names,
    which ``--ray-address auto`` joins), with a CPU per worker and no dashboard; its start-up chatter is not shown."""
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, logging_level=logging.ERROR)


def _join(ray: Any, address: str) -> None:
    try:
        ray.init(address=address, logging_level=logging.WARNING)
    except Exception as exc:  # a version mismatch, Ray Client not installed, a cluster that went away
        detail = one_line(str(exc)) or type(exc).__name__
        fix = (
            "pip install 'ray[client]'"
            if "ray[client]" in detail
            else f"fix --ray-address or {INSTALL} at the cluster's version"
        )
        raise UsageError(f"--ray-address {address}: Ray could not connect ({detail}); {fix}") from exc


def _worker_count(ray: Any, workers: int | None, address: str | None) -> int:
    """``workers``, or one per CPU of the cluster; more workers than CPUs would wait forever for a place."""
    cpus = int(ray.cluster_resources().get("CPU", 0))
    if workers is None:
        return max(1, cpus)
    if workers > cpus:
        where = f"the Ray cluster at {address}" if address else "Ray"
        raise UsageError(
            f"--workers {workers} needs {workers} CPUs, and {where} has {cpus}; pass --workers {max(1, cpus)} "
            "or add nodes to the cluster"
        )
    return workers


__all__ = ["INSTALL", "Cluster", "connect", "import_ray"]
