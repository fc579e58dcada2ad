"""Child processes of the benchmark suite: pinning, the measured run of one child, the mock server.

Every number the suite reports comes from here: a child's wall time, its own CPU time
(``wait4``) and its peak RSS (``VmHWM``), and the mock server's counters and CPU.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SERVER_SCRIPT = ROOT / "tests" / "fault_server.py"
RUNNER = ROOT / "runner.py"
PY = sys.executable
MB = 1024.0  # ru_maxrss is in KiB on Linux


class Pinning:
    """``taskset -c`` prefixes: the server on one core, the clients on another."""

    def __init__(self) -> None:
        cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        self.taskset = shutil.which("taskset")
        self.enabled = bool(self.taskset) and len(cores) >= 2
        self.server_core = cores[0] if self.enabled else None
        self.client_core = cores[1] if self.enabled else None

    def server(self) -> list[str]:
        return [self.taskset, "-c", str(self.server_core)] if self.enabled else []  # type: ignore[list-item]

    def client(self) -> list[str]:
        return [self.taskset, "-c", str(self.client_core)] if self.enabled else []  # type: ignore[list-item]

    def pin_self(self) -> None:
        """This script (mostly asleep in ``wait4``) shares the server's core, never the client's."""
        if self.enabled and self.server_core is not None and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {self.server_core})

    def describe(self) -> str:
        if not self.enabled:
            return "not pinned (taskset missing or fewer than 2 cores)"
        return f"server on core {self.server_core}, client on core {self.client_core} (taskset)"


@dataclass
class ProcResult:
    wall_s: float
    cpu_s: float
    maxrss_mb: float
    returncode: int
    stdout: str
    stderr: str
    timed_out: bool = False


def child_env(out: Path, cache_bytecode: bool = True) -> dict[str, str]:
    """The environment of every child: no real provider, no proxy, bytecode cached like a user's."""
    env = dict(os.environ)
    for name in list(env):
        if name.upper() in {"OPENAI_API_KEY", "OPENAI_BASE_URL", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"}:
            env.pop(name)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    # A user's Python writes and reuses .pyc files; this sandbox may switch that off
    # (PYTHONDONTWRITEBYTECODE), which would make every start recompile chains/.  Keep
    # the cache under the (gitignored) results directory instead of beside the sources.
    if cache_bytecode:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(out / "pycache")
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("PYTHONIOENCODING", "utf-8")
    return env


def _status_kb(text: str, field: str) -> int | None:
    match = re.search(field + r":\s+(\d+)", text)
    return int(match.group(1)) if match else None


def run_process(
    argv: list[str],
    *,
    env: dict[str, str],
    timeout: float,
    on_sample: Callable[[float, float], float | None] | None = None,
    sample_interval: float = 0.02,
    stdout_path: Path | None = None,
) -> ProcResult:
    """Run one child to its end: wall time, its own CPU time (``wait4``) and its peak RSS.

    The peak RSS is the child's ``VmHWM`` read from /proc while it runs, not
    ``ru_maxrss``: Linux carries the forking parent's high-water mark over the
    exec into ``ru_maxrss``, which would put a floor of this script's own RSS
    under every child.  ``on_sample(elapsed_s, rss_mb)`` is called at every sample
    and may return the seconds until the next one.
    """
    out_file = open(stdout_path, "w+b") if stdout_path else subprocess.DEVNULL
    err_file = tempfile.TemporaryFile()
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=out_file, stderr=err_file, env=env, cwd=ROOT)
    timed_out = threading.Event()
    done = threading.Event()
    peak_kb = [0]

    def kill() -> None:
        timed_out.set()
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)

    def sampler() -> None:
        path = f"/proc/{proc.pid}/status"
        while not done.is_set():
            try:
                with open(path) as handle:
                    text = handle.read()
            except OSError:
                return
            hwm = _status_kb(text, "VmHWM")
            if hwm is not None:
                peak_kb[0] = max(peak_kb[0], hwm)
            rss = _status_kb(text, "VmRSS")
            interval = sample_interval
            if on_sample is not None and rss is not None:
                interval = on_sample(time.perf_counter() - started, rss / MB) or sample_interval
            done.wait(interval)

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    timer = threading.Timer(timeout, kill)
    timer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
    except BaseException:
        kill()
        os.wait4(proc.pid, 0)
        proc.returncode = -9
        raise
    finally:
        timer.cancel()
        done.set()
        thread.join()
        if stdout_path:
            out_file.close()  # type: ignore[union-attr]
    err_file.seek(0)
    stderr = err_file.read().decode(errors="replace")
    err_file.close()
    stdout = stdout_path.read_text(errors="replace") if stdout_path else ""
    return ProcResult(
        wall_s=wall,
        cpu_s=usage.ru_utime + usage.ru_stime,
        maxrss_mb=(peak_kb[0] / MB) if peak_kb[0] else usage.ru_maxrss / MB,
        returncode=proc.returncode,
        stdout=stdout,
        stderr=stderr,
        timed_out=timed_out.is_set(),
    )


class MockServer:
    """``tests/fault_server.py`` in its own process, driven through its control API."""

    def __init__(self, pinning: Pinning, env: dict[str, str], log: Path) -> None:
        self.pinning = pinning
        self.env = env
        self.log_path = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.root = ""
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def start(self, timeout: float = 60.0) -> MockServer:
        self._log = open(self.log_path, "wb")
        argv = [*self.pinning.server(), PY, str(SERVER_SCRIPT), "--host", "127.0.0.1", "--port", "0"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self._log, env=self.env, cwd=ROOT)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                line = self.proc.stdout.readline()
                break
            if self.proc.poll() is not None:
                break
        match = re.match(rb"READY (http://127\.0\.0\.1:\d+/v1)", line)
        if not match:
            self.stop()
            raise RuntimeError(f"mock server did not start: {line!r}; see {self.log_path}")
        self.url = match.group(1).decode()
        self.root = self.url[: -len("/v1")]
        return self

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.root + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        with self._opener.open(request, timeout=30) as response:
            return json.loads(response.read() or b"{}")

    def configure(self, **settings: Any) -> None:
        base = {"latency_ms": 0, "latency_range_ms": None, "chunk_delay_ms": 0, "chunks": 8}
        self._call("POST", "/_control/configure", {**base, **settings})

    def reset_stats(self) -> None:
        self._call("POST", "/_control/reset", {})

    def stats(self) -> dict[str, Any]:
        data = self._call("GET", "/_control/stats?log=0")
        return {k: data[k] for k in ("requests", "completed", "peak_in_flight", "in_flight", "cancelled", "aborted")}

    def reset_all(self) -> None:
        """Drop every file, batch, rule and setting as well as the counters: a run starts from nothing."""
        self._call("POST", "/_control/reset", {"all": True})

    def configure_batches(self, **settings: float) -> None:
        """The batch phases (``validating_s``, ``in_progress_s``, ``finalizing_s``) and limits."""
        self._call("POST", "/_control/batch_configure", settings)

    def books(self) -> dict[str, Any]:
        """Online counters and the batch bookkeeping (``batches``: submissions, answers, created, files)."""
        data = self._call("GET", "/_control/stats?log=0")
        return {"requests": data["requests"], "batches": data["batches"]}

    def cpu_s(self) -> float:
        """The server's CPU time so far (user + system), from /proc."""
        assert self.proc is not None
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if getattr(self, "_log", None):
            self._log.close()
