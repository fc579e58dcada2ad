"""Limits shared by every model request of a run: concurrency (and, later, rate).

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
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field


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


@dataclass
class Limits:
    """Everything a run shares across its model requests."""

    concurrency: ConcurrencyLimit
    waiting: int = field(default=0)

    @classmethod
    def create(cls, max_concurrency: int) -> Limits:
        return cls(concurrency=ConcurrencyLimit(max_concurrency))

    @asynccontextmanager
    async def request(self) -> AsyncIterator[None]:
        """Hold one request slot for the duration of one model request."""
        self.waiting += 1
        try:
            await self.concurrency.acquire()
        finally:
            self.waiting -= 1
        try:
            yield
        finally:
            self.concurrency.release()


_active: contextvars.ContextVar[Limits | None] = contextvars.ContextVar(
    "chain_runner_limits", default=None
)


def active_limits() -> Limits | None:
    """The limits of the run this code is executing in, if any."""
    return _active.get()


@contextmanager
def use_limits(limits: Limits) -> Iterator[Limits]:
    """Install ``limits`` for the code (and the tasks it creates) in this block."""
    token = _active.set(limits)
    try:
        yield limits
    finally:
        _active.reset(token)
