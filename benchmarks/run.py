#!/usr/bin/env python
"""chain-runner's benchmark suite: the project against what a user would write by hand.

    python benchmarks/run.py                 # every scenario, 3 repetitions (about 30-40 minutes)
    python benchmarks/run.py --quick         # CI smoke: tiny sizes, 1 repetition, every code path
    python benchmarks/run.py --only 3,4      # some scenarios (numbers as in the issue's targets)

A mock OpenAI-compatible server (``tests/fault_server.py``) is started on
127.0.0.1, pinned to core 0 with ``taskset`` when the machine has two cores or
more; every contender runs in its own process pinned to core 1, so its CPU time
and peak RSS are its own.  Scenarios run each contender in alternation (the
order rotates every repetition); the table shows medians and ratios against
the raw ``AsyncOpenAI`` + semaphore baseline of the same run.  Results go to
``--out`` (default ``benchmarks/results/``, gitignored): ``results.json``,
``results.md`` (the tables) and ``results.png``.

Exit status: 0 when every run completed with correct answers, whether targets
were met or not (a benchmark is not a test); 1 when a contender crashed, timed
out or returned wrong or failed answers.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import contenders as C  # noqa: E402  (light: no heavy imports at module level)

SERVER_SCRIPT = ROOT / "tests" / "fault_server.py"
RUNNER = ROOT / "runner.py"
PY = sys.executable
MB = 1024.0  # ru_maxrss is in KiB on Linux


# ----------------------------------------------------------------------------- processes


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
        if self.enabled and hasattr(os, "sched_setaffinity"):
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


# ----------------------------------------------------------------------------- scenarios


@dataclass
class Throughput:
    """A request scenario: every contender sends the same ``n`` requests to the mock server."""

    number: int
    key: str
    title: str
    target: str
    n: int
    concurrency: int
    server: dict[str, Any]
    contenders: list[str]
    stream: bool = False
    judge: Callable[[dict[str, dict[str, float]]], list[dict[str, Any]]] = field(default=lambda m: [])

    @property
    def chunks(self) -> int:
        return int(self.server.get("chunks", 8))


def _target(
    name: str, value: float | None, limit: float, *, at_most: bool = True, unit: str = "", stretch: bool = False
) -> dict[str, Any]:
    ok = value is not None and (value <= limit if at_most else value >= limit)
    return {
        "name": name,
        "value": value,
        "limit": limit,
        "comparison": "<=" if at_most else ">=",
        "unit": unit,
        "pass": bool(ok),
        "stretch": stretch,
    }


def _ratio(m: dict[str, dict[str, float]], a: str, b: str, metric: str) -> float | None:
    if a not in m or b not in m or not m[b].get(metric):
        return None
    return m[a][metric] / m[b][metric]


def judge_latency(m: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    return [_target("project_lib wall / raw wall", _ratio(m, "project_lib", "raw", "wall_s"), 1.03, unit="×")]


def judge_variable(m: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    return [
        _target("project_lib wall / raw wall", _ratio(m, "project_lib", "raw", "wall_s"), 1.10, unit="×"),
        _target(
            "raw_batches wall / project_lib wall",
            _ratio(m, "raw_batches", "project_lib", "wall_s"),
            1.8,
            at_most=False,
            unit="×",
        ),
    ]


def judge_cpu(m: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    return [
        _target(
            "project_lib CPU/req / lc_abatch CPU/req",
            _ratio(m, "project_lib", "lc_abatch", "cpu_ms_per_req"),
            1.0,
            unit="×",
        ),
        _target(
            "project_lib CPU/req / raw CPU/req",
            _ratio(m, "project_lib", "raw", "cpu_ms_per_req"),
            1.0,
            unit="×",
            stretch=True,
        ),
    ]


def judge_stream(m: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    return [
        _target(
            "project_lib chunks/CPU-s / lc_astream",
            _ratio(m, "project_lib", "lc_astream", "chunks_per_cpu_s"),
            1.0,
            at_most=False,
            unit="×",
        ),
        _target(
            "project_lib chunks/CPU-s / raw",
            _ratio(m, "project_lib", "raw", "chunks_per_cpu_s"),
            0.8,
            at_most=False,
            unit="×",
            stretch=True,
        ),
    ]


def throughput_scenarios(quick: bool, aiohttp: bool, http_backend: bool) -> list[Throughput]:
    """Targets 1-4 of the issue; ``quick`` keeps every code path with tiny sizes."""
    raw = ["raw", "raw_aiohttp"] if aiohttp else ["raw"]
    httpx_variant = ["project_httpx"] if http_backend else []
    wall_set = [*raw, "raw_batches", "lc_abatch", "project_lib", "project_cli"]
    latency, n1, c1 = (20, 20, 5) if quick else (200, 300, 10)
    (lo, hi), n2, c2 = ((5, 50), 40, 10) if quick else ((50, 500), 500, 50)
    n3, c3 = (50, 10) if quick else (2000, 20)
    chunks, n4, c4 = (20, 10, 5) if quick else (200, 200, 20)
    return [
        Throughput(
            1,
            "latency",
            f"Latency-bound: {latency} ms per request, N={n1:,}, concurrency {c1} (ideal {n1 / c1 * latency / 1000:.1f} s)",
            "project_lib wall ≤ 1.03 × raw",
            n=n1,
            concurrency=c1,
            server={"latency_ms": latency},
            contenders=wall_set,
            judge=judge_latency,
        ),
        Throughput(
            2,
            "variable",
            f"Variable latency: uniform {lo}–{hi} ms, N={n2:,}, concurrency {c2}",
            "project_lib wall ≤ 1.10 × raw; fixed batches ≥ 1.8 × project_lib",
            n=n2,
            concurrency=c2,
            server={"latency_range_ms": [lo, hi]},
            contenders=wall_set,
            judge=judge_variable,
        ),
        Throughput(
            3,
            "cpu",
            f"Non-streamed, zero latency, N={n3:,}, concurrency {c3}: client CPU per request",
            "project_lib CPU/req ≤ 1.0 × lc_abatch (stretch: ≤ 1.0 × raw)",
            n=n3,
            concurrency=c3,
            server={"latency_ms": 0},
            contenders=[*raw, "lc_ainvoke", "lc_abatch", "project_lib", "project_cli", *httpx_variant],
            judge=judge_cpu,
        ),
        Throughput(
            4,
            "stream",
            f"Streamed, {chunks} chunks per answer, N={n4:,}, concurrency {c4}, token callback on",
            "project_lib chunks/CPU-s ≥ 1.0 × lc_astream (stretch: ≥ 0.8 × raw)",
            n=n4,
            concurrency=c4,
            stream=True,
            server={"latency_ms": 0, "chunks": chunks},
            contenders=[
                *raw,
                "lc_abatch",
                "lc_astream",
                "project_lib",
                "project_cli",
                "project_nostream",
                *httpx_variant,
            ],
            judge=judge_stream,
        ),
    ]


# ----------------------------------------------------------------------------- the suite


class Suite:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.quick: bool = args.quick
        self.repeat: int = 1 if args.quick else args.repeat
        self.out = Path(args.out).resolve()
        self.work = self.out / "work"
        self.work.mkdir(parents=True, exist_ok=True)
        self.env = child_env(self.out, cache_bytecode=not self.quick)
        self.pinning = Pinning()
        self.pinning.pin_self()
        self.timeout = 120.0 if self.quick else 1800.0
        self.failures: list[str] = []
        self.results: dict[str, Any] = {}
        self.aiohttp = C.aiohttp_available()
        self.only = {int(x) for x in args.only.split(",")} if args.only else set(range(1, 7))

    # -- helpers

    def log(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def fail(self, text: str) -> None:
        self.failures.append(text)
        self.log(f"  FAILED: {text}")

    def python(self, *args: str) -> list[str]:
        return [*self.pinning.client(), PY, *args]

    def warm_up(self) -> None:
        """Compile and cache every module the children import (once per results directory)."""
        self.log("warming up the bytecode cache ...")
        code = (
            "import openai, httpx, aiohttp, langchain_openai, langchain_core.runnables, langchain_core.prompts;"
            "import chains.app, chains.execution, chains.models, chains.registry, chains.fake, chains.console,"
            " chains.sinks, chains.inputs, chains.resume, chains.managed, chains.callbacks, runner\n"
            "try:\n import httpx_aiohttp\nexcept ImportError: pass"
        )
        for argv in ([PY, "-c", code], [PY, str(RUNNER), "list"]):
            result = run_process(argv, env=self.env, timeout=600)
            if result.returncode != 0:
                self.fail(f"warm-up {argv[1:]} exited {result.returncode}: {result.stderr.strip()[-500:]}")

    # -- throughput scenarios

    def run_throughput(self, server: MockServer, sc: Throughput) -> None:
        self.log(f"\n[{sc.number}] {sc.title}" + (" (quick sizes)" if self.quick else ""))
        server.configure(**sc.server)
        samples: dict[str, list[dict[str, Any]]] = {c: [] for c in sc.contenders}
        for rep in range(self.repeat):
            shift = rep % len(sc.contenders)
            order = sc.contenders[shift:] + sc.contenders[:shift]
            if self.quick:  # the in-process contenders share one process: seconds, not minutes
                groups = [
                    [c for c in order if c != "project_cli"],
                    *([["project_cli"]] if "project_cli" in order else []),
                ]
            else:
                groups = [[c] for c in order]
            for group in groups:
                for name, sample in self.run_group(server, sc, group).items():
                    samples[name].append(sample)
                    self.log(
                        f"  rep {rep + 1}/{self.repeat} {name:<12} wall {sample.get('wall_s', float('nan')):7.2f} s"
                        f"  cpu {sample.get('cpu_s', float('nan')):7.2f} s  ok {sample.get('ok', 0)}/{sc.n}"
                        f"  server peak {sample.get('server_peak_in_flight')}"
                    )
        medians = {name: _medians(s) for name, s in samples.items() if s}
        raw = medians.get("raw", {})
        for values in medians.values():
            for metric in ("wall_s", "cpu_ms_per_req", "chunks_per_cpu_s"):
                if raw.get(metric) and values.get(metric) is not None:
                    values[f"{metric}_x_raw"] = values[metric] / raw[metric]
        self.results[sc.key] = {
            "number": sc.number,
            "title": sc.title,
            "target": sc.target,
            "n": sc.n,
            "concurrency": sc.concurrency,
            "stream": sc.stream,
            "server_settings": sc.server,
            "samples": samples,
            "medians": medians,
            "targets": sc.judge(medians),
        }

    def run_group(self, server: MockServer, sc: Throughput, names: list[str]) -> dict[str, dict[str, Any]]:
        """One measured process: ``project_cli`` alone, or in-process contenders (one each,
        or several one after the other in ``--quick``), with the server's counters around it."""
        server.reset_stats()
        cpu_before = server.cpu_s()
        if names == ["project_cli"]:
            samples = {"project_cli": self.cli_sample(server, sc)}
        else:
            samples = self.child_samples(server, sc, names)
        stats = server.stats()
        server_cpu = server.cpu_s() - cpu_before
        expected = sc.n * len(names)
        if stats["requests"] != expected:
            self.fail(
                f"[{sc.number}] {'+'.join(names)}: the server saw {stats['requests']} chat requests, expected {expected}"
            )
        if stats["peak_in_flight"] > sc.concurrency:
            self.log(
                f"  note: {'+'.join(names)} had {stats['peak_in_flight']} requests in flight (limit {sc.concurrency})"
            )
        for sample in samples.values():
            sample["server_requests"] = stats["requests"]
            sample["server_peak_in_flight"] = stats["peak_in_flight"]
            if len(names) == 1:
                sample["server_cpu_s"] = server_cpu
                if sample.get("wall_s"):
                    sample["server_busy"] = server_cpu / sample["wall_s"]
            if sample.get("wall_s"):
                sample["req_per_s"] = sample.get("ok", 0) / sample["wall_s"]
            if sample.get("cpu_s"):
                sample["cpu_ms_per_req"] = 1000.0 * sample["cpu_s"] / sc.n
                if sc.stream and sample.get("chunks"):
                    sample["chunks_per_cpu_s"] = sample["chunks"] / sample["cpu_s"]
        return samples

    def child_samples(self, server: MockServer, sc: Throughput, names: list[str]) -> dict[str, dict[str, Any]]:
        jobs = [
            {
                "contender": name,
                "url": server.url,
                "n": sc.n,
                "concurrency": sc.concurrency,
                "stream": sc.stream,
                "chunks": sc.chunks,
            }
            for name in names
        ]
        spec = json.dumps(jobs[0] if len(jobs) == 1 else jobs)
        proc = run_process(
            self.python(str(HERE / "contenders.py"), spec),
            env=self.env,
            timeout=self.timeout,
            stdout_path=self.work / "child-stdout.txt",
        )
        results = {}
        for line in proc.stdout.splitlines():
            if line.startswith("RESULT "):
                child = json.loads(line[len("RESULT ") :])
                results[child["contender"]] = child
        samples: dict[str, dict[str, Any]] = {}
        for name in names:
            sample: dict[str, Any] = {
                "process_wall_s": proc.wall_s,
                "process_cpu_s": proc.cpu_s,
                "maxrss_mb": proc.maxrss_mb,
            }
            child = results.get(name)
            if child is None:
                why = "timed out" if proc.timed_out else f"exited {proc.returncode}"
                self.fail(f"[{sc.number}] {name} {why} without a result: {proc.stderr.strip()[-800:]}")
                continue
            sample.update({k: child[k] for k in ("wall_s", "cpu_s", "setup_s", "ok", "bad", "errors", "chunks")})
            if len(names) > 1:
                sample["maxrss_mb"] = child["maxrss_mb"]  # the process's peak so far
            self.check_answers(
                sc,
                name,
                child.get("ok", 0),
                child.get("errors", 0),
                child.get("bad", 0),
                child.get("first_error") or "; ".join(child.get("bad_samples") or []),
            )
            samples[name] = sample
        if proc.returncode != 0 and len(results) == len(names):
            self.fail(f"[{sc.number}] {'+'.join(names)} exited {proc.returncode}: {proc.stderr.strip()[-800:]}")
        return samples

    def check_answers(self, sc: Throughput, name: str, ok: int, errors: int, bad: int, detail: str) -> None:
        if ok != sc.n:
            self.fail(f"[{sc.number}] {name}: {ok}/{sc.n} correct answers ({errors} errors, {bad} wrong): {detail}")

    def cli_sample(self, server: MockServer, sc: Throughput) -> dict[str, Any]:
        inputs = self.work / f"inputs-{sc.n}.txt"
        inputs.write_text("".join(f"item {i}\n" for i in range(sc.n)))
        output = self.work / "cli-out.jsonl"
        output.unlink(missing_ok=True)
        argv = self.python(
            str(RUNNER),
            "run",
            "echo",
            "--input",
            str(inputs),
            "--prompts-dir",
            str(HERE / "prompts"),
            "--base-url",
            server.url,
            "--model",
            f"openai:{C.MODEL}",
            "--max-concurrency",
            str(sc.concurrency),
            "--output",
            str(output),
            "--overwrite",
            "-q",
            "--stream" if sc.stream else "--no-stream",
        )
        proc = run_process(argv, env=self.env, timeout=self.timeout)
        sample: dict[str, Any] = {
            "wall_s": proc.wall_s,
            "cpu_s": proc.cpu_s,
            "process_wall_s": proc.wall_s,
            "process_cpu_s": proc.cpu_s,
            "maxrss_mb": proc.maxrss_mb,
        }
        ok = errors = bad = 0
        detail = ""
        if output.exists():
            for line in output.read_text().splitlines():
                record = json.loads(line)
                if record.get("error"):
                    errors += 1
                    detail = detail or json.dumps(record["error"])[:300]
                elif isinstance(record.get("output"), str) and record["output"].startswith(
                    f"echo: {record['input']['text']}"
                ):
                    ok += 1
                else:
                    bad += 1
        if proc.returncode != 0 and not detail:
            detail = (
                f"exit {proc.returncode}"
                + (" (timed out)" if proc.timed_out else "")
                + f": {proc.stderr.strip()[-800:]}"
            )
        sample.update({"ok": ok, "errors": errors, "bad": bad, "chunks": ok * sc.chunks if sc.stream else 0})
        self.check_answers(sc, "project_cli", ok, errors, bad, detail)
        return sample

    # -- memory

    def run_memory(self) -> None:
        small, large = (30, 300) if self.quick else (1000, self.args.memory_topics)
        self.log(f"\n[5] Memory: story on the offline model, zero delay: {large:,} topics vs {small:,}")
        runs: dict[str, Any] = {}
        for size in (small, large):
            runs[str(size)] = self.memory_run(size)
        a, b = runs[str(small)], runs[str(large)]
        delta = (b["maxrss_mb"] - a["maxrss_mb"]) if a.get("maxrss_mb") and b.get("maxrss_mb") else None
        targets = [
            _target(f"peak RSS({large:,}) - peak RSS({small:,})", delta, 50.0, unit="MB"),
            _target(f"first record written ({large:,} topics)", b.get("first_record_s"), 2.0, unit="s"),
        ]
        self.results["memory"] = {
            "number": 5,
            "title": f"Memory: {large:,} topics on the offline model (zero delay) vs {small:,}",
            "target": "peak RSS within 50 MB of the small run; first record written within 2 s of start",
            "runs": runs,
            "rss_delta_mb": delta,
            "targets": targets,
        }

    def memory_run(self, size: int) -> dict[str, Any]:
        topics = self.work / f"topics-{size}.txt"
        animals = ("fox", "snail", "comet", "teacup", "lighthouse", "owl", "whale", "kite")
        topics.write_text("".join(f"a {animals[i % 8]} who collects thing number {i}\n" for i in range(size)))
        output = self.work / f"story-{size}.jsonl"
        output.unlink(missing_ok=True)
        state: dict[str, Any] = {"first": None, "rss": [], "next_rss": 0.0}

        def on_sample(elapsed: float, rss_mb: float) -> float | None:
            if state["first"] is None:
                with contextlib.suppress(FileNotFoundError):
                    if output.stat().st_size > 0:
                        state["first"] = elapsed
            if elapsed >= state["next_rss"]:
                state["next_rss"] = elapsed + (0.1 if elapsed < 5 else 1.0)
                state["rss"].append((round(elapsed, 3), round(rss_mb, 2)))
            return None if state["first"] is None else 0.05  # fine-grained until the first record

        argv = self.python(
            str(RUNNER),
            "story",
            "--topics",
            str(topics),
            "--model",
            "fake",
            "--output",
            str(output),
            "--overwrite",
            "-q",
        )
        proc = run_process(argv, env=self.env, timeout=self.timeout * 2, on_sample=on_sample, sample_interval=0.005)
        lines = errors = 0
        if output.exists():
            with output.open() as handle:
                for line in handle:
                    lines += 1
                    if '"error": null' not in line:
                        errors += 1
            output.unlink()
        if proc.returncode != 0 or lines != size or errors:
            self.fail(
                f"[5] story over {size} topics: exit {proc.returncode}, {lines} records, {errors} errors: "
                f"{proc.stderr.strip()[-500:]}"
            )
        run = {
            "topics": size,
            "wall_s": proc.wall_s,
            "cpu_s": proc.cpu_s,
            "maxrss_mb": proc.maxrss_mb,
            "first_record_s": state["first"],
            "records": lines,
            "topics_per_s": lines / proc.wall_s if proc.wall_s else None,
            "rss_curve": state["rss"],
        }
        first = f"{state['first']:.2f} s" if state["first"] is not None else "never"
        self.log(
            f"  {size:>7,} topics: wall {proc.wall_s:7.1f} s  cpu {proc.cpu_s:7.1f} s  "
            f"peak RSS {proc.maxrss_mb:6.1f} MB  first record {first}"
        )
        return run

    # -- cold start

    def run_cold(self) -> None:
        reps = 1 if self.quick else 5
        self.log(f"\n[6] Cold start: median of {reps}")
        topics = self.work / "topics-5.txt"
        topics.write_text("a brave snail\na shy comet\na lighthouse\na teacup dragon\na kite\n")
        output = self.work / "story-5.jsonl"
        commands: dict[str, tuple[list[str], float | None]] = {
            "runner.py --help": ([str(RUNNER), "--help"], 0.5),
            "runner.py list": ([str(RUNNER), "list"], 0.5),
            "runner.py show story": ([str(RUNNER), "show", "story"], 0.5),
            "runner.py story (5 topics, offline)": (
                [
                    str(RUNNER),
                    "story",
                    "--topics",
                    str(topics),
                    "--model",
                    "fake",
                    "--output",
                    str(output),
                    "--overwrite",
                    "-q",
                ],
                1.5,
            ),
            "python -c pass": (["-c", "pass"], None),
            "python -c 'import openai'": (["-c", "import openai"], None),
            "python -c 'import langchain_openai'": (["-c", "import langchain_openai"], None),
        }
        samples: dict[str, list[dict[str, float]]] = {name: [] for name in commands}
        for argv, _ in commands.values() if not self.quick else ():  # warm-up, not counted
            run_process(self.python(*argv), env=self.env, timeout=120)
        for _rep in range(reps):
            for name, (argv, _) in commands.items():
                proc = run_process(self.python(*argv), env=self.env, timeout=120)
                if proc.returncode != 0:
                    self.fail(f"[6] {name} exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
                samples[name].append({"wall_s": proc.wall_s, "cpu_s": proc.cpu_s, "maxrss_mb": proc.maxrss_mb})
        medians = {name: _medians(s) for name, s in samples.items()}
        for name, m in medians.items():
            self.log(f"  {name:<38} {m['wall_s']:6.2f} s  cpu {m['cpu_s']:5.2f} s  RSS {m['maxrss_mb']:6.1f} MB")
        targets = [
            _target(name, medians[name]["wall_s"], limit, unit="s")
            for name, (_, limit) in commands.items()
            if limit is not None
        ]
        self.results["cold"] = {
            "number": 6,
            "title": f"Cold start (median of {reps}; bytecode cached)",
            "target": "--help, list, show ≤ 0.5 s each; a 5-topic story on the offline model ≤ 1.5 s",
            "samples": samples,
            "medians": medians,
            "targets": targets,
            "imports": self.import_diagnostics(),
        }

    def import_diagnostics(self) -> dict[str, Any]:
        """Which heavy packages ``list`` imports, and the biggest imports (``-X importtime``)."""
        proc = run_process(self.python("-X", "importtime", str(RUNNER), "list"), env=self.env, timeout=120)
        top: dict[str, int] = {}
        for line in proc.stderr.splitlines():
            match = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)", line)
            if match and len(match.group(2)) <= 1:  # top-level imports only
                top[match.group(3)] = top.get(match.group(3), 0) + int(match.group(1))
        biggest = sorted(top.items(), key=lambda kv: -kv[1])[:10]
        modules = {m.group(1) for m in re.finditer(r"\|\s*(\S+)\s*$", proc.stderr, re.MULTILINE)}
        return {
            "list_imports_openai": "openai" in modules,
            "list_imports_langchain_openai": "langchain_openai" in modules,
            "list_imports_langchain_core": "langchain_core" in modules,
            "list_top_level_imports_ms": [(name, us / 1000.0) for name, us in biggest],
        }

    # -- all of it

    def run(self) -> int:
        started = time.time()
        machine = machine_info(self.pinning)
        self.log(
            f"machine: {machine['cpu']} × {machine['cores']}; {self.pinning.describe()}; load {machine['load_start']}"
        )
        if not self.aiohttp:
            self.log(
                "note: raw_aiohttp skipped: the OpenAI SDK's aiohttp transport is not installed (pip install 'openai[aiohttp]')"
            )
        if not self.quick:
            self.warm_up()
        scenarios = throughput_scenarios(self.quick, self.aiohttp, C.project_has_http_backend())
        wanted = [s for s in scenarios if s.number in self.only]
        if self.args.contenders:
            keep = set(self.args.contenders.split(","))
            for s in wanted:
                s.contenders = [c for c in s.contenders if c in keep]
        if wanted:
            server = MockServer(self.pinning, self.env, self.work / "server.log").start()
            self.log(f"mock server: {server.url} (pid {server.proc.pid if server.proc else '?'})")
            try:
                for sc in wanted:
                    self.run_throughput(server, sc)
            finally:
                server.stop()
        if 5 in self.only:
            self.run_memory()
        if 6 in self.only:
            self.run_cold()
        machine["load_end"] = os.getloadavg()
        report = {
            "date": dt.datetime.now().isoformat(timespec="seconds"),
            "quick": self.quick,
            "repeat": self.repeat,
            "duration_s": time.time() - started,
            "machine": machine,
            "descriptions": C.DESCRIPTIONS,
            "scenarios": self.results,
            "failures": self.failures,
        }
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
        table = render_tables(report)
        (self.out / "results.md").write_text(table)
        print(table)
        try:
            plot(report, self.out / "results.png")
        except Exception as exc:  # the plot is a convenience; the numbers are in results.json
            self.fail(f"plot: {type(exc).__name__}: {exc}")
        self.log(f"wrote {self.out / 'results.json'}, results.md, results.png in {report['duration_s']:.0f} s")
        if self.failures:
            self.log(f"{len(self.failures)} run(s) failed:\n  " + "\n  ".join(self.failures))
            return 1
        return 0


