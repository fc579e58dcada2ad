"""A worker's ``Limits`` when the run's limits live in the governor: capacity leased in slices, spent locally.

``ManagedChatModel`` books every request through ``Limits.request`` / ``Limits.settle`` as in one process; here
those spend what the worker holds (slots, rate credit, USD credit) and lease more from the governor only when it
runs out, so a steady stream of requests makes one governor call per slice, not per request.  What is owed or
given back (spent USD, tokens beyond an estimate, 429s and successes for the AIMD window, idle slots, what the
server's ``x-ratelimit-*`` headers said) rides on the next lease or on the heartbeat that also keeps the lease alive
(``chains.scale.governor``).  Once the server's headers speak of its limits, every request needs rate credit from the
governor (``--rpm`` or not), which grants no more than the server says remains (``chains.scale.server_limits``).
A word goes with when the request that brought it was sent and whether it went on credit: the server cannot have
spoken before that, and what was sent since it may not have seen.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

from chains.engine.limits import Booking, ConcurrencyLimit, Limits
from chains.engine.pricing import Budget, PriceTable
from chains.engine.ratelimit import RateLimiter, ServerWord, server_words
from chains.errors import BudgetExceededError
from chains.scale.governor import METER_S, Ask, Grant, Report
from chains.scale.server_limits import Heard

GovernorCall = Callable[..., Awaitable[Any]]
"""``call("lease", worker, ask, report)``: a governor method, through Ray or directly (tests)."""
SLICE = 8
"""Requests per lease (and slots, when that many wait): small enough to share the run fairly."""
HEARTBEAT_S = 1.0
USD_EPSILON = 1e-9
"""Float sums of prices: a credit this close to a request's cost covers it."""
IDLE_S = 0.05
"""A free slot unused this long goes back to the governor for other workers."""
POLL_S = 0.01
MAX_POLL_S = 0.2
"""A lease that found nothing free is asked again after these growing pauses (the governor never blocks)."""
TIGHT = 4 * SLICE
"""A server word of fewer requests left than this (or tokens for this many requests) goes to the governor within
``IDLE_S``, not with the next lease: other workers may hold credit for more."""


class _Counting(ConcurrencyLimit):
    """The AIMD window lives in the governor: 429s and successes are counted and reported, not applied here."""

    def __init__(self, owner: LeasedLimits, limit: int) -> None:
        super().__init__(limit)
        self.owner = owner

    def throttled(self) -> None:
        self.owner.report.throttled += 1

    def succeeded(self) -> None:
        self.owner.report.succeeded += 1


class _Relay(RateLimiter):
    """The worker's ``Limits.rate``: no window of its own (the governor holds the run's); what a response's
    ``x-ratelimit-*`` headers say goes to the governor (``LeasedLimits.heard``)."""

    def __init__(self, owner: LeasedLimits) -> None:
        super().__init__()
        self.owner = owner

    def observe_headers(self, headers: Mapping[str, Any] | None, next_tokens: int = 0) -> None:
        words = server_words(headers)
        if words:
            self.owner.heard(words, next_tokens)


class _Leased(Booking):
    __slots__ = ("on_credit", "sent_at", "tokens")

    def __init__(self, tokens: int) -> None:
        super().__init__()
        self.tokens = tokens
        self.sent_at = 0.0
        self.on_credit = False


