"""Tests for the declarative prompt-file format (chains/spec/prompt_spec.py)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
from pathlib import Path
from typing import Any

import pytest
from langchain_core.exceptions import OutputParserException
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from chains.errors import PromptSpecError
from chains.spec.prompt_spec import (
    PromptSpec,
    discover_specs,
    load_spec,
    packaged_prompts_dir,
    parse_spec,
    resolve_spec_path,
)

STORY = """\
name: story
description: Tell a story.
input_variables: [topic]
messages:
  - role: system
    content: You tell stories.
  - role: human
    content: "Tell a story about {topic}."
"""

TRANSLATE = """\
name: translate
description: Translate a text into another language.
input_variables: [text, language, history]
defaults:
  language: French
messages:
  - role: system
    content: You are a careful translator.
  - role: placeholder
    variable: history
  - role: human
    content: "Translate into {language}:\\n\\n{text}"
model:
  temperature: 0.2
  max_tokens: 400
"""

KEYWORDS = """\
name: kw
description: Keywords as JSON.
input_variables: [text]
messages:
  - role: human
    content: "Keywords of: {text}"
output:
  kind: json
  schema:
    type: object
    properties:
      keywords: {type: array, items: {type: string}, minItems: 1, maxItems: 10}
      sentiment: {enum: [positive, neutral, negative]}
    required: [keywords, sentiment]
    additionalProperties: false
"""

LABEL = "prompts/story.yaml"


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def load_error(tmp_path: Path, text: str, name: str = "story") -> str:
    path = write(tmp_path, name, text)
    with pytest.raises(PromptSpecError) as info:
        load_spec(path, f"prompts/{name}.yaml")
    return str(info.value)


# ---------------------------------------------------------------- packaged prompts

PACKAGED = ["keywords", "story", "story_outline", "summarize", "translate"]


def test_packaged_prompts_are_discovered() -> None:
    found = discover_specs(packaged_prompts_dir())
    assert set(PACKAGED) <= set(found)
    assert "__init__" not in found


@pytest.mark.parametrize("name", PACKAGED)
def test_packaged_prompt_loads_and_compiles(name: str) -> None:
    path = resolve_spec_path(packaged_prompts_dir(), name, "prompts")
    spec = load_spec(path, f"prompts/{name}.yaml")
    assert spec.name == name
    assert spec.description
    assert spec.source == f"prompts/{name}.yaml"
    assert len(spec.digest) == 64
    messages = spec.to_prompt().format_messages(**{var: f"<{var}>" for var in spec.required_variables})
    assert isinstance(messages[-1], HumanMessage)
    text = "\n".join(str(m.content) for m in messages)
    for var in spec.required_variables:
        assert f"<{var}>" in text
    assert "{" not in text.replace('{"', "")  # no unformatted placeholders left


def test_packaged_story_chain_inputs() -> None:
    directory = packaged_prompts_dir()
    outline = load_spec(directory / "story_outline.yaml")
    story = load_spec(directory / "story.yaml")
    assert outline.required_variables == ["topic"]
    assert story.required_variables == ["topic", "outline"]
    assert 0.5 <= outline.model_kwargs()["temperature"] <= 0.9
    assert story.model_kwargs()["max_tokens"] >= 500
    summarize = load_spec(directory / "summarize.yaml")
    assert summarize.required_variables == ["text"]
    assert summarize.defaults == {"sentences": 3}
    translate = load_spec(directory / "translate.yaml")
    assert translate.required_variables == ["text", "language"]


def test_packaged_keywords_is_json() -> None:
    spec = load_spec(packaged_prompts_dir() / "keywords.yaml")
    assert spec.output.kind == "json"
    parser = spec.output_parser()
    assert parser.invoke('{"keywords": ["cats"], "sentiment": "positive"}') == {
        "keywords": ["cats"],
        "sentiment": "positive",
    }
    with pytest.raises(OutputParserException):
        parser.invoke('{"keywords": [], "sentiment": "positive"}')
    with pytest.raises(OutputParserException):
        parser.invoke('{"keywords": ["a"], "sentiment": "happy"}')
    with pytest.raises(OutputParserException):
        parser.invoke('{"keywords": ["a"]}')
    with pytest.raises(OutputParserException):
        parser.invoke('{"keywords": ["a"], "sentiment": "neutral", "extra": 1}')
    with pytest.raises(OutputParserException):
        parser.invoke(json.dumps({"keywords": [str(i) for i in range(11)], "sentiment": "neutral"}))
    response_format = spec.response_format()
    assert response_format is not None
    assert response_format["json_schema"]["name"] == "keywords"
    assert response_format["json_schema"]["schema"]["additionalProperties"] is False


# ------------------------------------------------------------------- happy path


def test_load_spec_basics(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, "translate", TRANSLATE), "prompts/translate.yaml")
    assert isinstance(spec, PromptSpec)
    assert spec.source == "prompts/translate.yaml"
    assert spec.required_variables == ["text"]
    assert spec.optional_variables == ["language", "history"]
    assert spec.model_kwargs() == {"temperature": 0.2, "max_tokens": 400}
    assert spec.response_format() is None
    assert isinstance(spec.output_parser(), StrOutputParser)
    assert isinstance(spec.to_prompt(), ChatPromptTemplate)


def test_label_defaults_to_path(tmp_path: Path) -> None:
    path = write(tmp_path, "story", STORY)
    assert load_spec(path).source == str(path)


def test_defaults_are_optional_and_overridable(tmp_path: Path) -> None:
    prompt = load_spec(write(tmp_path, "translate", TRANSLATE)).to_prompt()
    assert prompt.input_variables == ["text"]
    default = prompt.format_messages(text="Hello")
    assert default[-1].content == "Translate into French:\n\nHello"
    override = prompt.format_messages(text="Hello", language="German")
    assert override[-1].content == "Translate into German:\n\nHello"


def test_integer_default_is_formatted(tmp_path: Path) -> None:
    text = """\
