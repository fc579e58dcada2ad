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

Every record is checked (``scale_checks.py``); a target missed is reported, never a failure of the suite.  The
measured child and its watch on /proc are ``proc_watch.py`` (which also gives each role's CPU per input over the run
proper); the limits run is ``scale_rate.py``.  ``python benchmarks/scale_out.py --parts cpu --modes
in_process,workers_1`` runs some of it alone (``main``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import scale_checks as checks
from proc_watch import Watch, measured, run_problems, topics_file
from processes import ProcResult
from scale_rate import limits_run, limits_targets
from scenarios import check_target, medians_of
from suite import Suite

MODES = ("in_process", "workers_1", "workers_2", "workers_2_default")
LABELS = {
    "in_process": "in one process",
    "workers_1": "--workers 1",
    "workers_2": "--workers 2",
    "workers_2_default": "--workers 2, default --max-concurrency 8",
}
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",  # no usage report to ray.io from the benchmark
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}
ROLES = ("driver", "workers", "governor", "ray")
"""Where a run's CPU goes (``scale_checks.role``): the CLI process, the worker actors, the governor actor, the rest."""
PARTS = ("cpu", "limits", "memory")
"""The scenario's three parts; ``python benchmarks/scale_out.py --parts cpu`` runs only some (see ``main``)."""


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
    wanted: tuple[str, ...] = MODES
    """The CPU-bound modes to run (``--modes``; the suite runs them all)."""
    parts: tuple[str, ...] = PARTS

    def modes(self, rep: int) -> list[str]:
        """This repetition's modes, rotated.  The default-concurrency run shows how the governor shares its slots
        between workers: once is enough to see it.  Quick runs skip it and ``workers_1``: the same code paths as
        ``workers_2``, and each Ray run costs seconds of start-up and shutdown."""
        skipped = ("workers_2_default", "workers_1") if self.quick else () if rep == 0 else ("workers_2_default",)
        modes = [m for m in MODES if m not in skipped and m in self.wanted]
        shift = rep % len(modes)
        return modes[shift:] + modes[:shift]

    def mode_args(self, mode: str) -> list[str]:
        workers = {"in_process": [], "workers_1": ["--workers", "1"]}.get(mode, ["--workers", "2"])
        return workers if mode == "workers_2_default" else [*workers, "--max-concurrency", str(self.concurrency)]


def scale_out_scenario(quick: bool, memory_topics: int, **only: Any) -> ScaleOut:
    """Full: 3,000 topics (about 6 s of work in one process); 1,200 requests at 600 rpm (one window and its
    refill: about 65 s) with 16 in flight at 50 ms each (the server could take 32 × the rate; with 8 or fewer, one
    worker leases every slot and the other idles, so the limits would not be shared); memory at 1,000 and
    ``memory_topics`` topics.  Quick: every path once at tiny sizes, the limits run without holding anything back
    (it would take a minute), and the driver's memory from the CPU-bound runs' own samples (each Ray run costs
    about 5 s of start-up and shutdown: the smoke stays well under 20 s).  ``only``: ``wanted`` modes and ``parts``
    (``main``'s ``--modes`` and ``--parts``)."""
    n, rpm_inputs, memory_sizes = (30, 20, (30, 30)) if quick else (3000, 1200, (1000, memory_topics))
    return ScaleOut(
        **{"n": n, **only},
        quick=quick,
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
    only = {k: v for k in ("wanted", "parts", "n") if (v := getattr(suite.args, f"scale_{k}", None))}
    sc = scale_out_scenario(suite.quick, suite.args.scale_memory_topics, **only)
    modes = ", ".join(LABELS[m] for m in MODES if m in sc.modes(0))
    sizes = " and ".join(f"{size:,}" for size in dict.fromkeys(sc.memory_sizes))
    parts = {"cpu": f"story on the offline model over {sc.n:,} topics {modes} (--max-concurrency {sc.concurrency}; "
             f"children on cores {suite.cores_text()})", "limits": f"--rpm {sc.rpm} across 2 workers",
             "memory": f"driver memory at {sizes} topics"}  # fmt: skip
    suite.log("\n[8] Scale-out: " + "; ".join(text for part, text in parts.items() if part in sc.parts))
    env = {**suite.env, **RAY_ENV}
    limits: dict[str, Any] | None = None
    if suite.quick:  # the smoke: both Ray runs at once (each is mostly Ray's start-up and shutdown, waiting)
        suite.log("  quick: the CPU-bound runs and the limits run at once, each with its own local Ray")
        with ThreadPoolExecutor(2) as pool:
            cpu, lim = pool.submit(cpu_bound, suite, sc, env), pool.submit(limits_run, suite, sc, env)
            samples, limits = cpu.result(), lim.result()
    else:
        warm_up(suite, env)
        samples = cpu_bound(suite, sc, env) if "cpu" in sc.parts else {}
        if "limits" in sc.parts:
            limits = limits_run(suite, sc, env)
    medians = {mode: medians_of(s) for mode, s in samples.items() if s}
    ratios = {**cpu_ratios(medians), **paired_ratios(samples)}
    memory = memory_runs(suite, sc, env, samples.get("workers_2", [])) if "memory" in sc.parts else None
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
        "targets": judge(sc, ratios, limits, memory),
    }


