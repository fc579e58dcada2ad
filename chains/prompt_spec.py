"""The project's declarative prompt-file format.

A prompt file is YAML (read with a bounded ``yaml.SafeLoader`` only) describing one chat
prompt: its input variables and optional defaults, the messages (f-string
templates plus an optional chat-history placeholder), model parameters and the
expected output (plain text or JSON checked against a JSON Schema)::

    name: translate
    description: Translate a text into another language.
    input_variables: [text, language]
    defaults: {language: French}
    messages:
      - {role: system, content: You are a careful translator.}
      - {role: human, content: "Translate into {language}:\\n\\n{text}"}
    model: {temperature: 0.2, max_tokens: 400}
    output: {kind: text}

``load_spec`` / ``parse_spec`` turn a file into a validated, immutable
``PromptSpec``; every problem is reported as one ``PromptSpecError`` line naming
the file, the field and the fix.  ``to_prompt``, ``model_kwargs``,
``output_parser`` and ``response_format`` give the pieces a chain is built from.
Files are loaded only from a known directory by name (``resolve_spec_path``,
``discover_specs``): never by arbitrary path and never with LangChain's
``load_prompt``.  Templates are f-strings only; nothing in a prompt file is
ever executed.

Prompt files are outside data, so reading one is bounded in time and memory
whatever it holds (``_BoundedLoader``): at most ``MAX_FILE_BYTES`` (checked
before the file is read whole), ``MAX_DEPTH`` levels of nesting and
``MAX_NODES`` values, numbers of at most ``MAX_NUMBER_CHARS`` characters, and
an ``output.schema`` of at most ``MAX_SCHEMA_NODES`` JSON values nested at most
``MAX_SCHEMA_DEPTH`` deep.  Anchors and aliases (``&a`` / ``*a``) are refused
outright rather than counted: an alias shares one value in many places, so a
1 KB file can stand for 10**9 nodes that pydantic, the JSON Schema check and
JSON serialisation each walk in full; a recursive alias makes a value that
contains itself.  Counting the expansion would keep YAML's sharp edge for a
convenience hand-written prompt files do not need, so the rule is the simple
one: write the value out.  Every limit, and every value YAML cannot build
(``2001-13-01``), is one ``PromptSpecError`` line; nothing else escapes.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.resources
import math
import os
import re
import stat
import string
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from chains.errors import PromptSpecError

if TYPE_CHECKING:  # LangChain is imported only when a prompt is compiled: `list` stays fast
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.runnables import Runnable

__all__ = [
    "MAX_DEPTH",
    "MAX_FILE_BYTES",
    "MAX_NODES",
    "MAX_NUMBER_CHARS",
    "MAX_SCHEMA_DEPTH",
    "MAX_SCHEMA_NODES",
    "NAME_RULE",
    "Message",
    "ModelParams",
    "OutputSpec",
    "PlaceholderMessage",
    "PromptSpec",
    "TextMessage",
    "discover_specs",
    "load_spec",
    "packaged_prompts_dir",
    "parse_spec",
    "resolve_spec_path",
    "template_variables",
]

NAME_RULE = "[a-z][a-z0-9_]*"
_NAME_RE = re.compile(NAME_RULE)
_IDENTIFIER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ROLES = ("system", "human", "ai", "placeholder")

MAX_FILE_BYTES = 1_000_000
"""A prompt file is a few KB; 1 MB leaves room for long texts and bounds everything else."""
MAX_DEPTH = 100
"""YAML nesting levels in a file (PyYAML's composer recurses; Python allows about 1000 frames)."""
MAX_NODES = 50_000
"""YAML values (scalars, lists, mappings, keys) in a file: above any real prompt, about 1 s to read."""
MAX_NUMBER_CHARS = 100
"""Longer numbers are refused: YAML's base-60 ints (``1:2:3``) cost quadratic time to build."""
MAX_SCHEMA_NODES = 10_000
"""JSON values in ``output.schema``: the JSON Schema check takes about 1 s at this size."""
MAX_SCHEMA_DEPTH = 64
"""Nesting of ``output.schema``; ``$defs`` and ``$ref`` express anything deeper."""
_SHOWN_CHARS = 60
_SHOWN_NAMES = 10


class _Problem(ValueError):
    """A validation problem with an explicit (absolute) field path.

    Raised inside validators; pydantic wraps it in a ValidationError and
    ``_spec_error`` unwraps it into a PromptSpecError.
    """

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}" if field else problem)
        self.field = field
        self.problem = problem