name: summarize
description: Summarize.
input_variables: [text, sentences]
defaults: {sentences: 3}
messages:
  - {role: human, content: "Summarize in {sentences} sentences: {text}"}
"""
    spec = load_spec(write(tmp_path, "summarize", text))
    assert spec.required_variables == ["text"]
    assert spec.to_prompt().format_messages(text="T")[0].content == "Summarize in 3 sentences: T"


def test_history_placeholder_injects_messages(tmp_path: Path) -> None:
    prompt = load_spec(write(tmp_path, "translate", TRANSLATE)).to_prompt()
    without = prompt.format_messages(text="Hi")
    assert [type(m) for m in without] == [SystemMessage, HumanMessage]
    history = [HumanMessage("Translate: cat"), AIMessage("chat")]
    with_history = prompt.format_messages(text="Hi", history=history)
    assert [type(m) for m in with_history] == [SystemMessage, HumanMessage, AIMessage, HumanMessage]
    assert with_history[1].content == "Translate: cat"
    assert with_history[2].content == "chat"


def test_required_placeholder(tmp_path: Path) -> None:
    text = """\
name: chat
description: Chat.
input_variables: [history, question]
messages:
  - {role: placeholder, variable: history, optional: false}
  - {role: human, content: "{question}"}
"""
    spec = load_spec(write(tmp_path, "chat", text))
    assert spec.required_variables == ["history", "question"]


def test_jinja_looking_template_is_literal(tmp_path: Path) -> None:
    text = """\
name: literal
description: Literal braces.
input_variables: [text]
messages:
  - role: human
    content: "{{ x }} {{ ''.__class__.__mro__ }} {{% for i in range(3) %}}{text}"
