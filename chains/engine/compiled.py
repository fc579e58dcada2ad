"""The compiled path: a ``prompt | model | parser`` chain run as one call when nobody would see its steps.

Through the chain's own ``ainvoke`` LangChain opens four runs per input (the sequence, the prompt, the model, the
parser), each with its config, callback manager, start and end events (a task each), ``inspect.signature`` calls
and a task per step, and it parses the answer in a thread: more client CPU than the request itself.  When the
chain is exactly a prompt template, a chat model (bound parameters allowed) and an output parser, and no one
would see those runs, ``CompiledChain.ainvoke`` gives the same output in one call: the prompt's own formatting
(the same missing-variable errors), the model's own ``_agenerate`` (so the managed model's limits, retries,
deadline, usage and fallbacks are all there), the answer's metadata as ``BaseChatModel`` sets it, and the parser's
own ``parse_result``.

"No one would see": every handler of the input is one of ours that declares what it ``watches``
(``chains.engine.callbacks``): the model run's events (``MetricsHandler``, ``TokenStreamHandler``: given a real
run manager of their own) or the top-level chain's start and end (the stop tracker: called directly); no global
handler (tracing, ``set_debug``, ``collect_runs``...: ``AsyncCallbackManager.configure`` finds none); no cache, no
rate limiter, no model callbacks or tags, no streaming ``BaseChatModel`` would choose.  Checked per input; only
the global handlers' check (LangChain's ``configure``: environment, context variables, hooks, a tenth of the
path's CPU) is reused for ``GLOBAL_CHECK_S``, so a tracer switched on mid-run is seen within that.  Anything
else, and the input goes through ``ainvoke`` as before: the chain handed to users stays the plain LCEL runnable,
composable and traceable.

The model run's end (or error) goes straight to our watchers' ``on_llm_end``/``on_llm_error``, as LangChain's
manager would call an inline handler (its errors logged, raised only for ``raise_error``), without the
manager's per-event machinery; the run manager handed to the model still carries new tokens and retries.
"""

from __future__ import annotations

import inspect
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from langchain_core.callbacks import AsyncCallbackManager, AsyncCallbackManagerForLLMRun, BaseCallbackHandler
from langchain_core.globals import get_llm_cache
from langchain_core.language_models import BaseChatModel
from langchain_core.output_parsers import BaseOutputParser
from langchain_core.outputs import ChatGeneration, Generation, LLMResult
from langchain_core.prompts import BasePromptTemplate
from langchain_core.runnables import Runnable, RunnableBinding, RunnableConfig, RunnableSequence
from langchain_core.utils.utils import LC_ID_PREFIX

from chains.engine.callbacks import MODEL_EVENTS, TOP_CHAIN

try:  # private helpers of langchain-core's that the compiled path calls (``_langchain_has_what_we_call``)
    from langchain_core.language_models import _utils
except ImportError:  # pragma: no cover - a langchain-core without them runs every chain as LangChain runs it
    _utils = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

GLOBAL_CHECK_S = 1.0
"""How long one look for global handlers (tracing, debug, hooks) stands, per compiled chain."""

_MODEL_METHODS = ("ainvoke", "agenerate_prompt", "agenerate", "_agenerate_with_cache", "_convert_input")
"""What the compiled path steps over: a model that changes any of them is run as LangChain runs it."""


