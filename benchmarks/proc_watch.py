"""Scenario 8's measured CLI run (``measured``) and its watch: when its records file grew, and the CPU time of every
process under it.

A Ray run is a tree of processes (the CLI is the driver; through it Ray's GCS, raylet, agents, the governor actor
and the workers), so one child's own CPU (``wait4``) says little.  ``Watch`` reads /proc every ``TREE_EVERY_S``
for each process's CPU seconds and sorts them into roles (``scale_checks.role``), and keeps each reading, so that
the CPU of each role over the run proper (first record to last, not Ray's start-up or shutdown) can be told per
input: that is what says where a Ray worker's extra wall time goes.
"""

from __future__ import annotations

import bisect
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import scale_checks as checks
from batch_checks import RecordCheck, topic_line
from processes import PY, RUNNER, ProcResult, run_process

if TYPE_CHECKING:
    from suite import Suite

TREE_EVERY_S = 0.25
"""How often the run's process tree is read for CPU times (each process's last 0.25 s may be missed)."""


class Watch:
    """``run_process``'s ``on_sample``: when the records file first and last grew, and the CPU time of every process
    under the CLI, read over time (``timeline``)."""

    def __init__(self, output: Path) -> None:
        self.output = output
        self.size = 0
        self.first: float | None = None
        self.last: float | None = None
        self.root: int | None = None
        self.cpu: dict[int, tuple[str, float]] = {}
        self.timeline: list[tuple[float, int, dict[str, float]]] = []
        """(elapsed s, records file bytes, CPU seconds per role so far) at each reading of the tree."""
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
            if self.root is not None:
                self.timeline.append((elapsed, size, self.roles()))
        return None

    def _read_tree(self) -> None:
        stats = proc_stats()
        if self.root is None:
            self.root = find_child(stats, os.getpid(), str(self.output))
            if self.root is None:
                return
        for pid in descendants(stats, self.root):
            known = self.cpu.get(pid, ("?", 0.0))[0]
            self.cpu[pid] = (checks.better_title(known, checks.short_title(cmdline(pid))), stats[pid][1])

    def roles(self) -> dict[str, float]:
        return checks.cpu_by_role(self.cpu, self.root or -1)

    def cpu_per_input_ms(self, records: int) -> dict[str, float]:
        """Each role's CPU milliseconds per record over the run proper: between the readings where the records file
        had grown by 5 % and by 95 % of its final size (the steady part: no start-up, no tail), over the records
        written between them (the file's bytes in proportion: every record is about as long)."""
        return window_cpu_per_input_ms(self.timeline, self.size, records)


def window_cpu_per_input_ms(
    timeline: list[tuple[float, int, dict[str, float]]], final_size: int, records: int, low: float = 0.05
) -> dict[str, float]:
    """``Watch.cpu_per_input_ms`` on a timeline: {} when too few readings fall inside the window to say."""
    if final_size <= 0 or records <= 0:
        return {}
    sizes = [size for _, size, _ in timeline]
    start = bisect.bisect_left(sizes, final_size * low)
    end = bisect.bisect_left(sizes, final_size * (1 - low))
    if end >= len(timeline) or end - start < 2:
        return {}
    (_, size_a, roles_a), (_, size_b, roles_b) = timeline[start], timeline[end]
    inputs = records * (size_b - size_a) / final_size
    if inputs <= 0:
        return {}
    return {role: (roles_b[role] - roles_a.get(role, 0.0)) * 1000 / inputs for role in roles_b}


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


def proc_stats() -> dict[int, tuple[int, float]]:
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


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part for part in raw.decode(errors="replace").split("\0") if part]


def find_child(stats: dict[int, tuple[int, float]], parent: int, marker: str) -> int | None:
    """The child of ``parent`` whose command line names ``marker`` (the run's own output file)."""
    for pid, (ppid, _) in stats.items():
        if ppid == parent and any(marker in part for part in cmdline(pid)):
            return pid
    return None


def descendants(stats: dict[int, tuple[int, float]], root: int) -> list[int]:
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


__all__ = ["TREE_EVERY_S", "Watch", "measured", "run_problems", "topics_file", "window_cpu_per_input_ms"]
