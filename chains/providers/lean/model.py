"""``LeanChatOpenAI``: OpenAI-compatible chat completions as a ``BaseChatModel``, without the OpenAI SDK.

It builds the request as ``ChatOpenAI`` does (``_get_request_payload``: the same body, ``max_tokens`` named as
the endpoint reads it) and reads the answer as ``ChatOpenAI`` does (``_create_chat_result``, chunk by chunk when
streaming), so messages, usage, headers, tool calls and structured output are the same; the bytes go over one
aiohttp pool per event loop (``transport``), JSON through ``orjson``, streams through a bounded SSE reader.
Retries are not its business (``ManagedChatModel`` is the one retry layer): it makes one attempt per call.
Sync calls (``invoke``, ``stream``) run on the model's own portal loop (``chains.providers.portal``).
"""

from __future__ import annotations

import asyncio
import re
import warnings
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, ClassVar, Literal

import orjson
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict, Field, PrivateAttr, SecretStr

from chains.engine.retry import BrokenStreamError, NoAnswerError
from chains.providers.lean import convert, schema, sse
from chains.providers.lean.structured import (
    convert_response_format,
    note_structured,
    parse_structured,
    structured_chunk,
    structured_runnable,
)
from chains.providers.lean.transport import Transport
from chains.providers.portal import Portal

OPENAI_BASE_URL = "https://api.openai.com/v1"
PATH = "/chat/completions"
_WELL_KNOWN_TOOLS = frozenset(
    {
        "file_search",
        "web_search_preview",
        "web_search",
        "computer_use_preview",
        "code_interpreter",
        "mcp",
        "image_generation",
        "tool_search",
        "apply_patch",
    }
)
_TOOL_EXTRAS = ("defer_loading", "async")


