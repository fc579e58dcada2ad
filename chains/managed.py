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

import logging
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, cast

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.chat_models import generate_from_stream
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, Field, SecretStr

from chains.deadline import within
from chains.limits import Limits, active_limits
from chains.metrics import current_item
from chains.retry import BackoffWait, BrokenStreamError, Failure, NoAnswerError, classify, final_error
from chains.tokens import counter_for

log = logging.getLogger("chains.requests")


def _finish_reason(chunks: list[ChatGenerationChunk]) -> str | None:
    for chunk in reversed(chunks):
        info = chunk.generation_info or {}
        reason = info.get("finish_reason") or chunk.message.response_metadata.get("finish_reason")
        if reason:
            return str(reason)
    return None


def _headers(result: ChatResult) -> Any:
    """Response headers, where the provider integration exposes them (ChatOpenAI's include_response_headers)."""
    if not result.generations:
        return None
    generation = result.generations[0]
    info = generation.generation_info or {}
    return info.get("headers") or generation.message.response_metadata.get("headers")


@dataclass(slots=True)
class _Call:
    """One model call as the attempts of it see it."""

    messages: list[BaseMessage]
    stop: list[str] | None
    run_manager: AsyncCallbackManagerForLLMRun | None
    params: dict[str, Any]
    stream: bool
    limits: Limits | None


