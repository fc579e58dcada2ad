"""A deadline for one attempt that no library under it can swallow.

``asyncio.timeout`` cancels the task once.  Code beneath a model request can absorb that
single cancellation: Python 3.11's ``asyncio.wait_for`` (which langchain-openai uses for
``stream_chunk_timeout``) drops it when the awaited chunk arrives at the same moment, and
an answer that keeps trickling chunks makes that moment likely.  The attempt then runs on
until the server stops, far past ``--timeout``.  Here the attempt runs in a child task that
is cancelled again and again until it has really stopped, and the caller gets a
``TimeoutError`` at the deadline (plus at most a few cancellation rounds).

Code known to stop at the first cancellation (the lean model's non-streamed request: aiohttp and our own
reader, no ``wait_for`` under it) is bounded by ``asyncio.timeout`` in its own task instead (``cooperative``):
no child task, no ``asyncio.wait``, which were a fifth of the managed model's own client CPU per request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
_RECANCEL_S = 0.05


class AttemptTimeout(TimeoutError):
    """The attempt did not finish within its deadline."""


async def within(seconds: float, work: Coroutine[Any, Any, T], *, cooperative: bool = False) -> T:
    """Await ``work`` for at most ``seconds``; raise ``AttemptTimeout`` after that.  ``cooperative``: ``work``
    stops at the first cancellation, so it runs in this task under ``asyncio.timeout``."""
    if cooperative:
        return await _within_cooperative(seconds, work)
    task = asyncio.ensure_future(work)  # a child task runs in a copy of this context (limits, metrics)
    try:
        done, _ = await asyncio.wait({task}, timeout=seconds)
    except BaseException:  # we are cancelled ourselves: stop the attempt first
        await _stop(task)
        raise
    if task in done:
        return task.result()
    await _stop(task)
    raise AttemptTimeout(f"no complete answer within {seconds:g}s")


async def _within_cooperative(seconds: float, work: Coroutine[Any, Any, T]) -> T:
    deadline = asyncio.timeout(seconds)
    try:
        async with deadline:
            return await work
    except TimeoutError:
        if not deadline.expired():  # the work's own timeout (a read that timed out): its error, not ours
            raise
    raise AttemptTimeout(f"no complete answer within {seconds:g}s")


async def _stop(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` until it is done, however many cancellations the code under it absorbs."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=_RECANCEL_S)
    if not task.cancelled():
        task.exception()  # retrieved: a late failure of an abandoned attempt is not "never retrieved"
