"""Async callback handlers: live tokens, kept apart per run id, and per-input metrics.

Both are ordinary LangChain ``AsyncCallbackHandler``s, so they also work when a
user passes them in ``config={"callbacks": [...]}`` to their own chains.
Model calls tagged ``INTERMEDIATE`` (e.g. the story's outline step) are not
shown as output tokens and do not count for time to first token.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TextIO
from uuid import UUID

from langchain_core.callbacks import AsyncCallbackHandler
from langchain_core.outputs import ChatGenerationChunk, GenerationChunk, LLMResult

from chains.engine.metrics import ItemMetrics

DISCARD_EVENT = "chain_runner_discard"
"""The custom event a refused finished answer is announced with (``{"text": ...}``; schema repair sends it):
whoever showed its tokens live (``TokenStreamHandler``) reports them discarded, as for a failed attempt."""

INTERMEDIATE = "chain-runner:intermediate"

MODEL_EVENTS = "model events"
"""A handler's ``watches``: it needs only the model run's events (new tokens, retries, its end or error), so
``run_batch``'s compiled path (``chains.engine.compiled``) may run the chain without its other runs."""
TOP_CHAIN = "top-level chain"
"""A handler's ``watches``: it needs only the start and end of each input's top-level chain (sync, inline)."""

TokenSink = Callable[[UUID, str], Awaitable[None] | None]
DiscardSink = Callable[[UUID, str], Awaitable[None] | None]


def _visible(tags: list[str] | None) -> bool:
    return not tags or INTERMEDIATE not in tags


class _ModelEventsOnly:
    """A handler of the model run's events only (``watches = MODEL_EVENTS``): LangChain does not call it for each
    chain step, retriever or agent."""

    watches = MODEL_EVENTS

    @property
    def ignore_chain(self) -> bool:
        return True

    @property
    def ignore_retriever(self) -> bool:
        return True

    @property
    def ignore_agent(self) -> bool:
        return True


class MetricsHandler(_ModelEventsOnly, AsyncCallbackHandler):
    """Fills one input's ``ItemMetrics``: time to first token and usage from each final answer."""

    run_inline = True

    @property
    def ignore_custom_event(self) -> bool:
        return True

    def __init__(self, item: ItemMetrics, started: float | None = None) -> None:
        self.item = item
        self.started = time.perf_counter() if started is None else started

    async def on_llm_new_token(
        self,
        token: str | list[str | dict[str, Any]],
        *,
        chunk: GenerationChunk | ChatGenerationChunk | None = None,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        if self.item.ttft_s is None and token and _visible(tags):
            self.item.ttft_s = time.perf_counter() - self.started

    async def on_llm_end(self, response: LLMResult, **kwargs: Any) -> None:
        for generations in response.generations:
            for generation in generations:
                message = getattr(generation, "message", None)
                usage = getattr(message, "usage_metadata", None)
                if message is not None and message.response_metadata.get("cache_hit"):
                    continue  # answered from the cache: no tokens billed
                if usage:
                    self.item.input_tokens += int(usage.get("input_tokens", 0))
                    self.item.output_tokens += int(usage.get("output_tokens", 0))
                if message is not None and message.response_metadata.get("usage_estimated"):
                    self.item.tokens_estimated = True


class TokenStreamHandler(_ModelEventsOnly, AsyncCallbackHandler):
    """Passes each visible token to ``on_token(run_id, token)``.

    Tokens are kept per run id, so concurrent model calls never interleave in
    a buffer.  When an attempt fails after tokens were shown and is retried,
    ``on_discard(run_id, text)`` receives the text that was discarded.  So it does when a finished answer it
    showed is refused afterwards (schema repair announces it with the ``chain_runner_discard`` custom event).
    """

    run_inline = True  # model events, and the discard event, which only schema repair (never a compiled chain) sends

    def __init__(self, on_token: TokenSink, on_discard: DiscardSink | None = None) -> None:
        self.on_token = on_token
        self.on_discard = on_discard
        self.buffers: dict[UUID, list[str]] = {}
        self.shown: deque[tuple[UUID, str]] = deque(maxlen=16)
        """The last answers shown in full, until one is refused."""

    async def on_llm_new_token(
        self,
        token: str | list[str | dict[str, Any]],
        *,
        chunk: GenerationChunk | ChatGenerationChunk | None = None,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        if not token or not _visible(tags):
            return
        if not isinstance(token, str):
            token = chunk.text if chunk is not None else ""
        self.buffers.setdefault(run_id, []).append(token)
        result = self.on_token(run_id, token)
        if result is not None:
            await result

    async def on_retry(self, retry_state: Any, *, run_id: UUID, **kwargs: Any) -> None:
        shown = self.buffers.pop(run_id, None)
        if shown and self.on_discard is not None:
            result = self.on_discard(run_id, "".join(shown))
            if result is not None:
                await result

    async def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        shown = self.buffers.pop(run_id, None)
        if shown:
            self.shown.append((run_id, "".join(shown)))

    async def on_custom_event(self, name: str, data: Any, *, run_id: UUID, **kwargs: Any) -> None:
        if name != DISCARD_EVENT or not isinstance(data, dict) or self.on_discard is None:
            return
        for entry in reversed(self.shown):
            if entry[1] == data.get("text"):
                self.shown.remove(entry)
                result = self.on_discard(entry[0], entry[1])
                if result is not None:
                    await result
                return

    async def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self.buffers.pop(run_id, None)


def live_token_handler(out: TextIO | None = None, err: TextIO | None = None) -> TokenStreamHandler:
    """Print tokens as they arrive; say so when a failed attempt's tokens are discarded."""
    stdout = out or sys.stdout
    stderr = err or sys.stderr

    def on_token(run_id: UUID, token: str) -> None:
        stdout.write(token)
        stdout.flush()

    def on_discard(run_id: UUID, text: str) -> None:
        stdout.write("\n")
        stdout.flush()
        stderr.write(f"[attempt failed after {len(text)} characters: the text above is discarded; retrying]\n")
        stderr.flush()

    return TokenStreamHandler(on_token, on_discard)
