"""YAML from outside (issues 9 and 12): one bounded loader, ``chains/spec/safe_yaml.py``, and its callers' errors.

The loader's own contract (plain data only, every limit and every syntax error one ``YamlError`` with a
line and a column, bounded time for any text) and what a price file (``--prices FILE.yaml``) makes of it:
one ``UsageError`` line naming the file, whatever the file holds.
"""

from __future__ import annotations

import datetime
import time
from pathlib import Path

import pytest
from conftest import one_error_line
from hypothesis import given, settings
from hypothesis import strategies as st

import runner
from chains.engine.pricing import parse_prices
from chains.errors import UsageError
from chains.spec.safe_yaml import ALIASES, YamlError, load

# ------------------------------------------------------------------ price files


@pytest.mark.parametrize("value", ["!!bool zz", "!!int ''", "!!timestamp zz", "!!float zz", "2001-13-01"])
def test_a_price_value_yaml_cannot_build_is_one_usage_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    (tmp_path / "p.yaml").write_text(f"m: {{input: {value}, output: 1}}\n")
    (tmp_path / "in.txt").write_text("one text\n")
    assert runner.main(["run", "summarize", "--input", "in.txt", "--prices", "p.yaml", "-q"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("error: --prices p.yaml: not valid YAML (line 1, column 12: cannot read this value ("), line
    assert line.endswith("; fix the file")


def test_a_price_file_with_an_anchor_is_refused() -> None:
    with pytest.raises(UsageError, match=r"^--prices p.yaml: not valid YAML \(line 1, column 4: .*anchors and aliases"):
        parse_prices(b"m: &a {input: 1, output: 2}\n", "p.yaml")


def test_a_deeply_nested_price_file_is_refused_at_once() -> None:
    started = time.perf_counter()
    with pytest.raises(
        UsageError, match=r"^--prices p.yaml: not valid YAML \(line 1, column 101: nested more than 100"
    ):
        parse_prices(b"[" * 100_000, "p.yaml")
    assert time.perf_counter() - started < 1


def test_a_price_yaml_syntax_error_names_its_line_and_column() -> None:
    with pytest.raises(UsageError) as info:
        parse_prices(b"m:\n  input: 1\n output: 2\n", "p.yaml")
    assert str(info.value).startswith("--prices p.yaml: not valid YAML (line 3, column 2: ")


# fmt: off
PRICE_FRAGMENTS = [
    "m", ": ", "input", "output", "{", "}", "[", "]", ",", "- ", "\n", "  ", "1", "0.5", "-1", ".nan", ".inf",
    "&a ", "*a", "<<: ", "!!bool ", "!!int ", "!!float ", "!!timestamp ", "!!set ", "!!binary ", "!!str ",
    "!!python/object ", "zz", "''", "2001-13-01", "1:2", "1_000", "0x1f", "0b2", "'", '"', "? ", "#", "---\n",
]
# fmt: on


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(PRICE_FRAGMENTS), max_size=40).map("".join))
def test_any_yamlish_price_file_is_a_table_or_one_usage_error(text: str) -> None:
    started = time.perf_counter()
    try:
        table = parse_prices(text.encode(), "p.yaml")
    except UsageError as exc:
        assert str(exc).startswith("--prices p.yaml: ") and "\n" not in str(exc)
    else:
        assert all(isinstance(name, str) for name in table)
    assert time.perf_counter() - started < 1


# ------------------------------------------------------------------ the loader

LIMITS = {"max_depth": 3, "max_nodes": 10, "max_number_chars": 5}


def test_plain_data_loads_and_empty_text_is_none() -> None:
    assert load("a: [1, 2.5, x, null, true]\nb: {c: 2001-01-01}\n", **{**LIMITS, "max_nodes": 12}) == {
        "a": [1, 2.5, "x", None, True],
        "b": {"c": datetime.date(2001, 1, 1)},
    }
    assert load("[[1]]", **LIMITS) == [[1]]
    assert load("[1, 2, 3, 4, 5, 6, 7, 8, 9]", **LIMITS) == list(range(1, 10))
    assert load("n: 12345", **LIMITS) == {"n": 12345}
    assert load("", **LIMITS) is None
    assert load("# only a comment\n", **LIMITS) is None


