#!/usr/bin/env python
"""chain-runner's benchmark suite: the project against what a user would write by hand.

    python benchmarks/run.py                 # every scenario, 3 repetitions (about 30 minutes)
    python benchmarks/run.py --quick         # CI smoke: tiny sizes, 1 repetition, every code path
    python benchmarks/run.py --only 3,4      # some scenarios (numbers as in the issue's targets)
    python benchmarks/run.py --only 9        # issue 16's table: the lean model close to the wire

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

The pieces: ``processes.py`` (pinning, one measured child, the mock server), ``scenarios.py``
(what each request scenario is and how it is judged), ``suite.py`` (the state of one run),
``throughput.py`` (scenarios 1-4), ``runner_runs.py`` (5 and 6), ``batch_tier.py`` (7: the batch tier
against online, checked by ``batch_checks.py``), ``scale_out.py`` (8: ``--workers`` on Ray, checked by
``scale_checks.py``), ``lean_transport.py`` (9: issue 16's table, the lean model beside raw clients, and the
CLI's start-up and exit), ``report.py`` (results.json, results.md, results.png); this file parses the
arguments and runs them in order.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import contenders as C  # noqa: E402  (light: no heavy imports at module level)
from batch_tier import run_batch_tier  # noqa: E402
from lean_transport import run_wire  # noqa: E402
from processes import MockServer, Pinning, child_env  # noqa: E402  (profile_contender.py uses them from here)
from report import machine_info, write_report  # noqa: E402
from runner_runs import run_cold, run_memory  # noqa: E402
from scale_out import run_scale_out  # noqa: E402
from scenarios import Throughput, throughput_scenarios  # noqa: E402
from suite import Suite  # noqa: E402
from throughput import run_throughput  # noqa: E402

__all__ = ["MockServer", "Pinning", "Suite", "child_env", "main", "run"]


def _wanted(suite: Suite) -> list[Throughput]:
    """The request scenarios ``--only`` asks for, with the contenders ``--contenders`` keeps."""
    scenarios = throughput_scenarios(suite.quick, suite.aiohttp, C.project_has_http_backend())
    wanted = [s for s in scenarios if s.number in suite.only]
    if suite.args.contenders:
        keep = set(suite.args.contenders.split(","))
        for s in wanted:
            s.contenders = [c for c in s.contenders if c in keep]
    return wanted


def run(suite: Suite) -> int:
    """Every wanted scenario in order, then the report; 1 when a run failed."""
    started = time.time()
    machine = machine_info(suite.pinning)
    suite.log(
        f"machine: {machine['cpu']} × {machine['cores']}; {suite.pinning.describe()}; load {machine['load_start']}"
    )
    if not suite.aiohttp:
        suite.log(
            "note: raw_aiohttp skipped: the OpenAI SDK's aiohttp transport is not installed (pip install 'openai[aiohttp]')"
        )
    if not suite.quick:
        suite.warm_up()
    wanted = _wanted(suite)
    if wanted:
        server = MockServer(suite.pinning, suite.env, suite.work / "server.log").start()
        suite.log(f"mock server: {server.url} (pid {server.proc.pid if server.proc else '?'})")
        try:
            for sc in wanted:
                run_throughput(suite, server, sc)
        finally:
            server.stop()
    if 5 in suite.only:
        run_memory(suite)
    if 6 in suite.only:
        run_cold(suite)
    if 7 in suite.only:
        run_batch_tier(suite)
    if 8 in suite.only:
        run_scale_out(suite)
    if 9 in suite.only:
        run_wire(suite)
    machine["load_end"] = os.getloadavg()
    report = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "quick": suite.quick,
        "repeat": suite.repeat,
        "duration_s": time.time() - started,
        "machine": machine,
        "descriptions": C.DESCRIPTIONS,
        "scenarios": suite.results,
        "failures": suite.failures,
    }
    write_report(report, suite.out, suite.fail)
    suite.log(f"wrote {suite.out / 'results.json'}, results.md, results.png in {report['duration_s']:.0f} s")
    if suite.failures:
        suite.log(f"{len(suite.failures)} run(s) failed:\n  " + "\n  ".join(suite.failures))
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke: tiny sizes, 1 repetition; never judges speed")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions per contender (default 3)")
    parser.add_argument("--out", default=str(HERE / "results"), help="results directory (default benchmarks/results)")
    parser.add_argument("--only", default="", help="scenario numbers to run, e.g. 1,3 (default: all nine)")
    parser.add_argument("--contenders", default="", help="comma-separated contenders to keep (default: all)")
    parser.add_argument(
        "--memory-topics", type=int, default=100_000, help="topics in the large memory run (default 100,000)"
    )
    parser.add_argument(
        "--batch-inputs", type=int, default=10_000, help="topics in the batch-tier scenario 7 (default 10,000)"
    )
    parser.add_argument(
        "--scale-memory-topics",
        type=int,
        default=100_000,
        help="topics in scenario 8's large driver-memory run, --workers 2 (default 100,000: about 2 minutes on 2 cores)",
    )
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.batch_inputs < 1:
        parser.error("--batch-inputs must be at least 1")
    if args.scale_memory_topics < 1:
        parser.error("--scale-memory-topics must be at least 1")
    return run(Suite(args))


if __name__ == "__main__":
    sys.exit(main())