def _quoted(names: Iterable[str]) -> str:
    """``'a', 'b'``; after ``_SHOWN_NAMES`` names, ``and N more`` keeps an error to one short line."""
    listed = list(names)
    shown = ", ".join(f"'{_clip(n)}'" for n in listed[:_SHOWN_NAMES])
    hidden = len(listed) - _SHOWN_NAMES
    return shown + (f" and {hidden} more" if hidden > 0 else "")


def _clip(text: str) -> str:
    """Text from the file as it may appear in an error: one line, at most ``_SHOWN_CHARS`` characters."""
    flat = text.encode("unicode_escape").decode("ascii") if not text.isprintable() else text
    return flat if len(flat) <= _SHOWN_CHARS else flat[: _SHOWN_CHARS - 1] + "…"


def _shown(value: Any) -> str:
    """``repr`` of a value from the file, clipped to one short line."""
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 1] + "…"


def template_variables(template: str) -> list[str]:
    """Return the variables of an f-string template, in order of first use.

    Only plain names are allowed (``{topic}``); attribute or index access,
    conversions and format specs are rejected with a ValueError saying so.
    Literal braces are written ``{{`` and ``}}``.
    """
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"unbalanced brace ({exc}); write literal braces as {{{{ and }}}}") from None
    found: dict[str, None] = {}  # ordered and O(1) membership: a template may hold thousands of fields
    for _literal, field, spec, conversion in parsed:
        if field is None:
            continue
        shown = _clip("{" + field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}")
        if field == "":
            raise ValueError(
                f"{shown} has no variable name; use a name like {{text}}, or write literal braces as {{{{ }}}}"
            )
        if conversion or spec:
            raise ValueError(
                f"{shown} uses a conversion or format spec; only plain names like "
                f"{{{_clip(field.split('.')[0].split('[')[0])}}} are allowed"
            )
        if not _IDENTIFIER_RE.fullmatch(field):
            raise ValueError(
                f"{shown} is not a plain variable name (no attribute access, indexing "
                "or digits first); use a name like {text}"
            )
        found.setdefault(field)
    return list(found)


# --------------------------------------------------------------------------- models


