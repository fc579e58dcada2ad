"""Prompt files cannot exhaust memory or hang (issue 9): aliases, depth, size, values.

Anything that could expand without bound on the code before the fix (the alias
bomb, a sparse multi-gigabyte file) runs in a subprocess capped at 2 GiB of
address space and 30 s, so a regression fails instead of taking the machine.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, runner_env
from hypothesis import given, settings
from hypothesis import strategies as st

from chains.errors import PromptSpecError
from chains.spec.prompt_spec import (
    MAX_DEPTH,
    MAX_FILE_BYTES,
    MAX_NODES,
    MAX_SCHEMA_DEPTH,
    MAX_SCHEMA_NODES,
    PromptSpec,
    load_spec,
    parse_spec,
)
from chains.spec.prompts_library import PromptLibrary

MEMORY_CAP = 2 << 30
TIMEOUT = 30

HEAD = """\
name: story
description: Tell a story.
input_variables: [topic]
messages:
  - {role: human, content: "Tell a story about {topic}."}
"""
ALIASES = "anchors and aliases (&, *) are not allowed; write the value out"


def alias_bomb(levels: int = 9, fan: int = 9, name: str = "bomb") -> str:
    """About 1.3 KB of YAML whose ``output.schema`` expands to ``fan ** levels`` nested allOf nodes.

    Every anchor sits inside ``$defs``, so the file is a valid prompt file and a
    valid JSON Schema: nothing rejects it before something walks the expansion.
    """
    lines = [
        f"name: {name}",
        "description: An alias bomb.",
        "input_variables: [text]",
        "messages:",
        '  - {role: human, content: "{text}"}',
        "output:",
        "  kind: json",
        "  schema:",
        "    $defs:",
        "      a0: {allOf: &a0 [{type: string}]}",
    ]
    for level in range(1, levels):
        items = ", ".join([f"{{allOf: *a{level - 1}}}"] * fan)
        lines.append(f"      a{level}: {{allOf: &a{level} [{items}]}}")
    lines.append(f"    allOf: *a{levels - 1}")
    return "\n".join(lines) + "\n"


def json_prompt(schema_yaml: str) -> str:
    """A valid JSON-output prompt file with ``schema_yaml`` (indented 4) as its schema."""
    return (
        "name: story\ndescription: d\ninput_variables: [text]\n"
        'messages:\n  - {role: human, content: "{text}"}\n'
        "output:\n  kind: json\n  schema:\n" + schema_yaml
    )


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def run_capped(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run ``python ARGS`` with 2 GiB of address space; fail (not hang) after 30 s."""
    started = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, *args],
            capture_output=True,
            text=True,
            env=runner_env(),
            timeout=TIMEOUT,
            preexec_fn=_cap_memory,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"python {' '.join(args)[:200]} still running after {TIMEOUT} s")
    return done, time.monotonic() - started


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr[-2000:]
    assert len(lines) == 1, stderr[-2000:]
    assert lines[0].startswith("error: ")
    return lines[0]


def prompt_dir(tmp_path: Path, name: str, text: str) -> Path:
    directory = tmp_path / "p"
    directory.mkdir(exist_ok=True)
    (directory / f"{name}.yaml").write_text(text, encoding="utf-8")
    return directory


