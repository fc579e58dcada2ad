"""One model call of a batch-tier run, as ``ManagedChatModel`` makes it: budget, collector, accounting.

No concurrency slot and no rate reservation are held while a request waits for its batch (a batch's
requests do not count against the online limits, and waiting hours in a slot would stop the run); the
``--max-cost`` budget is reserved at batch prices before the request is queued and settled on the
answer's real usage.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatResult

from chains.engine.limits import active_limits
from chains.engine.metrics import current_item, current_key
from chains.engine.pricing import Tier
from chains.providers.tokens import counter_for

if TYPE_CHECKING:
    from chains.providers.managed import ManagedChatModel

TIER: Tier = "batch"


async def batched(
    model: ManagedChatModel, messages: list[BaseMessage], stop: list[str] | None, params: dict[str, Any]
) -> ChatResult:
    """``params`` are the call's request parameters (``stream`` is ignored: a batch row is answered whole)."""
    collector = model.batches
    assert collector is not None
    params = {name: value for name, value in params.items() if name != "stream"}
    if stop is not None:
        params["stop"] = stop
    limits = active_limits() or model.limits
    item = current_item()
    reserved = 0.0
    if limits is not None and limits.budget is not None:
        count, _exact = counter_for(model.token_model)
        prompt_tokens = sum(count(m.text) for m in messages)
        output_tokens = int(params.get("max_tokens") or limits.output_tokens_avg)
        reserved = limits.reserve_cost(limits.prices.cost(model.token_model, prompt_tokens, output_tokens, tier=TIER))
    try:
        result = await collector.request(model._inner(), messages, params, current_key())
    except BaseException:
        if limits is not None:
            limits.settle_cost(reserved, 0.0)
        raise
    usage = model._usage(messages, result)
    cost = limits.prices.cost_of_usage(model.token_model, usage, TIER) if limits is not None else None
    if limits is not None:
        limits.settle_cost(reserved, cost)
        limits.output_tokens_avg += (usage["output_tokens"] - limits.output_tokens_avg) * 0.1
    if item is not None:
        item.answered_at(TIER)
        if cost is not None:
            item.cost_usd = (item.cost_usd or 0.0) + cost
    return result