# ----------------------------------------------------------------------------- one measured child


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
    for name, ms in watch.cpu_per_input_ms(ok).items():  # over the run proper's steady part (``proc_watch``)
        sample[f"cpu_{name}_ms_per_input"] = ms
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
        f"governor {s['cpu_governor_s']:.1f} ray {s['cpu_ray_s']:.1f} (per input while it runs, ms: "
        + " / ".join(f"{s.get(f'cpu_{r}_ms_per_input', float('nan')):.2f}" for r in ROLES)
        + f")  driver RSS {s['driver_maxrss_mb']:.0f} MB  ok {s['ok']}/{n}  load {s['load_1m']:.1f}"
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


PAIRS = {
    "workers_2_x_workers_1_run_proper_paired": ("workers_2", "workers_1", "items_per_s_run_proper"),
    "workers_2_x_workers_1_process_paired": ("workers_2", "workers_1", "items_per_s_process"),
    "workers_1_x_in_process_run_proper_paired": ("workers_1", "in_process", "run_proper_s"),
    "workers_1_x_in_process_process_wall_paired": ("workers_1", "in_process", "process_wall_s"),
}
"""The issue's four CPU-bound ratios, each taken within one repetition (its modes run back to back) and then the
median over repetitions (``paired_ratios``)."""


def paired_ratios(samples: dict[str, list[dict[str, Any]]]) -> dict[str, float | None]:
    """Each of ``PAIRS`` within one repetition, then the median over repetitions: the targets are judged on these.

    This machine's speed drifts by up to 2× within minutes (the same in-process run: 1.48 ms of CPU per input at
    00:35, 2.49 at 01:00 on 2026-12-02), and a ratio of medians may set a run of a fast minute against one of a
    slow minute; the runs of one repetition are seconds apart.  Both kinds are reported."""
    out: dict[str, float | None] = {}
    for key, (a, b, metric) in PAIRS.items():
        pairs = [
            x[metric] / y[metric]
            for x, y in zip(samples.get(a, []), samples.get(b, []), strict=False)
            if isinstance(x.get(metric), (int, float)) and y.get(metric)
        ]
        out[key] = statistics.median(pairs) if pairs else None
    return out


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


CPU_TARGETS = (
    ("2 workers / 1 worker, items/s over the run proper (first input handed out to last record)",
     "workers_2_x_workers_1_run_proper_paired", 1.7, False),
    ("2 workers / 1 worker, items/s over the whole process (Ray's start-up and shutdown included)",
     "workers_2_x_workers_1_process_paired", 1.7, False),
    ("1 Ray worker / in one process, wall of the run proper (first input handed out to last record)",
     "workers_1_x_in_process_run_proper_paired", 1.05, True),
    ("1 Ray worker / in one process, whole process wall (Ray's start-up and shutdown included)",
     "workers_1_x_in_process_process_wall_paired", 1.05, True),
)  # fmt: skip
"""(what, which ratio of ``paired_ratios``, the target, whether it is a ceiling): the issue's CPU-bound targets, each
the median of the ratios within one repetition (the ratio of the medians is reported beside it)."""