class _Strict(BaseModel):
    """Base: unknown keys rejected, no type coercion (a YAML string is not a number)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class TextMessage(_Strict):
    """A system, human or ai message whose content is an f-string template."""

    role: Literal["system", "human", "ai"]
    content: str = Field(min_length=1)

    @field_validator("content")
    @classmethod
    def _plain_fields_only(cls, content: str) -> str:
        template_variables(content)
        return content

    @property
    def variables(self) -> list[str]:
        return template_variables(self.content)


class PlaceholderMessage(_Strict):
    """Chat history inserted from a list of messages (a MessagesPlaceholder)."""

    role: Literal["placeholder"]
    variable: str
    optional: bool = True

    @field_validator("variable")
    @classmethod
    def _identifier(cls, variable: str) -> str:
        if not _IDENTIFIER_RE.fullmatch(variable):
            raise ValueError(f"{_shown(variable)} is not a plain variable name; use a name like history")
        return variable

    @property
    def variables(self) -> list[str]:
        return [self.variable]


Message = Annotated[TextMessage | PlaceholderMessage, Field(discriminator="role")]


class ModelParams(_Strict):
    """Model parameters; every one is optional and only set ones are passed on."""

    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, gt=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: list[str] | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    seed: int | None = None


class OutputSpec(_Strict):
    """What the model returns: plain text, or JSON matching ``schema``."""

    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True)

    kind: Literal["text", "json"] = "text"
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")

    @field_validator("json_schema")
    @classmethod
    def _bounded_json(cls, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        if schema is not None:
            _check_json_schema_bounds(schema)
        return schema

    @model_validator(mode="after")
    def _schema_fits_kind(self) -> OutputSpec:
        if self.kind == "text" and self.json_schema is not None:
            raise _Problem("output.schema", "is only used with kind: json; remove it or set kind: json")
        if self.kind == "json":
            if self.json_schema is None:
                raise _Problem("output", "kind: json needs a schema; add output.schema with a JSON Schema")
            from jsonschema import Draft202012Validator, SchemaError

            try:
                Draft202012Validator.check_schema(self.json_schema)
            except RecursionError:  # re.compile of a 'pattern' with hundreds of nested groups
                raise _Problem(
                    "output.schema",
                    "too deeply nested to check (a 'pattern' with hundreds of nested groups?); simplify it",
                ) from None
            except SchemaError as exc:
                where = "".join(f"[{p}]" if isinstance(p, int) else f".{_clip(str(p))}" for p in exc.path)
                raise _Problem(
                    f"output.schema{where}",
                    f"not a valid JSON Schema (Draft 2020-12): {_clip_line(exc.message)}",
                ) from None
        return self


_JSON_NAMES = {"date": "a date", "datetime": "a date and time", "set": "a set", "bytes": "binary data"}


def _not_json(value: Any) -> str | None:
    """What a YAML value that JSON cannot hold is (``a date``), or None for a JSON value."""
    if value is None or isinstance(value, str | bool | int | dict | list):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else "infinity or NaN"
    return _JSON_NAMES.get(type(value).__name__, type(value).__name__)


_Path = tuple[Any, str | int] | None
"""A place in the schema as a parent link: ``((None, "properties"), "a")``."""


def _check_json_schema_bounds(schema: dict[str, Any]) -> None:
    """Refuse an output schema that is too big, too deep or not JSON, before anything walks it.

    Iterative (no recursion) and stops at the first problem, so it is bounded
    by ``MAX_SCHEMA_NODES`` whatever the schema holds.  JSON-only matters: the
    schema is sent to the provider and printed by ``list --json``.  Paths are
    kept as parent links and spelled out only for the error.
    """
    stack: list[tuple[Any, int, _Path]] = [(schema, 1, None)]
    count = 0
    while stack:
        value, depth, path = stack.pop()
        count += 1
        if count > MAX_SCHEMA_NODES:
            raise _Problem(
                "output.schema",
                f"has more than {MAX_SCHEMA_NODES:,} values; an output schema needs far fewer, simplify it",
            )
        if depth > MAX_SCHEMA_DEPTH and isinstance(value, dict | list):
            raise _Problem(
                "output.schema",
                f"nested more than {MAX_SCHEMA_DEPTH} levels deep; "
                "flatten it (name shared parts in $defs and use $ref)",
            )
        problem = _not_json(value)
        if problem is not None:
            raise _Problem(_spell(path), f"must hold only JSON values (got {problem}); write it as JSON data")
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    kind = _not_json(key) or _type_name(key)
                    raise _Problem(_spell(path), f"keys must be text (got a key that is {kind}); quote the key")
                stack.append((item, depth + 1, (path, key)))
        elif isinstance(value, list):
            stack.extend((item, depth + 1, (path, index)) for index, item in enumerate(value))


def _spell(path: _Path) -> str:
    """``((None, "properties"), "a")`` -> ``output.schema.properties.a``."""
    steps: list[str] = []
    while path is not None:
        path, step = path
        steps.append(f"[{step}]" if isinstance(step, int) else f".{_clip(step)}")
    return "output.schema" + "".join(reversed(steps))


class PromptSpec(_Strict):
    """One validated prompt file.  Immutable; build it with ``load_spec``/``parse_spec``."""

    name: str
    description: str
    input_variables: list[str]
    defaults: dict[str, Any] = Field(default_factory=dict)
    messages: list[Message]
    model: ModelParams = Field(default_factory=ModelParams)
    output: OutputSpec = Field(default_factory=OutputSpec)

    _source: str = PrivateAttr(default="<string>")
    _digest: str = PrivateAttr(default="")

    @field_validator("name")
    @classmethod
    def _valid_name(cls, name: str) -> str:
        if not _NAME_RE.fullmatch(name):
            raise ValueError(
                f"{_shown(name)} must match {NAME_RULE} "
                "(lowercase letters, digits and underscores, starting with a letter)"
            )
        return name

    @field_validator("input_variables")
    @classmethod
    def _valid_variables(cls, names: list[str]) -> list[str]:
        for name in names:
            if not _IDENTIFIER_RE.fullmatch(name):
                raise ValueError(f"{_shown(name)} is not a plain variable name; use a name like text")
        seen: set[str] = set()
        for name in names:
            if name in seen:
                raise ValueError(f"'{name}' is listed twice; list each variable once")
            seen.add(name)
        return names

    @field_validator("defaults")
    @classmethod
    def _scalar_defaults(cls, defaults: dict[str, Any]) -> dict[str, Any]:
        for key, value in defaults.items():
            if not isinstance(value, str | int | float):
                raise _Problem(
                    f"defaults.{_clip(key)}",
                    f"must be a string or number, got {_type_name(value)}",
                )
        return defaults

    @model_validator(mode="after")
    def _variables_match_messages(self) -> PromptSpec:
        if not self.messages:
            raise _Problem("messages", "is empty; add at least one message with role: human")
        if not any(m.role == "human" for m in self.messages):
            raise _Problem("messages", "has no human message; add one with role: human and a content")
        declared = set(self.input_variables)  # sets: a file may declare thousands of variables
        declared_text = _quoted(self.input_variables) if declared else "none"
        used: set[str] = set()
        for index, message in enumerate(self.messages):
            for var in message.variables:
                if var not in declared:
                    raise _Problem(
                        f"messages[{index}]",
                        f"uses {{{var}}} but input_variables has {declared_text}",
                    )
                used.add(var)
        for var in self.input_variables:
            if var not in used:
                raise _Problem(
                    "input_variables",
                    f"declares '{var}' but no message uses {{{var}}}; remove it or use it in a message",
                )
        placeholders = {m.variable for m in self.messages if isinstance(m, PlaceholderMessage)}
        for index, message in enumerate(self.messages):
            if isinstance(message, TextMessage):
                for var in message.variables:
                    if var in placeholders:
                        raise _Problem(
                            f"messages[{index}]",
                            f"uses {{{var}}} in text but '{var}' is a placeholder "
                            "(a list of messages); use a different name",
                        )
        for key in self.defaults:
            if key not in declared:
                raise _Problem(
                    "defaults",
                    f"'{_clip(key)}' is not in input_variables ({declared_text}); declare it or remove the default",
                )
            if key in placeholders:
                raise _Problem(
                    "defaults",
                    f"'{key}' is a placeholder, which is optional already; remove the default",
                )
        return self

    # ------------------------------------------------------------------ loader data

    @property
    def source(self) -> str:
        """Display label of the file this spec came from (e.g. ``prompts/story.yaml``)."""
        return self._source

    @property
    def digest(self) -> str:
        """sha256 hex digest of the file bytes; changes whenever the file does."""
        return self._digest

    # ------------------------------------------------------------------- variables

    def _optional(self) -> set[str]:
        """Variables with a default or an optional placeholder (one pass: linear in the file)."""
        placeholders = {m.variable for m in self.messages if isinstance(m, PlaceholderMessage) and m.optional}
        return set(self.defaults) | placeholders

    @property
    def required_variables(self) -> list[str]:
        """Declared variables the caller must supply, in declaration order."""
        optional = self._optional()
        return [v for v in self.input_variables if v not in optional]

    @property
    def optional_variables(self) -> list[str]:
        """Declared variables with a default, or optional history placeholders."""
        optional = self._optional()
        return [v for v in self.input_variables if v in optional]

    # ------------------------------------------------------------------ LangChain

    def to_prompt(self) -> ChatPromptTemplate:
        """Compile to a ChatPromptTemplate (f-string; defaults as overridable partials)."""
        from langchain_core.prompts import (
            AIMessagePromptTemplate,
            ChatPromptTemplate,
            HumanMessagePromptTemplate,
            MessagesPlaceholder,
            SystemMessagePromptTemplate,
        )

        templates = {
            "system": SystemMessagePromptTemplate,
            "human": HumanMessagePromptTemplate,
            "ai": AIMessagePromptTemplate,
        }
        parts: list[Any] = []
        for message in self.messages:
            if isinstance(message, PlaceholderMessage):
                parts.append(MessagesPlaceholder(message.variable, optional=message.optional))
            else:
                parts.append(templates[message.role].from_template(message.content, template_format="f-string"))
        prompt = ChatPromptTemplate.from_messages(parts)
        return prompt.partial(**self.defaults) if self.defaults else prompt

    def model_kwargs(self) -> dict[str, Any]:
        """The model parameters that are set, e.g. ``{"temperature": 0.2}``."""
        return self.model.model_dump(exclude_none=True)

    def output_parser(self) -> Runnable[Any, Any]:
        """Text: ``StrOutputParser``.  JSON: parse and validate against the schema."""
        from langchain_core.output_parsers import StrOutputParser

        from chains.parsers import JsonSchemaOutputParser

        if self.output.kind == "json":
            assert self.output.json_schema is not None  # guaranteed by OutputSpec
            return JsonSchemaOutputParser(prompt_name=self.name, json_schema=self.output.json_schema)
        return StrOutputParser()

    def response_format(self) -> dict[str, Any] | None:
        """OpenAI structured-outputs ``response_format`` for JSON output, else None."""
        if self.output.kind != "json":
            return None
        return {
            "type": "json_schema",
            "json_schema": {"name": self.name, "schema": self.output.json_schema, "strict": False},
        }


# ------------------------------------------------------------------ error reporting

_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}


def _type_name(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "a boolean"
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        list: "a list",
        dict: "a mapping",
    }
    return names.get(type(value), type(value).__name__)


def _field_path(loc: tuple[int | str, ...]) -> str:
    """``('messages', 1, 'human', 'content')`` -> ``messages[1].content``."""
    path = ""
    previous: int | str | None = None
    for item in loc:
        if isinstance(item, int):
            path += f"[{item}]"
        elif isinstance(previous, int) and item in _ROLES:
            pass  # the discriminated-union tag pydantic inserts after a message index
        elif item != "[key]":
            path += f".{item}" if path else item
        previous = item
    return path


def _allowed_keys(parent: tuple[int | str, ...]) -> list[str]:
    model: type[BaseModel] = PromptSpec
    if parent and parent[-1] in _ROLES:
        model = PlaceholderMessage if parent[-1] == "placeholder" else TextMessage
    elif parent == ("model",):
        model = ModelParams
    elif parent == ("output",):
        model = OutputSpec
    return [info.alias or name for name, info in model.model_fields.items()]


def _spec_error(label: str, exc: ValidationError) -> PromptSpecError:
    """Turn pydantic's first error into one readable line.

    An unknown key is reported first: it is usually a typo that also explains
    a "missing key" error (``temprature`` / ``temperature``).
    """
    errors = exc.errors()
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc, kind, ctx, value = tuple(err["loc"]), err["type"], err.get("ctx", {}), err.get("input")
    field = _field_path(loc)
    if kind == "value_error" and isinstance(ctx.get("error"), _Problem):
        problem: _Problem = ctx["error"]
        return PromptSpecError(label, problem.field, problem.problem)
    if kind in ("value_error", "assertion_error"):
        return PromptSpecError(label, field, str(ctx.get("error", err["msg"])))
    if kind == "extra_forbidden":
        key = str(loc[-1])
        allowed = _allowed_keys(loc[:-1])
        hint = difflib.get_close_matches(key, allowed, n=1)
        text = f"unknown key '{_clip(key)}'; allowed: {', '.join(allowed)}"
        text += f" (did you mean '{hint[0]}'?)" if hint else ""
        if key == "template_format":
            text += "; templates are always f-strings ({name}, literal braces {{ }})"
        return PromptSpecError(label, _field_path(loc[:-1]), text)
    if kind == "missing":
        return PromptSpecError(label, _field_path(loc[:-1]), f"missing required key '{_clip(str(loc[-1]))}'; add it")
    roles = ", ".join(_ROLES)
    if kind == "union_tag_invalid":
        tag = _clip(str(ctx.get("tag")))
        return PromptSpecError(label, f"{field}.role", f"'{tag}' is not a role; use one of: {roles}")
    if kind == "union_tag_not_found":
        return PromptSpecError(label, field, f"missing required key 'role'; use one of: {roles}")
    if kind in _EXPECTED:
        text = f"expected {_EXPECTED[kind]}, got {_type_name(value)}"
        if kind == "string_type" and isinstance(value, dict):
            text += "; quote text that starts with '{', e.g. content: \"{text}\""
        return PromptSpecError(label, field, text)
    if kind == "literal_error":
        return PromptSpecError(label, field, f"must be {ctx.get('expected')}, got {_shown(value)}")
    if kind == "string_too_short":
        return PromptSpecError(label, field, "must not be empty")
    message = str(err["msg"]).replace("Input should", "should")
    return PromptSpecError(label, field, f"{_clip_line(message)}, got {_shown(value)}")


# -------------------------------------------------------------------- bounded YAML

_NUMBER_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
_ALIASES = "anchors and aliases (&, *) are not allowed; write the value out"
# What PyYAML's safe constructors raise, besides YAMLError, for a value they cannot
# build: ValueError (2001-13-01, !!int zz), KeyError (!!bool zz), IndexError (an
# empty !!int), AttributeError (!!timestamp zz); the rest for safety.
_BUILD_ERRORS = (ValueError, LookupError, AttributeError, TypeError, ArithmeticError)


class _Limit(Exception):
    """A limit of ``_BoundedLoader`` was passed at a line; ``parse_spec`` names the file."""

    def __init__(self, problem: str, mark: Any) -> None:
        super().__init__(problem)
        self.problem = problem
        self.line = mark.line + 1 if mark is not None else 1


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses anchors and aliases and bounds depth, values and numbers.

    The checks sit in the composer, which pulls events from the (iterative)
    parser one at a time, so a file is refused as soon as it passes a limit,
    without being scanned to its end.  Values PyYAML cannot build become
    YAMLErrors with the value's position, so only YAMLError and ``_Limit`` leave.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _Limit(_ALIASES, event.start_mark)
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise _Limit(f"more than {MAX_NODES:,} values; a prompt file needs far fewer, shorten it", event.start_mark)
        if not isinstance(event, yaml.CollectionStartEvent):
            return super().compose_node(parent, index)
        if self._depth >= MAX_DEPTH:
            raise _Limit(
                f"nested more than {MAX_DEPTH} levels deep; a prompt file needs only a few, flatten it",
                event.start_mark,
            )
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        if isinstance(node, yaml.ScalarNode) and node.tag in _NUMBER_TAGS and len(node.value) > MAX_NUMBER_CHARS:
            raise _Limit(
                f"a number {len(node.value):,} characters long; numbers are at most {MAX_NUMBER_CHARS} "
                "characters (quote it if it is text)",
                node.start_mark,
            )
        try:
            return super().construct_object(node, deep)
        except _BUILD_ERRORS as exc:
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read this value ({_clip(str(exc))})", node.start_mark
            ) from None


def _load_yaml(text: str, label: str) -> Any:
    """The document in ``text``, within the limits; every problem is one PromptSpecError."""
    loader: _BoundedLoader | None = None
    try:
        loader = _BoundedLoader(text)  # the reader checks the characters here
        return loader.get_single_data()
    except _Limit as exc:
        raise PromptSpecError(label, "", f"line {exc.line}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise PromptSpecError(
            label,
            "",
            f"invalid YAML{where}: {_clip_line(problem)}; check the indentation and quote text "
            "containing ': ' or starting with '{'",
        ) from None
    finally:
        if loader is not None:
            loader.dispose()


def _clip_line(text: str) -> str:
    """A message from PyYAML on one line (it may quote a stretch of the file)."""
    return " ".join(text.split())[:200]


def _too_big(label: str, size: int, *, over: bool = False) -> PromptSpecError:
    shown = f"over {MAX_FILE_BYTES:,}" if over else f"{size:,}"
    return PromptSpecError(
        label, "", f"file is {shown} bytes; prompt files are at most {MAX_FILE_BYTES:,} bytes, shorten it"
    )


# ------------------------------------------------------------------------- loading


def parse_spec(text: str, label: str, stem: str | None) -> PromptSpec:
    """Parse and validate prompt-file text.

    ``label`` is the display name used in errors; when ``stem`` is given the
    spec's ``name`` must equal it.  The digest is the sha256 of the UTF-8 text.
    """
    encoded = text.encode("utf-8", "surrogatepass")  # lone surrogates are refused by the YAML reader
    if len(encoded) > MAX_FILE_BYTES:
        raise _too_big(label, len(encoded))
    data = _load_yaml(text, label)
    if data is None:
        raise PromptSpecError(label, "", "file is empty; expected name, description, input_variables and messages")
    if not isinstance(data, dict):
        raise PromptSpecError(
            label,
            "",
            f"top level must be a mapping (name: ..., messages: ...), got {_type_name(data)}",
        )
    try:
        spec = PromptSpec.model_validate(data)
    except ValidationError as exc:
        raise _spec_error(label, exc) from None
    if stem is not None and spec.name != stem:
        raise PromptSpecError(
            label,
            "name",
            f"'{spec.name}' does not match the file name '{_clip(stem)}.yaml'; "
            "make them the same (rename the file or change name)",
        )
    spec._source = label
    spec._digest = hashlib.sha256(encoded).hexdigest()
    return spec


def _read_bounded(path: Path, shown: str) -> bytes:
    """The file's bytes, refusing before reading one that is over ``MAX_FILE_BYTES``.

    Opened without blocking and checked to be a regular file, so a FIFO or a
    device cannot hang the read; read at most one byte past the limit, so a file
    that grows meanwhile cannot either.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    with os.fdopen(fd, "rb") as file:
        status = os.fstat(file.fileno())
        if not stat.S_ISREG(status.st_mode):
            raise PromptSpecError(shown, "", "not a regular file; a prompt file must be a plain .yaml file")
        if status.st_size > MAX_FILE_BYTES:
            raise _too_big(shown, status.st_size)
        raw = file.read(MAX_FILE_BYTES + 1)
    if len(raw) > MAX_FILE_BYTES:
        raise _too_big(shown, len(raw), over=True)
    return raw


