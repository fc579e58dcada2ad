"""``with_structured_output`` for ``LeanChatOpenAI``, as ``ChatOpenAI`` builds it.

Three methods: ``json_schema`` (OpenAI's structured outputs: ``response_format``; a pydantic class is sent as its
strict schema and the answer parsed into it, see ``schema``), ``function_calling`` (one forced tool call) and
``json_mode`` (``response_format={"type": "json_object"}``).  A refusal, or an answer stopped by a content
filter, is a ``ModelRefusalError`` (LangChain's), as langchain-openai raises its ``OpenAIRefusalError``.
And what the SDK's ``parse`` does to an answer to a ``response_format`` (``parse_structured``, and chunk by chunk
``note_structured`` / ``structured_chunk``): a finish by length or content filter is an error, the content of an
answer to a pydantic class is parsed into it (``parsed``), and ``refusal`` is kept.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from functools import partial
from operator import itemgetter
from typing import TYPE_CHECKING, Any, cast

from langchain_core.exceptions import ModelRefusalError
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.output_parsers.openai_tools import JsonOutputKeyToolsParser, PydanticToolsParser
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableGenerator, RunnableLambda, RunnableMap, RunnablePassthrough
from langchain_core.utils.function_calling import convert_to_openai_function, convert_to_openai_tool

from chains.providers.lean import schema as schemas
from chains.providers.lean.schema import is_pydantic_class
from chains.providers.lean.transport import ResponseInfo

if TYPE_CHECKING:
    from chains.providers.lean.model import LeanChatOpenAI


def convert_response_format(schema: Any, strict: bool | None = None) -> Any:
    """A ``response_format`` as langchain-openai's ``_convert_to_openai_response_format`` makes it."""
    if is_pydantic_class(schema):
        return schema
    if isinstance(schema, dict) and "json_schema" in schema and schema.get("type") == "json_schema":
        response_format = schema
    elif isinstance(schema, dict) and "name" in schema and "schema" in schema:
        response_format = {"type": "json_schema", "json_schema": schema}
    else:
        if strict is None:
            strict = schema["strict"] if isinstance(schema, dict) and isinstance(schema.get("strict"), bool) else False
        function = convert_to_openai_function(schema, strict=strict)
        function["schema"] = function.pop("parameters")
        response_format = {"type": "json_schema", "json_schema": function}
    if (
        strict is not None
        and strict is not response_format["json_schema"].get("strict")
        and isinstance(schema, dict)
        and "strict" in schema.get("json_schema", {})
    ):
        raise ValueError(
            f"Output schema already has 'strict' value set to {schema['json_schema']['strict']} but 'strict' also "
            f"passed in to with_structured_output as {strict}; specify 'strict' in one place only"
        )
    return response_format


def _raise_on_refusal(message: BaseMessage) -> None:
    metadata = message.response_metadata
    for block in message.content_blocks:
        if block["type"] == "refusal":
            text = block.get("refusal")
            raise ModelRefusalError(str(text), raw_message=message) if text else ModelRefusalError(raw_message=message)
    details = metadata.get("incomplete_details")
    reason = details.get("reason") if isinstance(details, dict) else None
    if "content_filter" in (metadata.get("finish_reason"), reason):
        raise ModelRefusalError("Model output was stopped by a content filter", raw_message=message)


def _check_refusal(messages: Iterator[BaseMessage]) -> Iterator[BaseMessage]:
    for message in messages:
        _raise_on_refusal(message)
        yield message


async def _acheck_refusal(messages: AsyncIterator[BaseMessage]) -> AsyncIterator[BaseMessage]:
    async for message in messages:
        _raise_on_refusal(message)
        yield message


def _parsed(message: AIMessage, schema: type) -> Any:
    """langchain-openai's ``_oai_structured_outputs_parser``: the ``parsed`` value, else a refusal or tool calls."""
    if (parsed := message.additional_kwargs.get("parsed")) is not None:
        return schema(**parsed) if isinstance(parsed, dict) else parsed
    _raise_on_refusal(message)
    if message.tool_calls:
        return None
    raise ValueError(f"Structured Output response does not have a 'parsed' field nor a 'refusal' field: {message}")