"""
    spec = load_spec(write(tmp_path, "literal", text))
    assert spec.required_variables == ["text"]
    prompt = spec.to_prompt()
    assert prompt.input_variables == ["text"]
    content = prompt.format_messages(text="T")[0].content
    assert content == "{ x } { ''.__class__.__mro__ } {% for i in range(3) %}T"


def test_digest_is_sha256_of_bytes_and_changes(tmp_path: Path) -> None:
    import hashlib

    path = write(tmp_path, "story", STORY)
    first = load_spec(path).digest
    assert first == hashlib.sha256(path.read_bytes()).hexdigest()
    assert parse_spec(STORY, LABEL, "story").digest == first
    path.write_text(STORY + "# a comment\n", encoding="utf-8")
    assert load_spec(path).digest != first


def test_spec_is_immutable(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, "story", STORY))
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen-instance error
        setattr(spec, "name", "other")  # noqa: B010


def test_parse_spec_without_stem_skips_name_check() -> None:
    spec = parse_spec(STORY, "<inline>", None)
    assert spec.name == "story"
    assert spec.source == "<inline>"


# ----------------------------------------------------------------- validation


def replace(old: str, new: str, text: str = STORY) -> str:
    assert old in text
    return text.replace(old, new)


def test_yaml_syntax_error_has_line(tmp_path: Path) -> None:
    message = load_error(tmp_path, "name: story\ndescription: [unclosed\nmessages: x\n")
    assert message.startswith("prompts/story.yaml: invalid YAML at line ")
    assert "line 3" in message


def test_top_level_must_be_mapping(tmp_path: Path) -> None:
    assert load_error(tmp_path, "- a\n- b\n") == (
        "prompts/story.yaml: top level must be a mapping (name: ..., messages: ...), got a list"
    )
    assert "file is empty" in load_error(tmp_path, "")


def test_unknown_top_level_key(tmp_path: Path) -> None:
    message = load_error(tmp_path, STORY + "colour: red\n")
    assert message == (
        "prompts/story.yaml: unknown key 'colour'; allowed: name, description, "
        "input_variables, defaults, messages, model, output"
    )


def test_template_format_key_rejected(tmp_path: Path) -> None:
    message = load_error(tmp_path, STORY + "template_format: jinja2\n")
    assert "unknown key 'template_format'" in message
    assert "f-strings" in message


def test_unknown_model_key(tmp_path: Path) -> None:
    message = load_error(tmp_path, STORY + "model:\n  temprature: 0.2\n")
    assert message.startswith(
        "prompts/story.yaml: model: unknown key 'temprature'; allowed: temperature, "
        "max_tokens, top_p, stop, presence_penalty, frequency_penalty, seed"
    )
    assert "did you mean 'temperature'?" in message


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("temperature: hot", "model.temperature: expected a number, got a string"),
        ("temperature: 7", "model.temperature: should be less than or equal to 2"),
        ("max_tokens: 1.5", "model.max_tokens: expected an integer, got a number"),
        ("stop: END", "model.stop: expected a list, got a string"),
    ],
)
def test_model_parameter_types(tmp_path: Path, model: str, expected: str) -> None:
    assert expected in load_error(tmp_path, STORY + f"model:\n  {model}\n")


def test_wrong_type_names_field_path(tmp_path: Path) -> None:
    message = load_error(tmp_path, replace('content: "Tell a story about {topic}."', "content: 5"))
    assert message == "prompts/story.yaml: messages[1].content: expected a string, got an integer"


def test_unquoted_brace_content_hint(tmp_path: Path) -> None:
    message = load_error(tmp_path, replace('"Tell a story about {topic}."', "{topic}"))
    assert message.startswith("prompts/story.yaml: messages[1].content: expected a string, got a mapping; quote")


def test_missing_required_key(tmp_path: Path) -> None:
    message = load_error(tmp_path, replace("description: Tell a story.\n", ""))
    assert message == "prompts/story.yaml: missing required key 'description'; add it"
    message = load_error(tmp_path, replace("    content: You tell stories.\n", ""))
    assert message == "prompts/story.yaml: messages[0]: missing required key 'content'; add it"


def test_bad_role(tmp_path: Path) -> None:
    message = load_error(tmp_path, replace("role: system", "role: user"))
    assert message == (
        "prompts/story.yaml: messages[0].role: 'user' is not a role; use one of: system, human, ai, placeholder"
    )


def test_unknown_message_key(tmp_path: Path) -> None:
    message = load_error(tmp_path, replace("content: You tell stories.", "text: You tell."))
    assert message.startswith("prompts/story.yaml: messages[0]: unknown key 'text'; allowed: role,")


def test_undeclared_variable_exact_wording(tmp_path: Path) -> None:
    message = load_error(tmp_path, replace("{topic}", "{topik}"))
    assert message == "prompts/story.yaml: messages[1]: uses {topik} but input_variables has 'topic'"


def test_undeclared_variable_lists_all_declared(tmp_path: Path) -> None:
    text = replace("[topic]", "[topic, style]", replace("{topic}.", "{topic} in {styl}."))
    message = load_error(tmp_path, text)
    assert message == ("prompts/story.yaml: messages[1]: uses {styl} but input_variables has 'topic', 'style'")


def test_undeclared_placeholder_variable(tmp_path: Path) -> None:
    text = STORY + "  - role: placeholder\n    variable: history\n"
    message = load_error(tmp_path, text)
    assert message == ("prompts/story.yaml: messages[2]: uses {history} but input_variables has 'topic'")


def test_unused_declared_variable(tmp_path: Path) -> None:
    message = load_error(tmp_path, replace("[topic]", "[topic, x]"))
    assert message == (
        "prompts/story.yaml: input_variables: declares 'x' but no message uses {x}; remove it or use it in a message"
    )


def test_duplicate_variable(tmp_path: Path) -> None:
    message = load_error(tmp_path, replace("[topic]", "[topic, topic]"))
    assert message == ("prompts/story.yaml: input_variables: 'topic' is listed twice; list each variable once")


def test_default_for_undeclared_variable(tmp_path: Path) -> None:
    message = load_error(tmp_path, STORY + "defaults:\n  language: French\n")
    assert message == (
        "prompts/story.yaml: defaults: 'language' is not in input_variables ('topic'); declare it or remove the default"
    )


def test_default_must_be_scalar(tmp_path: Path) -> None:
    message = load_error(tmp_path, STORY + "defaults:\n  topic: [a, b]\n")
    assert message == "prompts/story.yaml: defaults.topic: must be a string or number, got a list"


def test_name_must_match_stem(tmp_path: Path) -> None:
    message = load_error(tmp_path, replace("name: story", "name: stroy"))
    assert message == (
        "prompts/story.yaml: name: 'stroy' does not match the file name 'story.yaml'; "
        "make them the same (rename the file or change name)"
    )


def test_name_must_be_valid(tmp_path: Path) -> None:
    message = load_error(tmp_path, replace("name: story", "name: Story"))
    assert message.startswith("prompts/story.yaml: name: 'Story' must match [a-z][a-z0-9_]*")


@pytest.mark.parametrize(
    ("placeholder", "expected"),
    [
        ("{topic.__class__}", "{topic.__class__} is not a plain variable name"),
        ("{topic[0]}", "{topic[0]} is not a plain variable name"),
        ("{topic!r}", "{topic!r} uses a conversion or format spec"),
        ("{topic:>10}", "{topic:>10} uses a conversion or format spec"),
        ("{}", "{} has no variable name"),
        ("{0}", "{0} is not a plain variable name"),
        ("{ {topic}", "unbalanced brace"),
    ],
)
def test_template_fields_must_be_plain_names(tmp_path: Path, placeholder: str, expected: str) -> None:
    message = load_error(tmp_path, replace("{topic}", placeholder))
    assert message.startswith(f"prompts/story.yaml: messages[1].content: {expected}")


def test_attribute_access_message(tmp_path: Path) -> None:
    message = load_error(tmp_path, replace("{topic}", "{topic.__class__}"))
    assert message == (
        "prompts/story.yaml: messages[1].content: {topic.__class__} is not a plain variable "
        "name (no attribute access, indexing or digits first); use a name like {text}"
    )


def test_json_output_requires_schema(tmp_path: Path) -> None:
    message = load_error(tmp_path, STORY + "output:\n  kind: json\n")
    assert message == ("prompts/story.yaml: output: kind: json needs a schema; add output.schema with a JSON Schema")


def test_invalid_json_schema(tmp_path: Path) -> None:
    message = load_error(tmp_path, STORY + "output:\n  kind: json\n  schema: {type: objekt}\n")
    assert message.startswith("prompts/story.yaml: output.schema.type: not a valid JSON Schema (Draft 2020-12): ")
    assert "'objekt'" in message


def test_schema_with_text_output(tmp_path: Path) -> None:
    message = load_error(tmp_path, STORY + "output:\n  schema: {type: object}\n")
    assert message.startswith("prompts/story.yaml: output.schema: is only used with kind: json")


def test_bad_output_kind(tmp_path: Path) -> None:
    message = load_error(tmp_path, STORY + "output:\n  kind: xml\n")
    assert message == "prompts/story.yaml: output.kind: must be 'text' or 'json', got 'xml'"


def test_no_human_message(tmp_path: Path) -> None:
    message = load_error(tmp_path, replace("role: human", "role: ai"))
    assert message == ("prompts/story.yaml: messages: has no human message; add one with role: human and a content")


def test_empty_messages(tmp_path: Path) -> None:
    text = "name: story\ndescription: d\ninput_variables: []\nmessages: []\n"
    assert load_error(tmp_path, text) == (
        "prompts/story.yaml: messages: is empty; add at least one message with role: human"
    )


def test_placeholder_name_reused_in_text(tmp_path: Path) -> None:
    text = replace("[topic]", "[topic, history]", replace("{topic}.", "{topic} {history}."))
    text += "  - role: placeholder\n    variable: history\n"
    assert "'history' is a placeholder" in load_error(tmp_path, text)


def test_errors_are_prompt_spec_errors_with_parts(tmp_path: Path) -> None:
    path = write(tmp_path, "story", replace("{topic}", "{topik}"))
    with pytest.raises(PromptSpecError) as info:
        load_spec(path, LABEL)
    assert info.value.file == LABEL
    assert info.value.field == "messages[1]"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PromptSpecError, match="file not found"):
        load_spec(tmp_path / "nope.yaml", "prompts/nope.yaml")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "story.yaml"
    path.write_bytes(b"name: st\xffory\n")
    with pytest.raises(PromptSpecError, match="not UTF-8"):
        load_spec(path)


# ------------------------------------------------------------------ output parsers


def json_spec() -> PromptSpec:
    return parse_spec(KEYWORDS, "prompts/kw.yaml", "kw")


def test_text_output_parser() -> None:
    parser = parse_spec(STORY, LABEL, "story").output_parser()
    assert parser.invoke(AIMessage("Once upon a time")) == "Once upon a time"


def test_json_output_parser_valid() -> None:
    parser = json_spec().output_parser()
    reply = '{"keywords": ["cats", "dogs"], "sentiment": "neutral"}'
    assert parser.invoke(reply) == {"keywords": ["cats", "dogs"], "sentiment": "neutral"}
    assert parser.invoke(AIMessage(reply))["sentiment"] == "neutral"


@pytest.mark.parametrize(
    "reply",
    [
        '```json\n{"keywords": ["a"], "sentiment": "positive"}\n```',
        '```\n{"keywords": ["a"], "sentiment": "positive"}\n```',
        'Here you go:\n```JSON\n{"keywords": ["a"], "sentiment": "positive"}\n```\nBye.',
        '  {"keywords": ["a"], "sentiment": "positive"}  \n',
    ],
)
def test_json_output_parser_tolerates_fences(reply: str) -> None:
    assert json_spec().output_parser().invoke(reply) == {
        "keywords": ["a"],
        "sentiment": "positive",
    }


def test_json_output_parser_schema_violation() -> None:
    parser = json_spec().output_parser()
    with pytest.raises(OutputParserException) as info:
        parser.invoke('{"keywords": ["a"], "sentiment": "happy"}')
    assert "does not match the output schema at $.sentiment" in str(info.value)
    assert "'happy'" in str(info.value)


def test_json_output_parser_invalid_json() -> None:
    parser = json_spec().output_parser()
    with pytest.raises(OutputParserException) as info:
        parser.invoke("keywords: a, b")
    assert "not valid JSON" in str(info.value)


def test_response_format() -> None:
    spec = json_spec()
    assert spec.response_format() == {
        "type": "json_schema",
        "json_schema": {"name": "kw", "schema": spec.output.json_schema, "strict": False},
    }


async def test_json_output_parser_async() -> None:
    result = await json_spec().output_parser().ainvoke('{"keywords": ["a"], "sentiment": "negative"}')
    assert result["sentiment"] == "negative"


# ------------------------------------------------------------- confined loading


def test_resolve_spec_path_ok(tmp_path: Path) -> None:
    path = write(tmp_path, "story", STORY)
    assert resolve_spec_path(tmp_path, "story", "prompts") == path
    assert resolve_spec_path(tmp_path, "missing", "prompts") == tmp_path / "missing.yaml"


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "story.yaml", "a.b", "..", "", "Story", "sub/story", "1x"])
def test_resolve_spec_path_rejects_bad_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(PromptSpecError, match=r"\[a-z\]\[a-z0-9_\]\*"):
        resolve_spec_path(tmp_path, name, "prompts")


def test_resolve_spec_path_rejects_escaping_symlink(tmp_path: Path) -> None:
    inside = tmp_path / "prompts"
    inside.mkdir()
    secret = write(tmp_path, "secret", STORY)
    os.symlink(secret, inside / "story.yaml")
    with pytest.raises(PromptSpecError, match="outside the prompt directory"):
        resolve_spec_path(inside, "story", "prompts")


def test_resolve_spec_path_allows_internal_symlink(tmp_path: Path) -> None:
    real = write(tmp_path, "story", STORY)
    os.symlink(real, tmp_path / "tale.yaml")
    assert resolve_spec_path(tmp_path, "tale", "prompts") == tmp_path / "tale.yaml"


def test_discover_specs(tmp_path: Path) -> None:
    inside = tmp_path / "prompts"
    inside.mkdir()
    write(inside, "zeta", STORY)
    write(inside, "alpha", STORY)
    write(inside, "__init__", STORY)
    write(inside, "Bad-Name", STORY)
    (inside / "notes.txt").write_text("x", encoding="utf-8")
    (inside / "sub").mkdir()
    write(inside / "sub", "nested", STORY)
    os.symlink(write(tmp_path, "outside", STORY), inside / "escape.yaml")
    found = discover_specs(inside)
    assert list(found) == ["alpha", "zeta"]
    assert found["alpha"] == inside / "alpha.yaml"
    assert discover_specs(tmp_path / "missing") == {}


class _NoThreads(concurrent.futures.ThreadPoolExecutor):
    def submit(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("parsed in a thread")


@pytest.mark.parametrize(
    ("name", "reply"), [("summarize", "a summary"), ("keywords", '{"keywords": ["sun"], "sentiment": "positive"}')]
)
async def test_prompt_file_parsers_parse_on_the_event_loop_not_in_a_thread(name: str, reply: str) -> None:
    """LangChain's aparse_result hands parse_result to the default executor: a thread hop per answer."""
    from chains.spec.prompts_library import default_library

    asyncio.get_running_loop().set_default_executor(_NoThreads())
    parser = default_library().spec(name).output_parser()
    parsed = await parser.ainvoke(AIMessage(content=reply))
    assert parsed == (reply if name == "summarize" else {"keywords": ["sun"], "sentiment": "positive"})
