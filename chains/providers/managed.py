"""``ManagedChatModel``: every model request of a run goes through here.

It wraps any ``BaseChatModel`` and, around each single request, holds a slot
of the run's concurrency limit, retries transient failures with backoff
(honouring ``Retry-After``), treats a broken stream as a failed attempt,
streams tokens to the callbacks, and fills in estimated usage when the
provider reports none.  It is itself a plain ``BaseChatModel``, so chains
built on it stay ordinary LCEL runnables, and LangChain's cache interface
(``cache=``) answers repeated requests before any of this runs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, aclosing
from typing import Any, Literal, cast

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.base import LangSmithParams
from langchain_core.language_models.chat_models import generate_from_stream
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from pydantic import ConfigDict, Field, PrivateAttr, SecretStr, model_validator

from chains.engine.deadline import within
from chains.engine.limits import Limits, active_limits
from chains.engine.metrics import ItemMetrics, current_item
from chains.engine.retry import (
    BackoffWait,
    BrokenStreamError,
    Failure,
    NoAnswerError,
    classify,
    final_error,
    flex_unavailable,
)
from chains.errors import ProviderError
from chains.providers import accounting
from chains.providers.fallbacks import fallback_reason, note_fallback
from chains.providers.portal import AsyncView, Portal
from chains.providers.streaming import Call, finish_reason, stream_to_consumer, whole_answer_chunk

log = logging.getLogger("chains.requests")


class ManagedChatModel(BaseChatModel):
    """A chat model with the run's limits, one retry layer and usage accounting."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    inner: BaseChatModel
    """The provider's model; its own SDK retries should be off (``max_retries=0``)."""
    inner_for_loop: Callable[[asyncio.AbstractEventLoop], BaseChatModel] | None = Field(default=None, exclude=True)
    """The inner model to use on a given event loop (``ModelSession`` gives each loop its own HTTP pool,
    see ``chains.providers.pools``).  Without it, ``inner`` serves every loop: fine for a model that holds no
    loop-bound resources, or that is only ever used from one loop."""
    stream_requests: bool = False
    """The runner's own streaming (``RunSettings.stream``): stream each request, report its tokens
    to the callbacks, and on a failed attempt report them discarded and retry.  Deliberately not
    LangChain's ``streaming`` field: a model that sets that field to False never streams, even for
    a consumer calling ``astream``.  Consumers that stream always get tokens as they arrive."""
    max_retries: int = 5
    timeout: float = 600.0
    """Seconds one attempt may take as a whole, the complete answer included."""
    overrides: dict[str, Any] = Field(default_factory=dict)
    """Request parameters that win over those bound by a prompt file (the CLI's flags)."""
    limits: Limits | None = None
    """Fallback limits when no run has installed its own (see ``chains.engine.limits``)."""
    base_url: str | None = None
    token_model: str | None = None
    """Model name used to pick a tokenizer for estimates."""
    wait: BackoffWait = Field(default_factory=BackoffWait)
    temperature: float | None = None
    max_tokens: int | None = None
    stop: list[str] | None = None
    """LangChain's standard model parameters (``ManagedChatModel(inner=..., max_tokens=100)``), sent with
    every request like a call's own; a call's own values and ``overrides`` win.  ``None`` leaves the
    inner model's own setting."""
    batches: Any = Field(default=None, exclude=True)
    """The batch tier's ``BatchCollector`` (``chains.providers.batch``): requests go into provider batches
    instead of being sent; None sends them online."""
    tier: Literal["online", "flex"] = "online"
    """The price tier requests are sent at (the inner model carries ``service_tier="flex"`` for flex)."""
    flex_fallback: bool = False
    """A flex request the flex tier has no capacity for is sent again at once at the standard tier."""
    fallback: ManagedChatModel | None = Field(default=None, exclude=True)
    """The next model to try when a request fails for a reason it may not share (``chains.providers.fallbacks``)."""
    endpoints: Any = Field(default=None, exclude=True)
    """With several ``--base-url``: the ``EndpointRouter`` each attempt asks for its endpoint
    (``chains.providers.endpoints``); None sends every request to ``inner``."""
    label: str = ""
    """The model as the user named it (``openai:gpt-4o-mini``), for records and logs; default: the token model."""
    _portal: Portal | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _streaming_is_stream_requests(cls, data: Any) -> Any:
        """``streaming=`` (the usual LangChain spelling, and this class's before) means ``stream_requests``."""
        if isinstance(data, dict) and "streaming" in data:
            data = dict(data)
            data.setdefault("stream_requests", bool(data.pop("streaming")))
        return data

    @property
    def _llm_type(self) -> str:
        return f"managed-{self.inner._llm_type}"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        # The cache key: the inner model's identity and parameters, plus ours.
        defaults = self._defaults()
        return {
            "inner": self.inner._llm_type,
            **self.inner._identifying_params,
            "overrides": dict(sorted(self.overrides.items())),
            **({"defaults": defaults, "stop": self.stop} if defaults or self.stop is not None else {}),
        }

    def _defaults(self) -> dict[str, Any]:
        values = {"temperature": self.temperature, "max_tokens": self.max_tokens}
        return {name: value for name, value in values.items() if value is not None}

    def _params(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """One request's parameters: this model's standard ones, then the call's, then ``overrides``."""
        return {**self._defaults(), **kwargs, **self.overrides}

    def _stop(self, stop: list[str] | None) -> list[str] | None:
        return self.stop if stop is None else stop

    def _get_invocation_params(self, stop: list[str] | None = None, **kwargs: Any) -> dict[str, Any]:
        params = self.inner._get_invocation_params(stop=self._stop(stop), **self._params(kwargs))
        params["_type"] = self._llm_type
        return params

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        """The inner model's provider, model name and parameters, so tracing shows who answered."""
        return self.inner._get_ls_params(stop=self._stop(stop), **self._params(kwargs))

    def _inner(self, call: Call | None = None) -> BaseChatModel:
        """The inner model for the running event loop (see ``inner_for_loop``), at the call's endpoint."""
        if call is not None and call.endpoint is not None:
            return cast(BaseChatModel, call.endpoint.model())
        return self.inner if self.inner_for_loop is None else self.inner_for_loop(asyncio.get_running_loop())

    def portal(self) -> Portal:
        """The event loop that sync calls (``invoke``, ``batch``, ``stream``) run on."""
        if self._portal is None:
            self._portal = Portal()
        return self._portal

    def close_portal(self) -> None:
        """Stop the sync calls' event loop (a later sync call starts a new one)."""
        if self._portal is not None:
            self._portal.close()
            self._portal = None

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | dict[str, Any] | bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Tools in the inner model's own format (so ``with_structured_output`` works too), bound on
        this model so that the limits and retries still apply.  ``tool_choice`` is named, as LangChain
        looks for it to know that a model can be made to call a tool."""
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice
        bound = self.inner.bind_tools(tools, **kwargs)
        return self.bind(**getattr(bound, "kwargs", {}))

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        """Sync ``invoke``/``batch``: the async request path, run on this model's portal loop."""
        manager = AsyncView(run_manager) if run_manager is not None else None
        return self.portal().run(self._agenerate(messages, stop, cast(Any, manager), **kwargs))

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        """Sync ``stream``: chunks as they arrive (LangChain reports them to the callbacks)."""
        yield from self.portal().iterate(self._astream(messages, stop, None, **kwargs))

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        params = self._params(kwargs)
        try:
            if self.batches is not None:
                return await self._batched(messages, stop, params)
            return await self._online(messages, stop, run_manager, params)
        except ProviderError as exc:  # a fallback of the batch tier is sent online: it is for the few that failed
            reason = fallback_reason(exc, self.wait.retry_after_cap) if self.fallback is not None else None
            if self.fallback is None or reason is None:
                raise
            note_fallback(self.label, exc, reason, self.fallback.label)
            return await self.fallback._agenerate(messages, stop, run_manager, **kwargs)

    async def _batched(self, messages: list[BaseMessage], stop: list[str] | None, params: dict[str, Any]) -> ChatResult:
        from chains.providers.batch.requests import batched

        result = await batched(self, messages, self._stop(stop), params)
        accounting.account(self, messages, result, "batch")
        return result

    async def _online(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        run_manager: AsyncCallbackManagerForLLMRun | None,
        params: dict[str, Any],
    ) -> ChatResult:
        stream = bool(params.pop("stream", self.stream_requests))
        call = Call(messages, self._stop(stop), run_manager, params, stream, active_limits() or self.limits, self.tier)
        limits = call.limits
        try:  # the first attempt goes straight through: no retry machinery on the hot path
            result = await self._attempt(call)
        except Exception as exc:
            failure = classify(exc)
            if not self._worth_retrying(failure):
                error = self._final(exc, failure, 1)
                if error is exc:
                    raise
                raise error from exc
            result = await self._retry(exc, call)
        if limits is not None:
            limits.concurrency.succeeded()
        self._account(call, result)
        return result

    def _worth_retrying(self, failure: Failure) -> bool:
        """Transient, retries left, and no hold longer than the retry layer waits while a fallback model could
        answer now (``Retry-After`` past ``wait.retry_after_cap``: a key rate-limited for minutes)."""
        long_hold = failure.throttled and (failure.retry_after or 0.0) > self.wait.retry_after_cap
        return failure.retryable and self.max_retries > 0 and not (long_hold and self.fallback is not None)

    def _final(self, exc: Exception, failure: Failure, attempts: int) -> Exception:
        """Provider failures become one clear ProviderError; anything else (a bug, a budget stop) stays itself."""
        if failure.provider:
            return final_error(
                exc, failure, attempts, timeout=self.timeout, base_url=self.base_url, secrets=self._secrets()
            )
        return exc

    def _secrets(self) -> list[str]:
        """The inner model's keys (its ``SecretStr`` fields): providers echo a refused key in their message."""
        return [value.get_secret_value() for _name, value in self.inner if isinstance(value, SecretStr) and value]

    async def _retry(self, first: Exception, call: Call) -> ChatResult:
        """Attempts 2..max_retries+1 with tenacity; the first attempt's failure is replayed as attempt 1."""
        from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

        item = current_item()
        limits, run_manager = call.limits, call.run_manager

        async def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            failure = classify(exc) if exc else Failure(True, "unknown")
            self._note_retry(failure, state.attempt_number, state.upcoming_sleep or 0.0, limits, item)
            if run_manager is not None:
                await run_manager.on_retry(state)

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.max_retries + 1),
            wait=self.wait,
            retry=retry_if_exception(lambda exc: self._worth_retrying(classify(exc))),
            before_sleep=before_sleep,
            reraise=True,
        )
        replay: list[Exception] = [first]
        attempts = 0
        try:
            async for attempt in retrying:
                with attempt:
                    attempts += 1
                    if replay:
                        raise replay.pop()
                    result = await self._attempt(call)
        except Exception as exc:
            error = self._final(exc, classify(exc), attempts)
            if error is exc:
                raise
            raise error from exc
        return result

    def _note_retry(
        self, failure: Failure, attempt: int, sleep: float, limits: Limits | None, item: ItemMetrics | None
    ) -> None:
        """One retry decision: counted, the window halved on a 429, logged with its reason."""
        if failure.throttled and limits is not None and self.endpoints is None:  # else: the endpoint's window
            limits.concurrency.throttled()
        if item is not None:
            item.retries += 1
        log.info(
            "retry %d/%d in %.2fs: %s%s",
            attempt,
            self.max_retries,
            sleep,
            failure.reason,
            f" (Retry-After {failure.retry_after:g}s)" if failure.retry_after is not None else "",
        )

    async def _attempt(self, call: Call) -> ChatResult:
        try:
            return await self._attempt_once(call)
        except Exception as exc:
            if not (self.flex_fallback and call.tier == "flex" and flex_unavailable(exc)):
                raise
        log.info("retry now at the standard tier: the flex tier has no capacity (--flex-fallback)")
        if (item := current_item()) is not None:
            item.retries += 1
        call.tier = "online"
        call.params["service_tier"] = "default"
        return await self._attempt_once(call)

    async def _attempt_once(self, call: Call) -> ChatResult:
        async with self._booked(call) as settle:
            if self.endpoints is None:
                result = await self._request_within_deadline(call)
            else:
                async with self.endpoints.attempt() as call.endpoint:
                    result = await self._request_within_deadline(call)
            settle(result)
            return result

    async def _request_within_deadline(self, call: Call) -> ChatResult:
        """One attempt, bounded as a whole by ``timeout``: the HTTP client's timeouts bound each
        read, so an answer that keeps trickling bytes (a model looping without a finish reason, a
        proxy keeping the connection alive) would otherwise hold its worker forever."""
        cooperative = not call.stream and getattr(self._inner(call), "stops_when_cancelled", False)
        return await within(self.timeout, self._request(call), cooperative=cooperative)

    async def _request(self, call: Call) -> ChatResult:
        """One attempt at the provider; a streamed answer must end with a finish reason."""
        if not call.stream:
            result = await self._inner(call)._agenerate(call.messages, stop=call.stop, **call.params)
            if not result.generations:
                raise NoAnswerError("the provider answered 200 with no choices")
            return result
        run_manager = call.run_manager
        chunks: list[ChatGenerationChunk] = []
        source_iter = cast(
            AsyncGenerator[ChatGenerationChunk, None],
            self._inner(call)._astream(call.messages, stop=call.stop, **call.params),
        )
        async with aclosing(source_iter) as source:
            async for chunk in source:
                if run_manager is not None and chunk.message.content:
                    await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                chunks.append(chunk)
        if not chunks:
            raise BrokenStreamError("the stream ended before any content")
        if finish_reason(chunks) is None:
            raise BrokenStreamError("the stream ended without a finish reason")
        return generate_from_stream(iter(chunks))

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        """To a consumer (``astream``, ``astream_events``, ``stream``): retried only before the first content
        (``chains.providers.streaming``).  In the batch tier the answer comes whole, as one chunk, from its batch."""
        if self.batches is not None:
            result = await self._agenerate(messages, stop, run_manager, **kwargs)
            yield whole_answer_chunk(result)
            return
        async with aclosing(stream_to_consumer(self, messages, stop, run_manager, **kwargs)) as chunks:
            async for chunk in chunks:
                yield chunk

    def _booked(self, call: Call) -> AbstractAsyncContextManager[Callable[[ChatResult], None]]:
        return accounting.booked(self, call)

    def _usage(self, messages: list[BaseMessage], result: ChatResult) -> UsageMetadata:
        return accounting.usage_of(self, messages, result)

    def _account(self, call: Call, result: ChatResult) -> None:
        accounting.account(self, call.messages, result, call.tier)
