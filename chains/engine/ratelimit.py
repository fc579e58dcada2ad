"""Request and token rate limits (``--rpm``, ``--tpm``) shared by every request of a run.

A sliding window: before each request the limiter reserves one request and an
estimate of its tokens, waiting until both fit in the last ``window_s``
seconds; after the response it settles the reservation against the real
usage.  When the server sends ``x-ratelimit-remaining-*`` headers, the limiter
pauses before the server would answer 429 (``server_words`` reads them; a
scaled-out run sends them to its governor instead, ``chains.scale``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from chains.engine.headers import parse_reset
from chains.errors import InputError

log = logging.getLogger("chains.engine.limits")

DEFAULT_RESET_S = 1.0
"""A limit used up with no (readable) reset header: ask again after this long."""


@dataclass(frozen=True)
class ServerWord:
    """What one response's ``x-ratelimit-*`` headers say about one of the server's limits."""

    kind: Literal["requests", "tokens"]
    remaining: float
    """``x-ratelimit-remaining-*``: a finite number, at least 0."""
    reset_s: float
    """``x-ratelimit-reset-*`` in seconds, capped (``parse_reset``); ``DEFAULT_RESET_S`` when absent or unreadable."""


def server_words(headers: Mapping[str, Any] | None) -> list[ServerWord]:
    """The limits a response's headers report (none when it reports none); never raises: header values are
    outside data, and one that is not a finite number says nothing."""
    if not headers:
        return []
    try:
        lower = {str(k).lower(): v for k, v in headers.items()}
    except Exception:  # headers of an unknown kind: nothing said
        return []
    words = []
    kinds: tuple[Literal["requests", "tokens"], ...] = ("requests", "tokens")
    for kind in kinds:
        remaining = _number(lower.get(f"x-ratelimit-remaining-{kind}"))
        if remaining is None or not math.isfinite(remaining):
            continue
        reset = parse_reset(lower.get(f"x-ratelimit-reset-{kind}"))
        words.append(ServerWord(kind, max(0.0, remaining), DEFAULT_RESET_S if reset is None else reset))
    return words


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
        """Pause before a 429 when the server says a limit is used up (no request left, or fewer tokens
        than the next request's estimate) until its reset."""
        pause = 0.0
        for word in server_words(headers):
            used_up = word.remaining <= 0 if word.kind == "requests" else word.remaining < max(1, next_tokens)
            if used_up:
                pause = max(pause, word.reset_s)
        now = self.clock()
        if pause > 0 and now + pause > self.blocked_until:
            log.info("server reports a rate limit used up: pausing new requests for %.2fs", pause)
            self.blocked_until = now + pause


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
