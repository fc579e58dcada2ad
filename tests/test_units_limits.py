"""Fast unit tests of what decides time: the concurrency window, the rate limiter and a request's booking.

The end-to-end tests (test_limits_and_resume.py) show the limits hold against a real server;
these pin down each rule in milliseconds.  The rate limiter runs on ``ManualTime``, a fake
clock whose ``sleep`` only returns when the test moves time on, so a 60-second window costs
nothing and every wait is exact.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chains.engine.limits import ConcurrencyLimit, Limits
from chains.engine.pricing import Budget
from chains.engine.ratelimit import RateLimiter, Reservation
from chains.errors import BudgetExceededError, InputError

START = 1000.0


class ManualTime:
    """A clock and a ``sleep`` for ``RateLimiter``: time moves only in ``advance``."""

    def __init__(self) -> None:
        self.now = START
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._count = 0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._count += 1
        self._sleepers.append((self.now + seconds, self._count, future))
        await future

    async def advance(self, seconds: float) -> None:
        """Move time on by ``seconds``, waking each sleeper at its own deadline, in order."""
        target = self.now + seconds
        while True:
            await settle_tasks()
            due = sorted(s for s in self._sleepers if s[0] <= target and not s[2].done())
            if not due:
                break
            self._sleepers.remove(due[0])
            self.now = max(self.now, due[0][0])
            due[0][2].set_result(None)
        self.now = target


async def settle_tasks() -> None:
    """Let every ready task run until it waits again."""
    for _ in range(5):
        await asyncio.sleep(0)


def limiter(clock: ManualTime, **kwargs: Any) -> RateLimiter:
    return RateLimiter(clock=clock, sleep=clock.sleep, **kwargs)


def start(awaitable: Awaitable[Any]) -> asyncio.Task[Any]:
    async def run() -> Any:
        return await awaitable

    return asyncio.create_task(run())


# -- ConcurrencyLimit: AIMD window -------------------------------------------------------------


@pytest.mark.parametrize("limit", [0, -1])
def test_a_concurrency_limit_below_one_is_refused(limit: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ConcurrencyLimit(limit)


@pytest.mark.parametrize(
    ("limit", "throttles", "current"),
    [(8, 1, 4.0), (8, 2, 2.0), (8, 3, 1.0), (8, 10, 1.0), (5, 1, 2.5), (1, 1, 1.0), (1, 5, 1.0)],
)
def test_a_throttle_halves_the_window_but_never_below_one(limit: int, throttles: int, current: float) -> None:
    window = ConcurrencyLimit(limit)
    for _ in range(throttles):
        window.throttled()
    assert window.current == current
    assert window.limit == limit


@pytest.mark.parametrize("slots", [1, 2, 4, 16])
def test_the_window_grows_back_by_one_slot_per_window_of_successes(slots: int) -> None:
    window = ConcurrencyLimit(2 * slots)
    window.throttled()
    successes = 0
    while int(window.current) < slots + 1:
        window.succeeded()
        successes += 1
    assert slots <= successes <= slots + 1


def test_successes_never_grow_the_window_past_its_limit() -> None:
    window = ConcurrencyLimit(3)
    window.throttled()
    for _ in range(100):
        window.succeeded()
    assert window.current == 3.0


async def test_a_halved_window_admits_only_its_new_size() -> None:
    window = ConcurrencyLimit(8)
    window.throttled()
    tasks = [start(window.acquire()) for _ in range(5)]
    await settle_tasks()
    assert window.in_flight == 4 and sum(t.done() for t in tasks) == 4
    window.release()
    await settle_tasks()
    assert all(t.done() for t in tasks) and window.in_flight == 4


async def test_growing_back_wakes_a_waiter() -> None:
    window = ConcurrencyLimit(2)
    window.throttled()
    await window.acquire()
    waiter = start(window.acquire())
    await settle_tasks()
    assert not waiter.done()
    window.succeeded()  # 1 → 2 slots
    await settle_tasks()
    assert waiter.done() and window.in_flight == 2


async def test_a_released_slot_is_handed_to_the_first_waiter_not_to_a_newcomer() -> None:
    window = ConcurrencyLimit(1)
    await window.acquire()
    first = start(window.acquire())
    await settle_tasks()
    window.release()
    assert window.in_flight == 1  # already the waiter's, before it even runs
    newcomer = start(window.acquire())
    await settle_tasks()
    assert first.done() and not newcomer.done()
    window.release()
    await settle_tasks()
    assert newcomer.done() and window.in_flight == 1


async def test_a_waiter_cancelled_before_its_turn_leaves_the_queue() -> None:
    window = ConcurrencyLimit(1)
    await window.acquire()
    waiter = start(window.acquire())
    await settle_tasks()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert Limits(concurrency=window).waiting == 0
    window.release()
    assert window.in_flight == 0


async def test_a_waiter_cancelled_after_it_was_handed_a_slot_passes_it_on() -> None:
    window = ConcurrencyLimit(1)
    await window.acquire()
    handed, next_in_line = start(window.acquire()), start(window.acquire())
    await settle_tasks()
    window.release()  # the slot goes to ``handed`` ...
    handed.cancel()  # ... which is cancelled before it could use it
    with pytest.raises(asyncio.CancelledError):
        await handed
    await settle_tasks()
    assert next_in_line.done() and window.in_flight == 1
    window.release()
    assert window.in_flight == 0


async def test_peak_is_the_most_requests_ever_in_flight() -> None:
    window = ConcurrencyLimit(5)
    for _ in range(3):
        await window.acquire()
    window.release()
    window.release()
    await window.acquire()
    assert (window.in_flight, window.peak) == (2, 3)


async def test_a_slot_is_released_when_its_block_raises() -> None:
    window = ConcurrencyLimit(1)
    with pytest.raises(RuntimeError):
        async with window.slot():
            assert window.in_flight == 1
            raise RuntimeError("boom")
    assert window.in_flight == 0


OPS = st.lists(
    st.sampled_from(["acquire", "release", "release-then-cancel", "cancel", "throttle", "succeed"]), max_size=40
)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 4), OPS)
def test_no_slot_is_ever_lost_whatever_waiters_do(limit: int, ops: list[str]) -> None:
    asyncio.run(_shuffle_slots(limit, ops))


async def _shuffle_slots(limit: int, ops: list[str]) -> None:
    """Random acquires, releases, cancellations (also of a waiter just handed a slot) and window changes:
    ``in_flight`` always counts exactly the holders, and no slot stays idle while someone waits."""
    window = ConcurrencyLimit(limit)
    tasks: list[asyncio.Task[Any]] = []
    released: set[int] = set()
    for op in ops:
        holders = [i for i, t in enumerate(tasks) if t.done() and not t.cancelled() and i not in released]
        waiting = [t for t in tasks if not t.done()]
        if op == "acquire":
            tasks.append(start(window.acquire()))
        elif op.startswith("release") and holders:
            window.release()
            released.add(holders[0])
            if op == "release-then-cancel" and waiting:  # the slot was just handed over: cancel its new owner
                waiting[0].cancel()
        elif op == "cancel" and waiting:
            waiting[-1].cancel()
        elif op == "throttle":
            window.throttled()
        elif op == "succeed":
            window.succeeded()
        await settle_tasks()
        holding = sum(1 for i, t in enumerate(tasks) if t.done() and not t.cancelled() and i not in released)
        assert window.in_flight == holding
        if any(not t.done() for t in tasks):
            assert window.in_flight >= window._capacity()
    for task in tasks:
        task.cancel()
    await settle_tasks()
    for i, task in enumerate(tasks):
        if not task.cancelled() and i not in released:
            window.release()
    assert window.in_flight == 0 and Limits(concurrency=window).waiting == 0


# -- RateLimiter: sliding windows on an injected clock -----------------------------------------


async def _booked(rate: RateLimiter, tokens: int = 1, *, answered_after: float = 0.0, clock: ManualTime) -> None:
    reservation = await rate.reserve(tokens)
    await clock.advance(answered_after)
    rate.settle(reservation)


async def test_rpm_admits_that_many_requests_then_waits_for_the_window() -> None:
    clock = ManualTime()
    rate = limiter(clock, rpm=2)
    for _ in range(2):
        await _booked(rate, clock=clock)
    third = start(rate.reserve(1))
    await clock.advance(59.9)
    assert not third.done() and rate.waiting == 1
    await clock.advance(0.2)
    assert (await third).t == pytest.approx(START + 60.001)
    assert rate.waiting == 0 and rate.waited_s == pytest.approx(60.001)


async def test_a_requests_window_starts_when_its_answer_came_back() -> None:
    clock = ManualTime()
    rate = limiter(clock, rpm=1)
    await _booked(rate, answered_after=10.0, clock=clock)
    second = start(rate.reserve(1))
    await clock.advance(55.0)  # 65 s after it was sent, 55 s after it came back
    assert not second.done()
    await clock.advance(5.1)
    assert (await second).t == pytest.approx(START + 70.001)


async def test_a_request_still_in_flight_holds_its_place_in_the_window() -> None:
    clock = ManualTime()
    rate = limiter(clock, rpm=1)
    in_flight = await rate.reserve(1)
    second = start(rate.reserve(1))
    await clock.advance(120.0)
    assert not second.done()
    rate.settle(in_flight)
    await clock.advance(60.1)
    assert (await second).t == pytest.approx(START + 180.0, abs=0.06)


async def test_tpm_waits_until_enough_tokens_leave_the_window() -> None:
    clock = ManualTime()
    rate = limiter(clock, tpm=100)
    await _booked(rate, 60, answered_after=10.0, clock=clock)  # its window ends at START + 70
    await _booked(rate, 30, clock=clock)
    third = start(rate.reserve(20))  # 60 + 30 + 20 > 100: the first must leave
    await clock.advance(59.9)
    assert not third.done()
    await clock.advance(0.2)
    assert (await third).t == pytest.approx(START + 70.001)


@pytest.mark.parametrize(
    ("real_tokens", "waits"),
    [(10, False), (20, False), (None, True), (21, True), (150, True)],
)
async def test_settling_replaces_the_estimate_with_the_real_usage(real_tokens: int | None, waits: bool) -> None:
    clock = ManualTime()
    rate = limiter(clock, tpm=100)
    estimate = await rate.reserve(90)
    rate.settle(estimate, real_tokens)  # None: a failed attempt, the estimate stays counted
    assert estimate.tokens == (90 if real_tokens is None else real_tokens)
    following = start(rate.reserve(80))
    await settle_tasks()
    assert following.done() is not waits


async def test_settling_twice_changes_nothing() -> None:
    clock = ManualTime()
    rate = limiter(clock, tpm=100)
    reservation = await rate.reserve(50)
    rate.settle(reservation, 10)
    await clock.advance(5.0)
    rate.settle(reservation, 90)
    assert (reservation.tokens, reservation.t) == (10, START)


@pytest.mark.parametrize("tokens", [101, 10_000])
async def test_a_request_larger_than_tpm_is_an_input_error(tokens: int) -> None:
    rate = limiter(ManualTime(), tpm=100)
    with pytest.raises(InputError, match=r"--tpm is 100; raise --tpm or lower --max-tokens"):
        await rate.reserve(tokens)
    assert rate.waiting == 0


async def test_a_request_of_exactly_tpm_fits() -> None:
    assert isinstance(await limiter(ManualTime(), tpm=100).reserve(100), Reservation)


@pytest.mark.parametrize(
    ("headers", "next_tokens", "pause"),
    [
        ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2s"}, 0, 2.0),
        ({"X-RateLimit-Remaining-Requests": "0", "X-RateLimit-Reset-Requests": "1m"}, 0, 60.0),
        ({"x-ratelimit-remaining-requests": "0"}, 0, 1.0),
        ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "soon"}, 0, 1.0),
        ({"x-ratelimit-remaining-tokens": "10", "x-ratelimit-reset-tokens": "500ms"}, 50, 0.5),
        ({"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "3s"}, 0, 3.0),
        (
            {
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": "2s",
                "x-ratelimit-remaining-tokens": "0",
                "x-ratelimit-reset-tokens": "7s",
            },
            0,
            7.0,
        ),
        ({"x-ratelimit-remaining-requests": "5", "x-ratelimit-reset-requests": "2s"}, 0, 0.0),
        ({"x-ratelimit-remaining-tokens": "100", "x-ratelimit-reset-tokens": "2s"}, 50, 0.0),
        ({"x-ratelimit-remaining-requests": "lots"}, 0, 0.0),
        ({}, 0, 0.0),
    ],
)
def test_remaining_headers_set_blocked_until(headers: dict[str, str], next_tokens: int, pause: float) -> None:
    clock = ManualTime()
    rate = limiter(clock)
    rate.observe_headers(headers, next_tokens)
    assert rate.blocked_until == (START + pause if pause else 0.0)
    assert rate.active is bool(pause)


async def test_blocked_until_holds_back_the_next_request() -> None:
    clock = ManualTime()
    rate = limiter(clock)
    rate.observe_headers({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2s"})
    waiting = start(rate.reserve(1))
    await clock.advance(1.9)
    assert not waiting.done() and rate.waiting == 1
    await clock.advance(0.2)
    assert (await waiting).t == pytest.approx(START + 2.001)


def test_a_shorter_pause_never_shortens_a_longer_one() -> None:
    clock = ManualTime()
    rate = limiter(clock)
    rate.observe_headers({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "30s"})
    rate.observe_headers({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2s"})
    assert rate.blocked_until == START + 30.0


async def test_waiting_counts_the_requests_held_by_the_rate_limiter() -> None:
    clock = ManualTime()
    rate = limiter(clock, rpm=1)
    limits = Limits(concurrency=ConcurrencyLimit(4), rate=rate)
    await _booked(rate, clock=clock)
    held = [start(rate.reserve(1)) for _ in range(2)]
    await settle_tasks()
    assert rate.waiting == 2 and limits.waiting == 2
    await clock.advance(60.1)
    assert sum(t.done() for t in held) == 1 and limits.waiting == 1
    rate.settle(next(t.result() for t in held if t.done()))
    await clock.advance(60.1)
    assert all(t.done() for t in held) and limits.waiting == 0


# -- Limits.request: one request's booking -----------------------------------------------------


def _limits(clock: ManualTime, *, max_cost: float | None = None, **rate: Any) -> Limits:
    return Limits(
        concurrency=ConcurrencyLimit(2),
        rate=limiter(clock, **rate),
        budget=Budget(max_cost) if max_cost is not None else None,
    )


async def test_a_request_reserves_its_budget_and_settles_it_at_the_real_cost() -> None:
    limits = _limits(ManualTime(), max_cost=1.0)
    budget = limits.budget
    assert budget is not None
    async with limits.request(100, 0.25) as booking:
        assert (booking.cost, budget.reserved, budget.spent) == (0.25, 0.25, 0.0)
        assert limits.concurrency.in_flight == 1
        limits.settle(booking, 120, 20, 0.125)
        assert (budget.reserved, budget.spent) == (0.0, 0.125)
    assert (budget.reserved, budget.spent) == (0.0, 0.125)
    assert limits.concurrency.in_flight == 0


async def test_a_failed_attempt_releases_its_budget_and_leaves_its_tokens_in_the_window() -> None:
    clock = ManualTime()
    limits = _limits(clock, max_cost=1.0, tpm=1000)
    budget, rate = limits.budget, limits.rate
    assert budget is not None and rate is not None
    with pytest.raises(ConnectionError):
        async with limits.request(300, 0.5) as booking:
            raise ConnectionError("dropped")
    assert (budget.reserved, budget.spent) == (0.0, 0.0)
    assert booking.settled and booking.reservation is not None
    assert booking.reservation.settled and booking.reservation.tokens == 300  # the server may have counted it
    assert limits.concurrency.in_flight == 0
    async with limits.request(700, 1.0):  # the whole budget is free again; 300 + 700 fits the window
        assert clock.now == START


async def test_a_request_past_the_budget_is_refused_before_it_books_a_rate_reservation() -> None:
    clock = ManualTime()
    limits = _limits(clock, max_cost=0.5, tpm=100)
    assert limits.budget is not None and limits.rate is not None
    with pytest.raises(BudgetExceededError, match="--max-cost"):
        async with limits.request(100, 0.6):
            pytest.fail("the request must not run")
    assert limits.budget.exhausted and limits.budget.reserved == 0.0
    assert limits.concurrency.in_flight == 0
    assert (await limits.rate.reserve(100)).t == START  # no tokens were booked


async def test_a_request_without_a_price_is_refused_under_max_cost() -> None:
    limits = _limits(ManualTime(), max_cost=5.0)
    with pytest.raises(BudgetExceededError, match="needs a price"):
        async with limits.request(10, None):
            pytest.fail("the request must not run")
    assert limits.concurrency.in_flight == 0


@pytest.mark.parametrize(
    ("rate", "headers", "books"),
    [
        ({}, None, False),
        ({"rpm": 10}, None, True),
        ({"tpm": 1000}, None, True),
        ({}, {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1s"}, True),
    ],
)
async def test_a_rate_reservation_is_booked_only_when_a_rate_limit_applies(
    rate: dict[str, float], headers: dict[str, str] | None, books: bool
) -> None:
    clock = ManualTime()
    limits = _limits(clock, **rate)
    assert limits.rate is not None
    limits.rate.observe_headers(headers)
    await clock.advance(5.0)  # past any pause: booking it must not wait
    async with limits.request(10, None) as booking:
        assert (booking.reservation is not None) is books
        assert clock.now == START + 5.0


async def test_settling_moves_the_output_average_once() -> None:
    limits = _limits(ManualTime())
    async with limits.request(10, None) as booking:
        limits.settle(booking, 100, 56, None)
        limits.settle(booking, 100, 1000, None)
    assert limits.output_tokens_avg == pytest.approx(256 + (56 - 256) * 0.1)


async def test_a_request_waiting_for_a_slot_books_nothing_yet() -> None:
    clock = ManualTime()
    limits = Limits(concurrency=ConcurrencyLimit(1), rate=limiter(clock, tpm=100), budget=Budget(1.0))
    assert limits.budget is not None
    async with limits.request(60, 0.5):
        queued = start(limits.request(60, 0.5).__aenter__())
        await settle_tasks()
        assert limits.waiting == 1 and limits.budget.reserved == 0.5
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    assert limits.concurrency.in_flight == 0


async def test_a_waiter_cancelled_while_the_window_is_full_no_longer_counts_as_waiting() -> None:
    clock = ManualTime()
    rate = limiter(clock, rpm=1)
    await rate.reserve(1)
    waiter = start(rate.reserve(1))
    await settle_tasks()
    assert rate.waiting == 1
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert rate.waiting == 0, "a cancelled waiter still counted as waiting (the server's gauge would creep up)"
