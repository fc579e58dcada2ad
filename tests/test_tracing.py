"""LangSmith tracing on, its endpoint unreachable: the run ends in its normal time with one warning."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

from conftest import ROOT, runner_env

from chains.providers.tracing import disable_unreachable_tracing


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_an_unreachable_langsmith_endpoint_does_not_hold_the_run(tmp_path: Path) -> None:
    (tmp_path / "topics.txt").write_text("a kite\nan owl\na lighthouse\n", encoding="utf-8")
    env = runner_env(
        LANGSMITH_TRACING="true",
        LANGSMITH_ENDPOINT=f"http://127.0.0.1:{closed_port()}",
        LANGSMITH_API_KEY="lsv2_pt_test_not_a_key",
    )
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(ROOT / "runner.py"), "story", "--topics", "topics.txt", "--model", "fake", "-q"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    wall = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert wall < 8, f"the run took {wall:.1f}s to exit (tracing retries held it)"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "LangSmith" in lines[0] and "tracing is off" in lines[0], result.stderr
    assert result.stdout.count("── [") == 3


def test_a_reachable_endpoint_keeps_tracing_on() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        env = {"LANGSMITH_TRACING": "true", "LANGSMITH_ENDPOINT": f"http://127.0.0.1:{server.getsockname()[1]}"}
        assert disable_unreachable_tracing(env=env) is None
    assert env["LANGSMITH_TRACING"] == "true"


def test_tracing_off_is_left_alone() -> None:
    env = {"LANGSMITH_ENDPOINT": f"http://127.0.0.1:{closed_port()}"}
    assert disable_unreachable_tracing(env=env) is None
    assert "LANGSMITH_TRACING" not in env
