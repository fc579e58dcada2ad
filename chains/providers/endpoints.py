"""Several endpoints of one model (``--base-url`` given more than once): a vLLM or llama.cpp fleet, several
regions or keys of one provider.

Each attempt of a request goes to the endpoint with the most free capacity now.  The run-wide limits
(in-flight cap, RPM/TPM, budget; ``chains.engine.limits``) are booked first and hold over all endpoints
together; on top of them each endpoint has its own:

- **AIMD window**: a 429 from an endpoint halves its window only (the others keep theirs), and a
  ``Retry-After`` holds that endpoint, not the run, for as long as it says, as do its ``x-ratelimit-*`` headers
  when they say a limit is used up;
- **health**: an endpoint whose requests fail ``EJECT_AFTER`` times in a row for reasons of the endpoint
  (refused or broken connections, timeouts, 5xx) is taken out for a cooldown (1 s, doubling up to a minute);
  after it one request is let through as a probe: its success brings the endpoint back, its failure takes it
  out again for twice as long.  The failed attempts are retried by the one retry layer (``ManagedChatModel``),
  and a retry goes wherever there is capacity, so a dead endpoint loses no input.  When every endpoint is out,
  a request waits for the first to come back and probes it: the run never stops on its own.

A request's own fault (another 4xx) says nothing about the endpoint.  ``stats()`` gives the summary's
per-endpoint requests, failures and latency.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from array import array
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from langchain_core.language_models import BaseChatModel

from chains.engine.limits import ConcurrencyLimit
from chains.engine.metrics import current_item, percentile
from chains.engine.ratelimit import server_words
from chains.engine.retry import Failure, classify
from chains.providers.pools import LoopPools

log = logging.getLogger("chains.requests")

EJECT_AFTER = 3
"""Failures of the endpoint in a row that take it out."""
COOLDOWN_S = 1.0
MAX_COOLDOWN_S = 60.0
MAX_HOLD_S = 60.0
"""The longest a ``Retry-After`` holds an endpoint (the request itself waits as the retry layer says)."""


class Endpoint:
    """One endpoint: its model and HTTP pools, its window, its health and its numbers."""

    def __init__(self, url: str, pools: LoopPools, window: int) -> None:
        self.url = url
        self.pools = pools
        self.window = ConcurrencyLimit(window)
        self.failures_in_row = 0
        self.out = False
        self.out_until = 0.0
        self.cooldown_s = COOLDOWN_S
        self.probing = False
        self.held_until = 0.0
        self.requests = 0
        self.failures = 0
        self.ejections = 0
        self.latencies: array[float] = array("d")

    def model(self) -> BaseChatModel:
        """The endpoint's model for the running event loop."""
        return self.pools.for_loop(asyncio.get_running_loop())

    def ready_at(self) -> float:
        """When it may take a request (``monotonic`` time): now for a healthy endpoint with nothing holding it."""
        return max(self.out_until if self.out else 0.0, self.held_until)

    def usable(self, now: float) -> bool:
        return self.ready_at() <= now and not (self.out and self.probing)

    def free(self) -> int:
        return self.window._capacity() - self.window.in_flight

    def take_out(self, now: float, why: str) -> None:
        if self.out:  # a failed probe: out again for twice as long
            self.cooldown_s = min(MAX_COOLDOWN_S, self.cooldown_s * 2)
        self.out, self.out_until = True, now + self.cooldown_s
        self.ejections += 1
        log.warning("endpoint %s taken out for %.0fs: %s", self.url, self.cooldown_s, why)

    def back_in(self) -> None:
        if self.out:
            log.warning("endpoint %s is back in", self.url)
        self.out, self.cooldown_s, self.failures_in_row = False, COOLDOWN_S, 0


