"""Limits across the Ray engine's workers, judged at the fault server: ``--rpm`` and the in-flight cap, the server's
x-ratelimit headers, and a 429's Retry-After that holds only its own request.

Ray is started once for the module (the ``ray_cluster`` fixture); model traffic goes to the fault server on
127.0.0.1 through ``ChatOpenAI``.  The windows are judged on the server's clock, when it reads each request: a test
running beside these on the same cores delays some reads past a window's edge (32 in a window of 30 was seen with
the suite on two processes), so they run alone (``alone``, Makefile).
"""

from __future__ import annotations

from typing import Any

import pytest
from fault_server import FaultServer
from ray_support import collect

from chains.scale.ray_engine import RayRun
from chains.settings import RunSettings

pytestmark = pytest.mark.alone


async def test_rpm_and_the_in_flight_cap_hold_across_workers_at_the_server(
    ray_cluster: Any, fault_server: FaultServer
) -> None:
    fault_server.configure(latency_ms=20)
    rpm, window = 30, 3.0  # 30 requests per 3-second window, shared by both workers
    remote = RunSettings(
        model="openai:m", base_url=fault_server.base_url, max_concurrency=3, max_retries=0, timeout=20, rpm=rpm
    )
    inputs = [{"text": f"rate {i}"} for i in range(90)]
    run = RayRun("summarize", inputs, settings=remote, workers=2, rate_window_s=window)
    got = await collect(run)
    assert len(got) == 90 and all(r.ok for r in got)
    log = fault_server.stats()["log"]
    sent = sorted(entry["t"] for entry in log)
    for i, t in enumerate(sent):  # no window of the server's own clock holds more than rpm requests
        assert sum(1 for u in sent[i:] if u < t + window) <= rpm
    assert fault_server.stats(include_log=False)["peak_in_flight"] <= 3
    # the limit is used, not just respected: each request's place in the window is taken again soon after it frees
    # (the request rpm later goes about a window after it; timed from the first request, the last window's burst at
    # the in-flight cap would count against the rate)
    gaps = sorted(sent[i + rpm] - sent[i] for i in range(len(sent) - rpm))
    reached = window / gaps[len(gaps) // 2]
    assert reached >= 0.9, (reached, gaps[:3], gaps[-3:])
    assert {w["worker"] for w in run.summary.per_worker if w["items"]} == {"w0", "w1"}


async def test_the_servers_ratelimit_headers_hold_every_worker_without_a_429(
    ray_cluster: Any, fault_server: FaultServer
) -> None:
    window, limit = 2.0, 12  # the server takes 12 requests per 2 s and says so in x-ratelimit-* headers
    fault_server.configure(rpm_limit=limit, time_scale=window / 60, send_ratelimit_headers=True, latency_ms=20)
    remote = RunSettings(  # no --rpm: only the server's headers can hold the run to its limit
        model="openai:m", base_url=fault_server.base_url, max_concurrency=4, max_retries=0, timeout=20
    )
    inputs = [{"text": f"headers {i}"} for i in range(30)]
    run = RayRun("summarize", inputs, settings=remote, workers=2)
    got = await collect(run)
    assert len(got) == 30 and all(r.ok for r in got), [r.error for r in got if not r.ok]  # a 429 would fail one
    stats = fault_server.stats()
    assert stats["requests"] == 30 and stats["rate_limited"] == 0
    sent = sorted(entry["t"] for entry in stats["log"])
    assert sent[-1] - sent[0] >= 2 * window - 0.5  # 30 at 12 per window: the limit was binding for two windows
    assert run.summary.governor is not None and run.summary.governor["server_holds"] > 0  # the governor held them
    assert {w["worker"] for w in run.summary.per_worker if w["items"]} == {"w0", "w1"}


async def test_a_retry_after_holds_only_its_own_request_not_the_other_workers(
    ray_cluster: Any, fault_server: FaultServer
) -> None:
    hold = 4.0
    fault_server.configure(latency_ms=30)
    fault_server.add_fault("429", match="held back", times=1, retry_after=hold)
    remote = RunSettings(model="openai:m", base_url=fault_server.base_url, max_concurrency=4, max_retries=2, timeout=20)
    inputs = [{"text": "held back"}] + [{"text": f"goes on {i}"} for i in range(40)]
    run = RayRun("summarize", inputs, settings=remote, workers=2)
    got = await collect(run)
    assert len(got) == 41 and all(r.ok for r in got), [r.error for r in got if not r.ok]
    log = fault_server.stats()["log"]
    held = sorted(entry["t"] for entry in log if "held back" in entry["key"])
    assert len(held) == 2 and held[1] - held[0] >= hold  # the request itself waited what the server asked
    others = [entry["t"] for entry in log if "held back" not in entry["key"]]
    # meanwhile every worker went on (halved window): all 40 others were sent while the held one waited (40 requests
    # of 30 ms take well under a second even on loaded cores; the hold is 4 s)
    assert sum(held[0] < t < held[1] for t in others) == len(others) - sum(t < held[0] for t in others)
    assert len(others) == 40 and sum(t > held[1] for t in others) == 0
    assert next(r for r in got if r.input == inputs[0]).metrics.retries == 1
