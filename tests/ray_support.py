"""Ray for the scale tests: one local cluster per test module, isolated as the tests are, and a Python like a user's.

``ray_cluster_fixture`` is the ``ray_cluster`` fixture of ``conftest`` (``num_cpus=2``, no dashboard, on 127.0.0.1
only); ``import ray`` happens only when a test asks for it, so modules that never use Ray never load it.
``run_python`` runs a script in a subprocess, for runs that must start Ray themselves or must lack it.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

__all__ = ["CLEARED", "RAY_ENV", "collect", "ray_cluster_fixture", "run_python"]

ROOT = Path(__file__).resolve().parent.parent
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",  # no usage report to ray.io
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # Ray's node address is 127.0.0.1, not this machine's public one
    "NO_PROXY": "127.0.0.1,localhost",
}
CLEARED = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy")
T = TypeVar("T")


def ray_cluster_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One local Ray for the module; its workers inherit an environment as isolated as the tests'."""
    with pytest.MonkeyPatch.context() as patch:
        for name in CLEARED:
            patch.delenv(name, raising=False)
        for name, value in {**RAY_ENV, "TIKTOKEN_CACHE_DIR": str(tmp_path_factory.mktemp("tiktoken"))}.items():
            patch.setenv(name, value)
        import ray

        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR)
        try:
            yield ray
        finally:
            ray.shutdown()


async def collect(run: AsyncIterable[T]) -> list[T]:
    """Every record of a run, in the order they came."""
    return [record async for record in run]


def run_python(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -c script`` in ``cwd`` with the tests' isolated environment and the repo on the path; it must pass."""
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    env.update(RAY_ENV)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result
