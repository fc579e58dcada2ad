"""Request and token rate limits (``--rpm``, ``--tpm``) shared by every request of a run.

A sliding window: before each request the limiter reserves one request and an
estimate of its tokens, waiting until both fit in the last ``window_s``
seconds; after the response it settles the reservation against the real
usage.  When the server sends ``x-ratelimit-remaining-*`` headers, the limiter
pauses before the server would answer 429.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from chains.engine.headers import parse_reset
from chains.errors import InputError

log = logging.getLogger("chains.engine.limits")


class Reservation:
    """One booked request.  Until it is settled it counts as in the window; once
    settled, its time is the moment the answer came back, which is no earlier than
    the server saw the request, so the client's window never runs ahead of the server's."""

    __slots__ = ("settled", "t", "tokens")

    def __init__(self, t: float, tokens: int) -> None:
        self.t = t
        self.tokens = tokens
        self.settled = False


class RateLimiter:
    """At most ``rpm`` requests and ``tpm`` tokens in any ``window_s``-second window.

    ``clock`` and ``sleep`` are the limiter's only view of time, so a test can drive a
    60-second window with a fake clock in microseconds.
    """

    def __init__(
        self,
        rpm: float | None = None,
        tpm: float | None = None,
        *,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self.rpm = rpm
        self.tpm = tpm
        self.window_s = window_s
        self.clock = clock
        self.sleep = sleep
        self._events: deque[Reservation] = deque()
        self._tokens = 0
        self.blocked_until = 0.0
        self.waited_s = 0.0
        self.waiting = 0

    @property
    def active(self) -> bool:
        """Whether a request must be booked at all: a limit is set or the server asked for a pause."""
        return bool(self.rpm or self.tpm) or self.blocked_until > 0

    def _prune(self, now: float) -> None:
        horizon = now - self.window_s
        while self._events and self._events[0].settled and self._events[0].t <= horizon:
            self._tokens -= self._events.popleft().tokens

    def _expiry(self, event: Reservation, now: float) -> float:
        if not event.settled:  # still in flight: look again shortly
            return min(self.window_s / 20, 0.05)
        return max(event.t + self.window_s - now, 0.001)

    def _delay(self, now: float, tokens: int) -> float:
        if self.blocked_until > now:
            return self.blocked_until - now
        if self.rpm and len(self._events) >= self.rpm:
            return self._expiry(self._events[0], now)
        if self.tpm and self._events and self._tokens + tokens > self.tpm:
            excess = self._tokens + tokens - self.tpm
            for event in self._events:
                excess -= event.tokens
                if excess <= 0:
                    return self._expiry(event, now)
            return self._expiry(self._events[-1], now)
        return 0.0

    async def reserve(self, tokens: int) -> Reservation:
        """Wait until one more request of about ``tokens`` tokens fits, and book it."""
        if self.tpm and tokens > self.tpm:
            raise InputError(
                f"this request needs about {tokens} tokens but --tpm is {self.tpm:g}; raise --tpm or lower --max-tokens"
            )
        started = None
        now = self.clock()
        try:
            while True:
                now = self.clock()
                self._prune(now)
                delay = self._delay(now, tokens)
                if delay <= 0:
                    break
                if started is None:
                    started = now
                    self.waiting += 1
                await self.sleep(delay + 0.001)
        finally:  # also when the waiter is cancelled: it waits no more
            if started is not None:
                self.waiting -= 1
                self.waited_s += self.clock() - started
        reservation = Reservation(now, tokens)
        self._events.append(reservation)
        self._tokens += tokens
        return reservation

    def settle(self, reservation: Reservation, tokens: int | None = None) -> None:
        """The request is over: replace the estimate with the real usage (if given)
        and restart its window from now."""
        if reservation.settled:
            return
        if tokens is not None:
            self._tokens += tokens - reservation.tokens
            reservation.tokens = tokens
        reservation.t = self.clock()
        reservation.settled = True

    def observe_headers(self, headers: Mapping[str, Any] | None, next_tokens: int = 0) -> None:
        """Pause before a 429 when the server says a limit is used up."""
        if not headers:
            return
        lower = {str(k).lower(): v for k, v in headers.items()}
        now = self.clock()
        pause = 0.0
        remaining = lower.get("x-ratelimit-remaining-requests")
        if remaining is not None and _number(remaining) is not None and _number(remaining) <= 0:  # type: ignore[operator]
            pause = max(pause, parse_reset(lower.get("x-ratelimit-reset-requests")) or 1.0)
        remaining = lower.get("x-ratelimit-remaining-tokens")
        if remaining is not None and _number(remaining) is not None and _number(remaining) < max(1, next_tokens):  # type: ignore[operator]
            pause = max(pause, parse_reset(lower.get("x-ratelimit-reset-tokens")) or 1.0)
        if pause > 0 and now + pause > self.blocked_until:
            log.info("server reports a rate limit used up: pausing new requests for %.2fs", pause)
            self.blocked_until = now + pause


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