class LeanChatOpenAI(BaseChatModel):
    """Chat completions of OpenAI or an OpenAI-compatible server (``base_url``), the fields named as ``ChatOpenAI``'s."""

    model_config = ConfigDict(populate_by_name=True, arbitrary_types_allowed=True)

    stops_when_cancelled: ClassVar[bool] = True
    """Its non-streamed request stops at the first cancellation (aiohttp and our reader; no ``wait_for`` that can
    absorb one): the attempt deadline needs no child task for it (``chains.engine.deadline``)."""

    model_name: str = Field(default="gpt-3.5-turbo", alias="model")
    openai_api_key: SecretStr | None = Field(default=None, alias="api_key")
    openai_api_base: str | None = Field(default=None, alias="base_url")
    temperature: float | None = None
    max_tokens: int | None = Field(default=None, alias="max_completion_tokens")
    max_tokens_name: Literal["max_tokens", "max_completion_tokens"] | None = None
    """How the length limit is sent; None: ``max_completion_tokens`` to OpenAI, ``max_tokens`` elsewhere (llama.cpp,
    vLLM, Ollama and LM Studio read only that one, as ``compatible_chat_openai`` in ``factories`` knows)."""
    stop: list[str] | str | None = Field(default=None, alias="stop_sequences")
    top_p: float | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    n: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    logit_bias: dict[int, int] | None = None
    reasoning_effort: str | None = None
    service_tier: str | None = None
    store: bool | None = None
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    extra_body: dict[str, Any] | None = None
    streaming: bool = False
    stream_usage: bool | None = None
    """Ask for the usage chunk when streaming; None: on for OpenAI, off elsewhere (as ``ChatOpenAI``)."""
    include_response_headers: bool = False
    request_timeout: float | None = Field(default=600.0, alias="timeout")
    """Seconds the client waits for the connection and for each read of the answer."""
    max_retries: int = 0
    """Kept for ``ChatOpenAI``'s signature; this model makes one attempt (the managed model retries)."""
    max_connections: int = 100
    default_headers: dict[str, str] | None = None
    _transport: Transport | None = PrivateAttr(default=None)
    _portal: Portal | None = PrivateAttr(default=None)
    _stop_portal: Any = PrivateAttr(default=None)

    # ------------------------------------------------------------------ identity

    @property
    def _llm_type(self) -> str:
        return "openai-chat"  # as ChatOpenAI: the same cache entries and traces

    @property
    def base_url(self) -> str:
        return self.openai_api_base or OPENAI_BASE_URL

    @property
    def at_openai(self) -> bool:
        return "api.openai.com" in self.base_url

    @property
    def _default_params(self) -> dict[str, Any]:
        optional = {
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
            "seed": self.seed,
            "top_p": self.top_p,
            "logprobs": self.logprobs,
            "top_logprobs": self.top_logprobs,
            "logit_bias": self.logit_bias,
            "stop": self.stop or None,
            "max_tokens": self.max_tokens,
            "extra_body": self.extra_body,
            "n": self.n,
            "temperature": self.temperature,
            "reasoning_effort": self.reasoning_effort,
            "service_tier": self.service_tier,
            "store": self.store,
        }
        params = {
            "model": self.model_name,
            "stream": self.streaming,
            **{k: v for k, v in optional.items() if v is not None},
            **self.model_kwargs,
        }
        return self._name_max_tokens(params)

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, **self._default_params}

    def _get_invocation_params(self, stop: list[str] | None = None, **kwargs: Any) -> dict[str, Any]:
        """As ``ChatOpenAI``'s (``model``, ``dict()`` with ``stop``, the defaults, the call's), the defaults built once."""
        defaults, name, kind = self._default_params, self.model_name, self._llm_type
        return {"model": name, "model_name": name, **defaults, "_type": kind, "stop": stop, **defaults, **kwargs}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = self._get_invocation_params(stop=stop, **kwargs)
        ls = LangSmithParams(
            ls_provider="openai",
            ls_model_name=params.get("model", self.model_name),
            ls_model_type="chat",
            ls_temperature=params.get("temperature", self.temperature),
        )
        if limit := params.get("max_tokens", self.max_tokens) or params.get("max_completion_tokens", self.max_tokens):
            ls["ls_max_tokens"] = limit
        if ls_stop := stop or params.get("stop", None):
            ls["ls_stop"] = ls_stop
        return ls

    # ------------------------------------------------------------------ the request

    def _name_max_tokens(self, payload: dict[str, Any]) -> dict[str, Any]:
        name = self.max_tokens_name or ("max_completion_tokens" if self.at_openai else "max_tokens")
        other = "max_tokens" if name == "max_completion_tokens" else "max_completion_tokens"
        if other in payload:
            payload[name] = payload.pop(other)
        return payload

    def _get_request_payload(
        self, input_: LanguageModelInput, *, stop: list[str] | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """The request body as ``ChatOpenAI`` builds it (before the SDK turns a pydantic ``response_format``
        into its JSON schema and merges ``extra_body``: see ``_wire``)."""
        messages = self._convert_input(input_).to_messages()
        if stop is not None:
            kwargs["stop"] = stop
        payload = self._name_max_tokens({**self._default_params, **kwargs})
        payload["messages"] = [convert.message_to_dict(m) for m in messages]
        if self.at_openai and re.match(r"^o\d", self.model_name):
            for message in payload["messages"]:
                if message["role"] == "system":
                    message["role"] = "developer"
        return payload

    def _wire(self, payload: dict[str, Any]) -> bytes:
        """The body as the SDK sends it: a pydantic ``response_format`` as its strict schema, ``extra_body`` merged."""
        body = dict(payload)
        extra = body.pop("extra_body", None)
        if schema.is_pydantic_class(body.get("response_format")):
            body["response_format"] = schema.response_format_param(body["response_format"])
        if extra:
            body.update(extra)
        return orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS)

    def _http(self) -> Transport:
        if self._transport is None:
            key = self.openai_api_key.get_secret_value() if self.openai_api_key is not None else None
            self._transport = Transport(
                self.base_url,
                key,
                connections=self.max_connections,
                timeout=self.request_timeout,
                connect_timeout=min(10.0, self.request_timeout) if self.request_timeout else None,
                headers=self.default_headers,
            )
        return self._transport

    @property
    def transport(self) -> Transport:
        """The model's HTTP pools (one per event loop); ``await model.transport.aclose()`` at the end."""
        return self._http()

    # ------------------------------------------------------------------ answers

    def _create_chat_result(self, response: Any, generation_info: dict[str, Any] | None = None) -> ChatResult:
        """A whole answer (a chat completion as a dict) as ``ChatOpenAI._create_chat_result`` gives it."""
        return convert.chat_result(response, generation_info, self.model_name, sdk_object=False)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        payload = self._get_request_payload(messages, stop=stop, **kwargs)
        wanted = payload.get("response_format")
        if wanted is not None:
            payload["stream"] = False  # as the SDK's parse(), which ChatOpenAI calls then, sends it
        raw, headers = await self._http().post(PATH, self._wire(payload))
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise NoAnswerError(f"the answer is not JSON ({exc})") from None
        info = {"headers": headers} if self.include_response_headers else {}
        result = convert.chat_result(body, info, self.model_name, structured=wanted is not None)
        if wanted is not None:
            parse_structured(result, body, wanted, headers)
        return result

    def _should_stream_usage(self, stream_usage: bool | None = None, **kwargs: Any) -> bool:
        sources = [
            stream_usage,
            (kwargs.get("stream_options") or {}).get("include_usage"),
            (self.model_kwargs.get("stream_options") or {}).get("include_usage"),
            self.stream_usage,
        ]
        for source in sources:
            if isinstance(source, bool):
                return source
        return self.at_openai and self.openai_api_base is None

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        *,
        stream_usage: bool | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        kwargs["stream"] = True
        if self._should_stream_usage(stream_usage, **kwargs):
            kwargs["stream_options"] = {"include_usage": True}
        payload = self._get_request_payload(messages, stop=stop, **kwargs)
        wanted = payload.get("response_format")
        text: list[str] = []
        refusal: list[str] = []
        finish: Any = None
        async with self._http().stream(PATH, self._wire(payload)) as (response, headers):
            base: dict[str, Any] | None = {"headers": headers} if self.include_response_headers else {}
            async for data in sse.events(response):
                try:
                    chunk = orjson.loads(data)
                except orjson.JSONDecodeError as exc:
                    raise BrokenStreamError(f"a chunk was not valid JSON ({exc})") from None
                generation = convert.chunk_generation(chunk, base)
                if generation is None:
                    continue
                base = {}
                if wanted is not None:
                    finish = note_structured(chunk, generation, text, refusal) or finish
                yield generation
        if wanted is not None:
            yield structured_chunk(wanted, "".join(text), "".join(refusal) or None, finish, headers)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return self._sync().run(self._agenerate(messages, stop, None, **kwargs))

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        yield from self._sync().iterate(self._astream(messages, stop, None, **kwargs))

    def _sync(self) -> Portal:
        if self._portal is None:
            self._portal = Portal("lean-chat-openai")
            # a model dropped without close_portal() still closes its pool and stops its loop's thread
            self._stop_portal = weakref.finalize(self, _stop_portal, self._portal, self._http())
        return self._portal

    def close_portal(self) -> None:
        """Close the sync calls' pool and stop their event loop (a later sync call starts a new one)."""
        if self._portal is not None:
            self._stop_portal()
            self._portal = None

    # ------------------------------------------------------------------ tools and structured output

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: dict[str, Any] | str | bool | None = None,
        strict: bool | None = None,
        parallel_tool_calls: bool | None = None,
        response_format: Any = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Tools in OpenAI's format, bound as ``ChatOpenAI.bind_tools`` binds them (the same ``tool_choice`` rules)."""
        if parallel_tool_calls is not None:
            kwargs["parallel_tool_calls"] = parallel_tool_calls
        if response_format and strict is not False:
            strict = True
        formatted = [convert_to_openai_tool(tool, strict=strict) for tool in tools]
        for original, tool in zip(tools, formatted, strict=False):
            extras = getattr(original, "extras", None) if isinstance(original, BaseTool) else None
            for key in _TOOL_EXTRAS if isinstance(extras, dict) else ():
                if key in extras:  # type: ignore[operator]
                    tool[key] = extras[key]  # type: ignore[index]
        names = [t["function"]["name"] if "function" in t else t.get("name") for t in formatted]
        if tool_choice:
            if isinstance(tool_choice, str):
                if tool_choice in names:
                    tool_choice = {"type": "function", "function": {"name": tool_choice}}
                elif tool_choice in _WELL_KNOWN_TOOLS:
                    tool_choice = {"type": tool_choice}
                elif tool_choice == "any":
                    tool_choice = "required"
            elif isinstance(tool_choice, bool):
                tool_choice = "required"
            elif not isinstance(tool_choice, dict):
                raise ValueError(f"Unrecognized tool_choice type. Expected str, bool or dict. Received: {tool_choice}")
            kwargs["tool_choice"] = tool_choice
        if response_format:
            kwargs["response_format"] = convert_response_format(response_format, strict)
        return super().bind(tools=formatted, **kwargs)

    def with_structured_output(
        self,
        schema: Any = None,
        *,
        method: Literal["function_calling", "json_mode", "json_schema"] = "json_schema",
        include_raw: bool = False,
        strict: bool | None = None,
        tools: list[Any] | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, Any]:
        """As ``ChatOpenAI.with_structured_output``: OpenAI's structured outputs (default), tool calling or JSON mode."""
        if method == "json_schema" and (
            self.model_name.startswith("gpt-3") or self.model_name.startswith("gpt-4-") or self.model_name == "gpt-4"
        ):
            warnings.warn(
                f"Cannot use method='json_schema' with model {self.model_name}; overriding to method='function_calling'.",
                stacklevel=2,
            )
            method = "function_calling"
        return structured_runnable(self, schema, method, include_raw, strict, tools, kwargs)


def _stop_portal(portal: Portal, transport: Transport) -> None:
    """Close the portal loop's pool on that loop, then stop the loop (from any thread, the loop's own too)."""
    closing = transport.aclose(only_here=True)
    try:
        portal.run(closing)
    except RuntimeError:  # called on the portal's own thread (a finalizer there): it closes once we return
        asyncio.run_coroutine_threadsafe(closing, portal.loop)
    portal.close()