def judge(
    sc: ScaleOut, ratios: dict[str, float | None], limits: dict[str, Any] | None, memory: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """The issue's targets, of the parts and modes that ran (``--parts``/``--modes`` leave the others unjudged)."""
    ran = set(sc.wanted) if "cpu" in sc.parts else set()
    targets = [
        check_target(name, ratios[key], limit, at_most=at_most, unit="×")
        for name, key, limit, at_most in CPU_TARGETS
        if ({"workers_2", "workers_1"} if key.startswith("workers_2") else {"workers_1", "in_process"}) <= ran
    ]
    targets += limits_targets(limits) if limits is not None else []
    if memory is not None:
        small, large = memory["sizes"]
        targets.append(
            check_target(
                f"driver peak RSS({large:,}) − peak RSS({small:,}), --workers 2",
                memory["rss_delta_mb"],
                50.0,
                unit="MB",
            )
        )
    return targets


# ----------------------------------------------------------------------------- alone: some parts, some modes


def main(argv: list[str] | None = None) -> int:
    """``python benchmarks/scale_out.py --parts cpu --modes in_process,workers_1``: scenario 8 without the one-minute
    limits run or the two-minute memory run, e.g. to measure a change to the Ray engine; prints the medians, the
    ratios and the targets of what ran, and writes them to ``OUT/scale.json`` (not the suite's report)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0] if main.__doc__ else None)
    parser.add_argument("--parts", default="cpu", help=f"comma-separated of {','.join(PARTS)} (default cpu)")
    parser.add_argument("--modes", default="in_process,workers_1", help=f"CPU-bound modes, of {','.join(MODES)}")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions of each mode, in alternation (default 3)")
    parser.add_argument("--topics", type=int, default=None, help="topics per CPU-bound run (default 3,000)")
    parser.add_argument("--scale-memory-topics", type=int, default=100_000, help="the large memory run's topics")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "scale"))
    args = parser.parse_args(argv)
    parts, modes = tuple(args.parts.split(",")), tuple(args.modes.split(","))
    unknown = sorted({*parts} - {*PARTS}) + sorted({*modes} - {*MODES})
    if unknown or args.repeat < 1:
        parser.error(f"unknown parts or modes: {', '.join(unknown)}" if unknown else "--repeat must be at least 1")
    args.quick, args.only, args.contenders = False, "8", ""
    args.scale_parts, args.scale_wanted, args.scale_n = parts, modes, args.topics
    suite = Suite(args)
    run_scale_out(suite)
    result = suite.results.get("scale", {})
    (suite.out / "scale.json").write_text(json.dumps(result, indent=2, default=str))
    for mode, m in result.get("medians", {}).items():
        cpu = " / ".join(f"{m.get(f'cpu_{r}_ms_per_input', float('nan')):.2f}" for r in ROLES)
        suite.log(
            f"  median {mode:<17} run proper {m.get('run_proper_s', float('nan')):5.2f} s, whole process "
            f"{m['process_wall_s']:5.2f} s; CPU ms per input while it runs (driver / workers / governor / ray): {cpu}"
        )
    ratios = result.get("ratios", {})
    for key in PAIRS:
        plain = ratios.get(key.removesuffix("_paired"))
        suite.log(f"  {key}: {_fmt(ratios.get(key))} within one repetition, {_fmt(plain)} as a ratio of medians")
    for target in result.get("targets", []):
        verdict = "PASS" if target["pass"] else "MISS"
        suite.log(
            f"  {verdict}: {target['name']} = {target['value']} (target {target['comparison']} {target['limit']})"
        )
    return 1 if suite.failures else 0


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}×"


if __name__ == "__main__":
    raise SystemExit(main())
