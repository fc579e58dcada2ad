"""Schema repair: a JSON answer that is not JSON or does not match its schema is asked again, in the same conversation.

The model is shown its own answer and the validator's words ("$.sentiment: 'happy' is not one of …; answer again
with only JSON matching the schema"), up to ``repair_attempts`` times (default 2; 0 turns it off).  Each repair is
a real model request through the same model, so it counts in the limits, the budget, the retries' layer, the
input's metrics (``repairs``) and the summary; in the batch tier it is a request of a later batch stage.  After
the last attempt the input fails with the validator's message, the raw answer kept in the record.

The number of attempts comes from the run (``RunnableConfig["configurable"]["repair_attempts"]``, set by
``RunSettings.to_runnable_config`` from ``--repair-attempts``), else from the prompt file's
``output.repair_attempts``, else the default.
"""

from __future__ import annotations

import logging
from typing import Any

from langchain_core.callbacks import adispatch_custom_event, dispatch_custom_event
from langchain_core.exceptions import OutputParserException
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda

from chains.engine.callbacks import DISCARD_EVENT
from chains.engine.metrics import current_item

log = logging.getLogger("chains.repair")

DEFAULT_REPAIR_ATTEMPTS = 2
CONFIG_KEY = "repair_attempts"


class SchemaRepairError(OutputParserException):
    """The answer still broke the schema after every repair: the validator's message; ``llm_output`` the raw text."""

    def __init__(self, message: str, llm_output: str, attempts: int) -> None:
        super().__init__(message, llm_output=llm_output)
        self.attempts = attempts


def attempts_for(config: RunnableConfig | None, default: int | None) -> int:
    configured = ((config or {}).get("configurable") or {}).get(CONFIG_KEY)
    if isinstance(configured, int) and not isinstance(configured, bool) and configured >= 0:
        return configured
    return DEFAULT_REPAIR_ATTEMPTS if default is None else default


def _again(messages: list[BaseMessage], answer: BaseMessage, problem: OutputParserException) -> list[BaseMessage]:
    why = str(problem).split(": ", 1)[-1]  # the validator's words, without the prompt's name
    ask = f"Your answer was not accepted: {why}. Answer again with only JSON matching the schema."
    return [*messages, AIMessage(content=answer.content), HumanMessage(content=ask)]


def _failed(problem: OutputParserException, answer: BaseMessage, repairs: int) -> SchemaRepairError:
    tried = f" (after {repairs} repair{'s' if repairs != 1 else ''})" if repairs else ""
    return SchemaRepairError(f"{problem}{tried}", str(answer.content), repairs)


def _repaired(repairs: int, limit: int, problem: OutputParserException) -> None:
    item = current_item()
    if item is not None:
        item.repairs += 1
    log.info("repair %d/%d: %s", repairs, limit, problem)


def repairing(
    prompt: Runnable[Any, Any], llm: Runnable[Any, Any], parser: Runnable[Any, Any], *, attempts: int | None
) -> Runnable[Any, Any]:
    """``prompt | llm | parser`` whose parser failures are repaired (see the module docstring)."""

    def run(value: Any, config: RunnableConfig) -> Any:
        limit = attempts_for(config, attempts)
        messages = prompt.invoke(value, config).to_messages()
        for repairs in range(limit + 1):
            answer = llm.invoke(messages, config)
            try:
                return parser.invoke(answer, config)
            except OutputParserException as problem:
                if repairs == limit:
                    raise _failed(problem, answer, repairs) from problem
                _repaired(repairs + 1, limit, problem)
                dispatch_custom_event(DISCARD_EVENT, {"text": answer.text}, config=config)
                messages = _again(messages, answer, problem)
        raise AssertionError("unreachable")

    async def arun(value: Any, config: RunnableConfig) -> Any:
        limit = attempts_for(config, attempts)
        messages = (await prompt.ainvoke(value, config)).to_messages()
        for repairs in range(limit + 1):
            answer = await llm.ainvoke(messages, config)
            try:
                return await parser.ainvoke(answer, config)
            except OutputParserException as problem:
                if repairs == limit:
                    raise _failed(problem, answer, repairs) from problem
                _repaired(repairs + 1, limit, problem)
                await adispatch_custom_event(DISCARD_EVENT, {"text": answer.text}, config=config)
                messages = _again(messages, answer, problem)
        raise AssertionError("unreachable")

    return RunnableLambda(run, afunc=arun, name="repairing_json")
