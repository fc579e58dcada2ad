"""Streaming to a consumer (``astream``, ``astream_events``, ``stream``) for ``ManagedChatModel``.

A consumer sees each chunk as it arrives, so an attempt can be retried only until its first content;
after that a broken stream is an error saying so.  Also the two small things both request paths share:
``Call`` (one model call as its attempts see it) and ``finish_reason`` (how a stream says it is complete).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from contextlib import AsyncExitStack, aclosing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun
from langchain_core.language_models.chat_models import generate_from_stream
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.outputs import ChatGenerationChunk, ChatResult

from chains.engine.limits import Limits, active_limits
from chains.engine.metrics import current_item
from chains.engine.pricing import Tier
from chains.engine.retry import BrokenStreamError, classify, redact
from chains.errors import ProviderError

if TYPE_CHECKING:
    from chains.providers.managed import ManagedChatModel


def finish_reason(chunks: list[ChatGenerationChunk]) -> str | None:
    for chunk in reversed(chunks):
        info = chunk.generation_info or {}
        reason = info.get("finish_reason") or chunk.message.response_metadata.get("finish_reason")
        if reason:
            return str(reason)
    return None


def has_content(chunk: ChatGenerationChunk) -> bool:
    message = chunk.message
    return bool(message.content) or bool(getattr(message, "tool_call_chunks", None))


def whole_answer_chunk(result: ChatResult) -> ChatGenerationChunk:
    """A whole answer (a batch row's) as the one chunk of a stream: its text, tool calls, usage and metadata."""
    generation = result.generations[0]
    message = generation.message
    tool_calls = [
        tool_call_chunk(name=call["name"], args=json.dumps(call["args"]), id=call.get("id"), index=i)
        for i, call in enumerate(getattr(message, "tool_calls", None) or [])
    ]
    chunk = AIMessageChunk(
        content=message.content,
        additional_kwargs=dict(message.additional_kwargs),
        response_metadata=dict(message.response_metadata),
        usage_metadata=getattr(message, "usage_metadata", None),
        tool_call_chunks=tool_calls,
        id=message.id,
    )
    return ChatGenerationChunk(message=chunk, generation_info=generation.generation_info)


@dataclass(slots=True)
class Call:
    """One model call as the attempts of it see it."""

    messages: list[BaseMessage]
    stop: list[str] | None
    run_manager: AsyncCallbackManagerForLLMRun | None
    params: dict[str, Any]
    stream: bool
    limits: Limits | None
    tier: Tier = "online"
    """The price tier it is sent at (``online``, ``flex``); a flex call falls back to ``online``."""
    endpoint: Any = None
    """The endpoint its current attempt went to, with several ``--base-url`` (``chains.providers.endpoints``)."""


async def stream_to_consumer(
    model: ManagedChatModel,
    messages: list[BaseMessage],
    stop: list[str] | None = None,
    run_manager: AsyncCallbackManagerForLLMRun | None = None,
    /,  # positional: a call's own keyword arguments (``model=``, ...) are request parameters
    **kwargs: Any,
) -> AsyncGenerator[ChatGenerationChunk, None]:
    """Chunks as they arrive, with the run's limits, deadline and usage accounting.

    Until the first piece of content has reached the consumer a failed attempt is retried as
    any other; after it, the consumer has seen text that a retry could not take back, so a
    broken stream fails with a ``ProviderError`` saying so, and is never silently retried.
    (The runner's own streaming, ``stream_requests``, buffers and can retry: see README.)
    """
    params = model._params(kwargs)
    params.pop("stream", None)
    call = Call(messages, model._stop(stop), None, params, True, active_limits() or model.limits, model.tier)
    item = current_item()
    attempt = 1
    while True:
        source = _stream_attempt(model, call)
        try:
            first = await anext(source)
            break
        except Exception as exc:
            await source.aclose()
            failure = classify(exc)
            if not failure.retryable or attempt > model.max_retries:
                error = model._final(exc, failure, attempt)
                if error is exc:
                    raise
                raise error from exc
            sleep = model.wait.for_failure(failure, attempt)
            model._note_retry(failure, attempt, sleep, call.limits, item)
            await asyncio.sleep(sleep)
            attempt += 1
    async with aclosing(source):
        yield first
        try:
            async for chunk in source:
                yield chunk
        except Exception as exc:
            raise _broken_after_delivery(model, exc, attempt) from exc
    if call.limits is not None:
        call.limits.concurrency.succeeded()


def _broken_after_delivery(model: ManagedChatModel, exc: Exception, attempts: int) -> Exception:
    failure = classify(exc)
    if not failure.provider:
        return exc
    message = (
        f"{failure.reason} after part of the answer had been streamed to the caller: not retried, since the "
        "caller has already seen that text; run the input again (or stream through run_batch/stream_one, "
        "which discard a failed attempt's text and retry)"
    )
    return ProviderError(
        redact(message, model._secrets()), status=failure.status, retryable=failure.retryable, attempts=attempts
    )


async def _stream_attempt(model: ManagedChatModel, call: Call) -> AsyncGenerator[ChatGenerationChunk, None]:
    """One streamed attempt: nothing is yielded before the first content, so that everything
    up to it can be retried; the attempt as a whole ends by ``timeout``."""
    deadline = asyncio.get_running_loop().time() + model.timeout
    async with model._booked(call) as settle, AsyncExitStack() as stack:
        if model.endpoints is not None:
            call.endpoint = await stack.enter_async_context(model.endpoints.attempt())
        source = cast(
            AsyncGenerator[ChatGenerationChunk, None],
            model._inner(call)._astream(call.messages, stop=call.stop, **call.params),
        )
        chunks: list[ChatGenerationChunk] = []
        held: list[ChatGenerationChunk] | None = []  # chunks before the first content
        async with aclosing(source):
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        chunk = await anext(source)
                except StopAsyncIteration:
                    break
                chunks.append(chunk)
                if held is not None:
                    held.append(chunk)
                    if not has_content(chunk):
                        continue
                    chunk, rest = held[-1], held[:-1]
                    held = None
                    for early in rest:
                        yield early
                yield chunk
        if not chunks:
            raise BrokenStreamError("the stream ended before any content")
        if finish_reason(chunks) is None:
            raise BrokenStreamError("the stream ended without a finish reason")
        for early in held or ():  # an answer with no content at all (an empty reply)
            yield early
        result = generate_from_stream(iter(chunks))
        estimated = getattr(result.generations[0].message, "usage_metadata", None) is None
        settle(result)  # fills in estimated usage when the provider sent none
        model._account(call, result)
        if estimated:
            usage = cast(AIMessage, result.generations[0].message).usage_metadata
            yield ChatGenerationChunk(
                message=AIMessageChunk(content="", usage_metadata=usage, response_metadata={"usage_estimated": True})
            )
