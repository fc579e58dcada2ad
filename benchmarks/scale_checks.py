"""Scenario 8's pure parts: records checked, the server's clock read as windows, Ray's processes sorted into roles.

A scaled-out run that loses an input, answers one twice, or lets a 60-second window hold more than ``--rpm``
requests is not fast, it is wrong; so its numbers count only when these checks found nothing.  Everything here
is a function of a file, a list of timestamps or a process title; nothing runs a process.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from batch_checks import RecordCheck, topic_line

WINDOW_S = 60.0
"""``--rpm``'s window: the CLI's rate limit counts requests per minute."""


def rate_text(i: int) -> str:
    """Input ``i`` of the limits run; the full stop keeps ``... 1.`` from being a prefix of ``... 10.``."""
    return f"rate text {i}."


def story_is_right(index: int, output: Any) -> bool:
    """The offline model's story for topic ``index`` tells of that topic (not of a longer number that starts alike)."""
    return isinstance(output, str) and re.search(re.escape(topic_line(index)) + r"(?!\d)", output) is not None


def summary_is_right(index: int, output: Any) -> bool:
    """The echo server's answer quotes the prompt, whose text ends with the input's own text."""
    return isinstance(output, str) and output.startswith("echo: ") and f"Text:\n{rate_text(index)}" in output


def check_records(path: Path, n: int, is_right: Callable[[int, Any], bool]) -> RecordCheck:
    """Every index below ``n`` once, without an error, answered right (``is_right(index, output)``)."""
    check = RecordCheck()
    seen: set[int] = set()
    if not path.exists():
        check.problem(f"{path.name} was not written")
        return check
    with path.open() as handle:
        for line in handle:
            check.records += 1
            record = json.loads(line)
            index = record.get("index")
            if not isinstance(index, int) or not 0 <= index < n or index in seen:
                check.wrong += 1
                check.problem(f"record with index {index!r}: unknown or repeated")
                continue
            seen.add(index)
            if record.get("error"):
                check.errors += 1
                check.problem(f"input {index}: {json.dumps(record['error'])}")
            elif not is_right(index, record.get("output")):
                check.wrong += 1
                check.problem(f"input {index}: not its own answer: {str(record.get('output'))[:120]!r}")
            else:
                check.ok += 1
    return check


def most_in_window(times: Sequence[float], window_s: float = WINDOW_S) -> int:
    """The most timestamps in any half-open window ``[t, t + window_s)``: the busiest minute of the server's clock.

    Every window worth checking starts at a request, so two pointers over the sorted times find it in one pass."""
    ordered = sorted(times)
    most = end = 0
    for start, t in enumerate(ordered):
        end = max(end, start)
        while end < len(ordered) and ordered[end] < t + window_s:
            end += 1
        most = max(most, end - start)
    return most


def sustained_fraction(times: Sequence[float], rpm: float, window_s: float = WINDOW_S) -> float | None:
    """The rate after the first window's burst, as a fraction of ``rpm``; None when nothing was held back.

    A sliding window lets the first ``rpm`` requests go at once; what the limit costs is how soon the rest follow.
    So the first ``rpm`` requests are left out and the others are counted over the whole span of the run:
    ``(len - rpm) / span``, against ``rpm / window_s``.  1.0 would be a limiter that refills the instant a window
    frees capacity."""
    if len(times) <= rpm:
        return None
    span = max(times) - min(times)
    if span <= 0:
        return None
    return (len(times) - rpm) / span / (rpm / window_s)


def role(pid: int, root: int, title: str) -> str:
    """Which part of a scaled-out run a process is: the driver (the CLI), a chain worker, the governor actor, or
    the rest of Ray (GCS, raylet, agents, monitors)."""
    if pid == root:
        return "driver"
    if title.startswith("ray::ChainWorker"):
        return "workers"
    if title.startswith("ray::_GovernorActor"):
        return "governor"
    return "ray"


def short_title(cmdline: list[str]) -> str:
    """A process's name for the report: Ray's own title (``ray::ChainWorker``), else its program or script."""
    if not cmdline:
        return "?"
    if cmdline[0].startswith("ray::"):
        return cmdline[0].split(".")[0].split(" ")[0]
    args = [a for a in cmdline if not a.startswith("-")]
    program = Path(args[0]).name if args else Path(cmdline[0]).name
    if program.startswith("python") and len(args) > 1:
        return Path(args[1]).name
    return program


def better_title(known: str, seen: str) -> str:
    """A process's title over its life: a Ray worker starts as ``default_worker.py``, idles as ``ray::IDLE``, becomes
    ``ray::ChainWorker`` and has no command line at all as it exits; the actor's name, once seen, is kept."""
    if seen == "?" or role(0, -1, known) in ("workers", "governor"):
        return known
    return seen


def cpu_by_role(cpu: dict[int, tuple[str, float]], root: int) -> dict[str, float]:
    """CPU seconds per role (``role``) from ``pid → (title, cpu_s)``, plus their ``total``."""
    roles = {"driver": 0.0, "workers": 0.0, "governor": 0.0, "ray": 0.0}
    for pid, (title, seconds) in cpu.items():
        roles[role(pid, root, title)] += seconds
    roles["total"] = sum(roles.values())
    return roles