def parse_error(text: str) -> str:
    with pytest.raises(PromptSpecError) as info:
        parse_spec(text, "p/story.yaml", None)
    message = str(info.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------ 1. alias bombs

_PARSE_SCRIPT = """
import sys
from chains.errors import PromptSpecError
from chains.spec.prompt_spec import load_spec
from chains.spec.prompts_library import PromptLibrary
from pathlib import Path
path = Path(sys.argv[1])
library = PromptLibrary([path.parent], include_packaged=False)
for load in (lambda: load_spec(path, "p/" + path.name), lambda: library.spec(path.stem)):
    try:
        load()
    except PromptSpecError as exc:
        print("PromptSpecError:", exc)
    else:
        print("accepted")
"""


def test_alias_bomb_is_refused_by_load_spec_and_the_library(tmp_path: Path) -> None:
    directory = prompt_dir(tmp_path, "bomb", alias_bomb())
    assert (directory / "bomb.yaml").stat().st_size < 1500
    done, _ = run_capped("-c", _PARSE_SCRIPT, str(directory / "bomb.yaml"))
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert len(lines) == 2
    for line in lines:
        assert line.startswith("PromptSpecError: p/bomb.yaml: line "), line
        assert line.endswith(ALIASES)


@pytest.mark.parametrize("command", [["list", "--json"], ["show", "bomb"]])
def test_cli_refuses_an_alias_bomb_in_one_line(tmp_path: Path, command: list[str]) -> None:
    directory = prompt_dir(tmp_path, "bomb", alias_bomb())
    done, elapsed = run_capped(str(ROOT / "runner.py"), *command, "--prompts-dir", str(directory))
    assert done.returncode == 2, done.stderr[-2000:]
    line = one_error_line(done.stderr)
    assert "bomb.yaml: line " in line
    assert line.endswith(ALIASES)
    assert done.stdout == ""
    assert elapsed < TIMEOUT


_SERVE_SCRIPT = """
import sys
from chains.errors import PromptSpecError
from chains.server import create_app
from chains.settings import RunSettings
try:
    create_app(RunSettings(model="fake", prompts_dirs=[sys.argv[1]]))
except PromptSpecError as exc:
    print("PromptSpecError:", exc)
else:
    print("served")
"""


def test_serve_refuses_an_alias_bomb(tmp_path: Path) -> None:
    directory = prompt_dir(tmp_path, "bomb", alias_bomb())
    done, _ = run_capped("-c", _SERVE_SCRIPT, str(directory))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("PromptSpecError: ")
    assert "bomb.yaml: line " in done.stdout
    assert done.stdout.strip().endswith(ALIASES)


def test_recursive_alias_is_refused(tmp_path: Path) -> None:
    path = prompt_dir(tmp_path, "story", json_prompt("    &s {allOf: [*s]}\n")) / "story.yaml"
    done, _ = run_capped("-c", _PARSE_SCRIPT, str(path))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == [f"PromptSpecError: p/story.yaml: line 9: {ALIASES}"] * 2


@pytest.mark.parametrize(
    "text, line",
    [
        (HEAD + "model: &m {temperature: 0.2}\n", 6),
        (HEAD + "defaults: {topic: &t snails}\n", 6),
        ("base: &b {role: human}\n" + HEAD.replace("  - {role", "  - {<<: *b, role"), 1),
    ],
)
def test_any_anchor_is_refused_with_its_line(text: str, line: int) -> None:
    assert parse_error(text) == f"p/story.yaml: line {line}: {ALIASES}"


def test_schema_node_count_is_bounded() -> None:
    items = "".join("      - {type: string}\n" for _ in range(MAX_SCHEMA_NODES // 2 + 1))
    message = parse_error(json_prompt("    anyOf:\n" + items))
    assert message == (
        f"p/story.yaml: output.schema: has more than {MAX_SCHEMA_NODES:,} values; "
        "an output schema needs far fewer, simplify it"
    )


def test_schema_depth_is_bounded() -> None:
    inner = "{type: string}"
    for _ in range(MAX_SCHEMA_DEPTH):
        inner = "{not: " + inner + "}"
    message = parse_error(json_prompt(f"    {inner}\n"))
    assert message == (
        f"p/story.yaml: output.schema: nested more than {MAX_SCHEMA_DEPTH} levels deep; "
        "flatten it (name shared parts in $defs and use $ref)"
    )


def test_schema_at_the_limits_is_accepted() -> None:
    inner = "{type: string}"
    for _ in range(MAX_SCHEMA_DEPTH - 1):
        inner = "{not: " + inner + "}"
    assert parse_spec(json_prompt(f"    {inner}\n"), "p/story.yaml", None).output.json_schema is not None
    items = "".join("      - {type: string}\n" for _ in range((MAX_SCHEMA_NODES - 2) // 2))
    assert parse_spec(json_prompt("    anyOf:\n" + items), "p/story.yaml", None).output.kind == "json"


@pytest.mark.parametrize(
    "schema, where, got",
    [
        ("    {const: 2001-01-01}\n", "output.schema.const", "a date"),
        ("    {type: number, maximum: .inf}\n", "output.schema.maximum", "infinity or NaN"),
        ("    {enum: !!set {a: null}}\n", "output.schema.enum", "a set"),
    ],
)
def test_schema_holds_only_json_values(schema: str, where: str, got: str) -> None:
    message = parse_error(json_prompt(schema))
    assert message == f"p/story.yaml: {where}: must hold only JSON values (got {got}); write it as JSON data"


def test_schema_keys_must_be_text() -> None:
    message = parse_error(json_prompt("    {properties: {2001-01-01: {type: string}}}\n"))
    assert (
        message == "p/story.yaml: output.schema.properties: keys must be text (got a key that is a date); quote the key"
    )
    message = parse_error(json_prompt("    {properties: {200: {type: string}}}\n"))
    assert message.endswith("(got a key that is an integer); quote the key")


def test_schema_pattern_nested_too_deep_is_one_error() -> None:
    pattern = "(" * 2000 + ")" * 2000
    message = parse_error(json_prompt(f"    {{type: string, pattern: '{pattern}'}}\n"))
    assert message.startswith("p/story.yaml: output.schema: too deeply nested to check")


# ------------------------------------------------------------------ 2. deep nesting


@pytest.mark.parametrize("opening", ["[", "{", "- ", "{a: ", "[{a: "])
def test_deep_nesting_is_one_error(opening: str) -> None:
    message = parse_error(opening * 50_000)
    assert message == (
        f"p/story.yaml: line 1: nested more than {MAX_DEPTH} levels deep; a prompt file needs only a few, flatten it"
    )


def test_nesting_at_the_limit_is_parsed() -> None:
    text = HEAD + "defaults: {topic: " + "[" * (MAX_DEPTH - 2) + "]" * (MAX_DEPTH - 2) + "}\n"
    assert parse_error(text) == "p/story.yaml: defaults.topic: must be a string or number, got a list"


@pytest.mark.parametrize("command", [["list", "--json"], ["show", "deep"]])
def test_cli_deep_file_is_one_line_exit_2(tmp_path: Path, command: list[str]) -> None:
    directory = prompt_dir(tmp_path, "deep", "[" * 50_000)
    done, _ = run_capped(str(ROOT / "runner.py"), *command, "--prompts-dir", str(directory))
    assert done.returncode == 2, done.stderr[-2000:]
    assert one_error_line(done.stderr).endswith(
        f"deep.yaml: line 1: nested more than {MAX_DEPTH} levels deep; a prompt file needs only a few, flatten it"
    )


def test_node_count_is_bounded_quickly() -> None:
    text = HEAD + "defaults: {topic: [" + "a," * (MAX_FILE_BYTES // 2 - 100) + "]}\n"
    started = time.monotonic()
    message = parse_error(text)
    assert time.monotonic() - started < 5
    assert message == (
        f"p/story.yaml: line 6: more than {MAX_NODES:,} values; a prompt file needs far fewer, shorten it"
    )


# ------------------------------------------------------------------ 3. file size


def test_oversized_file_is_refused_before_reading_it(tmp_path: Path) -> None:
    path = prompt_dir(tmp_path, "story", "") / "story.yaml"
    with path.open("wb") as sparse:
        sparse.truncate(4 << 30)  # 4 GiB of holes: reading it whole would exceed the cap
    done, _ = run_capped("-c", _PARSE_SCRIPT, str(path))
    assert done.returncode == 0, done.stderr[-2000:]
    expected = (
        f"PromptSpecError: p/story.yaml: file is {4 << 30:,} bytes; prompt files are at most "
        f"{MAX_FILE_BYTES:,} bytes, shorten it"
    )
    assert done.stdout.splitlines() == [expected, expected]


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    path = tmp_path / "story.yaml"
    os.mkfifo(path)  # opening it for reading would wait for a writer forever
    script = (
        "import sys, pathlib\nfrom chains.spec.prompt_spec import load_spec\n"
        "try: load_spec(pathlib.Path(sys.argv[1]))\nexcept Exception as e: print(type(e).__name__, e)"
    )
    done, _ = run_capped("-c", script, str(path))
    assert done.stdout.strip() == (
        f"PromptSpecError {path}: not a regular file; a prompt file must be a plain .yaml file"
    )


def test_size_limit_is_exact_and_long_text_loads(tmp_path: Path) -> None:
    tail = 'messages:\n  - {role: human, content: "{topic}"}\n'
    head = "name: story\ninput_variables: [topic]\n" + tail + "description: "
    text = head + "x" * (MAX_FILE_BYTES - len(head) - 1) + "\n"
    path = tmp_path / "story.yaml"
    path.write_text(text, encoding="utf-8")
    assert path.stat().st_size == MAX_FILE_BYTES
    started = time.monotonic()
    assert len(load_spec(path).description) == MAX_FILE_BYTES - len(head) - 1
    assert time.monotonic() - started < 5
    path.write_text(text + "\n", encoding="utf-8")
    with pytest.raises(PromptSpecError, match=f"file is {MAX_FILE_BYTES + 1:,} bytes"):
        load_spec(path)
    library = PromptLibrary([tmp_path], include_packaged=False)
    with pytest.raises(PromptSpecError, match="shorten it"):
        library.spec("story")
    assert "bytes" in parse_error(text + "\n")


# ------------------------------------------------------------------ values YAML cannot build


@pytest.mark.parametrize(
    "value",
    ["2001-13-01", "2001-01-01 25:00:00", "!!int zz", "!!float zz", "!!bool zz", "!!timestamp zz", "!!int '0b2'"],
)
def test_unbuildable_values_are_yaml_errors(value: str) -> None:
    message = parse_error(HEAD + f"defaults: {{topic: {value}}}\n")
    assert message.startswith("p/story.yaml: invalid YAML at line 6, column 19: cannot read this value (")


def test_overlong_number_is_refused() -> None:
    message = parse_error(HEAD + "model: {seed: " + "1" * 5000 + "}\n")
    assert message == (
        "p/story.yaml: line 6: a number 5,000 characters long; numbers are at most 100 characters "
        "(quote it if it is text)"
    )
    assert "at most 100" in parse_error(HEAD + "model: {seed: " + "1:1" * 100_000 + "}\n")


# ------------------------------------------------------------------ linear validation


def test_many_variables_validate_in_linear_time() -> None:
    names = [f"v{i}" for i in range(20_000)]
    text = (
        "name: wide\ndescription: d\ninput_variables: [" + ", ".join(names) + "]\n"
        'messages:\n  - role: human\n    content: "' + "".join("{" + n + "}" for n in names) + '"\n'
        "defaults: {v0: x}\n"
    )
    started = time.monotonic()
    spec = parse_spec(text, "p/wide.yaml", None)
    assert len(spec.required_variables) == 19_999
    assert spec.optional_variables == ["v0"]
    assert time.monotonic() - started < 3


def test_long_lists_in_errors_are_shortened() -> None:
    names = [f"v{i}" for i in range(50)]
    text = (
        "name: wide\ndescription: d\ninput_variables: [" + ", ".join(names) + "]\n"
        'messages:\n  - role: human\n    content: "{nope}"\n'
    )
    assert parse_error(text) == (
        "p/story.yaml: messages[0]: uses {nope} but input_variables has "
        "'v0', 'v1', 'v2', 'v3', 'v4', 'v5', 'v6', 'v7', 'v8', 'v9' and 40 more"
    )


def test_user_text_in_errors_is_one_short_line() -> None:
    message = parse_error(HEAD + '"col\\nour' + "r" * 900 + '": red\n')
    assert len(message) < 400
    assert "unknown key 'col\\nour" in message
    message = parse_error(HEAD + "output: {kind: '" + "x" * 5000 + "'}\n")
    assert len(message) < 400


# ------------------------------------------------------------------ properties

# fmt: off
FRAGMENTS = [
    "[", "]", "{", "}", "&a ", "*a", "&b ", "*b", ": ", "- ", ",", "\n", "  ", "? ", "'", '"', "#",
    "<<: ", "!!set ", "!!binary ", "!!timestamp ", "!!int ", "!!python/object ", "---\n", "...\n",
    "name", "story", "description", "input_variables", "messages", "role", "human", "content",
    "'{topic}'", "topic", "output", "kind", "json", "schema", "type", "allOf", "2001-13-01", "1:2",
    ".inf", "1e999", "99999999999999999999", "null", "true", "\t", "%YAML 1.1\n", "|\n", ">\n",
]
# fmt: on
YAMLISH = st.lists(st.sampled_from(FRAGMENTS), max_size=60).map("".join)


def _parses_or_one_line_error(text: str) -> None:
    started = time.monotonic()
    try:
        spec = parse_spec(text, "p/story.yaml", None)
    except PromptSpecError as exc:
        assert "\n" not in str(exc)
        assert len(str(exc)) < 2000
    else:
        assert isinstance(spec, PromptSpec)
    assert time.monotonic() - started < 2


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_text_is_a_spec_or_a_prompt_spec_error(text: str) -> None:
    _parses_or_one_line_error(text)


@settings(max_examples=400, deadline=None)
@given(YAMLISH)
def test_yamlish_text_is_a_spec_or_a_prompt_spec_error(text: str) -> None:
    _parses_or_one_line_error(text)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(HEAD)), YAMLISH)
def test_a_valid_file_with_yamlish_inserted_is_a_spec_or_an_error(at: int, fragment: str) -> None:
    _parses_or_one_line_error(HEAD[:at] + fragment + HEAD[at:])


@settings(max_examples=40, deadline=None)
@given(st.integers(MAX_DEPTH + 1, 30_000), st.sampled_from(["[", "{", "- ", "{a: ", "? "]))
def test_any_deep_nesting_is_one_error(depth: int, opening: str) -> None:
    message = parse_error(opening * depth)
    assert f"nested more than {MAX_DEPTH} levels deep" in message
