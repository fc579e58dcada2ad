"""The offline model: a real ``BaseChatModel`` that needs no key and no network.

It writes deterministic text that depends on the prompt (the same messages give
the same answer; different topics give different stories), streams it in
token-sized chunks with an optional per-token delay, honours ``max_tokens`` and
``stop``, reports ``usage_metadata``, ``finish_reason`` and ``model_name`` (the
call's ``model=``, if it names one) like a provider does, answers
``response_format={"type": "json_schema", ...}`` with JSON that fits the schema,
and, with tools bound, calls one with arguments that fit its schema and come
from the prompt where it holds them.  It is what ``--model fake`` (the default
without a key) runs, and it passes LangChain's standard chat model tests
(tests/test_standard.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, ToolCall, ToolCallChunk
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool

from chains.providers.fake_json import SchemaFiller
from chains.providers.tokens import estimate_tokens

DEFAULT_FAKE_MAX_TOKENS = 120

_NAMES = ("Pip", "Mira", "Otto", "Luna", "Bea", "Tomas", "Juno", "Wren")
_STORY = (
    "Once upon a time there was {phrase}, and everyone called it {name}.",
    "Every morning {name} looked at the sky and wondered what the day would bring.",
    "One day {name} found something about the {kw} that nobody had noticed before.",
    '"Hello," said {name}. "Would you like to be friends?"',
    "The wind hummed softly, and the {kw} seemed to smile back.",
    "But the path home was long, and {name} felt a little afraid.",
    "So {name} took a deep breath and tried again, one small step at a time.",
    "Soon the whole village came out to help with the {kw}.",
    "They laughed, they shared warm bread, and they told stories about {kw2}s.",
    "By evening the {kw} was safe, and {name} felt very proud.",
    "That night {name} slept soundly, dreaming of {kw2}s and stars.",
    "And from then on, {name} was never lonely again.",
)
_OUTLINE = (
    "{name} is {phrase}, and one day sets out to find the {kw}.",
    "On the way, {name} meets a friend who loves {kw2}s.",
    "A storm scatters everything, and {name} feels like giving up.",
    "Together they try again and find the {kw} at last.",
    "{name} comes home happy, with a new friend and a story to tell.",
)
_STOPWORDS = frozenset(
    "a an the of to in on for and or but with who is are was be write story short "
    "about from into this that your you it its as at by outline numbered points "
    "point children's childrens text summarize translate".split()
)
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]{2,}")
_SUBJECT_LINE = re.compile(r"^\s*(?:topic|text|subject|title)\s*:\s*(.+)$", re.IGNORECASE | re.MULTILINE)
_ABOUT = re.compile(r"\babout:?\s*(.+)$", re.IGNORECASE | re.MULTILINE)


def _last_human_text(messages: list[BaseMessage]) -> str:
    for message in reversed(messages):
        if message.type == "human":
            return message.text
    return messages[-1].text if messages else ""


def _subject(text: str) -> str:
    """The prompt's subject: a ``Topic:`` line, the rest of an ``about:`` line, or the first line."""
    match = _SUBJECT_LINE.search(text) or _ABOUT.search(text)
    subject = match.group(1) if match else (text.strip().split("\n", 1)[0] if text.strip() else "something")
    return subject.strip().rstrip(".") or "something"


def _keywords(text: str) -> list[str]:
    seen: dict[str, None] = {}
    for word in _WORD.findall(text):
        low = word.lower()
        if low not in _STOPWORDS:
            seen.setdefault(low, None)
    return list(seen) or ["pebble"]


