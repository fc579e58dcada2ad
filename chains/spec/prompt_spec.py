"""The project's declarative prompt-file format and its validation.

A prompt file is YAML describing one chat prompt: its input variables and
optional defaults, the messages (f-string templates plus an optional
chat-history placeholder), model parameters and the expected output (plain
text or JSON checked against a JSON Schema)::

    name: translate
    description: Translate a text into another language.
    input_variables: [text, language]
    defaults: {language: French}
    messages:
      - {role: system, content: You are a careful translator.}
      - {role: human, content: "Translate into {language}:\\n\\n{text}"}
    model: {temperature: 0.2, max_tokens: 400}
    output: {kind: text}

``parse_spec`` turns a file's text into a validated, immutable ``PromptSpec``,
or one ``PromptSpecError`` line naming the file, the field and the fix
(``spec_errors``).  ``to_prompt``, ``model_kwargs``, ``output_parser`` and
``response_format`` give the pieces a chain is built from.  Templates are
f-strings only; nothing in a prompt file is ever executed.  A file is outside
data, so it is bounded: ``MAX_FILE_BYTES``, then ``safe_yaml`` (plain data, no
anchors, ``MAX_DEPTH``, ``MAX_NODES``, ``MAX_NUMBER_CHARS``), then
``output_schema`` for ``output.schema``.  Finding and reading files is
``prompts_library``'s job (its functions are still importable from here).
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from chains.errors import PromptSpecError, clip
from chains.spec import safe_yaml
from chains.spec.messages import (
    IDENTIFIER_RE,
    Message,
    PlaceholderMessage,
    StrictModel,
    TextMessage,
    template_variables,
)
from chains.spec.output_schema import MAX_SCHEMA_DEPTH, MAX_SCHEMA_NODES, bounds_problem, validity_problem
from chains.spec.spec_errors import Problem, quoted, shown, spec_error, type_name

if TYPE_CHECKING:  # LangChain is imported only when a prompt is compiled: `list` stays fast
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.runnables import Runnable

    from chains.spec.prompts_library import discover_specs, load_spec, packaged_prompts_dir, resolve_spec_path

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
    "file_too_big",
    "load_spec",
    "packaged_prompts_dir",
    "parse_spec",
    "resolve_spec_path",
    "template_variables",
]

NAME_RULE = "[a-z][a-z0-9_]*"
_NAME_RE = re.compile(NAME_RULE)
_ROLES = ("system", "human", "ai", "placeholder")

MAX_FILE_BYTES = 1_000_000
"""A prompt file is a few KB; 1 MB leaves room for long texts and bounds everything else."""
MAX_DEPTH = 100
"""YAML nesting levels in a file (PyYAML's composer recurses; Python allows about 1000 frames)."""
MAX_NODES = 50_000
"""YAML values (scalars, lists, mappings, keys) in a file: above any real prompt, about 1 s to read."""
MAX_NUMBER_CHARS = 100
"""Longer numbers are refused: YAML's base-60 ints (``1:2:3``) cost quadratic time to build."""


# --------------------------------------------------------------------------- models


class ModelParams(StrictModel):
    """Model parameters; every one is optional and only set ones are passed on."""

    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, gt=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: list[str] | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    seed: int | None = None


class OutputSpec(StrictModel):
    """What the model returns: plain text, or JSON matching ``schema``."""

    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True)

    kind: Literal["text", "json"] = "text"
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    repair_attempts: int | None = Field(default=None, ge=0, le=10)
    """JSON answers that break the schema are asked again this many times (``chains.spec.repair``; default 2)."""

    @field_validator("json_schema")
    @classmethod
    def _bounded_json(cls, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        found = bounds_problem(schema) if schema is not None else None
        if found is not None:
            raise Problem(*found)
        return schema

    @model_validator(mode="after")
    def _schema_fits_kind(self) -> OutputSpec:
        if self.kind == "text" and (self.json_schema is not None or self.repair_attempts is not None):
            field = "output.schema" if self.json_schema is not None else "output.repair_attempts"
            raise Problem(field, "is only used with kind: json; remove it or set kind: json")
        if self.kind == "json":
            if self.json_schema is None:
                raise Problem("output", "kind: json needs a schema; add output.schema with a JSON Schema")
            found = validity_problem(self.json_schema)
            if found is not None:
                raise Problem(*found)
        return self


class PromptSpec(StrictModel):
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
                f"{shown(name)} must match {NAME_RULE} "
                "(lowercase letters, digits and underscores, starting with a letter)"
            )
        return name

    @field_validator("input_variables")
    @classmethod
    def _valid_variables(cls, names: list[str]) -> list[str]:
        for name in names:
            if not IDENTIFIER_RE.fullmatch(name):
                raise ValueError(f"{shown(name)} is not a plain variable name; use a name like text")
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
                raise Problem(f"defaults.{clip(key)}", f"must be a string or number, got {type_name(value)}")
        return defaults

    @model_validator(mode="after")
    def _variables_match_messages(self) -> PromptSpec:
        if not self.messages:
            raise Problem("messages", "is empty; add at least one message with role: human")
        if not any(m.role == "human" for m in self.messages):
            raise Problem("messages", "has no human message; add one with role: human and a content")
        declared = set(self.input_variables)  # sets: a file may declare thousands of variables
        declared_text = quoted(self.input_variables) if declared else "none"
        used: set[str] = set()
        for index, message in enumerate(self.messages):
            for var in message.variables:
                if var not in declared:
                    raise Problem(f"messages[{index}]", f"uses {{{var}}} but input_variables has {declared_text}")
                used.add(var)
        for var in self.input_variables:
            if var not in used:
                raise Problem(
                    "input_variables",
                    f"declares '{var}' but no message uses {{{var}}}; remove it or use it in a message",
                )
        placeholders = {m.variable for m in self.messages if isinstance(m, PlaceholderMessage)}
        for index, message in enumerate(self.messages):
            if isinstance(message, TextMessage):
                for var in message.variables:
                    if var in placeholders:
                        raise Problem(
                            f"messages[{index}]",
                            f"uses {{{var}}} in text but '{var}' is a placeholder "
                            "(a list of messages); use a different name",
                        )
        for key in self.defaults:
            if key not in declared:
                raise Problem(
                    "defaults",
                    f"'{clip(key)}' is not in input_variables ({declared_text}); declare it or remove the default",
                )
            if key in placeholders:
                raise Problem("defaults", f"'{key}' is a placeholder, which is optional already; remove the default")
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
        """Text: ``StrOutputParser`` (parsing inline).  JSON: parse and validate against the schema."""
        from chains.spec.parsers import JsonSchemaOutputParser, TextOutputParser

        if self.output.kind == "json":
            assert self.output.json_schema is not None  # guaranteed by OutputSpec
            return JsonSchemaOutputParser(prompt_name=self.name, json_schema=self.output.json_schema)
        return TextOutputParser()

    def response_format(self) -> dict[str, Any] | None:
        """OpenAI structured-outputs ``response_format`` for JSON output, else None."""
        if self.output.kind != "json":
            return None
        return {
            "type": "json_schema",
            "json_schema": {"name": self.name, "schema": self.output.json_schema, "strict": False},
        }


