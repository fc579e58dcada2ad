"""Sync callers of async code: one event loop on a daemon thread, per model.

LangChain's ``invoke``/``batch``/``stream`` are synchronous and may be called from a plain
script, from threads of a pool, or from a Jupyter cell whose thread already runs an event
loop (so ``asyncio.run`` is not allowed there).  ``ManagedChatModel`` runs its async request
path on a ``Portal``: every sync call of one model goes to the same loop, so the run's limits
(asyncio primitives) and the HTTP pool built on that loop are used from one loop only.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from langchain_core.callbacks import CallbackManagerForLLMRun

T = TypeVar("T")
_END = object()


class Portal:
    """An event loop on a daemon thread, started on first use."""

    def __init__(self, name: str = "chain-runner-portal") -> None:
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._loop.is_closed():
                loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=loop.run_forever, name=self.name, daemon=True)
                self._thread.start()
                self._loop = loop
            return self._loop

    def _check_thread(self) -> None:
        if self._thread is not None and threading.current_thread() is self._thread:
            raise RuntimeError("a sync model call from inside the model's own event loop would wait for itself")

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        """Run ``work`` on the portal's loop and wait for its result in this thread."""
        self._check_thread()
        future: Future[T] = asyncio.run_coroutine_threadsafe(work, self.loop)
        try:
            return future.result()
        except BaseException:  # KeyboardInterrupt in the caller: stop the work too
            future.cancel()
            raise

    def iterate(self, items: AsyncIterator[T]) -> Iterator[T]:
        """Iterate an async iterator on the portal's loop from this thread; closing early cancels it."""
        self._check_thread()
        handoff: queue.SimpleQueue[Any] = queue.SimpleQueue()

        async def pump() -> None:
            try:
                async for item in items:
                    handoff.put(item)
            except BaseException as exc:
                handoff.put(exc)
            else:
                handoff.put(_END)
            finally:
                close = getattr(items, "aclose", None)
                if close is not None:
                    await close()

        future = asyncio.run_coroutine_threadsafe(pump(), self.loop)
        try:
            while (item := handoff.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            if not future.done():
                future.cancel()

    def close(self) -> None:
        """Stop the loop and its thread (tasks still running on it are abandoned)."""
        with self._lock:
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        if not loop.is_running():
            loop.close()


class AsyncView:
    """A sync run manager seen through the async interface the request path calls."""

    def __init__(self, manager: CallbackManagerForLLMRun) -> None:
        self.manager = manager

    async def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.manager.on_llm_new_token(token, **kwargs)

    async def on_retry(self, state: Any, **kwargs: Any) -> None:
        self.manager.on_retry(state, **kwargs)
