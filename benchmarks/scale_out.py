"""Scenario 8: ``--workers N``, the same run in Ray worker processes, measured through the CLI as whole processes.

Issue 14's targets are ratios within one run, and three kinds of them:

- **CPU-bound** (``story`` on the offline model, no server): in one process, on one Ray worker and on two, in
  alternation.  Each target is judged twice, labelled so: over the **whole process** (its wall clock: Python's and
  Ray's start-up, the run, Ray's shutdown) and over the **run proper** (the summary's ``run_s``: from the first input
  handed to a worker to the last record back; in one process, the summary's ``wall_s``, which is the same span).
  The summary's ``startup_s`` and ``shutdown_s`` say where the rest went.  These children are *not* pinned to one core like the other
  scenarios' clients: two workers need both cores, and Ray's own processes (GCS, raylet, agents, the governor
  actor) share them, as they would on a user's 2-core machine.  Each process's CPU, sampled from /proc, says
  where the cores went.
- **Limits across workers** (the mock server): ``--rpm`` and ``--max-concurrency`` with two workers, judged on the
  server's own clock (``/_control/stats`` → ``log`` → ``t``) and its ``peak_in_flight``.  The window is the
  CLI's 60 s, so this run cannot be shorter than a minute.
- **Driver memory**: the CLI process's peak RSS (``VmHWM``; the workers are other processes) at two sizes.

Every record is checked (``scale_checks.py``); a target missed is reported, never a failure of the suite.
"""

from __future__ import annotations

import importlib.util
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import scale_checks as checks
from batch_checks import RecordCheck, topic_line
from processes import PY, RUNNER, MockServer, ProcResult, run_process
from scenarios import check_target, medians_of
from suite import Suite

MODES = ("in_process", "workers_1", "workers_2", "workers_2_default")
LABELS = {
    "in_process": "in one process",
    "workers_1": "--workers 1",
    "workers_2": "--workers 2",
    "workers_2_default": "--workers 2, default --max-concurrency 8",
}
MODEL = "openai:bench"
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",  # no usage report to ray.io from the benchmark
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}
TREE_EVERY_S = 0.25
"""How often the run's process tree is read for CPU times (each process's last 0.25 s may be missed)."""


@dataclass(frozen=True)
class ScaleOut:
    """Scenario 8's sizes: ``n`` topics CPU-bound at ``concurrency``; the limits run; the two memory sizes."""

    quick: bool
    n: int
    concurrency: int
    rpm: int
    rpm_inputs: int
    rpm_concurrency: int
    latency_ms: float
    memory_sizes: tuple[int, int]

    def modes(self, rep: int) -> list[str]:
        """This repetition's modes, rotated.  The default-concurrency run shows how the governor shares its slots
        between workers: once is enough to see it.  Quick runs skip it and ``workers_1``: the same code paths as
        ``workers_2``, and each Ray run costs seconds of start-up and shutdown."""
        skipped = ("workers_2_default", "workers_1") if self.quick else () if rep == 0 else ("workers_2_default",)
        modes = [m for m in MODES if m not in skipped]
        shift = rep % len(modes)
        return modes[shift:] + modes[:shift]

    def mode_args(self, mode: str) -> list[str]:
        workers = {"in_process": [], "workers_1": ["--workers", "1"]}.get(mode, ["--workers", "2"])
        return workers if mode == "workers_2_default" else [*workers, "--max-concurrency", str(self.concurrency)]


def scale_out_scenario(quick: bool, memory_topics: int) -> ScaleOut:
    """Full: 3,000 topics (about 6 s of work in one process); 1,200 requests at 600 rpm (one window and its
    refill: about 65 s) with 16 in flight at 50 ms each (the server could take 32 × the rate; with 8 or fewer, one
    worker leases every slot and the other idles, so the limits would not be shared); memory at 1,000 and
    ``memory_topics`` topics.  Quick: every path once at tiny sizes, the limits run without holding anything back
    (it would take a minute), and the driver's memory from the CPU-bound runs' own samples (each Ray run costs
    about 5 s of start-up and shutdown: the smoke stays well under 20 s)."""
    n, rpm_inputs, memory_sizes = (30, 20, (30, 30)) if quick else (3000, 1200, (1000, memory_topics))
    return ScaleOut(
        quick=quick,
        n=n,
        concurrency=32,
        rpm=600,
        rpm_inputs=rpm_inputs,
        rpm_concurrency=16,
        latency_ms=50.0,
        memory_sizes=memory_sizes,
    )