@pytest.mark.parametrize(
    "text, kind, line, column, problem",
    [
        ("a: &x 1\n", "alias", 1, 4, ALIASES),
        ("a: 1\nb: *x\n", "alias", 2, 4, ALIASES),
        ("a: [[[1]]]\n", "depth", 1, 6, "nested more than 3 levels deep"),
        ("[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]", "nodes", 1, 29, "more than 10 values"),
        ("a: 123456\n", "number", 1, 4, "a number 6 characters long; numbers are at most 5 characters"),
        ("a: 1:2:3:4\n", "number", 1, 4, "a number 7 characters long; numbers are at most 5 characters"),
        ("a:\n  b: 1\n c: 2\n", "syntax", 3, 2, "expected <block end>, but found '<block mapping start>'"),
        ("--- 1\n--- 2\n", "syntax", 2, 1, "but found another document"),
        ("x: 2001-13-01\n", "value", 1, 4, "cannot read this value (month must be in 1..12)"),
        ("x: !!bool zz\n", "value", 1, 4, "cannot read this value ('zz')"),
        ("x: !!int ''\n", "value", 1, 4, "cannot read this value ("),
        ("x: !!timestamp zz\n", "value", 1, 4, "cannot read this value ("),
        ("x: !!python/object:os.system ls\n", "value", 1, 4, "could not determine a constructor for the tag"),
        ("? [a]\n: 1\n", "value", 1, 3, "found unhashable key"),
    ],
)
def test_every_refusal_is_one_yaml_error_with_its_place(
    text: str, kind: str, line: int, column: int, problem: str
) -> None:
    with pytest.raises(YamlError) as info:
        load(text, **LIMITS)
    error = info.value
    assert (error.kind, error.line, error.column) == (kind, line, column)
    assert error.problem.startswith(problem)
    assert str(error) == f"line {line}, column {column}: {error.problem}"


def test_a_character_yaml_refuses_is_a_yaml_error_without_a_place() -> None:
    with pytest.raises(YamlError) as info:
        load("a: \x00\n", **LIMITS)
    assert (info.value.kind, info.value.line, info.value.column) == ("syntax", None, None)
    assert info.value.problem.startswith("unacceptable character #x0000")


def test_an_alias_bomb_is_refused_at_its_first_anchor() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    started = time.perf_counter()
    with pytest.raises(YamlError) as info:
        load("\n".join(lines), max_depth=100, max_nodes=50_000, max_number_chars=100)
    assert (info.value.kind, info.value.line, info.value.column) == ("alias", 1, 5)
    assert time.perf_counter() - started < 1


@pytest.mark.parametrize("opening", ["[", "{", "- ", "{a: ", "? "])
def test_nesting_far_past_the_stack_is_refused_at_once(opening: str) -> None:
    started = time.perf_counter()
    with pytest.raises(YamlError) as info:
        load(opening * 100_000, max_depth=100, max_nodes=50_000, max_number_chars=100)
    assert info.value.kind == "depth" and info.value.line == 1
    assert time.perf_counter() - started < 1


def test_a_long_base_60_number_is_refused_at_once() -> None:
    started = time.perf_counter()
    with pytest.raises(YamlError) as info:
        load("n: " + "1:" * 200_000 + "1", max_depth=100, max_nodes=50_000, max_number_chars=100)
    assert info.value.kind == "number" and info.value.size == 400_001
    assert time.perf_counter() - started < 1


# fmt: off
FRAGMENTS = [
    "[", "]", "{", "}", "&a ", "*a", "&b ", "*b", ": ", "- ", ",", "\n", "  ", "? ", "'", '"', "#", "a", "b",
    "<<: ", "!!set ", "!!binary ", "!!timestamp ", "!!int ", "!!float ", "!!bool ", "!!str ", "!!map ", "!!seq ",
    "!!python/object ", "!local ", "---\n", "...\n", "2001-13-01", "1:2", "1:2:3:4:5:6", ".inf", "1e999", "0x",
    "0b2", "zz", "''", "null", "true", "\t", "%YAML 1.1\n", "%TAG ! tag:x,2000:\n", "|\n", ">\n", "\x00", "\ufeff",
]
# fmt: on


def _loads_or_one_yaml_error(text: str) -> None:
    started = time.perf_counter()
    try:
        load(text, **LIMITS)
    except YamlError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 400
        assert exc.kind in ("syntax", "value", "alias", "depth", "nodes", "number")
        assert (exc.line is None) == (exc.column is None)
    assert time.perf_counter() - started < 1


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=60).map("".join))
def test_any_yamlish_text_is_data_or_one_yaml_error(text: str) -> None:
    _loads_or_one_yaml_error(text)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_text_is_data_or_one_yaml_error(text: str) -> None:
    _loads_or_one_yaml_error(text)
