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
from chains.scale.server_limits import Heard


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


# ---------------------------------------------------------------------------------------------- the server's word


RATE = Ask(requests=8, tokens=80, min_tokens=10)


async def test_a_used_up_server_limit_stops_rate_credit_for_every_worker_until_its_reset() -> None:
    now = [100.0]
    governor = Governor(8, clock=lambda: now[0])
    held = await governor.lease("a", RATE, Report(heard=(Heard("requests", 0, 2.0),)))
    assert held.requests == 0 and held.retry_in == pytest.approx(2.0) and held.meter_s > 0
    assert (await governor.lease("b", RATE)).requests == 0  # the other worker too: the word is the run's
    now[0] = 101.9
    assert (await governor.lease("b", RATE)).retry_in == pytest.approx(0.1)
    now[0] = 102.0  # the reset: one request goes, and its answer brings the server's next word
    assert (await governor.lease("b", RATE)).requests == 1
    assert (await governor.lease("a", RATE)).requests == 0  # one probe at a time
    now[0] = 102.1
    word = Heard("requests", 5, 30.0, sent_age_s=0.1, carried=10)  # with the probe's answer: the server counted it
    assert (await governor.lease("b", Ask(), Report(heard=(word,), sent=((0.1, 10),)))).requests == 0
    first = await governor.lease("a", RATE)
    second = await governor.lease("b", RATE)
    assert (first.requests, second.requests) == (5, 0)  # 5 remain, all on a's credit (not reported spent)
    assert (await governor.lease("b", RATE)).retry_in == pytest.approx(30.0)
    assert governor.stats()["server_holds"] >= 4


async def test_the_newest_word_wins_and_an_older_one_is_ignored() -> None:
    now = [0.0]
    governor = Governor(8, clock=lambda: now[0], credit_s=0.1)
    await governor.lease("a", Ask(), Report(heard=(Heard("requests", 2, 10.0, age_s=0.0),)))
    await governor.lease("b", Ask(), Report(heard=(Heard("requests", 50, 10.0, age_s=0.5),)))  # said before
    assert (await governor.lease("a", RATE)).requests == 2
    now[0] = 1.0
    await governor.lease("b", Ask(), Report(heard=(Heard("requests", 6, 10.0, age_s=0.5),)))  # newer: at 0.5
    assert (await governor.lease("a", RATE)).requests == 6  # the credit granted at 0 is void by now


async def test_a_token_word_holds_requests_larger_than_what_remains() -> None:
    now = [0.0]
    governor = Governor(8, clock=lambda: now[0])
    await governor.lease("a", Ask(), Report(heard=(Heard("tokens", 25, 1.0),)))
    assert (await governor.lease("a", RATE)).tokens == 25  # what remains of the 80 asked for, not a token more
    held = await governor.lease("a", RATE, Report(sent=((0.0, 25),)))
    assert held.requests == 0 and held.retry_in == pytest.approx(1.0)
    now[0] = 1.0
    probe = await governor.lease("a", RATE)
    assert (probe.requests, probe.tokens) == (1, 10)


async def test_a_word_counts_what_other_workers_sent_after_its_request_went_not_only_after_it_was_read() -> None:
    now = [0.0]
    governor = Governor(8, clock=lambda: now[0])
    await governor.lease("a", Ask(), Report(heard=(Heard("requests", 3, 10.0),)))
    mine = await governor.lease("a", Ask(requests=1, tokens=10, min_tokens=10))
    assert mine.requests == 1  # a's request goes at 0
    now[0] = 0.01
    theirs = await governor.lease("b", Ask(requests=2, tokens=20, min_tokens=10))
    assert theirs.requests == 2
    now[0] = 0.03
    await governor.heartbeat("b", Report(sent=((0.01, 10), (0.01, 10))))  # b's two went at 0.02
    # the server answered a's request before b's two reached it ("1 remains"); a read it at 0.05 and reports at 0.1
    now[0] = 0.1
    word = Heard("requests", 1, 10.0, age_s=0.05, sent_age_s=0.1, carried=10)
    held = await governor.lease("a", RATE, Report(heard=(word,), sent=((0.1, 10),), clock=mine.at + 0.1))
    assert held.requests == 0  # 1 remained for the server, b's two (sent after a's request) took it and more