@dataclass(frozen=True, slots=True)
class CompiledChain:
    """A chain's prompt, model (with its bound parameters) and parser, run as one call."""

    prompt: BasePromptTemplate[Any]
    model: BaseChatModel
    stop: list[str] | None
    kwargs: dict[str, Any]
    parser: BaseOutputParser[Any]
    run_name: str | None
    inline_parse: bool
    """The parser's ``aparse_result`` is LangChain's (``parse_result`` in a thread): call ``parse_result`` here."""
    takes_run_manager: bool
    checked: list[Any] = field(default_factory=lambda: [0.0, False])
    """``[until, found]``: the last look for global handlers (``_global_handlers``)."""

    def usable(self, handlers: Sequence[BaseCallbackHandler]) -> bool:
        """Whether this input can take the compiled path: only our watchers, and nothing else would see its runs."""
        model = self.model
        if any(getattr(handler, "watches", None) not in (MODEL_EVENTS, TOP_CHAIN) for handler in handlers):
            return False
        if model.cache is not False and (model.cache is not None or get_llm_cache() is not None):
            return False
        if model.rate_limiter is not None or model.callbacks or model.tags or model.verbose:
            return False
        if model.output_version == "v1" or model._should_stream(async_api=True, **self.kwargs):
            return False
        return not self._global_handlers()

    def _global_handlers(self) -> bool:
        """Whether LangChain would add handlers of its own (tracing, debug, hooks): looked up once a second."""
        now = time.monotonic()
        checked = self.checked
        if checked[0] > now:
            return checked[1]
        found = bool(AsyncCallbackManager.configure(None, None, False).handlers)
        checked[:] = [now + GLOBAL_CHECK_S, found]
        return found

    async def ainvoke(self, value: Any, config: RunnableConfig) -> Any:
        """The chain's output for ``value``, as ``chain.ainvoke(value, config)`` gives it (``usable`` first)."""
        handlers = list(config.get("callbacks") or [])  # type: ignore[arg-type]
        tags = list(config.get("tags") or [])
        metadata = dict(config.get("metadata") or {})
        watchers = [handler for handler in handlers if handler.watches == TOP_CHAIN]  # type: ignore[attr-defined]
        run_id = uuid.uuid4()
        for watcher in watchers:
            watcher.on_chain_start(
                cast(Any, None), value, run_id=run_id, tags=tags, metadata=metadata, name=self.run_name
            )
        try:
            output = await self._run(value, [h for h in handlers if h not in watchers], run_id, tags, metadata)
        except BaseException as exc:
            for watcher in watchers:
                watcher.on_chain_error(exc, run_id=run_id, tags=tags)
            raise
        for watcher in watchers:
            watcher.on_chain_end(output, run_id=run_id, tags=tags)
        return output

    async def _run(
        self,
        value: Any,
        handlers: list[BaseCallbackHandler],
        parent: uuid.UUID,
        tags: list[str],
        metadata: dict[str, Any],
    ) -> Any:
        prompt_value = await self.prompt._aformat_prompt_with_error_handling(value)
        messages = _utils._normalize_messages(self.model._convert_input(prompt_value).to_messages())
        manager = AsyncCallbackManagerForLLMRun(
            run_id=uuid.uuid4(),
            handlers=handlers,
            inheritable_handlers=[],
            parent_run_id=parent,
            tags=tags,
            inheritable_tags=[],
            metadata=metadata,
            inheritable_metadata={},
        )
        try:
            if self.takes_run_manager:
                result = await self.model._agenerate(messages, stop=self.stop, run_manager=manager, **self.kwargs)
            else:
                result = await self.model._agenerate(messages, stop=self.stop, **self.kwargs)
        except Exception as exc:
            await _tell(handlers, "on_llm_error", exc, manager, response=LLMResult(generations=[]))
            raise
        for index, generation in enumerate(result.generations):  # as BaseChatModel._agenerate_with_cache
            message = generation.message
            if message.id is None:
                message.id = f"{LC_ID_PREFIX}-{manager.run_id}-{index}"
            message.response_metadata = {**(generation.generation_info or {}), **message.response_metadata}
        if len(result.generations) == 1 and result.llm_output is not None:
            message = result.generations[0].message
            message.response_metadata = {**result.llm_output, **message.response_metadata}
        if handlers:
            generations = cast(list[Any], result.generations)
            await _tell(
                handlers, "on_llm_end", LLMResult(generations=[generations], llm_output=result.llm_output), manager
            )
        answer: list[Generation] = [ChatGeneration(message=result.generations[0].message)]
        if self.inline_parse:
            return self.parser.parse_result(answer)
        return await self.parser.aparse_result(answer)