def run_scale_out(suite: Suite) -> None:
    if importlib.util.find_spec("ray") is None:  # an optional extra, like the SDK's aiohttp transport for raw_aiohttp
        suite.log("\nnote: [8] skipped: Ray is not installed (pip install 'chain-runner[ray]')")
        return
    sc = scale_out_scenario(suite.quick, suite.args.scale_memory_topics)
    modes = ", ".join(LABELS[m] for m in MODES if m in sc.modes(0))
    sizes = " and ".join(f"{size:,}" for size in dict.fromkeys(sc.memory_sizes))
    suite.log(
        f"\n[8] Scale-out: story on the offline model over {sc.n:,} topics {modes} (--max-concurrency "
        f"{sc.concurrency}; children on cores {suite.cores_text()}); --rpm {sc.rpm} across 2 workers; driver memory at "
        f"{sizes} topics"
    )
    env = {**suite.env, **RAY_ENV}
    if suite.quick:  # the smoke: both Ray runs at once (each is mostly Ray's start-up and shutdown, waiting)
        suite.log("  quick: the CPU-bound runs and the limits run at once, each with its own local Ray")
        with ThreadPoolExecutor(2) as pool:
            cpu, lim = pool.submit(cpu_bound, suite, sc, env), pool.submit(limits_run, suite, sc, env)
            samples, limits = cpu.result(), lim.result()
    else:
        warm_up(suite, env)
        samples = cpu_bound(suite, sc, env)
        limits = limits_run(suite, sc, env)
    medians = {mode: medians_of(s) for mode, s in samples.items() if s}
    ratios = cpu_ratios(medians)
    memory = memory_runs(suite, sc, env, samples.get("workers_2", []))
    suite.results["scale"] = {
        "number": 8,
        "title": f"Scale-out on Ray: story over {sc.n:,} topics on the offline model; --rpm {sc.rpm} across 2 workers; "
        "driver memory",
        "target": "2 workers ≥ 1.7 × the items/s of 1 worker; 1 Ray worker ≤ 1.05 × the in-process wall; no 60 s window "
        "over --rpm and ≥ 90 % of it reached; server peak in flight ≤ --max-concurrency; driver peak RSS within "
        f"+50 MB from {sc.memory_sizes[0]:,} to {sc.memory_sizes[1]:,} topics (the issue: 1,000 to 100,000)",
        "n": sc.n,
        "concurrency": sc.concurrency,
        "labels": LABELS,
        "cores": suite.cores,
        "samples": samples,
        "medians": medians,
        "ratios": ratios,
        "limits": limits,
        "memory": memory,
        "targets": judge(ratios, limits, memory),
    }


# ----------------------------------------------------------------------------- one measured child


class Watch:
    """``run_process``'s ``on_sample``: when the records file first and last grew, and the CPU time of every process
    under the CLI (the driver, and through it Ray's GCS, raylet, agents, the governor and the workers)."""

    def __init__(self, output: Path) -> None:
        self.output = output
        self.size = 0
        self.first: float | None = None
        self.last: float | None = None
        self.root: int | None = None
        self.cpu: dict[int, tuple[str, float]] = {}
        self._next_tree = 0.0

    def __call__(self, elapsed: float, rss_mb: float) -> float | None:
        try:
            size = self.output.stat().st_size
        except OSError:
            size = 0
        if size > self.size:
            self.size, self.last = size, elapsed
            self.first = elapsed if self.first is None else self.first
        if elapsed >= self._next_tree:
            self._next_tree = elapsed + TREE_EVERY_S
            self._read_tree()
        return None

    def _read_tree(self) -> None:
        stats = _proc_stats()
        if self.root is None:
            self.root = _find_child(stats, os.getpid(), str(self.output))
            if self.root is None:
                return
        for pid in _descendants(stats, self.root):
            known = self.cpu.get(pid, ("?", 0.0))[0]
            self.cpu[pid] = (checks.better_title(known, checks.short_title(_cmdline(pid))), stats[pid][1])

    def roles(self) -> dict[str, float]:
        return checks.cpu_by_role(self.cpu, self.root or -1)


