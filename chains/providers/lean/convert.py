"""LangChain messages to chat-completion dicts, and answers (whole or chunk by chunk) back, as ``ChatOpenAI`` does.

The request side follows langchain-openai's ``_convert_message_to_dict``; the answer side its
``_create_chat_result`` (over the SDK's dump of the answer) and ``_convert_chunk_to_generation_chunk``, so the
same server answer gives the same ``AIMessage`` / ``AIMessageChunk``: content, tool calls (invalid ones too),
``usage_metadata`` with its token details, and the metadata (``finish_reason``, ``model_name``,
``system_fingerprint``, ``service_tier``, ``headers``).  Answers are outside data: one whose shape is not a chat
completion is a ``NoAnswerError`` (whole) or a ``BrokenStreamError`` (a chunk), and a 200 whose body is an
error object is an ``AnswerError`` (a ``ValueError`` holding that object, as langchain-openai raises it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    is_data_content_block,
)
from langchain_core.messages.ai import InputTokenDetails, OutputTokenDetails, UsageMetadata
from langchain_core.messages.block_translators.openai import convert_to_openai_data_block
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.output_parsers.openai_tools import make_invalid_tool_call, parse_tool_call
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult

from chains.engine.retry import BrokenStreamError, NoAnswerError

_DROPPED_BLOCKS = frozenset({"tool_use", "thinking", "reasoning_content", "function_call", "code_interpreter_call"})


class AnswerError(ValueError):
    """A 200 whose body (or stream event) is an error object: ``args[0]`` is that object."""


# ----------------------------------------------------------------------------- requests


def _content(content: Any, role: str) -> Any:
    """A message's content for chat completions: unknown block kinds dropped, data blocks in OpenAI's form."""
    if not (content and isinstance(content, list)):
        return content
    out: list[Any] = []
    for block in content:
        if not isinstance(block, dict):
            out.append(block)
            continue
        kind = block.get("type")
        if kind in _DROPPED_BLOCKS:
            continue
        if is_data_content_block(block):
            out.append(convert_to_openai_data_block(block, api="chat/completions"))
        elif kind == "image" and isinstance(source := block.get("source"), dict):  # Anthropic's image blocks
            if source.get("type") == "base64" and source.get("media_type") and source.get("data"):
                url = f"data:{source['media_type']};base64,{source['data']}"
                out.append({"type": "image_url", "image_url": {"url": url}})
            elif source.get("type") == "url" and source.get("url"):
                out.append({"type": "image_url", "image_url": {"url": source["url"]}})
        else:
            out.append(block)
    return out


def _ai_content(message: AIMessage) -> Any:
    """An AI message's own content blocks in chat-completions form (v1 blocks: text, refusal; no reasoning)."""
    content = message.content
    if not isinstance(content, list):
        return content
    out: list[Any] = []
    for block in content:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and isinstance(block, dict):
            out.append({"type": "text", "text": block["text"]})
        elif kind == "refusal" and isinstance(block, dict):
            if block.get("refusal"):
                out.append({"type": "refusal", "refusal": block["refusal"]})
        elif kind not in ("reasoning", "tool_call", "invalid_tool_call"):
            out.append(block)
    return out


