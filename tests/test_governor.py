"""The scale-out governor and the workers' leased limits, without Ray: several workers' ``LeasedLimits`` share one
``Governor`` directly, so the limits that must hold across workers are checked in milliseconds."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest

from chains.errors import BudgetExceededError
from chains.scale.governor import Ask, Governor, Report
from chains.scale.leased_limits import LeasedLimits


def _worker(governor: Governor, name: str, **kw: Any) -> LeasedLimits:
    async def call(method: str, *args: Any) -> Any:
        return await getattr(governor, method)(*args)

    return LeasedLimits(call, name, max_concurrency=governor.max_concurrency, **kw)


async def _requests(limits: LeasedLimits, n: int, sent: list[float], busy: list[int], seconds: float = 0.01) -> int:
    ok = 0

    async def one() -> None:
        nonlocal ok
        try:
            async with limits.request(10, 0.1 if limits.budget is not None else None) as booking:
                busy[0] += 1
                busy[1] = max(busy[1], busy[0])
                sent.append(time.monotonic())
                await asyncio.sleep(seconds * random.random())
                busy[0] -= 1
                limits.settle(booking, 10, 5, 0.1 if limits.budget is not None else None)
                ok += 1
        except BudgetExceededError:
            pass

    await asyncio.gather(*(one() for _ in range(n)))
    return ok


async def test_the_in_flight_cap_holds_across_workers() -> None:
    governor = Governor(4)
    workers = [_worker(governor, f"w{i}") for i in range(3)]
    busy = [0, 0]
    done = await asyncio.gather(*(_requests(w, 40, [], busy) for w in workers))
    assert sum(done) == 120 and busy[1] == 4  # never more than 4 at once, and the cap was reached
    assert governor.peak_held <= 4
    for w in workers:
        await w.aclose()
    assert governor.held == 0  # every slot came back


async def test_leases_are_per_slice_not_per_request() -> None:
    governor = Governor(8)
    worker = _worker(governor, "w")
    assert await _requests(worker, 400, [], [0, 0], seconds=0.001) == 400
    assert worker.leases <= 400 / 4  # a slot is reused for the next request without asking
    await worker.aclose()


async def test_the_request_rate_holds_across_workers_in_any_window() -> None:
    governor = Governor(50, rpm=20, window_s=0.5, credit_s=0.05)
    workers = [_worker(governor, f"w{i}", rate=True) for i in range(3)]
    sent: list[float] = []
    started = time.monotonic()
    await asyncio.gather(*(_requests(w, 20, sent, [0, 0], seconds=0.001) for w in workers))
    sent.sort()
    for i, t in enumerate(sent):  # no 0.5 s window of sends holds more than 20
        assert sum(1 for u in sent[i:] if u < t + 0.5) <= 20
    assert time.monotonic() - started >= 1.0  # 60 requests at 20 per 0.5 s take at least two more windows
    for w in workers:
        await w.aclose()


async def test_the_budget_holds_across_workers() -> None:
    governor = Governor(10, max_cost=1.0)
    workers = [_worker(governor, f"w{i}", max_cost=1.0) for i in range(3)]
    done = await asyncio.gather(*(_requests(w, 10, [], [0, 0]) for w in workers))
    assert sum(done) == 10  # $0.10 each: ten fit in $1, not one more
    for w in workers:
        await w.aclose()
    assert governor.spent == pytest.approx(1.0) and governor.reserved == pytest.approx(0.0)
    assert all(w.budget is not None and w.budget.exhausted for w in workers)


async def test_a_dead_workers_slots_come_back_after_its_lease_expires() -> None:
    now = [0.0]
    governor = Governor(2, ttl_s=5.0, clock=lambda: now[0])
    grant = await governor.lease("dead", Ask(slots=2))
    assert grant.slots == 2 and governor.held == 2
    assert (await governor.lease("alive", Ask(slots=1))).slots == 0  # the cap is held by the silent worker
    now[0] = 4.0
    assert (await governor.lease("alive", Ask(slots=1))).slots == 0  # still within its lease
    now[0] = 6.0  # past it
    assert (await governor.lease("alive", Ask(slots=1))).slots == 1
    assert governor.held == 1


async def test_a_429_halves_the_window_for_every_worker_and_successes_grow_it_back() -> None:
    governor = Governor(8)
    await governor.lease("a", Ask(slots=8))
    assert await governor.heartbeat("a", Report(throttled=1)) == 4  # give back what is over the halved window
    assert governor.window == 4.0
    await governor.heartbeat("a", Report(slots=4, succeeded=40))
    assert governor.window == pytest.approx(8.0)


async def test_a_worker_that_holds_every_slot_shares_them_when_another_waits() -> None:
    governor = Governor(4)
    busy, late = _worker(governor, "busy"), _worker(governor, "late")
    done = {"busy": 0, "late": 0}

    async def go(worker: LeasedLimits, name: str, n: int) -> None:
        async def one() -> None:
            async with worker.request(1, None) as booking:
                await asyncio.sleep(0.02)
                worker.settle(booking, 1, 1, None)
                done[name] += 1

        await asyncio.gather(*(one() for _ in range(n)))

    first = asyncio.create_task(go(busy, "busy", 400))  # 400 x 20 ms over 4 slots: about 2 s alone
    await asyncio.sleep(0.2)
    assert busy.held_slots == 4  # it took the whole window
    await asyncio.wait_for(go(late, "late", 20), timeout=5)  # waits its share, not for the busy worker's end
    assert not first.done()
    await first
    for w in (busy, late):
        await w.aclose()
    assert governor.held == 0
