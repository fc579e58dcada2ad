"""``--dry-run``: what a run would send and cost, without sending anything.

Each input goes through the real chain, whose model is a ``CaptureModel``: at the chain's first
model call it records the request (messages and parameters) and stops the chain with a private
exception.  So the prompt files, the templates and the readers all run as they would, and an
input that would fail before reaching the model fails here too.  Only sums are kept, never the
requests, so any number of inputs fits in constant memory.

What is estimated, and how: prompt tokens as ``ManagedChatModel`` reserves them (the messages'
text through ``chains.providers.tokens.counter_for``); output tokens as each request's
``max_tokens``, or a default where it sets none, so an upper bound rather than what the model will
write; cost per tier from the ``PriceTable`` with no cached input (the most a run can cost).  Only
the first model call of each input is counted: a multi-step chain (``story``: an outline, then the
story written from it) makes more requests, whose prompts depend on the answers.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, NoReturn

from langchain_core.caches import BaseCache
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatResult
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import Field

from chains.engine.pricing import TIERS, PriceTable, Tier
from chains.errors import ChainRunnerError, clip, one_line

DEFAULT_OUTPUT_TOKENS = 256
"""Output tokens assumed for a request that sets no ``max_tokens`` (the runner's starting average too)."""


class _Captured(BaseException):
    """Stops a chain at its first model call.

    A ``BaseException``, not an ``Exception``: a chain's ``with_retry`` or ``with_fallbacks`` (and any
    ``except Exception`` in a user's step) must not retry it, fall back from it or swallow it.
    """


@dataclass(frozen=True)
class Request:
    """One model request as the chain would send it."""

    messages: list[BaseMessage]
    params: dict[str, Any]
    """The call's parameters (``max_tokens``, ``temperature``, ``response_format``, ``stop``, ...)."""


@dataclass
class Capture:
    """Where one input's first request is recorded (see ``capturing``)."""

    first: Request | None = None


_current: ContextVar[Capture | None] = ContextVar("chain_runner_dry_run_capture", default=None)


@contextmanager
def capturing() -> Iterator[Capture]:
    """Record the first request a ``CaptureModel`` gets inside this block (and the tasks it starts).

    A context variable, not a field of the model: a chain that fans out at its first step leaves
    its other branches running after the first one stops it, and a late branch must write into its
    own input's record, never into the next input's.
    """
    capture = Capture()
    token = _current.set(capture)
    try:
        yield capture
    finally:
        _current.reset(token)


class CaptureModel(BaseChatModel):
    """A chat model that answers nothing: it records its first request (``capturing``) and stops the chain."""

    model_name: str | None = None
    """The model the run would use: names the request, and picks the tokenizer."""
    max_tokens: int | None = None
    """A default ``max_tokens`` (the model's own setting); a call's own value wins."""
    overrides: dict[str, Any] = Field(default_factory=dict)
    """Parameters that win over a prompt file's (the CLI's ``--max-tokens``, ``--temperature``)."""
    cache: BaseCache | bool | None = False
    """Never LangChain's cache: a cached answer would let the chain run on past its first call."""

    @property
    def _llm_type(self) -> str:
        return "chain-runner-dry-run"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name}

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Tools in OpenAI's format, so that chains built with tools (``with_structured_output``) dry-run too."""
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice
        return self.bind(tools=[convert_to_openai_tool(tool) for tool in tools], **kwargs)

    def _capture(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]) -> NoReturn:
        capture = _current.get()
        if capture is not None and capture.first is None:  # a first step that fans out: its first call counts
            params = {**({"max_tokens": self.max_tokens} if self.max_tokens is not None else {}), **kwargs}
            params.update(self.overrides)
            if stop is not None:
                params["stop"] = stop
            capture.first = Request(list(messages), params)
        raise _Captured

    def invoke(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AIMessage:
        """Stops the chain here, before LangChain's generate machinery: it handles only ``Exception`` s well."""
        self._capture(self._convert_input(input).to_messages(), stop, kwargs)

    async def ainvoke(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AIMessage:
        self._capture(self._convert_input(input).to_messages(), stop, kwargs)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        """Only ``generate`` (LangChain's legacy batch API) gets here; ``invoke`` and ``ainvoke`` stop earlier."""
        self._capture(messages, stop, kwargs)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self._capture(messages, stop, kwargs)


def output_tokens_of(params: Mapping[str, Any], default: int) -> int:
    """The most tokens a request lets the model write: its ``max_tokens`` (or ``max_completion_tokens``)."""
    for name in ("max_tokens", "max_completion_tokens"):
        value = params.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return default


@dataclass
class DryRunReport:
    """What a run would send: counts, tokens and cost per tier (``None``: the model has no price)."""

    model: str | None
    inputs: int = 0
    requests: int = 0
    """First-step model requests: one per input that reaches the model."""
    no_request: int = 0
    """Inputs whose chain finished without calling a model."""
    failed: int = 0
    """Inputs that failed before any model call: bad rows, missing template variables, a step's error."""
    first_error: str | None = None
    input_tokens: int = 0
    input_tokens_exact: bool = False
    """True when the prompt tokens were counted with the model's tokenizer, False for the characters rule."""
    output_tokens: int = 0
    """An upper bound: each request's ``max_tokens``, or the default where it sets none."""
    output_tokens_default: int = DEFAULT_OUTPUT_TOKENS
    cost_usd: dict[Tier, float | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "inputs": self.inputs,
            "requests": self.requests,
            "no_request": self.no_request,
            "failed": self.failed,
            "first_error": self.first_error,
            "input_tokens": self.input_tokens,
            "input_tokens_exact": self.input_tokens_exact,
            "output_tokens": self.output_tokens,
            "output_tokens_estimated": True,
            "output_tokens_default": self.output_tokens_default,
            "first_step_only": True,
            "cost_usd": {tier: self.cost_usd.get(tier) for tier in TIERS},
        }

    def lines(self) -> list[str]:
        """The report for people: what would be sent, then one line per tier, then what is not counted."""
        model = self.model or "the model"
        lines = [f"dry run on {model}, nothing sent: {self.inputs:,} inputs, {self.requests:,} first-step requests"]
        if self.no_request:
            lines.append(f"  {self.no_request:,} inputs would make no model request")
        if self.failed:
            lines.append(f"  {self.failed:,} inputs would fail before any request; the first: {self.first_error}")
        how = "counted with the model's tokenizer" if self.input_tokens_exact else "estimated at 4 characters a token"
        lines.append(f"input tokens: {self.input_tokens:,} ({how})")
        lines.append(
            f"output tokens: up to {self.output_tokens:,} (an estimate: each request's max_tokens, "
            f"or {self.output_tokens_default:,} where it sets none)"
        )
        for tier in TIERS:
            cost = self.cost_usd.get(tier)
            shown = (
                f"about {_usd(cost)}"
                if cost is not None
                else f"unknown (no price for {model}; add it with --prices FILE)"
            )
            lines.append(f"cost at the {tier} tier: {shown}")
        lines.append(
            "only the first model call of each input is counted: a multi-step chain (story: an outline, "
            "then the story) makes more requests and costs more"
        )
        return lines


def _usd(amount: float) -> str:
    """Dollars to the cent from $1, else to the millionth (a dry run of a few inputs costs fractions of a cent)."""
    if amount >= 1:
        return f"${amount:,.2f}"
    return "$" + f"{amount:.6f}".rstrip("0").rstrip(".")


async def estimate(
    chain_for_model: Callable[[CaptureModel], Runnable[Any, Any]],
    inputs: Iterable[Any] | AsyncIterable[Any],
    *,
    model_name: str | None,
    prices: PriceTable,
    output_tokens_default: int = DEFAULT_OUTPUT_TOKENS,
    count: Callable[[str], int] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> DryRunReport:
    """Run every input up to its chain's first model call and add up what would be sent.

    ``chain_for_model(model)`` builds the chain around the capture model (``lambda m: get_chain("story", m)``).
    ``inputs`` are read lazily, as ``run_batch`` reads them; an input that is an exception (a reader's bad
    row) counts as failed.  ``count`` counts a text's tokens (default: ``counter_for(model_name)``, the
    counter ``ManagedChatModel`` reserves with).  ``overrides`` win over the prompt files' parameters.
    """
    from langsmith.run_helpers import tracing_context

    from chains.providers.tokens import counter_for  # the tokenizer choice the managed model reserves with

    exact = True
    if count is None:
        count, exact = counter_for(model_name)
    model = CaptureModel(model_name=model_name, overrides=dict(overrides or {}))
    chain = chain_for_model(model)
    report = DryRunReport(model_name, input_tokens_exact=exact, output_tokens_default=output_tokens_default)
    with tracing_context(enabled=False):  # a dry run sends nothing, traces included
        async for index, value in _numbered(inputs):
            report.inputs += 1
            with capturing() as capture:
                error = value if isinstance(value, BaseException) else await _run_to_first_call(chain, value)
            request = capture.first
            if request is not None:
                report.requests += 1
                report.input_tokens += sum(count(message.text) for message in request.messages)
                report.output_tokens += output_tokens_of(request.params, output_tokens_default)
            elif error is not None:
                report.failed += 1
                report.first_error = report.first_error or _described(index, error)
            else:
                report.no_request += 1
    report.cost_usd = {
        tier: prices.cost(model_name, report.input_tokens, report.output_tokens, tier=tier) for tier in TIERS
    }
    return report


async def _run_to_first_call(chain: Runnable[Any, Any], value: Any) -> BaseException | None:
    """The input's chain up to its first model call; the error that stopped it before, if any."""
    try:
        await chain.ainvoke(value)
    except _Captured:
        return None
    except Exception as exc:  # one failing input never stops the others
        return exc
    return None


async def _numbered(values: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[tuple[int, Any]]:
    index = 0
    if isinstance(values, AsyncIterable):
        async for value in values:
            yield index, value
            index += 1
    else:
        for value in values:
            yield index, value
            index += 1


def _described(index: int, error: BaseException) -> str:
    """One line naming the input by its index (as its record would be); a reader's bad row also names its line."""
    text = clip(one_line(str(error) or type(error).__name__, MAX_ERROR_CHARS), MAX_ERROR_CHARS)
    if isinstance(error, ChainRunnerError):
        return f"input {index}: {text}"
    return f"input {index}: {type(error).__name__}: {text}"


MAX_ERROR_CHARS = 240