def message_to_dict(message: BaseMessage) -> dict[str, Any]:
    """One LangChain message as a chat-completions message (langchain-openai's ``_convert_message_to_dict``)."""
    raw = _ai_content(message) if isinstance(message, AIMessage) else message.content
    entry: dict[str, Any] = {"content": _content(raw, message.type)}
    if (name := message.name or message.additional_kwargs.get("name")) is not None:
        entry["name"] = name
    if isinstance(message, ChatMessage):
        entry["role"] = message.role
    elif isinstance(message, HumanMessage):
        entry["role"] = "user"
    elif isinstance(message, AIMessage):
        entry["role"] = "assistant"
        extra = message.additional_kwargs
        if message.tool_calls or message.invalid_tool_calls:
            entry["tool_calls"] = [
                {
                    "type": "function",
                    "id": call["id"],
                    "function": {"name": call["name"], "arguments": json.dumps(call["args"], ensure_ascii=False)},
                }
                for call in message.tool_calls
            ] + [
                {"type": "function", "id": bad["id"], "function": {"name": bad["name"], "arguments": bad["args"]}}
                for bad in message.invalid_tool_calls
            ]
        elif "tool_calls" in extra:
            entry["tool_calls"] = [
                {k: v for k, v in c.items() if k in ("id", "type", "function")} for c in extra["tool_calls"]
            ]
        elif "function_call" in extra:
            entry["function_call"] = extra["function_call"]
        if "function_call" in entry or "tool_calls" in entry:
            entry["content"] = entry["content"] or None
        audio = next(
            (
                {"id": block["id"]}
                for block in message.content
                if isinstance(block, dict) and block.get("type") == "audio" and block.get("id")
            ),
            None,
        )
        if not audio and "audio" in extra:
            audio = {"id": extra["audio"]["id"]} if "id" in extra["audio"] else extra["audio"]
        if audio:
            entry["audio"] = audio
    elif isinstance(message, SystemMessage):
        entry["role"] = message.additional_kwargs.get("__openai_role__", "system")
    elif isinstance(message, FunctionMessage):
        entry["role"] = "function"
    elif isinstance(message, ToolMessage):
        content = entry["content"]
        if isinstance(content, list):
            content = [
                {"type": "text", "text": b["text"]}
                if isinstance(b, dict) and b.get("type") == "text" and "text" in b
                else b
                for b in content
            ]
        return {"content": content, "role": "tool", "tool_call_id": message.tool_call_id}
    else:
        raise TypeError(f"Got unknown type {message}")
    return entry


# ----------------------------------------------------------------------------- usage


def usage_metadata(usage: Mapping[str, Any], service_tier: Any = None) -> UsageMetadata:
    """The answer's ``usage`` as LangChain's ``UsageMetadata`` (langchain-openai's ``_create_usage_metadata``)."""
    input_tokens = _count(usage.get("prompt_tokens"))
    output_tokens = _count(usage.get("completion_tokens"))
    total = usage.get("total_tokens")
    total_tokens = _count(total) if total is not None else input_tokens + output_tokens
    tier = service_tier if service_tier in ("priority", "flex") else None
    prefix = f"{tier}_" if tier else ""
    prompt = _mapping(usage.get("prompt_tokens_details"))
    completion = _mapping(usage.get("completion_tokens_details"))
    inputs: dict[str, Any] = {
        "audio": prompt.get("audio_tokens"),
        f"{prefix}cache_read": prompt.get("cached_tokens"),
        f"{prefix}cache_creation": prompt.get("cache_write_tokens"),
    }
    outputs: dict[str, Any] = {
        "audio": completion.get("audio_tokens"),
        f"{prefix}reasoning": completion.get("reasoning_tokens"),
    }
    if tier is not None:
        inputs[tier] = input_tokens - (inputs.get(f"{prefix}cache_read", 0) or 0)
        outputs[tier] = output_tokens - (outputs.get(f"{prefix}reasoning", 0) or 0)
    return UsageMetadata(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        total_tokens=total_tokens,
        input_token_details=InputTokenDetails(**{k: v for k, v in inputs.items() if v is not None}),  # type: ignore[typeddict-item]
        output_token_details=OutputTokenDetails(**{k: v for k, v in outputs.items() if v is not None}),  # type: ignore[typeddict-item]
    )


