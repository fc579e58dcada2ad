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
import itertools
import json
import math
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

from chains.tokens import estimate_tokens

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


_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?!\w|\.\d)")
_QUOTED = re.compile(r"""(?<!\w)(?:'([^'\n]{1,200})'|"([^"\n]{1,200})"|“([^”\n]{1,200})”)(?!\w)""")
_SCAN = 64
"""At most this many numbers and quoted phrases are taken from a prompt."""
_MAX_DEPTH = 16
_MAX_NODES = 2000
"""A schema (from a prompt file or a tool) is filled to this depth and this many values at most."""
_MAX_ITEMS = 16


def _finite(value: Any) -> float | None:
    """A JSON number from a schema keyword, or None for anything else (bools, strings, inf, NaN)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value if abs(value) <= 1e15 else None  # also refuses NaN and infinities


def _vocabulary(schema: Any) -> set[str]:
    """The schema's own words (property names, enum and const values): the format, not the content."""
    found: set[str] = set()
    stack, visited = [schema], 0
    while stack and visited < _MAX_NODES:
        node, visited = stack.pop(), visited + 1
        if isinstance(node, dict):
            props = node.get("properties")
            if isinstance(props, dict):
                found.update(str(name) for name in props)
            for key in ("enum", "const"):
                if key in node:
                    values = node[key]
                    found.update(str(v) for v in (values if isinstance(values, list) else [values]))
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


class _SchemaFiller:
    """A small JSON value that fits a JSON schema (the common subset: types, properties, items, enum,
    const, anyOf/oneOf/allOf, local ``$ref``, bounds), with values taken from the prompt where it has
    them: the numbers it mentions for numeric fields and its quoted phrases for strings, in order, as a
    model would pick them out of "add 3 and 4" or "a customer named 'Acme'".

    Any schema, malformed or recursive, gives a bounded value and never an error: a fake model should
    answer wherever a real one would.
    """

    def __init__(self, rng: random.Random, prompt: str, root: Any) -> None:
        self.rng = rng
        self.words = _keywords(prompt)
        self.root = root
        self.nodes = 0
        own = _vocabulary(root)
        numbers = (m.group() for m in _NUMBER.finditer(prompt))
        self.numbers = [float(n) if "." in n else int(n) for n in itertools.islice(numbers, _SCAN)]
        phrases = (next(g for g in m.groups() if g is not None) for m in _QUOTED.finditer(prompt))
        self.phrases = [p for p in itertools.islice(phrases, _SCAN) if p not in own and any(c.isalnum() for c in p)]

    def value(self, schema: Any, depth: int = 0) -> Any:
        self.nodes += 1
        if not isinstance(schema, dict) or depth > _MAX_DEPTH or self.nodes > _MAX_NODES:
            return None
        schema = self._resolved(schema, depth)
        if "const" in schema:
            return schema["const"]
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            return self.rng.choice(enum)
        for key in ("anyOf", "oneOf"):
            options = schema.get(key)
            if isinstance(options, list) and options:
                real = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
                return self.value((real or options)[0], depth + 1)
        parts = schema.get("allOf")
        if isinstance(parts, list) and parts:
            merged = {k: v for k, v in schema.items() if k != "allOf"}
            for part in parts:
                if isinstance(part, dict):
                    merged.update(self._resolved(part, depth))
            return self.value(merged, depth + 1)
        return self._typed(schema, self._kind(schema), depth)

    def _resolved(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        """Follow a local ``$ref`` (``#/$defs/Name``), a few levels at most; anything else stays as it is."""
        for _ in range(_MAX_DEPTH - depth + 1):
            ref = schema.get("$ref")
            if not isinstance(ref, str) or not ref.startswith("#/"):
                return schema
            target: Any = self.root
            for part in ref[2:].split("/"):
                target = target.get(part.replace("~1", "/").replace("~0", "~")) if isinstance(target, dict) else None
            if not isinstance(target, dict):
                return {k: v for k, v in schema.items() if k != "$ref"}
            schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        return {}

    @staticmethod
    def _kind(schema: dict[str, Any]) -> str:
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if isinstance(k, str) and k != "null"), "null")
        if isinstance(kind, str):
            return kind
        return "array" if "items" in schema else "object"

    def _typed(self, schema: dict[str, Any], kind: str, depth: int) -> Any:
        if kind == "object":
            props = schema.get("properties")
            if not isinstance(props, dict):
                return {}
            return {str(key): self.value(sub, depth + 1) for key, sub in props.items()}
        if kind == "array":
            low = min(max(1, int(_finite(schema.get("minItems")) or 1)), _MAX_ITEMS)
            high = min(max(low, int(_finite(schema.get("maxItems")) or 3)), max(low, 5))
            item = schema.get("items")
            item = item if isinstance(item, dict) else {"type": "string"}
            return [self.value(item, depth + 1) for _ in range(self.rng.randint(low, high))]
        if kind == "string":
            return self._string(schema)
        if kind in ("integer", "number"):
            return self._number(schema, integer=kind == "integer")
        if kind == "boolean":
            return self.rng.random() < 0.5
        return None

    def _string(self, schema: dict[str, Any]) -> str:
        text = self.phrases.pop(0) if self.phrases else self.rng.choice(self.words)
        longest = _finite(schema.get("maxLength"))
        return text[: int(longest)] if longest is not None and longest >= 0 else text

    def _number(self, schema: dict[str, Any], *, integer: bool) -> int | float:
        low, high = _finite(schema.get("minimum")), _finite(schema.get("maximum"))
        above, below = _finite(schema.get("exclusiveMinimum")), _finite(schema.get("exclusiveMaximum"))

        def fits(n: float) -> bool:
            return not (
                (low is not None and n < low)
                or (high is not None and n > high)
                or (above is not None and n <= above)
                or (below is not None and n >= below)
            )

        for i, n in enumerate(self.numbers):
            if (not integer or isinstance(n, int)) and fits(n):
                return self.numbers.pop(i)
        start = low if low is not None else (above + 1 if above is not None else 0)
        end = high if high is not None else (below - 1 if below is not None else start + 10)
        end = max(start, end)
        if integer:
            return self.rng.randint(math.ceil(start), max(math.ceil(start), math.floor(end)))
        return round(self.rng.uniform(start, end), 3)


def _split(text: str, size: int = 4) -> list[str]:
    """Token-sized pieces of a JSON text."""
    return [text[i : i + size] for i in range(0, len(text), size)]


def _fill(messages: list[BaseMessage], schema: Any, salt: str = "") -> Any:
    """The value for ``schema`` this conversation gets: the same messages, the same value."""
    prompt = "\n".join(m.text for m in messages)
    rng = random.Random(hashlib.sha256((prompt + salt).encode()).digest())
    return _SchemaFiller(rng, _last_human_text(messages), schema).value(schema)


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
        one the prompt names, else the first, with arguments that fit its schema (see ``_SchemaFiller``).
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
