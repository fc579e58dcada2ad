"""Scenario 7: ``--tier batch`` against ``--tier online``, the two-step ``story`` over N topics, each a whole process.

The batch tier exists for runs of 10⁴-10⁶ inputs, and it works differently from online: it keeps every
input in flight (up to ``--batch-size``) while their requests wait in a batch at the provider, then
answers them all at once.  Whether such a run fits on the user's machine is decided by the client CPU
and the peak memory per input, so those are measured here, beside an online run of the same inputs
against the same mock server in the same run (``runner_runs.py``'s way: ``os.wait4`` CPU, ``VmHWM``
peak RSS, start-up included).  The server's books say how many batch files the requests went into,
and, with ``batch_checks.py``, that every record is right and no request was submitted twice.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import batch_checks as checks
from batch_checks import STAGES, RecordCheck, check_records, input_files, topic_line
from processes import RUNNER, MockServer, ProcResult, run_process
from scenarios import check_target, medians_of
from suite import Suite

MODES = ("online", "batch")
MODEL = "openai:bench"
PHASES = {"validating_s": 0.05, "in_progress_s": 0.2, "finalizing_s": 0.05}
"""The mock server's batch phases: short, so the wall time is the client's and the server's work, not waiting."""


@dataclass(frozen=True)
class BatchTier:
    """Scenario 7's sizes: ``n`` topics; online at ``concurrency``; batch with ``--batch-size``, ``--batch-poll``."""

    n: int
    concurrency: int
    batch_size: int
    poll_s: float

    @property
    def in_flight(self) -> int:
        """Inputs the batch run holds at once: what its memory grows with."""
        return min(self.n, self.batch_size)

    @property
    def files_expected(self) -> int:
        """Full batches: one file per stage per ``--batch-size`` inputs."""
        return STAGES * math.ceil(self.n / self.batch_size)

    def mode_args(self, mode: str) -> list[str]:
        if mode == "batch":
            return ["--tier", "batch", "--batch-size", str(self.batch_size), "--batch-poll", str(self.poll_s)]
        return ["--tier", "online", "--max-concurrency", str(self.concurrency)]


def batch_tier_scenario(quick: bool, n: int) -> BatchTier:
    """Full: ``n`` (``--batch-inputs``, default 10,000) in one batch per stage.  Quick: 40 topics in batches of 20,
    so the smoke run also covers inputs refilled into a second round of batches."""
    if quick:
        return BatchTier(n=40, concurrency=10, batch_size=20, poll_s=0.1)
    return BatchTier(n=n, concurrency=20, batch_size=10_000, poll_s=0.2)


def run_batch_tier(suite: Suite) -> None:
    sc = batch_tier_scenario(suite.quick, suite.args.batch_inputs)
    suite.log(
        f"\n[7] Batch tier vs online: story over {sc.n:,} topics (--batch-size {sc.batch_size:,}, "
        f"online --max-concurrency {sc.concurrency})"
    )
    topics = suite.work / f"batch-topics-{sc.n}.txt"
    topics.write_text("".join(topic_line(i) + "\n" for i in range(sc.n)))
    samples: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    answers: dict[str, dict[int, str]] = {}
    server = MockServer(suite.pinning, suite.env, suite.work / "server-batch.log").start()
    try:
        for rep in range(suite.repeat):
            order = MODES[rep % 2 :] + MODES[: rep % 2]
            for mode in order:
                sample, digests = mode_run(suite, server, sc, topics, mode)
                samples[mode].append(sample)
                answers.setdefault(mode, digests)
                log_sample(suite, rep, mode, sample, sc.n)
    finally:
        server.stop()
    differ = checks.differing_answers(answers.get("online", {}), answers.get("batch", {}))
    if differ:
        suite.fail(f"[7] {len(differ)} inputs answered differently online and in batch, e.g. input {differ[0]}")
    medians = {mode: medians_of(s) for mode, s in samples.items() if s}
    add_ratios(medians, sc)
    suite.results["batch"] = {
        "number": 7,
        "title": f"Batch tier vs online: story (two steps) over {sc.n:,} topics, zero latency",
        "target": "batch client CPU per input ≤ 1.0 × online; batch extra peak RSS ≤ 64 KB per input in flight; "
        f"full batch files ({sc.files_expected} for {sc.n:,} inputs in batches of {sc.batch_size:,})",
        "n": sc.n,
        "concurrency": sc.concurrency,
        "batch_size": sc.batch_size,
        "batch_poll_s": sc.poll_s,
        "server_batch_settings": PHASES,
        "samples": samples,
        "medians": medians,
        "targets": judge(medians, sc),
    }