def load_spec(path: Path, label: str | None = None) -> PromptSpec:
    """Load and validate one prompt file; ``label`` (default: the path) names it in errors."""
    shown = label if label is not None else str(path)
    try:
        raw = _read_bounded(path, shown)
    except FileNotFoundError:
        raise PromptSpecError(shown, "", "file not found") from None
    except OSError as exc:
        raise PromptSpecError(shown, "", f"cannot read file: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PromptSpecError(shown, "", f"not UTF-8 text (byte {exc.start}); save the file as UTF-8") from None
    # Strict UTF-8 decoding round-trips, so the digest equals sha256(raw).
    return parse_spec(text, shown, path.stem)


def _inside(path: Path, directory: Path) -> bool:
    return path.resolve().is_relative_to(directory.resolve())


def resolve_spec_path(directory: Path, name: str, label_prefix: str) -> Path:
    """Path of prompt ``name`` inside ``directory``, refusing anything that escapes it.

    ``name`` must match ``[a-z][a-z0-9_]*`` (so no separators, dots or ``..``),
    and the file (symlinks resolved) must stay inside ``directory``.  The file
    need not exist; check ``.is_file()``.  ``label_prefix`` (e.g. ``prompts``)
    names the directory in errors.
    """
    prefix = label_prefix.rstrip("/")
    if not _NAME_RE.fullmatch(name):
        raise PromptSpecError(
            prefix or str(directory),
            "name",
            f"{name!r} is not a valid prompt name; names must match {NAME_RULE} "
            "(lowercase letters, digits and underscores, starting with a letter)",
        )
    path = directory / f"{name}.yaml"
    if not _inside(path, directory):
        raise PromptSpecError(
            f"{prefix}/{name}.yaml" if prefix else str(path),
            "",
            "resolves outside the prompt directory (symlink?); prompt files must live inside it",
        )
    return path


def discover_specs(directory: Path) -> dict[str, Path]:
    """``{name: path}`` for the ``*.yaml`` prompt files directly in ``directory``, sorted.

    Files whose stem is not a valid name (e.g. ``__init__``) and symlinks
    pointing outside the directory are skipped.  Files are not parsed.
    """
    if not directory.is_dir():
        return {}
    found: dict[str, Path] = {}
    for path in sorted(directory.glob("*.yaml")):
        if _NAME_RE.fullmatch(path.stem) and path.is_file() and _inside(path, directory):
            found[path.stem] = path
    return found


def packaged_prompts_dir() -> Path:
    """Directory of the prompt files shipped as the ``chains.prompts`` package."""
    try:
        root = importlib.resources.files("chains.prompts")
    except ModuleNotFoundError:
        # Running from a source checkout that is not installed: prompts/ sits
        # next to chains/ (pyproject maps it to chains.prompts when installed).
        return Path(__file__).resolve().parent.parent / "prompts"
    if isinstance(root, Path):
        return root
    return Path(str(root))
