"""The suite's report: the machine it ran on, and results.json, results.md (tables), results.png (panels).

It only reads the report dict the scenarios filled; it measures nothing.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

from processes import ROOT, Pinning


def machine_info(pinning: Pinning) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory: str | None = None
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))  # type: ignore[union-attr]
        memory = f"{kb / 1024 / 1024:.0f} GiB"
    except (OSError, AttributeError):
        pass
    versions: dict[str, str | None] = {}
    from importlib import metadata

    for package in ("openai", "httpx", "aiohttp", "httpx-aiohttp", "langchain-core", "langchain-openai", "pydantic"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    commit: str | None
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "chains", "runner.py"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        commit = (head + (" + uncommitted changes in chains/" if dirty else "")) or None
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
    batch = report["scenarios"].get("batch")
    if batch:
        lines += batch_table(batch, quick)
    scale = report["scenarios"].get("scale")
    if scale:
        lines += scale_tables(scale, quick)
    wire = report["scenarios"].get("wire")
    if wire:
        lines += [f"## 9. {wire['title']}", "", wire["table"], ""]
    if report["failures"]:
        lines += ["## Failed runs", "", *(f"- {f}" for f in report["failures"]), ""]
    return "\n".join(lines)


def batch_table(sc: dict[str, Any], quick: bool) -> list[str]:
    """Scenario 7: one row per tier, ratios against online; the batch files the server received."""
    header = [
        "tier",
        "wall s",
        "wall ms/input",
        "client CPU ms/input",
        "CPU ×online",
        "peak RSS MB",
        "RSS ×online",
        "extra RSS KB/input in flight",
        "batch files",
        "requests per file",
        "server CPU s",
    ]
    lines = [f"## {sc['number']}. {sc['title']}", "", "| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    for name, md in sc["medians"].items():
        row = [
            f"`{name}`",
            _fmt(md.get("wall_s")),
            _fmt(md.get("wall_ms_per_input")),
            _fmt(md.get("cpu_ms_per_input")),
            _fmt(md.get("cpu_ms_per_input_x_online")),
            _fmt(md.get("maxrss_mb"), 0),
            _fmt(md.get("maxrss_mb_x_online")),
            _fmt(md.get("extra_rss_kb_per_input"), 1),
            _fmt(md.get("batch_files") or None, 0),
            _fmt(md.get("requests_per_file"), 0),
            _fmt(md.get("server_cpu_s")),
        ]
        lines.append("| " + " | ".join(row) + " |")
    settings = ", ".join(f"{k} {v:g}" for k, v in sc["server_batch_settings"].items())
    lines += [
        "",
        f"Online: `--max-concurrency {sc['concurrency']}`. Batch: `--batch-size {sc['batch_size']:,} "
        f"--batch-poll {sc['batch_poll_s']:g}`; the mock server's batch phases: {settings}.",
        "",
        f"Target: {sc['target']}",
        *(_verdict(t, quick) for t in sc["targets"]),
        "",
    ]
    return lines


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _header(cells: list[str]) -> list[str]:
    return [_row(cells), "|" + "|".join(["---"] + ["---:"] * (len(cells) - 1)) + "|"]


def scale_tables(sc: dict[str, Any], quick: bool) -> list[str]:
    """Scenario 8: the CPU-bound modes (items/s and where the CPU went), the limits run, the driver's memory."""
    header = [
        "mode",
        "runs",
        "process wall s",
        "Ray start-up s",
        "after last record s",
        "wall − start-up s",
        "items/s",
        "items/s with start-up",
        "items/s, first input to last record",
        "run proper s",
        "Ray shutdown s",
        "items/s, run proper",
        "per worker items/s",
        "CPU s: driver / workers / governor / rest of Ray",
        "cores busy",
        "driver peak RSS MB",
    ]
    lines = [f"## {sc['number']}. {sc['title']}", "", *_header(header)]
    for mode, md in sc["medians"].items():
        low, high = md.get("per_worker_min"), md.get("per_worker_max")
        workers = "–" if low is None else _fmt(low, 0) if low == high else f"{_fmt(low, 0)}–{_fmt(high, 0)}"
        cpu = " / ".join(_fmt(md.get(f"cpu_{name}_s"), 1) for name in ("driver", "workers", "governor", "ray"))
        lines.append(
            _row(
                [
                    f"{sc['labels'].get(mode, mode)}",
                    str(len(sc["samples"].get(mode, []))),
                    _fmt(md.get("process_wall_s")),
                    _fmt(md.get("startup_s")),
                    _fmt(md.get("tail_s")),
                    _fmt(md.get("run_s")),
                    _fmt(md.get("items_per_s"), 0),
                    _fmt(md.get("items_per_s_with_startup"), 0),
                    _fmt(md.get("items_per_s_records"), 0),
                    _fmt(md.get("run_proper_s")),
                    _fmt(md.get("shutdown_s")),
                    _fmt(md.get("items_per_s_run_proper"), 0),
                    workers,
                    cpu,
                    _fmt(md.get("cores_busy")),
                    _fmt(md.get("driver_maxrss_mb"), 0),
                ]
            )
        )
    r = sc["ratios"]
    lines += [
        "",
        f"`story --model fake` over {sc['n']:,} topics, `--max-concurrency {sc['concurrency']}`"
        + (" (the last row: the default, 8)" if "workers_2_default" in sc["medians"] else "")
        + f", medians; children on cores {','.join(map(str, sc['cores'])) or 'all'} (not pinned: Ray's processes "
        "share them). After last record: Ray's shutdown and the exit, part of the summary's `wall_s`. CPU s per "
        "process sampled from /proc every 0.25 s.",
        f"- 2 workers / 1 worker: items/s {_fmt(r['workers_2_x_workers_1_items_per_s'], 3)}×, with start-up "
        f"{_fmt(r['workers_2_x_workers_1_with_startup'], 3)}×, first input to last record (shutdown left out) "
        f"{_fmt(r.get('workers_2_x_workers_1_records'), 3)}×, the workers' own items/s summed "
        f"{_fmt(r['workers_2_x_workers_1_per_worker_sum'], 3)}×; at the default `--max-concurrency` "
        f"{_fmt(r['workers_2_default_x_workers_1_items_per_s'], 3)}×.",
        f"- 1 Ray worker / one process: wall − start-up {_fmt(r['workers_1_x_in_process_run_wall'], 3)}×, whole "
        f"process {_fmt(r['workers_1_x_in_process_process_wall'], 3)}×, first input to last record (shutdown left out) "
        f"{_fmt(r['workers_1_x_in_process_records'], 3)}×; one process's items/s / the worker's own "
        f"{_fmt(r['workers_1_x_in_process_per_worker'], 3)}×.",
        "- Judged both ways (the summary's `run_s`: first input handed out to last record; the whole process: "
        f"Ray's start-up and shutdown in), each the median of the ratios within one repetition (a ratio of the "
        f"medians in brackets): 2 workers / 1 worker, items/s {_fmt(r.get('workers_2_x_workers_1_run_proper_paired'), 3)}× "
        f"({_fmt(r.get('workers_2_x_workers_1_run_proper'), 3)}×) run proper, "
        f"{_fmt(r.get('workers_2_x_workers_1_process_paired'), 3)}× ({_fmt(r.get('workers_2_x_workers_1_process'), 3)}×) "
        f"whole process (target 1.7×); 1 Ray worker / one process, time "
        f"{_fmt(r.get('workers_1_x_in_process_run_proper_paired'), 3)}× "
        f"({_fmt(r.get('workers_1_x_in_process_run_proper'), 3)}×) run proper, "
        f"{_fmt(r.get('workers_1_x_in_process_process_wall_paired'), 3)}× whole process (target ≤ 1.05×).",
        "",
    ]
    lim = sc["limits"]
    fraction = lim.get("sustained_fraction")
    lines += [
        *_header(
            [
                "--rpm",
                "inputs",
                "workers",
                "--max-concurrency",
                "server latency ms",
                "busiest 60 s",
                "first window sent in s",
                "first held request at s",
                "after the first window, % of --rpm",
                "server peak in flight",
                "process wall s",
                "items per worker",
            ]
        ),
        _row(
            [
                str(lim["rpm"]),
                f"{lim['inputs']:,}",
                str(lim["workers"]),
                str(lim["max_concurrency"]),
                _fmt(lim["server_latency_ms"], 0),
                str(lim["most_in_window"]),
                _fmt(lim.get("first_window_sent_in_s"), 1),
                _fmt(lim.get("first_held_request_at_s"), 1),
                "–" if fraction is None else f"{fraction * 100:.1f}",
                str(lim["peak_in_flight"]),
                _fmt(lim["process_wall_s"], 1),
                " / ".join(str(n) for n in lim["per_worker_items"]),
            ]
        ),
        "",
        *_header(["topics (--workers 2)", "process wall s", "items/s", "driver peak RSS MB"]),
    ]
    for run in sc["memory"]["runs"].values():
        lines.append(
            _row(
                [
                    f"{run['topics']:,}",
                    _fmt(run.get("process_wall_s"), 1),
                    _fmt(run.get("items_per_s"), 0),
                    _fmt(run.get("driver_maxrss_mb"), 1),
                ]
            )
        )
    lines += ["", f"Target: {sc['target']}", *(_verdict(t, quick) for t in sc["targets"]), ""]
    return lines


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = report["scenarios"]
    fig, axes = plt.subplots(2, 4, figsize=(22, 9.5))
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
    plot_batch(axes.flat[6], scenarios.get("batch"))
    plot_scale(axes.flat[7], scenarios.get("scale"))
    fig.suptitle(f"chain-runner benchmarks {report['date']}" + (" (quick)" if report["quick"] else ""), fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_batch(ax: Any, sc: dict[str, Any] | None) -> None:
    """Scenario 7: client CPU per input by tier, each bar labelled with its peak RSS."""
    if not sc:
        ax.set_visible(False)
        return
    names = list(sc["medians"])
    values = [sc["medians"][n].get("cpu_ms_per_input", 0.0) for n in names]
    bars = ax.barh(names, values, color=["#1f77b4" if n == "online" else "#d62728" for n in names])
    for bar, name in zip(bars, names, strict=True):
        rss = sc["medians"][name].get("maxrss_mb")
        ax.text(
            bar.get_width(), bar.get_y() + bar.get_height() / 2, f" peak RSS {_fmt(rss, 0)} MB", va="center", fontsize=8
        )
    ax.set_xlim(0, max(values, default=0.0) * 1.4 or 1.0)  # room for the labels
    ax.invert_yaxis()
    ax.set_title(textwrap.fill(f"{sc['number']}. {sc['title']}", 60), fontsize=9)
    ax.set_xlabel("client CPU ms per input (lower is better)", fontsize=9)
    ax.tick_params(labelsize=8)


def plot_scale(ax: Any, sc: dict[str, Any] | None) -> None:
    """Scenario 8: items/s per mode, start-up excluded (bars), included (dots), and from the first input to the last
    record (crosses: Ray's shutdown left out too)."""
    if not sc:
        ax.set_visible(False)
        return
    names = list(sc["medians"])
    labels = [sc["labels"].get(n, n) for n in names]
    ax.barh(
        labels, [sc["medians"][n].get("items_per_s", 0.0) for n in names], color="#d62728", label="start-up excluded"
    )
    ax.plot(
        [sc["medians"][n].get("items_per_s_with_startup", 0.0) for n in names],
        labels,
        "ko",
        markersize=4,
        label="start-up included",
    )
    ax.plot(
        [sc["medians"][n].get("items_per_s_records", 0.0) for n in names],
        labels,
        "kx",
        markersize=5,
        label="first input to last record",
    )
    ax.invert_yaxis()
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(textwrap.fill(f"{sc['number']}. {sc['title']}", 60), fontsize=9)
    ax.set_xlabel("items/s (higher is better)", fontsize=9)
    ax.tick_params(labelsize=8)


def write_report(report: dict[str, Any], out: Path, fail: Callable[[str], None]) -> None:
    """results.json and results.md, the tables on stdout, then results.png (a failed plot is a failed run)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    table = render_tables(report)
    (out / "results.md").write_text(table)
    print(table)
    try:
        plot(report, out / "results.png")
    except Exception as exc:  # the plot is a convenience; the numbers are in results.json
        fail(f"plot: {type(exc).__name__}: {exc}")