# ------------------------------------------------------------------ reading a file


def _allowed_keys(parent: tuple[int | str, ...]) -> list[str]:
    """The keys allowed under ``parent`` (a pydantic path), listed when an unknown key is found there."""
    model: type[BaseModel] = PromptSpec
    if parent and parent[-1] in _ROLES:
        model = PlaceholderMessage if parent[-1] == "placeholder" else TextMessage
    elif parent == ("model",):
        model = ModelParams
    elif parent == ("output",):
        model = OutputSpec
    return [info.alias or name for name, info in model.model_fields.items()]


_YAML_ADVICE = {
    "depth": "; a prompt file needs only a few, flatten it",
    "nodes": "; a prompt file needs far fewer, shorten it",
}


def _load_yaml(text: str, label: str) -> Any:
    """The document in ``text``, within the prompt-file limits; every problem is one PromptSpecError."""
    try:
        return safe_yaml.load(text, max_depth=MAX_DEPTH, max_nodes=MAX_NODES, max_number_chars=MAX_NUMBER_CHARS)
    except safe_yaml.YamlError as exc:
        raise PromptSpecError(label, "", _yaml_problem(exc)) from None


def _yaml_problem(exc: safe_yaml.YamlError) -> str:
    if exc.kind in ("syntax", "value"):
        where = f" at line {exc.line}, column {exc.column}" if exc.line is not None else ""
        return (
            f"invalid YAML{where}: {exc.problem}; check the indentation and quote text "
            "containing ': ' or starting with '{'"
        )
    return f"line {exc.line}: {exc.problem}{_YAML_ADVICE.get(exc.kind, '')}"


def file_too_big(label: str, size: int, *, over: bool = False) -> PromptSpecError:
    """The error for a prompt file of ``size`` bytes (``over``: at least that many, the rest unread)."""
    bytes_ = f"over {MAX_FILE_BYTES:,}" if over else f"{size:,}"
    return PromptSpecError(
        label, "", f"file is {bytes_} bytes; prompt files are at most {MAX_FILE_BYTES:,} bytes, shorten it"
    )


def parse_spec(text: str, label: str, stem: str | None) -> PromptSpec:
    """Parse and validate prompt-file text.

    ``label`` is the display name used in errors; when ``stem`` is given the
    spec's ``name`` must equal it.  The digest is the sha256 of the UTF-8 text.
    """
    encoded = text.encode("utf-8", "surrogatepass")  # lone surrogates are refused by the YAML reader
    if len(encoded) > MAX_FILE_BYTES:
        raise file_too_big(label, len(encoded))
    data = _load_yaml(text, label)
    if data is None:
        raise PromptSpecError(label, "", "file is empty; expected name, description, input_variables and messages")
    if not isinstance(data, dict):
        raise PromptSpecError(
            label, "", f"top level must be a mapping (name: ..., messages: ...), got {type_name(data)}"
        )
    try:
        spec = PromptSpec.model_validate(data)
    except ValidationError as exc:
        raise spec_error(label, exc, roles=_ROLES, allowed_keys=_allowed_keys) from None
    if stem is not None and spec.name != stem:
        raise PromptSpecError(
            label,
            "name",
            f"'{spec.name}' does not match the file name '{clip(stem)}.yaml'; "
            "make them the same (rename the file or change name)",
        )
    spec._source = label
    spec._digest = hashlib.sha256(encoded).hexdigest()
    return spec


_MOVED = ("discover_specs", "load_spec", "packaged_prompts_dir", "resolve_spec_path")


def __getattr__(name: str) -> Any:
    """Names that moved to ``chains.spec.prompts_library`` (finding and reading files), still importable from here.

    Imported on first use: ``prompts_library`` imports this module.
    """
    if name in _MOVED:
        from chains.spec import prompts_library

        return getattr(prompts_library, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
