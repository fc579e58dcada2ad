"""Shared fixtures: every test runs isolated from the developer's environment and files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from fault_server import FaultServer, fault_server_fixture  # noqa: E402
from llama_server import llama_server_fixture  # noqa: E402
from ray_support import ray_cluster_fixture  # noqa: E402

llama_server = pytest.fixture(scope="session", name="llama_server")(llama_server_fixture)
ray_cluster = pytest.fixture(scope="module", name="ray_cluster")(ray_cluster_fixture)
"""One local Ray per test module that asks for it (``tests/ray_support.py``)."""

_PROVIDER_VARS = (
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "OPENAI_ORG_ID",
    "OPENAI_PROJECT_ID",
    "ANTHROPIC_API_KEY",
    "RUNNER_API_KEY",
    "LANGCHAIN_TRACING_V2",
    "LANGSMITH_TRACING",
    "LANGSMITH_API_KEY",
)


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """No provider keys or URLs from the real environment, no proxies, and a scratch cwd."""
    for name in _PROVIDER_VARS:
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / ".tiktoken"))
    monkeypatch.chdir(tmp_path)
    yield tmp_path


@pytest.fixture
def fault_server() -> Iterator[FaultServer]:
    """A fault-injecting OpenAI-compatible server on 127.0.0.1 (real HTTP, JSON and SSE)."""
    yield from fault_server_fixture()


def runner_env(**extra: str) -> dict[str, str]:
    """Environment for a CLI subprocess: the isolated env plus the repo on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``python runner.py ARGS`` as a user runs it, in ``cwd``, with the isolated environment."""
    return subprocess.run(
        [sys.executable, str(ROOT / "runner.py"), *args],
        cwd=cwd,
        env=env or runner_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def end_process(process: subprocess.Popen[bytes], sig: int, within_s: float) -> bool:
    """Send ``sig`` and reap the process, killing it after ``within_s``; whether it ended on ``sig`` alone."""
    process.send_signal(sig)
    try:
        process.wait(within_s)
        return True
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return False


def one_error_line(stderr: str) -> str:
    """The promise for bad input: one line, starting ``error:``, and no traceback."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    return lines[0]


def records(path: Path) -> list[dict[str, Any]]:
    """The JSON records of an --output file, in the order they were written."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
