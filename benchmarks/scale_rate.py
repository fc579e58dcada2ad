"""Scenario 8's limits run: ``--rpm`` and ``--max-concurrency`` across two Ray workers, judged on the server's clock.

``run summarize --workers 2 --rpm R --max-concurrency C`` against the mock server: the busiest 60 s of the server's
own clock (``/_control/stats`` → ``log`` → ``t``, each request's arrival), the rate after the first window, and the
server's ``peak_in_flight``.  The window is the CLI's 60 s, so this run cannot be shorter than a minute.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import scale_checks as checks
from proc_watch import measured, run_problems
from processes import MockServer, ProcResult
from scenarios import check_target

if TYPE_CHECKING:
    from scale_out import ScaleOut
    from suite import Suite

MODEL = "openai:bench"


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


def limits_targets(limits: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets for limits across workers: no window over ``--rpm``, 90 % of it reached, the cap held."""
    return [
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
    ]


__all__ = ["limits_numbers", "limits_run", "limits_targets"]
