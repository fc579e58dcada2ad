"""One provider model, with its own HTTP connection pool, per event loop.

An async HTTP pool (aiohttp's or httpx's) belongs to the event loop that first used it; a
request on it from another loop fails ("attached to a different loop").  A session's model
is used from more than one loop as soon as sync and async calls mix: sync ``invoke`` runs on
the model's portal loop (``chains.providers.portal``), ``await ainvoke`` on the caller's loop, and a
notebook does both.  ``LoopPools`` hands each loop its own inner model and pool, built on
first use, and closes each pool on its own loop at the end.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from langchain_core.language_models import BaseChatModel

Build = Callable[[], tuple[BaseChatModel, Any]]
"""Builds an inner model and the HTTP client it uses (None when it has none to close)."""

_CLOSE_TIMEOUT_S = 5.0


class LoopPools:
    """``for_loop(loop)`` → the inner model for that loop; the first one is built up front."""

    def __init__(self, build: Build) -> None:
        self._build = build
        self._lock = threading.Lock()
        self._spare: tuple[BaseChatModel, Any] | None = build()
        self._by_loop: dict[asyncio.AbstractEventLoop, tuple[BaseChatModel, Any]] = {}

    @property
    def first(self) -> BaseChatModel:
        """The model built up front (its identity and parameters stand for every loop's)."""
        if self._spare is not None:
            return self._spare[0]
        return next(iter(self._by_loop.values()))[0]

    def _entry(self, loop: asyncio.AbstractEventLoop) -> tuple[BaseChatModel, Any]:
        with self._lock:
            entry = self._by_loop.get(loop)
            if entry is None:
                for old in [old for old in self._by_loop if old.is_closed()]:  # its pool died with its loop
                    del self._by_loop[old]
                entry, self._spare = (self._spare, None) if self._spare is not None else (self._build(), None)
                self._by_loop[loop] = entry
            return entry

    def for_loop(self, loop: asyncio.AbstractEventLoop) -> BaseChatModel:
        return self._entry(loop)[0]

    def http_here(self) -> Any:
        """The HTTP client for the running loop."""
        return self._entry(asyncio.get_running_loop())[1]

    async def aclose(self) -> None:
        """Close every pool on the loop it belongs to (a closed loop's pool is already gone)."""
        with self._lock:
            entries, self._by_loop = list(self._by_loop.items()), {}
            spare, self._spare = self._spare, None
        here = asyncio.get_running_loop()
        if spare is not None and spare[1] is not None:
            await spare[1].aclose()  # never used: bound to no loop yet
        for loop, (_inner, http) in entries:
            if http is None or loop.is_closed():
                continue
            if loop is here:
                await http.aclose()
            elif loop.is_running():
                closing = asyncio.run_coroutine_threadsafe(http.aclose(), loop)
                await asyncio.wait_for(asyncio.wrap_future(closing), _CLOSE_TIMEOUT_S)