def compose_text(messages: list[BaseMessage], max_tokens: int) -> list[str]:
    """The answer for these messages, as a list of token-sized pieces (words with their spaces)."""
    prompt = "\n".join(f"{m.type}:{m.text}" for m in messages)
    rng = random.Random(hashlib.sha256(prompt.encode()).digest())
    human = _last_human_text(messages)
    phrase = _subject(human)
    if not re.match(r"(?i)^(a|an|the)\b", phrase):
        phrase = "a " + phrase
    words = _keywords(phrase) or _keywords(human)
    fill = {
        "phrase": phrase,
        "name": rng.choice(_NAMES),
        "kw": words[-1],
        "kw2": words[0],
    }
    if re.search(r"write an? (short )?outline", human, re.IGNORECASE):
        lines = [f"{i}. {line.format(**fill)}" for i, line in enumerate(_OUTLINE[: rng.randint(3, 5)], 1)]
        text = "\n".join(lines)
    else:
        title = f"{fill['name']} and the {fill['kw'].title()}"
        sentences = [_STORY[0], *sorted(rng.sample(_STORY[1:-1], k=rng.randint(6, 10)), key=_STORY.index), _STORY[-1]]
        paragraphs, current = [], []
        for sentence in sentences:
            current.append(sentence.format(**fill))
            if len(current) >= rng.randint(2, 4):
                paragraphs.append(" ".join(current))
                current = []
        if current:
            paragraphs.append(" ".join(current))
        text = title + "\n\n" + "\n\n".join(paragraphs)
    pieces = re.findall(r"\S+\s*", text)
    return pieces[:max_tokens]


def _split(text: str, size: int = 4) -> list[str]:
    """Token-sized pieces of a JSON text."""
    return [text[i : i + size] for i in range(0, len(text), size)]


def _fill(messages: list[BaseMessage], schema: Any, salt: str = "") -> Any:
    """The value for ``schema`` this conversation gets: the same messages, the same value."""
    prompt = "\n".join(m.text for m in messages)
    rng = random.Random(hashlib.sha256((prompt + salt).encode()).digest())
    prompt_text = _last_human_text(messages)
    return SchemaFiller(rng, prompt_text, _keywords(prompt_text), schema).value(schema)


def _json_pieces(messages: list[BaseMessage], schema: Any) -> list[str]:
    return _split(json.dumps(_fill(messages, schema), ensure_ascii=False))