def _proc_stats() -> dict[int, tuple[int, float]]:
    """pid → (parent pid, CPU seconds so far) for every process, from /proc/PID/stat."""
    ticks = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            fields = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        stats[int(name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / ticks)
    return stats


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part for part in raw.decode(errors="replace").split("\0") if part]


def _find_child(stats: dict[int, tuple[int, float]], parent: int, marker: str) -> int | None:
    """The child of ``parent`` whose command line names ``marker`` (the run's own output file)."""
    for pid, (ppid, _) in stats.items():
        if ppid == parent and any(marker in part for part in _cmdline(pid)):
            return pid
    return None


def _descendants(stats: dict[int, tuple[int, float]], root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            found.append(pid)
            todo.extend(children.get(pid, []))
    return found


def measured(
    suite: Suite, args: list[str], env: dict[str, str], name: str
) -> tuple[ProcResult, Watch, dict[str, Any], Path]:
    """One ``runner.py ARGS --output --metrics-out -q`` on every core; its result, what was watched, its summary
    (``--metrics-out``) and its records file (the caller checks it, then removes it)."""
    output, metrics = suite.work / f"{name}.jsonl", suite.work / f"{name}-metrics.json"
    for path in (output, metrics):
        path.unlink(missing_ok=True)
    watch = Watch(output)
    argv = [*suite.all_cores(), PY, str(RUNNER), *args, "--output", str(output), "--metrics-out", str(metrics), "-q"]
    proc = run_process(argv, env=env, timeout=suite.timeout, on_sample=watch)
    summary = json.loads(metrics.read_text()) if metrics.exists() else {}
    metrics.unlink(missing_ok=True)
    return proc, watch, summary, output


def run_problems(proc: ProcResult, check: RecordCheck, n: int) -> list[str]:
    problems = []
    if proc.returncode != 0:
        problems.append(
            f"exit {proc.returncode}{' (timed out)' if proc.timed_out else ''}: {proc.stderr.strip()[-500:]}"
        )
    if check.ok != n or check.records != n:
        problems.append(
            f"{check.ok}/{n} right records of {check.records} ({check.errors} errors, {check.wrong} wrong): "
            f"{check.first_problem}"
        )
    return problems


def topics_file(suite: Suite, n: int) -> Path:
    path = suite.work / f"scale-topics-{n}.txt"
    if not path.exists():
        path.write_text("".join(topic_line(i) + "\n" for i in range(n)))
    return path


def warm_up(suite: Suite, env: dict[str, str]) -> None:
    """Ray's modules and chains.scale compiled into the bytecode cache, in the driver and in the workers."""
    args = ["story", "--topics", str(topics_file(suite, 20)), "--model", "fake", "--workers", "2"]
    proc, _, _, output = measured(suite, args, env, "scale-warm-up")
    output.unlink(missing_ok=True)
    if proc.returncode != 0:
        suite.fail(f"[8] warm-up exited {proc.returncode}: {proc.stderr.strip()[-500:]}")


# ----------------------------------------------------------------------------- CPU-bound


def cpu_bound(suite: Suite, sc: ScaleOut, env: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    topics = topics_file(suite, sc.n)
    samples: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    for rep in range(suite.repeat):
        for mode in sc.modes(rep):
            args = ["story", "--topics", str(topics), "--model", "fake", *sc.mode_args(mode)]
            load = os.getloadavg()[0]
            proc, watch, summary, output = measured(suite, args, env, f"scale-{mode}")
            check = checks.check_records(output, sc.n, checks.story_is_right)
            output.unlink(missing_ok=True)
            for problem in run_problems(proc, check, sc.n):
                suite.fail(f"[8] {mode}: {problem}")
            sample = story_sample(proc, watch, summary, load)
            samples[mode].append(sample)
            log_story(suite, rep, mode, sample, sc.n)
    return {mode: s for mode, s in samples.items() if s}


def story_sample(proc: ProcResult, watch: Watch, summary: dict[str, Any], load: float) -> dict[str, Any]:
    """A run's numbers: items/s from its own summary (start-up excluded and included), per worker, and its CPU."""
    ok = int(summary.get("ok") or 0)
    wall = float(summary.get("wall_s") or 0.0)
    startup = summary.get("startup_s")
    run_s = wall - (startup or 0.0)
    proper = summary.get("run_s") or wall  # in one process the summary's wall is the run proper
    rates = sorted(w["items_per_s"] for w in summary.get("per_worker") or [] if w.get("items_per_s") is not None)
    cpu = watch.roles()
    sample: dict[str, Any] = {
        "ok": ok,
        "process_wall_s": proc.wall_s,
        "wall_s": wall,
        "startup_s": startup,
        "shutdown_s": summary.get("shutdown_s"),
        "run_s": run_s,
        "run_proper_s": proper,
        "items_per_s": ok / run_s if run_s > 0 else None,
        "items_per_s_run_proper": ok / proper if proper > 0 else None,
        "items_per_s_with_startup": ok / wall if wall > 0 else None,
        "items_per_s_process": ok / proc.wall_s if proc.wall_s > 0 else None,
        "per_worker_items_per_s": rates,
        "per_worker_items": [w.get("items") for w in summary.get("per_worker") or []],
        "per_worker_min": rates[0] if rates else None,
        "per_worker_max": rates[-1] if rates else None,
        "per_worker_sum": sum(rates) if rates else None,
        "first_record_s": watch.first,
        "tail_s": proc.wall_s - watch.last if watch.last is not None else None,
        "records_s": run_s - (proc.wall_s - watch.last) if watch.last is not None else None,
        "items_per_s_records": ok / (run_s - (proc.wall_s - watch.last))
        if watch.last is not None and run_s > proc.wall_s - watch.last
        else None,
        "driver_maxrss_mb": proc.maxrss_mb,
        "load_1m": load,
        "governor": summary.get("governor"),
        "cpu_processes": {f"{title} {pid}": round(s, 2) for pid, (title, s) in watch.cpu.items()},
    }
    for name, seconds in cpu.items():
        sample[f"cpu_{name}_s"] = seconds
    sample["cores_busy"] = cpu["total"] / proc.wall_s if proc.wall_s > 0 else None
    return {k: v for k, v in sample.items() if v is not None}


def log_story(suite: Suite, rep: int, mode: str, s: dict[str, Any], n: int) -> None:
    workers = "+".join(f"{r:.0f}" for r in s["per_worker_items_per_s"]) or "–"
    suite.log(
        f"  rep {rep + 1}/{suite.repeat} {mode:<17} wall {s['process_wall_s']:6.2f} s (Ray start-up "
        f"{s.get('startup_s', 0.0):4.2f} s, run proper {s.get('run_proper_s', float('nan')):5.2f} s, Ray shutdown "
        f"{s.get('shutdown_s', 0.0):4.2f} s)  items/s: run proper {s.get('items_per_s_run_proper', float('nan')):5.0f}, "
        f"whole process {s.get('items_per_s_process', float('nan')):4.0f}  "
        f"per worker {workers}  CPU s driver {s['cpu_driver_s']:.1f} workers {s['cpu_workers_s']:.1f} "
        f"governor {s['cpu_governor_s']:.1f} ray {s['cpu_ray_s']:.1f}  driver RSS {s['driver_maxrss_mb']:.0f} MB  "
        f"ok {s['ok']}/{n}  load {s['load_1m']:.1f}"
    )


def cpu_ratios(m: dict[str, dict[str, float]]) -> dict[str, float | None]:
    """The issue's two CPU-bound ratios, and the same with start-up included or per worker, from the medians."""

    def ratio(a: str, b: str, metric: str) -> float | None:
        if a not in m or b not in m or not m[b].get(metric) or m[a].get(metric) is None:
            return None
        return m[a][metric] / m[b][metric]

    return {
        "workers_2_x_workers_1_run_proper": ratio("workers_2", "workers_1", "items_per_s_run_proper"),
        "workers_2_x_workers_1_process": ratio("workers_2", "workers_1", "items_per_s_process"),
        "workers_1_x_in_process_run_proper": ratio("workers_1", "in_process", "run_proper_s"),
        "workers_2_x_workers_1_items_per_s": ratio("workers_2", "workers_1", "items_per_s"),
        "workers_2_x_workers_1_with_startup": ratio("workers_2", "workers_1", "items_per_s_with_startup"),
        "workers_2_x_workers_1_per_worker_sum": ratio("workers_2", "workers_1", "per_worker_sum"),
        "workers_2_x_workers_1_records": ratio("workers_2", "workers_1", "items_per_s_records"),
        "workers_2_default_x_workers_1_items_per_s": ratio("workers_2_default", "workers_1", "items_per_s"),
        "workers_1_x_in_process_run_wall": ratio("workers_1", "in_process", "run_s"),
        "workers_1_x_in_process_process_wall": ratio("workers_1", "in_process", "process_wall_s"),
        "workers_1_x_in_process_records": ratio("workers_1", "in_process", "records_s"),
        "workers_1_x_in_process_per_worker": (
            m["in_process"]["items_per_s"] / m["workers_1"]["per_worker_sum"]
            if m.get("workers_1", {}).get("per_worker_sum") and m.get("in_process", {}).get("items_per_s")
            else None
        ),
    }


# ----------------------------------------------------------------------------- limits across workers


def limits_run(suite: Suite, sc: ScaleOut, env: dict[str, str]) -> dict[str, Any]:
    """``run summarize`` with ``--workers 2 --rpm R --max-concurrency C`` against a fast server, judged on the
    server's clock: the busiest 60 s, the rate after the first window, and the peak in flight."""
    inputs = suite.work / f"scale-rate-{sc.rpm_inputs}.jsonl"
    inputs.write_text("".join(json.dumps({"text": checks.rate_text(i)}) + "\n" for i in range(sc.rpm_inputs)))
    held = sc.rpm_inputs > sc.rpm
    suite.log(
        f"  limits: {sc.rpm_inputs:,} summaries, --workers 2 --rpm {sc.rpm} --max-concurrency {sc.rpm_concurrency}, "
        f"server latency {sc.latency_ms:g} ms" + ("" if held else " (fewer inputs than --rpm: nothing is held back)")
    )
    args = ["run", "summarize", "--input", str(inputs), "--model", MODEL, "--workers", "2"]
    args += ["--rpm", str(sc.rpm), "--max-concurrency", str(sc.rpm_concurrency)]
    server = MockServer(suite.pinning, suite.env, suite.work / "server-scale.log").start()
    try:
        server.reset_all()
        server.configure(latency_ms=sc.latency_ms)
        proc, _, summary, output = measured(suite, [*args, "--base-url", server.url], env, "scale-rate")
        stats = server._call("GET", "/_control/stats")  # with the request log: each request's arrival time
    finally:
        server.stop()
    check = checks.check_records(output, sc.rpm_inputs, checks.summary_is_right)
    output.unlink(missing_ok=True)
    problems = run_problems(proc, check, sc.rpm_inputs)
    if stats["requests"] != sc.rpm_inputs:
        problems.append(f"the server saw {stats['requests']} chat requests (expected {sc.rpm_inputs})")
    for problem in problems:
        suite.fail(f"[8] limits: {problem}")
    times = [float(entry["t"]) for entry in stats["log"]]
    result = limits_numbers(sc, proc, summary, stats, times)
    fraction = result["sustained_fraction"]
    suite.log(
        f"  limits: wall {proc.wall_s:.1f} s; busiest 60 s: {result['most_in_window']} requests (--rpm {sc.rpm}); "
        f"after the first window: {'–' if fraction is None else f'{fraction * 100:.1f} %'} of --rpm; "
        f"server peak in flight {result['peak_in_flight']} (--max-concurrency {sc.rpm_concurrency}); "
        f"per worker {result['per_worker_items']}"
    )
    return result


def limits_numbers(
    sc: ScaleOut, proc: ProcResult, summary: dict[str, Any], stats: dict[str, Any], times: list[float]
) -> dict[str, Any]:
    fraction = checks.sustained_fraction(times, sc.rpm)
    ordered = sorted(times)
    held = len(ordered) > sc.rpm
    return {
        "rpm": sc.rpm,
        "inputs": sc.rpm_inputs,
        "max_concurrency": sc.rpm_concurrency,
        "workers": 2,
        "server_latency_ms": sc.latency_ms,
        "process_wall_s": proc.wall_s,
        "startup_s": summary.get("startup_s"),
        "server_requests": stats["requests"],
        "server_span_s": (ordered[-1] - ordered[0]) if ordered else None,
        "first_window_sent_in_s": (ordered[sc.rpm - 1] - ordered[0]) if held else None,
        "first_held_request_at_s": (ordered[sc.rpm] - ordered[0]) if held else None,
        "most_in_window": checks.most_in_window(times),
        "sustained_fraction": fraction,
        "requests_per_min_after_first_window": None if fraction is None else fraction * sc.rpm,
        "peak_in_flight": stats["peak_in_flight"],
        "rate_limit_wait_s": summary.get("rate_limit_wait_s"),
        "per_worker_items": [w.get("items") for w in summary.get("per_worker") or []],
        "governor": summary.get("governor"),
    }


# ----------------------------------------------------------------------------- driver memory


def memory_runs(suite: Suite, sc: ScaleOut, env: dict[str, str], two_workers: list[dict[str, Any]]) -> dict[str, Any]:
    """The driver's peak RSS with ``--workers 2`` at both sizes; a size the CPU-bound runs already ran with the same
    arguments (quick: ``n``) takes that run's sample instead of running again."""
    runs = {}
    for size in dict.fromkeys(sc.memory_sizes):  # quick: one size
        if size == sc.n and two_workers:
            sample = two_workers[0]
        else:
            sample = memory_run(suite, sc, env, size)
        runs[str(size)] = {"topics": size, **{k: v for k, v in sample.items() if k != "cpu_processes"}}
        suite.log(
            f"  memory {size:>7,} topics --workers 2: wall {sample['process_wall_s']:6.1f} s  "
            f"driver peak RSS {sample['driver_maxrss_mb']:6.1f} MB  items/s {sample.get('items_per_s', float('nan')):.0f}"
        )
    small, large = (runs[str(size)].get("driver_maxrss_mb") for size in sc.memory_sizes)
    grew = sc.memory_sizes[0] != sc.memory_sizes[1]  # quick: one size only, nothing to compare
    return {
        "sizes": list(sc.memory_sizes),
        "runs": runs,
        "rss_delta_mb": (large - small) if small and large and grew else None,
    }


def memory_run(suite: Suite, sc: ScaleOut, env: dict[str, str], size: int) -> dict[str, Any]:
    args = ["story", "--topics", str(topics_file(suite, size)), "--model", "fake", "--workers", "2"]
    load = os.getloadavg()[0]
    proc, watch, summary, output = measured(
        suite, [*args, "--max-concurrency", str(sc.concurrency)], env, f"scale-memory-{size}"
    )
    check = checks.check_records(output, size, checks.story_is_right)
    output.unlink(missing_ok=True)
    for problem in run_problems(proc, check, size):
        suite.fail(f"[8] memory {size:,} topics: {problem}")
    return story_sample(proc, watch, summary, load)


# ----------------------------------------------------------------------------- targets


def judge(ratios: dict[str, float | None], limits: dict[str, Any], memory: dict[str, Any]) -> list[dict[str, Any]]:
    small, large = memory["sizes"]
    return [
        check_target(
            "2 workers / 1 worker, items/s over the run proper (first input handed out to last record)",
            ratios["workers_2_x_workers_1_run_proper"],
            1.7,
            at_most=False,
            unit="×",
        ),
        check_target(
            "2 workers / 1 worker, items/s over the whole process (Ray's start-up and shutdown included)",
            ratios["workers_2_x_workers_1_process"],
            1.7,
            at_most=False,
            unit="×",
        ),
        check_target(
            "1 Ray worker / in one process, wall of the run proper (first input handed out to last record)",
            ratios["workers_1_x_in_process_run_proper"],
            1.05,
            unit="×",
        ),
        check_target(
            "1 Ray worker / in one process, whole process wall (Ray's start-up and shutdown included)",
            ratios["workers_1_x_in_process_process_wall"],
            1.05,
            unit="×",
        ),
        check_target(
            f"most requests in any 60 s of the server's clock (--rpm {limits['rpm']})",
            float(limits["most_in_window"]),
            float(limits["rpm"]),
            unit="requests",
        ),
        check_target(
            "requests per minute after the first window / --rpm",
            limits["sustained_fraction"],
            0.9,
            at_most=False,
            unit="×",
        ),
        check_target(
            f"server peak in flight (--max-concurrency {limits['max_concurrency']}, 2 workers)",
            float(limits["peak_in_flight"]),
            float(limits["max_concurrency"]),
            unit="requests",
        ),
        check_target(
            f"driver peak RSS({large:,}) − peak RSS({small:,}), --workers 2", memory["rss_delta_mb"], 50.0, unit="MB"
        ),
    ]
