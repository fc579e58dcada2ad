"""What one model request costs the run: its booking in the limits, its usage and its price tier.

``booked`` holds a request's share of the run's limits while it is in flight (the concurrency slot,
the rate reservation, the budget at the call's tier) and ``settle`` replaces the estimates with the
real usage, priced per tier with cached input tokens at their own price; ``usage_of`` fills in
estimated usage (marked so) when a provider sends none; ``account`` books the call on its input's
metrics.  ``ManagedChatModel``'s online, streaming and batch paths all book through here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatResult

from chains.engine.metrics import current_item
from chains.providers.tokens import counter_for

if TYPE_CHECKING:
    from chains.providers.managed import ManagedChatModel
    from chains.providers.streaming import Call


def response_headers(result: ChatResult) -> Any:
    """Response headers, where the provider integration exposes them (ChatOpenAI's include_response_headers)."""
    if not result.generations:
        return None
    generation = result.generations[0]
    info = generation.generation_info or {}
    return info.get("headers") or generation.message.response_metadata.get("headers")


def prompt_tokens(model: ManagedChatModel, messages: list[BaseMessage]) -> int:
    count, _exact = counter_for(model.token_model)
    return sum(count(m.text) for m in messages)


@asynccontextmanager
async def booked(model: ManagedChatModel, call: Call) -> AsyncIterator[Callable[[ChatResult], None]]:
    """One request's share of the run's limits, held while it is in flight; ``settle(result)``
    replaces the estimates with the real (or estimated) usage and books its cost."""
    limits = call.limits
    if limits is None:
        yield lambda result: None
        return
    prompt = prompt_tokens(model, call.messages)
    output = int(call.params.get("max_tokens") or limits.output_tokens_avg)
    cost = limits.prices.cost(model.token_model, prompt, output, tier=call.tier)
    item = current_item()
    async with limits.request(prompt + output, cost) as booking:
        if item is not None:
            item.wait_s += booking.waited_s

        def settle(result: ChatResult) -> None:
            usage = usage_of(model, call.messages, result)
            actual_cost = limits.prices.cost_of_usage(model.token_model, usage, call.tier)
            # settle first, then the headers: a Ray worker's limits learn from the settle which request brought the
            # headers (its send time places the server's count on the governor's clock, chains/scale/server_limits)
            limits.settle(booking, usage["total_tokens"], usage["output_tokens"], actual_cost)
            if call.endpoint is not None and model.endpoints is not None:  # that endpoint's own limits
                model.endpoints.observe_headers(call.endpoint, response_headers(result), prompt + output)
            elif limits.rate is not None:
                limits.rate.observe_headers(response_headers(result), prompt + output)
            if item is not None and actual_cost is not None:
                item.cost_usd = (item.cost_usd or 0.0) + actual_cost

        yield settle


def usage_of(model: ManagedChatModel, messages: list[BaseMessage], result: ChatResult) -> UsageMetadata:
    """The answer's usage; estimated (and marked so) when the provider sent none."""
    message = result.generations[0].message if result.generations else None
    if isinstance(message, AIMessage) and message.usage_metadata is not None:
        return message.usage_metadata
    count, _exact = counter_for(model.token_model)
    prompt = sum(count(m.text) for m in messages)
    completion = count(message.text) if message is not None else 0
    usage = UsageMetadata(input_tokens=prompt, output_tokens=completion, total_tokens=prompt + completion)
    if isinstance(message, AIMessage):
        message.usage_metadata = usage
        message.response_metadata["usage_estimated"] = True
    return usage


def account(model: ManagedChatModel, messages: list[BaseMessage], result: ChatResult, tier: str) -> None:
    """Book one answered call on its input's metrics: one more model call, at ``tier``."""
    item = current_item()
    usage_known = bool(result.generations) and getattr(result.generations[0].message, "usage_metadata", None)
    if not usage_known:
        usage_of(model, messages, result)
    if item is not None:
        item.model_calls += 1
        item.answered_at(tier)
        item.model = model.label or model.token_model
        message = result.generations[0].message if result.generations else None
        if message is not None and message.response_metadata.get("usage_estimated"):
            item.tokens_estimated = True
