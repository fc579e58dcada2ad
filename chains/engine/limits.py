"""Limits shared by every model request of a run: concurrency, rate and budget.

``max_concurrency`` in a ``RunnableConfig`` only bounds one fan-out level; a
chain that makes several model calls per input (or fans out in parallel) can
exceed it.  These limits sit at the model request itself, so "never more than
N requests in flight" holds however the chain is shaped.  A run installs its
``Limits`` in a context variable; every ``ManagedChatModel`` call made inside
that run (any depth, any task) uses them.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from chains.engine.pricing import Budget, PriceTable
from chains.engine.ratelimit import RateLimiter, Reservation
from chains.errors import BudgetExceededError


class ConcurrencyLimit:
    """An adjustable semaphore that records how many requests are in flight.

    ``limit`` is the ceiling; ``current`` may shrink below it on throttling
    (multiplicative decrease) and grows back by one slot per ``current``
    successes (additive increase).
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"concurrency limit must be at least 1, got {limit}")
        self.limit = limit
        self.current = float(limit)
        self.in_flight = 0
        self.peak = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    def _capacity(self) -> int:
        return max(1, int(self.current))

    async def acquire(self) -> None:
        if self.in_flight < self._capacity() and not self._waiters:
            self._take()
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        try:
            await future  # a releaser hands its slot over: ``_take`` already ran for us
        except BaseException:
            if future.done() and not future.cancelled():
                self.release()  # we were handed a slot but are leaving: give it back
            elif future in self._waiters:
                self._waiters.remove(future)
            raise

    def _take(self) -> None:
        self.in_flight += 1
        if self.in_flight > self.peak:
            self.peak = self.in_flight

    def release(self) -> None:
        self.in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.in_flight < self._capacity():
            future = self._waiters.popleft()
            if not future.done():
                self._take()
                future.set_result(None)

    def throttled(self) -> None:
        """A 429 from the provider: halve the window."""
        self.current = max(1.0, self.current / 2)

    def succeeded(self) -> None:
        """A success: grow back towards ``limit`` by one slot per window."""
        if self.current < self.limit:
            self.current = min(float(self.limit), self.current + 1.0 / self.current)
            self._wake()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        await self.acquire()
        try:
            yield
        finally:
            self.release()


class Booking:
    """One request's share of the limits: its rate reservation and budget reservation."""

    __slots__ = ("cost", "reservation", "settled", "waited_s")

    def __init__(self) -> None:
        self.reservation: Reservation | None = None
        self.cost = 0.0
        self.waited_s = 0.0
        self.settled = False


@dataclass
class Limits:
    """Everything a run shares across its model requests (one set per endpoint)."""

    concurrency: ConcurrencyLimit
    rate: RateLimiter | None = None
    budget: Budget | None = None
    prices: PriceTable = field(default_factory=PriceTable)
    output_tokens_avg: float = 256.0
    """Running average of output tokens, used to estimate requests without max_tokens."""
    inputs_in_flight: int = 0
    """Inputs the run has started and not finished (the batch tier submits when all of them wait on it)."""

    @classmethod
    def create(
        cls,
        max_concurrency: int,
        *,
        rpm: float | None = None,
        tpm: float | None = None,
        window_s: float = 60.0,
        max_cost: float | None = None,
        prices: PriceTable | None = None,
    ) -> Limits:
        return cls(
            concurrency=ConcurrencyLimit(max_concurrency),
            rate=RateLimiter(rpm, tpm, window_s=window_s),
            budget=Budget(max_cost) if max_cost is not None else None,
            prices=prices or PriceTable(),
        )

    @property
    def waiting(self) -> int:
        """Requests waiting for a concurrency slot or for the rate limiter."""
        return len(self.concurrency._waiters) + (self.rate.waiting if self.rate is not None else 0)

    @property
    def rate_wait_s(self) -> float:
        return self.rate.waited_s if self.rate is not None else 0.0

    @asynccontextmanager
    async def request(self, tokens: int, cost: float | None) -> AsyncIterator[Booking]:
        """Hold a concurrency slot, the budget and a rate reservation for one request.

        The slot is taken first so that a request is sent right after its rate
        reservation is booked (the server sees it in the same window).
        """
        booking = Booking()
        started = time.perf_counter()
        await self.concurrency.acquire()
        try:
            if self.budget is not None:
                if cost is None:
                    raise BudgetExceededError(
                        "not run: --max-cost needs a price for this model; add it with --prices FILE"
                    )
                booking.cost = self.budget.reserve(cost)
            if self.rate is not None and self.rate.active:
                booking.reservation = await self.rate.reserve(tokens)
            booking.waited_s = time.perf_counter() - started
            yield booking
        finally:
            self.concurrency.release()
            if not booking.settled:  # failed attempt: nothing billed, the estimate stays in the window
                if self.budget is not None and booking.cost:
                    self.budget.settle(booking.cost, 0.0)
                if self.rate is not None and booking.reservation is not None:
                    self.rate.settle(booking.reservation)
                booking.settled = True

    def reserve_cost(self, cost: float | None) -> float:
        """The budget alone, for a request that holds no slot or rate (the batch tier): the reserved USD."""
        if self.budget is None:
            return 0.0
        if cost is None:
            raise BudgetExceededError("not run: --max-cost needs a price for this model; add it with --prices FILE")
        return self.budget.reserve(cost)

    def settle_cost(self, reserved: float, cost: float | None) -> None:
        if self.budget is not None:
            self.budget.settle(reserved, cost or 0.0)

    def settle(self, booking: Booking, tokens: int, output_tokens: int, cost: float | None) -> None:
        """Replace a booking's estimates with the real usage."""
        if booking.settled:
            return
        booking.settled = True
        if self.rate is not None and booking.reservation is not None:
            self.rate.settle(booking.reservation, tokens)
        if self.budget is not None:
            self.budget.settle(booking.cost, cost or 0.0)
        self.output_tokens_avg += (output_tokens - self.output_tokens_avg) * 0.1


_active: contextvars.ContextVar[Limits | None] = contextvars.ContextVar("chain_runner_limits", default=None)


def active_limits() -> Limits | None:
    """The limits of the run this code is executing in, if any."""
    return _active.get()


def install_limits(limits: Limits) -> None:
    """Install ``limits`` for the rest of the current task (its context dies with it)."""
    _active.set(limits)