async def test_credit_counts_against_the_servers_word_until_its_worker_reports_it_spent_or_over() -> None:
    now = [0.0]
    governor = Governor(8, clock=lambda: now[0], credit_s=0.05)
    await governor.lease("a", Ask(), Report(heard=(Heard("requests", 5, 10.0),)))
    credit = await governor.lease("b", Ask(requests=1, tokens=10, min_tokens=10))
    assert credit.requests == 1
    now[0] = 1.0  # long past the credit's time: still, b may have spent it and not said so yet
    word = Heard("requests", 1, 10.0, sent_age_s=0.99)  # a's request went at 0.01, before b's
    assert (await governor.lease("a", RATE, Report(heard=(word,)))).requests == 0
    await governor.heartbeat("b", Report(sent=((0.99, 10),), over=credit.seq))  # spent at 0.01: after a's went
    assert (await governor.lease("a", RATE)).requests == 0
    await governor.lease("a", Ask(), Report(heard=(Heard("requests", 1, 10.0, sent_age_s=0.0),)))
    held = await governor.lease("a", RATE)
    assert held.requests == 1
    assert (await governor.lease("b", Ask(requests=1, tokens=10, min_tokens=10))).requests == 0  # a holds it
    await governor.heartbeat("a", Report(over=held.seq))  # a's credit is over, unspent
    assert (await governor.lease("b", Ask(requests=1, tokens=10, min_tokens=10))).requests == 1


async def test_a_word_said_before_the_probe_arrived_does_not_let_a_second_probe_through() -> None:
    now = [0.0]
    governor = Governor(8, clock=lambda: now[0])
    await governor.lease("a", Ask(), Report(heard=(Heard("requests", 0, 1.0),)))
    now[0] = 1.0
    assert (await governor.lease("b", RATE)).requests == 1  # the probe
    now[0] = 1.05  # a's older request is answered: "none remain, the oldest leaves now" (the slot the probe took)
    word = Heard("requests", 0, 0.0, age_s=0.01, sent_age_s=1.2)
    assert (await governor.lease("a", RATE, Report(heard=(word,)))).requests == 0
    now[0] = 1.9
    assert (await governor.lease("a", RATE)).requests == 0  # one probe at a time, till its answer or PROBE_S
    now[0] = 2.0
    assert (await governor.lease("a", RATE)).requests == 1  # the probe's answer never came: another


async def test_response_headers_hold_every_worker_to_what_the_server_says_remains() -> None:
    governor = Governor(8, credit_s=0.05)
    workers = [_worker(governor, f"w{i}") for i in range(2)]  # no --rpm: the server's headers are the only limit
    limit = 5
    sent: list[float] = []

    def headers() -> dict[str, str]:
        return {"x-ratelimit-remaining-requests": str(max(0, limit - len(sent))), "x-ratelimit-reset-requests": "0.2s"}

    async def one(limits: LeasedLimits) -> None:
        async with limits.request(10, None) as booking:
            sent.append(time.monotonic())
            await asyncio.sleep(0.005)
            limits.settle(booking, 10, 5, None)
            assert limits.rate is not None
            limits.rate.observe_headers(headers(), 10)  # what accounting.booked does with each answer

    for w in workers:  # each worker's first answer carried the headers
        assert w.rate is not None
        w.rate.observe_headers(headers(), 10)
    await asyncio.wait_for(asyncio.gather(*(one(w) for w in workers for _ in range(5))), timeout=10)
    sent.sort()
    assert len(sent) == 10
    gaps = [b - a for a, b in zip(sent[limit - 1 :], sent[limit:], strict=False)]
    assert min(gaps) >= 0.15, gaps  # once none remain, one request per reset (its answer says none remain again)
    assert sent[limit - 1] - sent[0] < 0.15  # what remained was used at once
    for w in workers:
        await w.aclose()
