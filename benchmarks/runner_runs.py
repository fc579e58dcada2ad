"""Scenarios 5 and 6: ``runner.py`` measured as a whole process (memory over many topics, cold start).

The memory run samples the child's RSS and the time to its first record; the cold start runs
each command a few times and takes medians, with ``-X importtime`` to say where the time goes.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any

from processes import RUNNER, run_process
from scenarios import check_target, medians_of
from suite import Suite


def run_memory(suite: Suite) -> None:
    small, large = (30, 300) if suite.quick else (1000, suite.args.memory_topics)
    suite.log(f"\n[5] Memory: story on the offline model, zero delay: {large:,} topics vs {small:,}")
    runs: dict[str, Any] = {}
    for size in (small, large):
        runs[str(size)] = memory_run(suite, size)
    a, b = runs[str(small)], runs[str(large)]
    delta = (b["maxrss_mb"] - a["maxrss_mb"]) if a.get("maxrss_mb") and b.get("maxrss_mb") else None
    targets = [
        check_target(f"peak RSS({large:,}) - peak RSS({small:,})", delta, 50.0, unit="MB"),
        check_target(f"first record written ({large:,} topics)", b.get("first_record_s"), 2.0, unit="s"),
    ]
    suite.results["memory"] = {
        "number": 5,
        "title": f"Memory: {large:,} topics on the offline model (zero delay) vs {small:,}",
        "target": "peak RSS within 50 MB of the small run; first record written within 2 s of start",
        "runs": runs,
        "rss_delta_mb": delta,
        "targets": targets,
    }


def memory_run(suite: Suite, size: int) -> dict[str, Any]:
    topics = suite.work / f"topics-{size}.txt"
    animals = ("fox", "snail", "comet", "teacup", "lighthouse", "owl", "whale", "kite")
    topics.write_text("".join(f"a {animals[i % 8]} who collects thing number {i}\n" for i in range(size)))
    output = suite.work / f"story-{size}.jsonl"
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

    argv = suite.python(
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
    proc = run_process(argv, env=suite.env, timeout=suite.timeout * 2, on_sample=on_sample, sample_interval=0.005)
    lines = errors = 0
    if output.exists():
        with output.open() as handle:
            for line in handle:
                lines += 1
                if '"error": null' not in line:
                    errors += 1
        output.unlink()
    if proc.returncode != 0 or lines != size or errors:
        suite.fail(
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
    suite.log(
        f"  {size:>7,} topics: wall {proc.wall_s:7.1f} s  cpu {proc.cpu_s:7.1f} s  "
        f"peak RSS {proc.maxrss_mb:6.1f} MB  first record {first}"
    )
    return run


# ----------------------------------------------------------------------------- cold start


def run_cold(suite: Suite) -> None:
    reps = 1 if suite.quick else 5
    suite.log(f"\n[6] Cold start: median of {reps}")
    topics = suite.work / "topics-5.txt"
    topics.write_text("a brave snail\na shy comet\na lighthouse\na teacup dragon\na kite\n")
    output = suite.work / "story-5.jsonl"
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
    for argv, _ in commands.values() if not suite.quick else ():  # warm-up, not counted
        run_process(suite.python(*argv), env=suite.env, timeout=120)
    for _rep in range(reps):
        for name, (argv, _) in commands.items():
            proc = run_process(suite.python(*argv), env=suite.env, timeout=120)
            if proc.returncode != 0:
                suite.fail(f"[6] {name} exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
            samples[name].append({"wall_s": proc.wall_s, "cpu_s": proc.cpu_s, "maxrss_mb": proc.maxrss_mb})
    medians = {name: medians_of(s) for name, s in samples.items()}
    for name, m in medians.items():
        suite.log(f"  {name:<38} {m['wall_s']:6.2f} s  cpu {m['cpu_s']:5.2f} s  RSS {m['maxrss_mb']:6.1f} MB")
    targets = [
        check_target(name, medians[name]["wall_s"], limit, unit="s")
        for name, (_, limit) in commands.items()
        if limit is not None
    ]
    suite.results["cold"] = {
        "number": 6,
        "title": f"Cold start (median of {reps}; bytecode cached)",
        "target": "--help, list, show ≤ 0.5 s each; a 5-topic story on the offline model ≤ 1.5 s",
        "samples": samples,
        "medians": medians,
        "targets": targets,
        "imports": import_diagnostics(suite),
    }


def import_diagnostics(suite: Suite) -> dict[str, Any]:
    """Which heavy packages ``list`` imports, and the biggest imports (``-X importtime``)."""
    proc = run_process(suite.python("-X", "importtime", str(RUNNER), "list"), env=suite.env, timeout=120)
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