class FakeChatModel(BaseChatModel):
    """Deterministic offline chat model with real streaming and usage."""

    model_name: str = "fake"
    token_delay: float = 0.0
    """Seconds to wait before each streamed token (and per token when not streaming)."""
    max_tokens: int | None = None
    temperature: float | None = None
    stop: list[str] | None = None
    """Stop sequences for every request (LangChain's standard parameter); a call's own ``stop`` wins."""

    @property
    def _llm_type(self) -> str:
        return "chain-runner-fake"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "max_tokens": self.max_tokens}

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Tools in OpenAI's format, as ``ChatOpenAI`` binds them, so ``with_structured_output`` works."""
        formatted = [convert_to_openai_tool(tool) for tool in tools]
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice
        return self.bind(tools=formatted, **kwargs)

    def _tool_call(self, messages: list[BaseMessage], **kwargs: Any) -> ToolCall | None:
        """With tools bound the answer calls one, as a model would: the one ``tool_choice`` names, else
        one the prompt names, else the first, with arguments that fit its schema (see ``SchemaFiller``).
        ``tool_choice="none"`` calls none, and a tool's result is answered in text unless ``tool_choice``
        forces another call, so an agent loop over the offline model ends."""
        tools = [t for t in kwargs.get("tools") or [] if isinstance(t, dict) and isinstance(t.get("function"), dict)]
        choice = kwargs.get("tool_choice")
        if not tools or choice == "none" or choice is False:
            return None
        if choice in (None, "auto") and messages and messages[-1].type == "tool":
            return None
        names = [str(t["function"].get("name")) for t in tools]
        wanted = choice.get("function", {}).get("name") if isinstance(choice, dict) else choice
        if wanted not in names:
            human = _last_human_text(messages)
            wanted = next((name for name in names if name in human), names[0])
        function = tools[names.index(wanted)]["function"]
        args = _fill(messages, function.get("parameters") or {}, salt=wanted)
        prompt = "\n".join(m.text for m in messages)
        call_id = "call_" + hashlib.sha256((prompt + wanted).encode()).hexdigest()[:12]
        return ToolCall(name=wanted, args=args if isinstance(args, dict) else {}, id=call_id)

    def _model(self, **kwargs: Any) -> str:
        """The model that answers: a call's ``model=`` (as providers take it), else ``model_name``."""
        model = kwargs.get("model")
        return model if isinstance(model, str) and model else self.model_name

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        """Tracing shows the default stop sequences too, as ``ChatOpenAI`` does."""
        return super()._get_ls_params(stop=self.stop if stop is None else stop, **kwargs)

    def _pieces(self, messages: list[BaseMessage], stop: list[str] | None, **kwargs: Any) -> list[str]:
        limit = kwargs.get("max_tokens") or self.max_tokens or DEFAULT_FAKE_MAX_TOKENS
        response_format = kwargs.get("response_format")
        if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
            return _json_pieces(messages, response_format["json_schema"].get("schema", {}))
        pieces = compose_text(messages, int(limit))
        stop = self.stop if stop is None else stop
        if stop:
            text = "".join(pieces)
            cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
            if cut >= 0:
                kept, total = [], 0
                for piece in pieces:
                    if total + len(piece) > cut:
                        break
                    kept.append(piece)
                    total += len(piece)
                pieces = kept
        return pieces

    def _finish(self, messages: list[BaseMessage], pieces: list[str], **kwargs: Any) -> tuple[str, UsageMetadata]:
        limit = kwargs.get("max_tokens") or self.max_tokens or DEFAULT_FAKE_MAX_TOKENS
        reason = "length" if len(pieces) >= int(limit) else "stop"
        prompt_tokens = sum(estimate_tokens(m.text) for m in messages)
        usage = UsageMetadata(
            input_tokens=prompt_tokens,
            output_tokens=len(pieces),
            total_tokens=prompt_tokens + len(pieces),
        )
        return reason, usage

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        pieces = self._pieces(messages, stop, **kwargs)
        if self.token_delay:
            time.sleep(self.token_delay * len(pieces))
        return self._result(messages, pieces, **kwargs)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        pieces = self._pieces(messages, stop, **kwargs)
        if self.token_delay:
            await asyncio.sleep(self.token_delay * len(pieces))
        return self._result(messages, pieces, **kwargs)

    def _result(self, messages: list[BaseMessage], pieces: list[str], **kwargs: Any) -> ChatResult:
        call = self._tool_call(messages, **kwargs)
        if call is not None:  # the arguments are the answer's tokens
            pieces = _split(json.dumps(call["args"], ensure_ascii=False))
        reason, usage = self._finish(messages, pieces, **kwargs)
        message = AIMessage(
            content="" if call else "".join(pieces),
            tool_calls=[call] if call else [],
            usage_metadata=usage,
            response_metadata={"finish_reason": "tool_calls" if call else reason, "model_name": self._model(**kwargs)},
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _chunks(self, messages: list[BaseMessage], pieces: list[str], **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        call = self._tool_call(messages, **kwargs)
        if call is not None:
            pieces = _split(json.dumps(call["args"], ensure_ascii=False))
            for i, piece in enumerate(pieces):
                first = i == 0
                chunk = ToolCallChunk(
                    name=call["name"] if first else None, args=piece, id=call["id"] if first else None, index=0
                )
                yield ChatGenerationChunk(message=AIMessageChunk(content="", tool_call_chunks=[chunk]))
        else:
            for piece in pieces:
                yield ChatGenerationChunk(message=AIMessageChunk(content=piece))
        reason, usage = self._finish(messages, pieces, **kwargs)
        reason = "tool_calls" if call is not None else reason
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                usage_metadata=usage,
                response_metadata={"finish_reason": reason, "model_name": self._model(**kwargs)},
            ),
            generation_info={"finish_reason": reason},
        )

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        pieces = self._pieces(messages, stop, **kwargs)
        for chunk in self._chunks(messages, pieces, **kwargs):
            if self.token_delay and chunk.text:
                time.sleep(self.token_delay)
            if run_manager and chunk.text:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        pieces = self._pieces(messages, stop, **kwargs)
        for chunk in self._chunks(messages, pieces, **kwargs):
            if self.token_delay and chunk.text:
                await asyncio.sleep(self.token_delay)
            yield chunk