class ManagedChatModel(BaseChatModel):
    """A chat model with the run's limits, one retry layer and usage accounting."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    inner: BaseChatModel
    """The provider's model; its own SDK retries should be off (``max_retries=0``)."""
    streaming: bool = False
    """Stream each request and report tokens to callbacks as they arrive."""
    max_retries: int = 5
    timeout: float = 600.0
    """Seconds one attempt may take as a whole, the complete answer included."""
    overrides: dict[str, Any] = Field(default_factory=dict)
    """Request parameters that win over those bound by a prompt file (the CLI's flags)."""
    limits: Limits | None = None
    """Fallback limits when no run has installed its own (see ``chains.limits``)."""
    base_url: str | None = None
    token_model: str | None = None
    """Model name used to pick a tokenizer for estimates."""
    wait: BackoffWait = Field(default_factory=BackoffWait)

    @property
    def _llm_type(self) -> str:
        return f"managed-{self.inner._llm_type}"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        # The cache key: the inner model's identity and parameters, plus ours.
        return {
            "inner": self.inner._llm_type,
            **self.inner._identifying_params,
            "overrides": dict(sorted(self.overrides.items())),
        }

    def _get_invocation_params(self, stop: list[str] | None = None, **kwargs: Any) -> dict[str, Any]:
        params = self.inner._get_invocation_params(stop=stop, **{**kwargs, **self.overrides})
        params["_type"] = self._llm_type
        return params

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        """Tools in the inner model's own format (so ``with_structured_output`` works too),
        bound on this model so that the limits and retries still apply."""
        bound = self.inner.bind_tools(tools, **kwargs)
        return self.bind(**getattr(bound, "kwargs", {}))

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        raise NotImplementedError(
            "chain-runner models are async: use ainvoke/abatch/astream (in a notebook: `await chain.ainvoke(...)`)"
        )

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        params = {**kwargs, **self.overrides}
        stream = bool(params.pop("stream", self.streaming))
        call = _Call(messages, stop, run_manager, params, stream, active_limits() or self.limits)
        limits = call.limits
        try:  # the first attempt goes straight through: no retry machinery on the hot path
            result = await self._attempt(call)
        except Exception as exc:
            failure = classify(exc)
            if not failure.retryable or self.max_retries == 0:
                error = self._final(exc, failure, 1)
                if error is exc:
                    raise
                raise error from exc
            result = await self._retry(exc, call)
        if limits is not None:
            limits.concurrency.succeeded()
        self._account(messages, result)
        return result

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

    async def _retry(self, first: Exception, call: _Call) -> ChatResult:
        """Attempts 2..max_retries+1 with tenacity; the first attempt's failure is replayed as attempt 1."""
        from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

        item = current_item()
        limits, run_manager = call.limits, call.run_manager

        async def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            failure = classify(exc) if exc else None
            if failure is not None and failure.throttled and limits is not None:
                limits.concurrency.throttled()
            if item is not None:
                item.retries += 1
            log.info(
                "retry %d/%d in %.2fs: %s%s",
                state.attempt_number,
                self.max_retries,
                state.upcoming_sleep,
                failure.reason if failure else "unknown",
                f" (Retry-After {failure.retry_after:g}s)" if failure and failure.retry_after is not None else "",
            )
            if run_manager is not None:
                await run_manager.on_retry(state)

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.max_retries + 1),
            wait=self.wait,
            retry=retry_if_exception(lambda exc: classify(exc).retryable),
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

    async def _attempt(self, call: _Call) -> ChatResult:
        limits = call.limits
        if limits is None:
            return await self._request_within_deadline(call)
        count, _exact = counter_for(self.token_model)
        prompt_tokens = sum(count(m.text) for m in call.messages)
        output_tokens = int(call.params.get("max_tokens") or limits.output_tokens_avg)
        cost = limits.prices.cost(self.token_model, prompt_tokens, output_tokens)
        item = current_item()
        async with limits.request(prompt_tokens + output_tokens, cost) as booking:
            if item is not None:
                item.wait_s += booking.waited_s
            result = await self._request_within_deadline(call)
            usage = self._usage(call.messages, result)
            actual_cost = limits.prices.cost(self.token_model, usage["input_tokens"], usage["output_tokens"])
            limits.settle(booking, usage["total_tokens"], usage["output_tokens"], actual_cost)
            if limits.rate is not None:
                limits.rate.observe_headers(_headers(result), prompt_tokens + output_tokens)
            if item is not None and actual_cost is not None:
                item.cost_usd = (item.cost_usd or 0.0) + actual_cost
            return result

    async def _request_within_deadline(self, call: _Call) -> ChatResult:
        """One attempt, bounded as a whole by ``timeout``: the HTTP client's timeouts bound each
        read, so an answer that keeps trickling bytes (a model looping without a finish reason, a
        proxy keeping the connection alive) would otherwise hold its worker forever."""
        return await within(self.timeout, self._request(call))

    async def _request(self, call: _Call) -> ChatResult:
        """One attempt at the provider; a streamed answer must end with a finish reason."""
        if not call.stream:
            result = await self.inner._agenerate(call.messages, stop=call.stop, **call.params)
            if not result.generations:
                raise NoAnswerError("the provider answered 200 with no choices")
            return result
        run_manager = call.run_manager
        chunks: list[ChatGenerationChunk] = []
        source_iter = cast(
            AsyncGenerator[ChatGenerationChunk, None],
            self.inner._astream(call.messages, stop=call.stop, **call.params),
        )
        async with aclosing(source_iter) as source:
            async for chunk in source:
                if run_manager is not None and chunk.message.content:
                    await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                chunks.append(chunk)
        if not chunks:
            raise BrokenStreamError("the stream ended before any content")
        if _finish_reason(chunks) is None:
            raise BrokenStreamError("the stream ended without a finish reason")
        return generate_from_stream(iter(chunks))

    def _usage(self, messages: list[BaseMessage], result: ChatResult) -> UsageMetadata:
        """The answer's usage; estimated (and marked so) when the provider sent none."""
        message = result.generations[0].message if result.generations else None
        if isinstance(message, AIMessage) and message.usage_metadata is not None:
            return message.usage_metadata
        count, _exact = counter_for(self.token_model)
        prompt = sum(count(m.text) for m in messages)
        completion = count(message.text) if message is not None else 0
        usage = UsageMetadata(input_tokens=prompt, output_tokens=completion, total_tokens=prompt + completion)
        if isinstance(message, AIMessage):
            message.usage_metadata = usage
            message.response_metadata["usage_estimated"] = True
        return usage

    def _account(self, messages: list[BaseMessage], result: ChatResult) -> None:
        item = current_item()
        usage_known = bool(result.generations) and getattr(result.generations[0].message, "usage_metadata", None)
        if not usage_known:
            self._usage(messages, result)
        if item is not None:
            item.model_calls += 1
            message = result.generations[0].message if result.generations else None
            if message is not None and message.response_metadata.get("usage_estimated"):
                item.tokens_estimated = True