class EndpointRouter:
    """The endpoints of one model, and which one an attempt goes to."""

    def __init__(
        self, endpoints: Sequence[Endpoint], *, clock: Any = time.monotonic, sleep: Any = asyncio.sleep
    ) -> None:
        if not endpoints:
            raise ValueError("an EndpointRouter needs at least one endpoint")
        self.endpoints = list(endpoints)
        self._clock, self._sleep = clock, sleep
        self._turn = itertools.count()

    def choose(self) -> Endpoint | None:
        """The usable endpoint with the most free capacity (ties: in turn), or None when none is usable now."""
        now = self._clock()
        usable = [e for e in self.endpoints if e.usable(now)]
        if not usable:
            return None
        start = next(self._turn) % len(usable)
        turn = usable[start:] + usable[:start]
        return max(turn, key=lambda e: (e.free(), e.out))  # a cooled-down endpoint's probe goes first

    def soonest(self) -> Endpoint:
        return min(self.endpoints, key=lambda e: (e.ready_at(), e.window.in_flight))

    async def _pick(self) -> Endpoint:
        while (endpoint := self.choose()) is None:
            soonest = self.soonest()
            await self._sleep(max(0.01, min(MAX_COOLDOWN_S, soonest.ready_at() - self._clock())))
        return endpoint

    @asynccontextmanager
    async def attempt(self) -> AsyncIterator[Endpoint]:
        """One attempt on the chosen endpoint, holding a slot of its window; its outcome is its health."""
        endpoint = await self._pick()
        probe = endpoint.out
        if probe:
            endpoint.probing = True
        try:
            await endpoint.window.acquire()
        except BaseException:
            endpoint.probing = False
            raise
        started = self._clock()
        endpoint.requests += 1
        try:
            yield endpoint
        except Exception as exc:
            self._failed(endpoint, classify(exc))
            raise
        except BaseException:  # cancelled: says nothing about the endpoint
            raise
        else:
            self._succeeded(endpoint, self._clock() - started)
        finally:
            endpoint.probing = False
            endpoint.window.release()

    def _succeeded(self, endpoint: Endpoint, latency_s: float) -> None:
        endpoint.back_in()
        endpoint.window.succeeded()
        endpoint.latencies.append(latency_s)
        if (item := current_item()) is not None:
            item.endpoint = endpoint.url

    def _failed(self, endpoint: Endpoint, failure: Failure) -> None:
        if not failure.provider:
            return  # a budget stop, a bug: not the endpoint's doing
        endpoint.failures += 1
        now = self._clock()
        if failure.throttled:
            endpoint.back_in()  # it answered, and says how much it takes
            endpoint.window.throttled()
            if failure.retry_after:
                endpoint.held_until = max(endpoint.held_until, now + min(MAX_HOLD_S, failure.retry_after))
            return
        if failure.status is not None and failure.status < 500 and failure.status != 408:
            endpoint.back_in()  # it answered: the request's own fault (400, 401, 404, 413, ...)
            return
        endpoint.failures_in_row += 1
        if endpoint.out or endpoint.failures_in_row >= EJECT_AFTER:
            endpoint.take_out(now, failure.reason)

    def observe_headers(self, endpoint: Endpoint, headers: Any, next_tokens: int = 0) -> None:
        """The endpoint's ``x-ratelimit-*`` headers: a limit used up (no request left, or fewer tokens than the next
        request's estimate) holds that endpoint until its reset; the others go on.  (Several endpoints are often
        several keys: each has its own remaining counts, so they never go into the run-wide limiter.)"""
        hold = 0.0
        for word in server_words(headers):
            used_up = word.remaining <= 0 if word.kind == "requests" else word.remaining < max(1, next_tokens)
            if used_up:
                hold = max(hold, min(MAX_HOLD_S, word.reset_s))
        if hold > 0:
            endpoint.held_until = max(endpoint.held_until, self._clock() + hold)
            log.info("endpoint %s reports a rate limit used up: holding it for %.2fs", endpoint.url, hold)

    def mark_unreachable(self, endpoint: Endpoint, why: str) -> None:
        """An endpoint that did not answer the start-up probe starts out (and is probed back in by a request)."""
        endpoint.take_out(self._clock(), why)

    def stats(self) -> list[dict[str, Any]]:
        """Per endpoint: requests sent (attempts), failed, times taken out, latency of the answered ones."""
        return [
            {
                "endpoint": e.url,
                "requests": e.requests,
                "failures": e.failures,
                "taken_out": e.ejections,
                "latency_p50_s": _rounded(percentile(e.latencies, 50)),
                "latency_p95_s": _rounded(percentile(e.latencies, 95)),
            }
            for e in self.endpoints
        ]


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