def mode_run(
    suite: Suite, server: MockServer, sc: BatchTier, topics: Path, mode: str
) -> tuple[dict[str, Any], dict[int, str]]:
    """One measured ``runner.py story`` at ``mode`` against a server reset to nothing; its sample and answers."""
    server.reset_all()
    server.configure(latency_ms=0)
    server.configure_batches(**PHASES)
    output = suite.work / f"batch-tier-{mode}.jsonl"
    metrics = suite.work / f"batch-tier-{mode}-metrics.json"
    scratch = (output, output.with_name(output.name + ".batches"), metrics)  # the journal beside --output
    for path in scratch:
        path.unlink(missing_ok=True)
    argv = [str(RUNNER), "story", "--topics", str(topics), "--base-url", server.url, "--model", MODEL]
    argv += [*sc.mode_args(mode), "--output", str(output), "--metrics-out", str(metrics), "-q"]
    cpu_before = server.cpu_s()
    proc = run_process(suite.python(*argv), env=suite.env, timeout=suite.timeout)
    server_cpu = server.cpu_s() - cpu_before
    books = server.books()
    check = check_records(output, sc.n, mode)
    summary = json.loads(metrics.read_text()) if metrics.exists() else {}
    for problem in run_problems(proc, check, books, summary, sc.n, mode):
        suite.fail(f"[7] {mode}: {problem}")
    for path in scratch:
        path.unlink(missing_ok=True)
    rows = input_files(books)
    sample: dict[str, Any] = {
        "wall_s": proc.wall_s,
        "cpu_s": proc.cpu_s,
        "maxrss_mb": proc.maxrss_mb,
        "wall_ms_per_input": 1000.0 * proc.wall_s / sc.n,
        "cpu_ms_per_input": 1000.0 * proc.cpu_s / sc.n,
        "server_cpu_s": server_cpu,
        "ok": check.ok,
        "records": check.records,
        "server_requests": books["requests"],
        "batch_files": len(rows),
        "requests_per_file": (sum(rows) / len(rows)) if rows else None,
        "file_rows": rows,
        "batch_wall_s": (summary.get("batches") or {}).get("batch_wall_s"),
    }
    return sample, check.digests


def run_problems(
    proc: ProcResult, check: RecordCheck, books: dict[str, Any], summary: dict[str, Any], n: int, mode: str
) -> list[str]:
    """Everything wrong with one run: its exit, its records, the server's books and, in batch, its own summary."""
    problems = checks.book_problems(books, n, mode)
    if mode == "batch":
        problems += checks.summary_problems(summary, books, n)
    if proc.returncode != 0:
        problems.append(
            f"exit {proc.returncode}{' (timed out)' if proc.timed_out else ''}: {proc.stderr.strip()[-500:]}"
        )
    if check.ok != n:
        problems.append(
            f"{check.ok}/{n} right records ({check.errors} errors, {check.wrong} wrong): {check.first_problem}"
        )
    return problems


def log_sample(suite: Suite, rep: int, mode: str, sample: dict[str, Any], n: int) -> None:
    files = f"  {sample['batch_files']} files of {sample['file_rows']}" if sample["batch_files"] else ""
    suite.log(
        f"  rep {rep + 1}/{suite.repeat} {mode:<7} wall {sample['wall_s']:7.2f} s  cpu {sample['cpu_s']:7.2f} s "
        f"({sample['cpu_ms_per_input']:.2f} ms/input)  peak RSS {sample['maxrss_mb']:6.1f} MB  "
        f"ok {sample['ok']}/{n}{files}"
    )


def add_ratios(medians: dict[str, dict[str, float]], sc: BatchTier) -> None:
    """Each mode against online in the same run, and the batch run's memory above online per input it held."""
    online = medians.get("online", {})
    for values in medians.values():
        for metric in ("wall_s", "cpu_ms_per_input", "maxrss_mb"):
            if online.get(metric) and values.get(metric) is not None:
                values[f"{metric}_x_online"] = values[metric] / online[metric]
    batch = medians.get("batch")
    if batch and online.get("maxrss_mb") and batch.get("maxrss_mb"):
        batch["extra_rss_kb_per_input"] = (batch["maxrss_mb"] - online["maxrss_mb"]) * 1024.0 / sc.in_flight


def judge(medians: dict[str, dict[str, float]], sc: BatchTier) -> list[dict[str, Any]]:
    batch = medians.get("batch", {})
    return [
        check_target("batch CPU/input / online CPU/input", batch.get("cpu_ms_per_input_x_online"), 1.0, unit="×"),
        check_target(
            f"batch peak RSS − online peak RSS, per input in flight ({sc.in_flight:,})",
            batch.get("extra_rss_kb_per_input"),
            64.0,
            unit="KB",
        ),
        check_target("batch files", batch.get("batch_files"), float(sc.files_expected), unit="files"),
    ]