def structured_runnable(
    model: LeanChatOpenAI,
    schema: Any,
    method: str,
    include_raw: bool,
    strict: bool | None,
    tools: list[Any] | None,
    kwargs: dict[str, Any],
) -> Runnable[Any, Any]:
    if strict is not None and method == "json_mode":
        raise ValueError("Argument `strict` is not supported with `method`='json_mode'")
    pydantic = is_pydantic_class(schema)
    if method != "json_mode" and schema is None:
        raise ValueError("schema must be specified when method is not 'json_mode'. Received None.")
    parser: Runnable[Any, Any]
    if method == "function_calling":
        name = convert_to_openai_tool(schema)["function"]["name"]
        llm = model.bind_tools(
            [schema],
            **{
                "tool_choice": name,
                "parallel_tool_calls": False,
                "strict": strict,
                "ls_structured_output_format": {"kwargs": {"method": method, "strict": strict}, "schema": schema},
                **kwargs,
            },
        )
        parser = (
            PydanticToolsParser(tools=[schema], first_tool_only=True)
            if pydantic
            else JsonOutputKeyToolsParser(key_name=name, first_tool_only=True)
        )
    elif method == "json_mode":
        llm = model.bind(
            response_format={"type": "json_object"},
            ls_structured_output_format={"kwargs": {"method": method}, "schema": schema},
            **kwargs,
        )
        parser = PydanticOutputParser(pydantic_object=schema) if pydantic else JsonOutputParser()
    elif method == "json_schema":
        bound: dict[str, Any] = {
            "response_format": convert_response_format(schema, strict=strict),
            "ls_structured_output_format": {
                "kwargs": {"method": method, "strict": strict},
                "schema": convert_to_openai_tool(schema),
            },
            **kwargs,
        }
        if tools:
            bound["tools"] = [convert_to_openai_tool(t, strict=strict) for t in tools]
        llm = model.bind(**bound)
        parser = (
            RunnableLambda(partial(_parsed, schema=cast(type, schema))).with_types(output_type=cast(type, schema))
            if pydantic
            else JsonOutputParser()
        )
    else:
        raise ValueError(
            f"Unrecognized method argument. Expected one of 'function_calling', 'json_mode' or 'json_schema'. "
            f"Received: '{method}'"
        )
    checked = RunnableGenerator(_check_refusal, _acheck_refusal) | parser
    if not include_raw:
        return llm | checked
    assign = RunnablePassthrough.assign(parsed=itemgetter("raw") | checked, parsing_error=lambda _: None)
    fallback = assign.with_fallbacks([RunnablePassthrough.assign(parsed=lambda _: None)], exception_key="parsing_error")
    return RunnableMap(raw=llm) | fallback


class LengthFinishReasonError(Exception):
    """A structured answer cut by the length limit (the SDK's ``parse`` raises its error of this name)."""


class ContentFilterFinishReasonError(Exception):
    """A structured answer stopped by a content filter (the SDK's ``parse`` raises its error of this name)."""


# ----------------------------------------------------------------------------- structured answers (the SDK's parse)


def _check_finish(reason: Any) -> None:
    if reason == "length":
        raise LengthFinishReasonError("Could not parse response content as the length limit was reached")
    if reason == "content_filter":
        raise ContentFilterFinishReasonError(
            "Could not parse response content as the request was rejected by the content filter"
        )


def parse_structured(result: ChatResult, body: dict[str, Any], wanted: Any, headers: dict[str, str]) -> None:
    """The SDK's ``parse``: a finish by length or filter is an error, the content parsed into a pydantic class."""
    for generation in result.generations:
        _check_finish((generation.generation_info or {}).get("finish_reason"))
    if not result.generations or not is_pydantic_class(wanted):
        return
    try:
        parsed = schemas.parse_content(wanted, body["choices"][0]["message"])
    except ValueError as exc:  # pydantic's ValidationError; ChatOpenAI leaves the 200 on it, as here
        exc.response = ResponseInfo(200, headers)  # type: ignore[attr-defined]
        raise
    result.generations[0].message.additional_kwargs["parsed"] = parsed


def note_structured(chunk: dict[str, Any], generation: ChatGenerationChunk, text: list[str], refusal: list[str]) -> Any:
    """Keep a structured stream's text and refusal for its last chunk; its finish reason, if this chunk has it."""
    text.append(generation.message.text)
    choices = chunk.get("choices") or []
    delta = choices[0].get("delta") if choices else None
    if isinstance(delta, dict) and isinstance(delta.get("refusal"), str):
        refusal.append(delta["refusal"])
    return (generation.generation_info or {}).get("finish_reason")


def structured_chunk(
    wanted: Any, text: str, refusal: str | None, finish: Any, headers: dict[str, str]
) -> ChatGenerationChunk:
    """The last chunk of a structured stream: ``parsed`` and ``refusal``, as ChatOpenAI's final completion adds them."""
    _check_finish(finish)
    parsed = None
    if is_pydantic_class(wanted):
        try:
            parsed = schemas.parse_content(wanted, {"content": text, "refusal": refusal})
        except ValueError as exc:
            exc.response = ResponseInfo(200, headers)  # type: ignore[attr-defined]
            raise
    message = AIMessageChunk(content="", additional_kwargs={"parsed": parsed, "refusal": refusal})
    return ChatGenerationChunk(message=message)