def _medians(samples: list[dict[str, Any]]) -> dict[str, float]:
    keys = {k for s in samples for k, v in s.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    out = {}
    for key in sorted(keys):
        values = [s[key] for s in samples if isinstance(s.get(key), (int, float))]
        if values:
            out[key] = statistics.median(values)
    return out


def machine_info(pinning: Pinning) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = None
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))  # type: ignore[union-attr]
        memory = f"{kb / 1024 / 1024:.0f} GiB"
    except (OSError, AttributeError):
        pass
    versions = {}
    from importlib import metadata

    for package in ("openai", "httpx", "aiohttp", "httpx-aiohttp", "langchain-core", "langchain-openai", "pydantic"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "chains", "runner.py"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        commit = (commit + (" + uncommitted changes in chains/" if dirty else "")) or None
    except OSError:
        commit = None
    return {
        "commit": commit,
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory": memory,
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "pinning": pinning.describe(),
        "load_start": os.getloadavg(),
    }


# ----------------------------------------------------------------------------- output


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    return str(value)


def _verdict(t: dict[str, Any], quick: bool) -> str:
    word = ("stretch " if t["stretch"] else "") + ("PASS" if t["pass"] else "MISS")
    unit = "×" if t["unit"] == "×" else f" {t['unit']}"
    value = "n/a" if t["value"] is None else f"{_fmt(t['value'], 3 if t['unit'] == '×' else 2)}{unit}"
    line = f"- **{word}**: {t['name']} = {value} (target {t['comparison']} {_fmt(float(t['limit']))}{unit})"
    return line + (" — quick sizes: not judged" if quick else "")


def render_tables(report: dict[str, Any]) -> str:
    quick = report["quick"]
    m = report["machine"]
    lines = [
        f"# chain-runner benchmarks — {report['date']}"
        + (" (QUICK: smoke sizes, numbers not meaningful)" if quick else ""),
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory']}; {m['os']}; Python {m['python']}; "
        f"{m['pinning']}; load average {', '.join(f'{x:.1f}' for x in m['load_start'])} at start, "
        f"{', '.join(f'{x:.1f}' for x in m['load_end'])} at end.",
        f"Commit {m.get('commit')}. Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v) + ".",
        f"Medians of {report['repeat']} repetition(s); ratios (×raw) against raw `AsyncOpenAI` + semaphore in the same run. "
        "Wall and CPU are the measured run only (imports and setup excluded), except `project_cli`: the whole process. "
        "Server busy: the mock server's CPU time over the run's wall time (its own core).",
        "",
        "Contenders: " + "; ".join(f"`{k}` {v}" for k, v in report["descriptions"].items()) + ".",
        "",
    ]
    for key in ("latency", "variable", "cpu", "stream"):
        sc = report["scenarios"].get(key)
        if not sc:
            continue
        lines += [f"## {sc['number']}. {sc['title']}", ""]
        header = ["contender", "wall s", "wall ×raw", "req/s", "client CPU ms/req", "CPU ×raw"]
        if sc["stream"]:
            header += ["chunks/CPU-s", "chunks/CPU-s ×raw"]
        header += ["peak RSS MB", "server busy"]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
        for name, md in sc["medians"].items():
            row = [
                f"`{name}`",
                _fmt(md.get("wall_s")),
                _fmt(md.get("wall_s_x_raw")),
                _fmt(md.get("req_per_s"), 0),
                _fmt(md.get("cpu_ms_per_req")),
                _fmt(md.get("cpu_ms_per_req_x_raw")),
            ]
            if sc["stream"]:
                row += [_fmt(md.get("chunks_per_cpu_s"), 0), _fmt(md.get("chunks_per_cpu_s_x_raw"))]
            busy = md.get("server_busy")
            row += [_fmt(md.get("maxrss_mb"), 0), f"{busy * 100:.0f}%" if busy is not None else "–"]
            lines.append("| " + " | ".join(row) + " |")
        lines += ["", f"Target: {sc['target']}", *(_verdict(t, quick) for t in sc["targets"]), ""]
    mem = report["scenarios"].get("memory")
    if mem:
        lines += [
            f"## 5. {mem['title']}",
            "",
            "| topics | wall s | CPU s | topics/s | peak RSS MB | first record s |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for run in mem["runs"].values():
            lines.append(
                f"| {run['topics']:,} | {_fmt(run['wall_s'], 1)} | {_fmt(run['cpu_s'], 1)} | "
                f"{_fmt(run['topics_per_s'], 0)} | {_fmt(run['maxrss_mb'], 1)} | {_fmt(run['first_record_s'])} |"
            )
        lines += ["", f"Target: {mem['target']}", *(_verdict(t, quick) for t in mem["targets"]), ""]
    cold = report["scenarios"].get("cold")
    if cold:
        lines += [f"## 6. {cold['title']}", "", "| command | wall s | CPU s | peak RSS MB |", "|---|---:|---:|---:|"]
        for name, md in cold["medians"].items():
            lines.append(f"| `{name}` | {_fmt(md['wall_s'])} | {_fmt(md['cpu_s'])} | {_fmt(md['maxrss_mb'], 0)} |")
        imports = cold.get("imports", {})
        lines += ["", f"Target: {cold['target']}", *(_verdict(t, quick) for t in cold["targets"])]
        if imports:
            top = ", ".join(f"{name} {ms:.0f} ms" for name, ms in imports.get("list_top_level_imports_ms", [])[:6])
            lines += [
                f"- `runner.py list` imports openai: {'yes' if imports.get('list_imports_openai') else 'no'}; "
                f"langchain_openai: {'yes' if imports.get('list_imports_langchain_openai') else 'no'}; "
                f"langchain_core: {'yes' if imports.get('list_imports_langchain_core') else 'no'}. "
                f"Biggest top-level imports: {top}."
            ]
        lines.append("")
    if report["failures"]:
        lines += ["## Failed runs", "", *(f"- {f}" for f in report["failures"]), ""]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = report["scenarios"]
    fig, axes = plt.subplots(2, 3, figsize=(17, 9.5))
    panels = [
        ("latency", "wall_s", "wall time, s (lower is better)", ("raw", 1.03)),
        ("variable", "wall_s", "wall time, s (lower is better)", ("raw", 1.10)),
        ("cpu", "cpu_ms_per_req", "client CPU ms per request (lower is better)", ("lc_abatch", 1.0)),
        ("stream", "chunks_per_cpu_s", "streamed chunks per CPU-second (higher is better)", ("lc_astream", 1.0)),
    ]
    for ax, (key, metric, label, (ref, factor)) in zip(axes.flat[:4], panels, strict=True):
        sc = scenarios.get(key)
        if not sc:
            ax.set_visible(False)
            continue
        names = list(sc["medians"])
        values = [sc["medians"][n].get(metric, 0.0) for n in names]
        palette = {"project": "#d62728", "raw": "#1f77b4", "lc": "#2ca02c"}
        colors = [palette.get(n.split("_")[0], "#7f7f7f") for n in names]
        ax.barh(names, values, color=colors)
        ax.invert_yaxis()
        ref_value = sc["medians"].get(ref, {}).get(metric)
        if ref_value:
            ax.axvline(ref_value * factor, color="k", linestyle="--", linewidth=1)
            ax.text(ref_value * factor, -0.6, f" target {factor:g}×{ref}", fontsize=8, va="bottom")
        ax.set_title(textwrap.fill(f"{sc['number']}. {sc['title']}", 60), fontsize=9)
        ax.set_xlabel(label, fontsize=9)
        ax.tick_params(labelsize=8)
    ax = axes.flat[4]
    mem = scenarios.get("memory")
    if mem:
        for run in mem["runs"].values():
            curve = run["rss_curve"]
            if curve:
                ax.plot([t for t, _ in curve], [r for _, r in curve], label=f"{run['topics']:,} topics")
        ax.set_title(textwrap.fill(f"5. {mem['title']}", 60), fontsize=9)
        ax.set_xlabel("seconds since start", fontsize=9)
        ax.set_ylabel("RSS, MB", fontsize=9)
        ax.legend(fontsize=8)
    else:
        ax.set_visible(False)
    ax = axes.flat[5]
    cold = scenarios.get("cold")
    if cold:
        names = list(cold["medians"])
        ax.barh(
            names,
            [cold["medians"][n]["wall_s"] for n in names],
            color=["#d62728" if n.startswith("runner") else "#7f7f7f" for n in names],
        )
        ax.invert_yaxis()
        ax.axvline(0.5, color="k", linestyle="--", linewidth=1)
        ax.axvline(1.5, color="k", linestyle=":", linewidth=1)
        ax.set_title(textwrap.fill(f"6. {cold['title']} (targets 0.5 s / 1.5 s)", 60), fontsize=9)
        ax.set_xlabel("wall time, s", fontsize=9)
        ax.tick_params(labelsize=8)
    else:
        ax.set_visible(False)
    fig.suptitle(f"chain-runner benchmarks {report['date']}" + (" (quick)" if report["quick"] else ""), fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke: tiny sizes, 1 repetition; never judges speed")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions per contender (default 3)")
    parser.add_argument("--out", default=str(HERE / "results"), help="results directory (default benchmarks/results)")
    parser.add_argument("--only", default="", help="scenario numbers to run, e.g. 1,3 (default: all six)")
    parser.add_argument("--contenders", default="", help="comma-separated contenders to keep (default: all)")
    parser.add_argument(
        "--memory-topics", type=int, default=100_000, help="topics in the large memory run (default 100,000)"
    )
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return Suite(args).run()


if __name__ == "__main__":
    sys.exit(main())