async def _tell(
    handlers: list[BaseCallbackHandler], event: str, payload: Any, manager: AsyncCallbackManagerForLLMRun, **extra: Any
) -> None:
    """One model-run event to each watcher, as LangChain's manager calls an inline handler: awaited in turn, with
    the run's ids and tags; a handler's error is logged, or raised when it asks (``raise_error``)."""
    for handler in handlers:
        if handler.ignore_llm:
            continue
        try:
            outcome = getattr(handler, event)(
                payload, run_id=manager.run_id, parent_run_id=manager.parent_run_id, tags=manager.tags, **extra
            )
            if inspect.isawaitable(outcome):
                await outcome
        except Exception as exc:
            if handler.raise_error:
                raise
            log.warning("Error in %s.%s callback: %r", type(handler).__name__, event, exc)


Invoke = Callable[[Any, RunnableConfig], Awaitable[Any]]


def invoker(chain: Runnable[Any, Any]) -> Invoke:
    """How ``run_batch`` runs one input: ``chain.ainvoke``, or, for a compiled chain, its compiled path for each
    input that can take it (``CompiledChain.usable``)."""
    compiled = compile_chain(chain)
    if compiled is None:
        return chain.ainvoke

    async def invoke(value: Any, config: RunnableConfig) -> Any:
        callbacks = config.get("callbacks") or []
        if isinstance(callbacks, list) and compiled.usable(callbacks):
            return await compiled.ainvoke(value, config)
        return await chain.ainvoke(value, config)

    return invoke


def _langchain_has_what_we_call() -> bool:
    """The compiled path calls a few of langchain-core's own private helpers; a release without them (or with them
    renamed) runs every chain as LangChain runs it instead of failing."""
    if _utils is None:
        return False
    return (
        callable(getattr(_utils, "_normalize_messages", None))
        and callable(getattr(BasePromptTemplate, "_aformat_prompt_with_error_handling", None))
        and callable(getattr(BaseChatModel, "_convert_input", None))
        and callable(getattr(BaseChatModel, "_should_stream", None))
    )


def compile_chain(chain: Runnable[Any, Any]) -> CompiledChain | None:
    """``chain`` as a ``CompiledChain`` when it is exactly ``prompt | model | parser`` (a run name allowed around
    it, parameters bound to the model), each step LangChain's own way of running it; else None."""
    if not _langchain_has_what_we_call():
        return None
    run_name = None
    if isinstance(chain, RunnableBinding):
        if chain.kwargs or not _plain(chain) or set(chain.config) - {"run_name"}:
            return None
        run_name = chain.config.get("run_name")
        chain = chain.bound
    if not isinstance(chain, RunnableSequence) or len(chain.steps) != 3:
        return None
    prompt, model, parser = chain.steps
    kwargs: dict[str, Any] = {}
    if isinstance(model, RunnableBinding):
        if model.config or not _plain(model):
            return None
        kwargs = dict(model.kwargs)
        model = model.bound
    if not (
        isinstance(prompt, BasePromptTemplate)
        and isinstance(model, BaseChatModel)
        and isinstance(parser, BaseOutputParser)
        and type(prompt).ainvoke is BasePromptTemplate.ainvoke
        and type(parser).ainvoke is BaseOutputParser.ainvoke
        and all(getattr(type(model), name) is getattr(BaseChatModel, name) for name in _MODEL_METHODS)
    ):
        return None
    stop = kwargs.pop("stop", None)
    for name in ("ls_structured_output_format", "structured_output_format"):  # tracing's, popped by agenerate
        kwargs.pop(name, None)
    return CompiledChain(
        prompt=prompt,
        model=model,
        stop=stop,
        kwargs=kwargs,
        parser=parser,
        run_name=run_name,
        inline_parse=type(parser).aparse_result is BaseOutputParser.aparse_result,
        takes_run_manager="run_manager" in inspect.signature(model._agenerate).parameters,
    )


def _plain(binding: RunnableBinding[Any, Any]) -> bool:
    return not binding.config_factories and binding.custom_input_type is None and binding.custom_output_type is None