def _count(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise NoAnswerError(f"a token count is not a whole number ({type(value).__name__})")
    return value


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


# ----------------------------------------------------------------------------- whole answers


def _assistant(entry: Mapping[str, Any]) -> AIMessage:
    """An answer's ``message`` as an ``AIMessage`` (langchain-openai's ``_convert_dict_to_message``)."""
    extra: dict[str, Any] = {}
    if function_call := entry.get("function_call"):
        extra["function_call"] = dict(function_call)
    calls, invalid = [], []
    raw_calls = entry.get("tool_calls") or []
    if not isinstance(raw_calls, list) or not all(
        isinstance(c, dict) and isinstance(c.get("function"), dict) for c in raw_calls
    ):
        raise NoAnswerError("the answer's tool_calls are not a list of calls with a function each")
    for raw in raw_calls:
        try:
            calls.append(parse_tool_call(raw, return_id=True))
        except Exception as exc:  # what langchain-openai catches: the call is kept as an invalid one
            invalid.append(make_invalid_tool_call(raw, str(exc)))
    if audio := entry.get("audio"):
        extra["audio"] = audio
    if refusal := entry.get("refusal"):
        extra["refusal"] = refusal
    content = entry.get("content") or ""
    if not isinstance(content, str | list):
        raise NoAnswerError(f"the answer's content is a {type(content).__name__}, not text")
    return AIMessage(
        content=content,
        additional_kwargs=extra,
        name=entry.get("name"),
        id=entry.get("id"),
        tool_calls=calls,
        invalid_tool_calls=invalid,
    )


_SHAPE_ERRORS = (KeyError, TypeError, AttributeError, ValueError)
"""What building messages from an odd answer can raise (pydantic's ValidationError is a ValueError)."""


def chat_result(
    body: Any,
    generation_info: dict[str, Any] | None,
    model_name: str,
    *,
    structured: bool = False,
    sdk_object: bool = True,
) -> ChatResult:
    """A whole answer as the ``ChatResult`` ``ChatOpenAI._create_chat_result`` makes of it.

    ``sdk_object``: as it makes it of the SDK's answer object (online), whose dump has every field (``logprobs``,
    ``system_fingerprint`` None when absent) and whose message also gives ``refusal``; False: of a plain dict (a
    batch row).  ``structured``: the request had a ``response_format`` (answered through the SDK's ``parse``),
    whose message carries ``parsed`` too (filled in by the model).
    """
    try:
        return _chat_result(body, generation_info, model_name, structured, sdk_object)
    except AnswerError:
        raise
    except _SHAPE_ERRORS as exc:
        raise NoAnswerError(f"the answer is not a chat completion ({type(exc).__name__}: {exc})"[:300]) from None


def _chat_result(
    body: Any, generation_info: dict[str, Any] | None, model_name: str, structured: bool, sdk_object: bool
) -> ChatResult:
    if not isinstance(body, dict):
        raise NoAnswerError(f"the answer is a JSON {type(body).__name__}, not a chat completion object")
    if body.get("error"):
        raise AnswerError(body["error"])
    choices = body.get("choices")
    if not isinstance(choices, list) or not all(
        isinstance(c, dict) and isinstance(c.get("message"), dict) for c in choices
    ):
        raise NoAnswerError("the answer has no list of choices with a message each")
    usage = body.get("usage")
    if usage is not None and not isinstance(usage, dict):
        raise NoAnswerError("the answer's usage is not an object")
    tier = body.get("service_tier")
    generations = []
    for choice in choices:
        message = _assistant(choice["message"])
        if usage:
            message.usage_metadata = usage_metadata(usage, tier)
        generation_info = generation_info or {}
        reason = choice.get("finish_reason")
        generation_info["finish_reason"] = reason if reason is not None else generation_info.get("finish_reason")
        if sdk_object or "logprobs" in choice:
            generation_info["logprobs"] = choice.get("logprobs")
        generations.append(ChatGeneration(message=message, generation_info=generation_info))
    if choices and sdk_object:
        if structured:
            generations[0].message.additional_kwargs["parsed"] = None
        generations[0].message.additional_kwargs["refusal"] = choices[0]["message"].get("refusal")
    llm_output: dict[str, Any] = {
        "token_usage": usage,
        "model_provider": "openai",
        "model_name": body.get("model", model_name),
        "system_fingerprint": body.get("system_fingerprint", None if sdk_object else ""),
    }
    if "id" in body:
        llm_output["id"] = body["id"]
    if tier:
        llm_output["service_tier"] = tier
    return ChatResult(generations=generations, llm_output=llm_output)


# ----------------------------------------------------------------------------- chunks


def chunk_generation(chunk: Any, base_info: dict[str, Any] | None) -> ChatGenerationChunk | None:
    """One stream chunk as ``ChatOpenAI._convert_chunk_to_generation_chunk`` makes it (None: nothing in it)."""
    try:
        return _chunk_generation(chunk, base_info)
    except AnswerError:
        raise
    except NoAnswerError as exc:
        raise BrokenStreamError(str(exc)) from None
    except _SHAPE_ERRORS as exc:
        raise BrokenStreamError(f"a chunk is not a chat completion chunk ({type(exc).__name__}: {exc})"[:300]) from None


def _chunk_generation(chunk: Any, base_info: dict[str, Any] | None) -> ChatGenerationChunk | None:
    if not isinstance(chunk, dict):
        raise BrokenStreamError(f"a chunk is a JSON {type(chunk).__name__}, not an object")
    if chunk.get("error"):
        raise AnswerError(chunk["error"] if isinstance(chunk["error"], dict) else {"message": str(chunk["error"])})
    usage = chunk.get("usage")
    if usage is not None and not isinstance(usage, dict):
        raise BrokenStreamError("a chunk's usage is not an object")
    usage_meta = usage_metadata(usage, chunk.get("service_tier")) if usage else None
    choices = chunk.get("choices") or []
    if not isinstance(choices, list):
        raise BrokenStreamError("a chunk's choices are not a list")
    if not choices:
        return ChatGenerationChunk(
            message=AIMessageChunk(content="", usage_metadata=usage_meta), generation_info=base_info
        )
    choice = choices[0]
    if not isinstance(choice, dict):
        raise BrokenStreamError("a chunk's choice is not an object")
    delta = choice.get("delta")
    if delta is None:
        return None
    if not isinstance(delta, dict):
        raise BrokenStreamError("a chunk's delta is not an object")
    message = _delta(delta)
    info = {**base_info} if base_info else {}
    if reason := choice.get("finish_reason"):
        info["finish_reason"] = reason
        for key in ("model", "system_fingerprint", "service_tier"):
            if value := chunk.get(key):
                info["model_name" if key == "model" else key] = value
    if logprobs := choice.get("logprobs"):
        info["logprobs"] = logprobs
    if usage_meta:
        message.usage_metadata = usage_meta
    message.response_metadata["model_provider"] = "openai"
    return ChatGenerationChunk(message=message, generation_info=info or None)


def _delta(delta: Mapping[str, Any]) -> AIMessageChunk:
    content = delta.get("content") or ""
    if not isinstance(content, str):
        raise BrokenStreamError(f"a chunk's content is a {type(content).__name__}, not text")
    extra: dict[str, Any] = {}
    if function_call := delta.get("function_call"):
        if not isinstance(function_call, dict):
            raise BrokenStreamError("a chunk's function_call is not an object")
        extra["function_call"] = {**function_call, **({"name": ""} if function_call.get("name", "") is None else {})}
    chunks = []
    if raw_calls := delta.get("tool_calls"):
        if not isinstance(raw_calls, list) or not all(isinstance(c, dict) for c in raw_calls):
            raise BrokenStreamError("a chunk's tool_calls are not a list of objects")
        try:
            chunks = [_call_chunk(raw) for raw in raw_calls]
        except KeyError:  # what langchain-openai does with a call that lacks a part: no call chunks
            chunks = []
    return AIMessageChunk(content=content, additional_kwargs=extra, id=delta.get("id"), tool_call_chunks=chunks)


def _call_chunk(raw: Mapping[str, Any]) -> Any:
    function = raw["function"]
    if not isinstance(function, dict):
        raise BrokenStreamError("a tool call chunk's function is not an object")
    name, args, index = function.get("name"), function.get("arguments"), raw["index"]
    if not (name is None or isinstance(name, str)) or not (args is None or isinstance(args, str)):
        raise BrokenStreamError("a tool call chunk's name or arguments are not text")
    if not (index is None or (isinstance(index, int) and not isinstance(index, bool))):
        raise BrokenStreamError("a tool call chunk's index is not a whole number")
    call_id = raw.get("id")
    return tool_call_chunk(name=name, args=args, id=call_id if isinstance(call_id, str) else None, index=index)