class LeasedLimits(Limits):
    def __init__(
        self,
        call: GovernorCall,
        worker: str,
        *,
        max_concurrency: int,
        rate: bool = False,
        max_cost: float | None = None,
        prices: PriceTable | None = None,
    ) -> None:
        super().__init__(concurrency=ConcurrencyLimit(max_concurrency), prices=prices or PriceTable())
        self.concurrency = _Counting(self, max_concurrency)
        self.rate = _Relay(self)
        self.budget = Budget(max_cost) if max_cost is not None else None
        self.call = call
        self.worker = worker
        self.rate_limited = rate
        self.metered_until = 0.0
        """Every request asks rate credit until then (the server's headers speak of its limits)."""
        self.report = Report()
        self.free_slots = 0
        self.held_slots = 0
        self.requests = 0
        self.tokens = 0
        self.credit_until = 0.0
        self.usd = 0.0
        self.waiters = 0
        self.owed = 0
        """Slots to give back as the requests holding them end (the governor shares the window)."""
        self.leases = 0
        self._last_used = 0.0
        self._leasing: asyncio.Task[None] | None = None
        self._want_tokens = 0
        self._want_usd = 0.0
        self._changed: asyncio.Event | None = None
        self._heart: asyncio.Task[None] | None = None
        self._words: dict[str, tuple[float, ServerWord, float, int | None]] = {}
        """Per kind: (read at, the word, its request sent at, its tokens if sent on credit)."""
        self._answered: _Leased | None = None
        """The request just settled: the one whose headers are read next (``accounting.booked``)."""
        self.credit_seq = 0
        self._over_told = 0
        self._anchor: tuple[float, float] | None = None
        """(``Grant.at``, when it arrived) of the last grant: the governor's clock, on the safe side."""
        self._urgent = False
        self._sent: list[tuple[float, int]] = []
        """(when, tokens) of each request sent on rate credit since the last report."""

    @property
    def waiting(self) -> int:
        return self.waiters

    def heard(self, words: list[ServerWord], next_tokens: int) -> None:
        """A response's ``x-ratelimit-*`` words: kept for the governor (the newest of each kind), and this worker's
        own credit cut to what the server says remains, at once."""
        now = time.monotonic()
        self.metered_until = max(self.metered_until, now + METER_S)
        answered, self._answered = self._answered, None
        sent_at = answered.sent_at if answered is not None else now
        carried = answered.tokens if answered is not None and answered.on_credit else None
        for word in words:
            self._words[word.kind] = (now, word, sent_at, carried)
            need = 1 if word.kind == "requests" else max(1, next_tokens)
            if word.kind == "requests":
                self.requests = min(self.requests, int(word.remaining))
            else:
                self.tokens = min(self.tokens, int(word.remaining))
            if word.remaining < need * TIGHT:
                self._urgent = True

    def _metered(self) -> bool:
        return self.rate_limited or time.monotonic() < self.metered_until

    @asynccontextmanager
    async def request(self, tokens: int, cost: float | None) -> AsyncIterator[Booking]:
        booking = _Leased(tokens)
        started = time.perf_counter()
        self._start_heart()
        self.waiters += 1
        try:
            await self._take(tokens, cost, booking)
        finally:
            self.waiters -= 1
        booking.waited_s = time.perf_counter() - started
        try:
            yield booking
        finally:
            if self.owed > 0:  # the governor asked for it back (another worker waits): it goes with the next call
                self.owed -= 1
                self.held_slots -= 1
                self.report.slots += 1
            else:
                self.free_slots += 1
            self._last_used = time.monotonic()
            if not booking.settled:  # a failed attempt: nothing billed
                self.usd += booking.cost
                booking.settled = True
            self._wake()

    def settle(self, booking: Booking, tokens: int, output_tokens: int, cost: float | None) -> None:
        if booking.settled:
            return
        booking.settled = True
        self._answered = booking if isinstance(booking, _Leased) else None
        estimate = booking.tokens if isinstance(booking, _Leased) else tokens
        if tokens > estimate:
            self.report.token_debt += tokens - estimate
        elif time.monotonic() < self.credit_until:
            self.tokens += estimate - tokens
        actual = cost or 0.0
        self.usd += booking.cost - actual
        self.report.usd_spent += actual
        if self.budget is not None:
            self.budget.spent += actual
        self.output_tokens_avg += (output_tokens - self.output_tokens_avg) * 0.1

    def reserve_cost(self, cost: float | None) -> float:
        raise NotImplementedError("the batch tier does not run on workers")

    async def _take(self, tokens: int, cost: float | None, booking: _Leased) -> None:
        if self.budget is not None and cost is None:
            raise BudgetExceededError("not run: --max-cost needs a price for this model; add it with --prices FILE")
        usd = cost or 0.0
        while True:
            if self.budget is not None and self.budget.exhausted:
                raise self._exhausted(usd)
            now = time.monotonic()
            if now >= self.credit_until:
                self.requests = self.tokens = 0  # rate credit is void once its time is up
            metered = self.rate_limited or now < self.metered_until
            has_slot = self.free_slots >= 1
            has_rate = not metered or (self.requests >= 1 and self.tokens >= tokens)
            has_usd = self.budget is None or self.usd >= usd - USD_EPSILON
            if has_slot and has_rate and has_usd:
                self.free_slots -= 1
                booking.sent_at, booking.on_credit = now, metered
                if metered:
                    self.requests -= 1
                    self.tokens -= tokens
                    self._sent.append((now, tokens))
                if self.budget is not None:
                    self.usd -= usd
                    booking.cost = usd
                return
            self._want_tokens, self._want_usd = tokens, usd
            if self._leasing is not None and self._leasing.done():
                failed, self._leasing = self._leasing.exception(), None
                if failed is not None:
                    raise failed
            if self._leasing is None:  # one lease at a time; the others wait for it or for a freed slot
                self._leasing = asyncio.create_task(self._lease())
            if self._changed is None:
                self._changed = asyncio.Event()
            self._changed.clear()  # no await since the checks above: no wake-up can be lost
            await self._changed.wait()

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()

    def _ask(self) -> Ask | None:
        """What the waiting requests lack now (None: nothing), with a slice more of each."""
        if time.monotonic() >= self.credit_until:
            self.requests = self.tokens = 0
        tokens, usd = self._want_tokens, self._want_usd
        slot = self.free_slots < 1
        rate = self._metered() and (self.requests < 1 or self.tokens < tokens)
        budget = self.budget is not None and self.usd < usd - USD_EPSILON
        if self.waiters == 0 or not (slot or rate or budget):
            return None
        rate = rate and not slot  # slots first: credit asked for requests that cannot go yet would expire unused
        ready = max(1, min(SLICE, self.waiters, self.free_slots))
        return Ask(
            slots=min(SLICE, self.waiters) if slot else 0,
            requests=ready if rate else 0,  # credit not used in time is lost: ask for what can go now
            tokens=tokens * ready if rate else 0,
            min_tokens=tokens,
            usd=usd * SLICE if budget else 0.0,
            min_usd=usd if budget else 0.0,
        )

    async def _lease(self) -> None:
        """Lease until the waiting requests have what they lack; an empty grant (all taken) is asked again soon."""
        pause = POLL_S
        try:
            while (ask := self._ask()) is not None:
                report = self._take_report()
                if ask.requests:  # what is left of the old credit is void: the governor counts only the new one
                    self.requests = self.tokens = 0
                if ask.min_usd and self.usd > 0:  # a remainder too small for the request goes back, granted whole
                    report.usd_unused, self.usd = self.usd, 0.0
                asked = time.monotonic()
                grant: Grant = await self.call("lease", self.worker, ask, report)
                self.leases += 1
                if grant.at:
                    self._anchor = (grant.at, time.monotonic())
                self.free_slots += grant.slots
                self.held_slots += grant.slots
                if grant.requests or grant.tokens:
                    self.requests, self.tokens, self.credit_seq = grant.requests, grant.tokens, grant.seq
                    # good from its arrival, and never past twice its time from the ask: see the governor
                    self.credit_until = min(time.monotonic() + grant.credit_s, asked + 2 * grant.credit_s)
                if grant.meter_s:
                    self.metered_until = max(self.metered_until, time.monotonic() + grant.meter_s)
                self.usd += grant.usd
                if grant.exhausted and self.budget is not None:
                    self.budget.exhausted = True
                    return
                self._wake()
                if grant.slots or grant.requests or grant.usd:
                    pause = POLL_S
                    await asyncio.sleep(0)  # let the waiters take it before asking again
                elif grant.retry_in is not None:  # the rate's window frees capacity then: not sooner, not later
                    await asyncio.sleep(grant.retry_in)
                else:
                    await asyncio.sleep(pause)
                    pause = min(MAX_POLL_S, pause * 2)
        finally:
            self._wake()

    def _take_report(self, *, idle: bool = False) -> Report:
        """What is owed, and (when idle) the slots and USD this worker does not use."""
        report, self.report = self.report, Report()
        now = time.monotonic()
        if self._anchor is not None:
            report.clock = self._anchor[0] + (now - self._anchor[1])
        # the credits before the current one are void; the current one too once its time is up
        report.over = self.credit_seq if now >= self.credit_until else self.credit_seq - 1
        self._over_told = max(self._over_told, report.over)
        if self._words:
            report.heard = tuple(
                Heard(w.kind, w.remaining, w.reset_s, now - t, now - sent, carried)
                for t, w, sent, carried in self._words.values()
            )
            self._words, self._urgent = {}, False
        if self._sent:
            report.sent = tuple((now - t, tokens) for t, tokens in self._sent)
            self._sent = []
        if idle and self.waiters == 0:
            report.slots += self.free_slots  # beside what the heartbeat already queued to give back
            self.held_slots -= self.free_slots
            self.free_slots = 0
            report.usd_unused += max(0.0, self.usd)
            self.usd = min(0.0, self.usd)
        return report

    def _exhausted(self, usd: float) -> BudgetExceededError:
        budget = self.budget
        assert budget is not None
        return BudgetExceededError(
            f"not run: the next request (about ${usd:.4f}) would take the run past --max-cost ${budget.max_usd:g}; "
            "raise --max-cost to run the rest"
        )

    def _start_heart(self) -> None:
        if self._heart is None or self._heart.done():
            self._heart = asyncio.create_task(self._beat(), name="chain-runner-lease-heartbeat")

    async def _beat(self) -> None:
        """Keep the lease alive; give back idle slots and USD, and what the governor asks back."""
        last = 0.0
        while True:
            await asyncio.sleep(IDLE_S)
            now = time.monotonic()
            idle = self.free_slots > 0 and self.waiters == 0 and now - self._last_used >= IDLE_S
            # credit whose time is up counts against the server's word for every worker until this one says so
            over = self.credit_seq > self._over_told and now >= self.credit_until
            if not idle and now - last < HEARTBEAT_S and not self.report.slots and not self._urgent and not over:
                continue
            last = now
            give_back = await self.call("heartbeat", self.worker, self._take_report(idle=idle))
            back = min(give_back, self.free_slots)
            if back:
                self.free_slots -= back
                self.held_slots -= back
                self.report.slots += back
            self.owed = give_back - back  # the rest as the requests holding them end

    async def aclose(self) -> None:
        """Everything held goes back (the worker is done)."""
        for task in (self._heart, self._leasing):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        report = self._take_report(idle=True)
        await self.call("heartbeat", self.worker, report)


def worker_limits(handle: Any, settings: Any, worker: str, prices: PriceTable | None = None) -> LeasedLimits:
    """The worker's limits, backed by the run's governor actor ``handle`` (``chains.scale.governor.start_governor``)."""

    def call(name: str, *args: Any) -> Awaitable[Any]:
        return getattr(handle, name).remote(*args)

    return LeasedLimits(
        call,
        worker,
        max_concurrency=settings.max_concurrency,
        rate=settings.rpm is not None or settings.tpm is not None,
        max_cost=settings.max_cost,
        prices=prices,
    )
