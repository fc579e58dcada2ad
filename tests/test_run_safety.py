"""Nothing paid twice, nothing lost (issue 9): resume identity, the output file, prices, cache and usage errors.

Every test runs the real CLI (in a subprocess, or ``runner.main`` in-process when nothing can hang)
against the offline model or the fault server on 127.0.0.1.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ROOT, cli, one_error_line, records, runner_env
from fault_server import FaultServer
from hypothesis import given, settings
from hypothesis import strategies as st

import runner
from chains.errors import UsageError

ECHO = "name: echo\ndescription: Echo.\ninput_variables: [text]\nmessages:\n  - role: human\n    content: '{text}'\n"
TEXTS = ["first text", "second text", "third text"]


def echo_run(tmp_path: Path, base_url: str, *extra: str) -> list[str]:
    prompts = tmp_path / "prompts"
    prompts.mkdir(exist_ok=True)
    (prompts / "echo.yaml").write_text(ECHO)
    (tmp_path / "in.txt").write_text("".join(f"{t}\n" for t in TEXTS))
    return [
        "run",
        "echo",
        "--input",
        "in.txt",
        "--prompts-dir",
        str(prompts),
        "--output",
        "out.jsonl",
        "--base-url",
        base_url,
        "--model",
        "openai:test-model",
        "-q",
        *extra,
    ]


# ----------------------------------------------------------------------------- 1. resume identity


@pytest.mark.parametrize("respelling", ["trailing slash", "localhost", "new port"])
def test_resume_with_the_same_endpoint_spelled_differently_makes_no_request(
    tmp_path: Path, fault_server: FaultServer, respelling: str
) -> None:
    first = cli(*echo_run(tmp_path, fault_server.base_url), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert fault_server.stats()["requests"] == len(TEXTS)
    other = FaultServer().start() if respelling == "new port" else None
    try:
        if other is not None:
            url = other.base_url
        elif respelling == "localhost":
            url = fault_server.base_url.replace("127.0.0.1", "LocalHost")
        else:
            url = fault_server.base_url + "/"
        resumed = cli(*echo_run(tmp_path, url, "--resume", "--metrics-out", "m.json"), cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stderr
        assert fault_server.stats()["requests"] == len(TEXTS)  # nothing re-paid
        assert other is None or other.stats()["requests"] == 0
    finally:
        if other is not None:
            other.stop()
    assert json.loads((tmp_path / "m.json").read_text())["skipped"] == len(TEXTS)
    successes = [r for r in records(tmp_path / "out.jsonl") if r["error"] is None]
    assert sorted(r["input"]["text"] for r in successes) == sorted(TEXTS)  # no duplicate success record


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("https://API.Example.com/v1/", "https://api.example.com:443/v1"),
        ("http://example.com:80/v1", "http://EXAMPLE.com/v1/"),
        ("http://localhost:8000/v1", "http://127.0.0.1:9999/v1/"),
        ("http://127.0.0.5:1/v1", "http://[::1]:8080/v1"),
    ],
)
def test_the_same_model_has_one_identity(one: str, other: str) -> None:
    from chains.engine.resume import model_identity

    assert model_identity("openai:m", one) == model_identity("openai:m", other)


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("https://api.example.com/v1", "https://api.other.com/v1"),
        ("https://api.example.com/v1", "https://api.example.com:8443/v1"),
        ("https://api.example.com/v1", "https://api.example.com/v2"),
        ("http://localhost:8000/v1", "http://10.0.0.2:8000/v1"),
    ],
)
def test_different_endpoints_have_different_identities(one: str, other: str) -> None:
    from chains.engine.resume import model_identity

    assert model_identity("openai:m", one) != model_identity("openai:m", other)
    assert model_identity("openai:m", one) != model_identity("openai:n", one)


# ----------------------------------------------------------------------------- 2, 9. the output file


@pytest.mark.parametrize("spelling", ["same path", "another path", "symlink", "hard link"])
@pytest.mark.parametrize("mode", [[], ["--resume"], ["--overwrite"]])
def test_output_that_is_the_input_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], spelling: str, mode: list[str]
) -> None:
    source = tmp_path / "in.txt"
    source.write_text("one text\nanother text\n")
    output = {"same path": "in.txt", "another path": str(source), "symlink": "link.txt", "hard link": "hard.txt"}[
        spelling
    ]
    if spelling == "symlink":
        (tmp_path / "link.txt").symlink_to(source)
    if spelling == "hard link":
        os.link(source, tmp_path / "hard.txt")
    assert runner.main(["run", "summarize", "--input", "in.txt", "--output", output, "-q", *mode]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"--output {output}" in line and "is the input file" in line
    assert source.read_text() == "one text\nanother text\n"


def test_an_existing_output_is_never_truncated_without_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "in.txt").write_text("one text\n")
    (tmp_path / "out.jsonl").write_text('{"earlier": "records"}\n')
    assert runner.main(["run", "summarize", "--input", "in.txt", "--output", "out.jsonl"]) == 2  # not -q: no notice
    line = one_error_line(capsys.readouterr().err)
    assert "--output out.jsonl" in line and "--resume" in line and "--overwrite" in line
    assert (tmp_path / "out.jsonl").read_text() == '{"earlier": "records"}\n'

    assert runner.main(["run", "summarize", "--input", "in.txt", "--output", "out.jsonl", "-q", "--overwrite"]) == 0
    [record] = records(tmp_path / "out.jsonl")
    assert record["error"] is None and record["input"] == {"text": "one text"}

    (tmp_path / "empty.jsonl").write_text("")  # an empty file holds nothing to lose
    assert runner.main(["run", "summarize", "--input", "in.txt", "--output", "empty.jsonl", "-q"]) == 0


def test_overwrite_keeps_the_old_records_when_the_run_fails_before_its_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "in.txt").write_text("one text\n")
    (tmp_path / "out.jsonl").write_text('{"earlier": "records"}\n')
    closed = FaultServer().start()
    url = closed.base_url
    closed.stop()  # nothing listens there any more
    args = ["run", "summarize", "--input", "in.txt", "--output", "out.jsonl", "--overwrite", "-q"]
    assert runner.main([*args, "--base-url", url, "--model", "openai:m"]) == 2
    assert "cannot reach --base-url" in one_error_line(capsys.readouterr().err)
    assert (tmp_path / "out.jsonl").read_text() == '{"earlier": "records"}\n'


@pytest.mark.parametrize("metrics", ["out.jsonl", "./out.jsonl", "in.txt"])
def test_metrics_out_that_is_the_output_or_the_input_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], metrics: str
) -> None:
    (tmp_path / "in.txt").write_text("one text\n")
    args = ["run", "summarize", "--input", "in.txt", "--output", "out.jsonl", "--metrics-out", metrics, "-q"]
    assert runner.main(args) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"--metrics-out {metrics}" in line
    assert (tmp_path / "in.txt").read_text() == "one text\n" and not (tmp_path / "out.jsonl").exists()


def test_resume_and_overwrite_together_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "in.txt").write_text("one text\n")
    args = ["run", "summarize", "--input", "in.txt", "--output", "o.jsonl", "--resume", "--overwrite"]
    assert runner.main(args) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--resume" in line and "--overwrite" in line


def test_a_second_run_on_the_same_output_is_refused_before_any_request(
    tmp_path: Path, fault_server: FaultServer
) -> None:
    (tmp_path / "in.txt").write_text("".join(f"text number {i}\n" for i in range(6)))
    slow = [
        "run",
        "summarize",
        "--input",
        "in.txt",
        "--output",
        "out.jsonl",
        "--model",
        "fake",
        "--fake-delay",
        "0.05",
        "--max-tokens",
        "12",
        "--max-concurrency",
        "1",
        "-q",
    ]
    first = subprocess.Popen(
        [sys.executable, str(ROOT / "runner.py"), *slow],
        cwd=tmp_path,
        env=runner_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out = tmp_path / "out.jsonl"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (not out.exists() or out.stat().st_size == 0):
            time.sleep(0.02)
        assert first.poll() is None, "the first run finished before the second could start: make it slower"
        second = cli(
            "run",
            "summarize",
            "--input",
            "in.txt",
            "--output",
            "out.jsonl",
            "--resume",
            "--base-url",
            fault_server.base_url,
            "--model",
            "openai:test-model",
            "-q",
            cwd=tmp_path,
        )
        assert second.returncode == 2, second.stderr
        line = one_error_line(second.stderr)
        assert "--output out.jsonl" in line and "another run" in line
        assert fault_server.stats()["requests"] == 0  # refused before any request
        _, stderr = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert first.returncode == 0, stderr
    written = records(tmp_path / "out.jsonl")  # every line whole
    assert sorted(r["index"] for r in written) == list(range(6)) and all(r["error"] is None for r in written)


# ----------------------------------------------------------------------------- 4. prices


@pytest.mark.parametrize(
    ("name", "text", "entry"),
    [
        ("p.json", '{"fake": {"input": NaN, "output": 1}}', "'fake'"),
        ("p.json", '{"fake": {"input": 1, "output": Infinity}}', "'fake'"),
        ("p.json", '{"m": {"input": 1, "output": 1}, "fake": {"input": -1, "output": 1}}', "'fake'"),
        ("p.json", '{"fake": {"input": 1e999, "output": 1}}', "'fake'"),
        ("p.json", '{"fake": {"input": 1' + "0" * 400 + ', "output": 1}}', "'fake'"),
        ("p.json", '{"fake": {"input": true, "output": 1}}', "'fake'"),
        ("p.yaml", "fake:\n  input: .nan\n  output: 1\n", "'fake'"),
        ("p.yaml", "fake:\n  input: 1\n  output: -.inf\n", "'fake'"),
        ("p.yaml", "fake: {input: -0.5, output: 0}\n", "'fake'"),
    ],
)
def test_a_price_that_is_not_a_finite_non_negative_number_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, text: str, entry: str
) -> None:
    (tmp_path / name).write_text(text)
    (tmp_path / "in.txt").write_text("one text\n")
    args = ["run", "summarize", "--input", "in.txt", "--output", "o.jsonl", "--prices", name, "--max-cost", "1", "-q"]
    assert runner.main(args) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"--prices {name}" in line and f"entry {entry}" in line
    assert not (tmp_path / "o.jsonl").exists() or (tmp_path / "o.jsonl").read_text() == ""


def test_prices_accept_numbers_and_numeric_strings() -> None:
    from chains.engine.pricing import parse_prices

    table = parse_prices(b'{"m": {"input": 0.15, "output": "0.6"}, "n": {"input": 0, "output": 2}}', "p.json")
    assert {name: price.pair for name, price in table.items()} == {"m": (0.15, 0.6), "n": (0.0, 2.0)}
    assert parse_prices(b"m: {input: 1e-3, output: 1.5}\n", "p.yaml")["m"].pair == (0.001, 1.5)


def test_a_yaml_alias_bomb_is_refused_at_once() -> None:
    from chains.engine.pricing import parse_prices

    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    started = time.perf_counter()
    with pytest.raises(UsageError, match=r"--prices p.yaml: .*alias"):
        parse_prices("\n".join(lines).encode(), "p.yaml")
    assert time.perf_counter() - started < 1


def test_a_long_yaml_base_60_number_is_refused_at_once() -> None:
    from chains.engine.pricing import parse_prices

    started = time.perf_counter()
    with pytest.raises(UsageError, match=r"--prices p.yaml: .*longer than"):
        parse_prices(b"m: {input: " + b"1:" * 100_000 + b"1, output: 1}", "p.yaml")
    assert time.perf_counter() - started < 1


def test_a_huge_price_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "p.json").write_bytes(b" " * (2 * 1024 * 1024) + b"{}")
    (tmp_path / "in.txt").write_text("one text\n")
    assert runner.main(["run", "summarize", "--input", "in.txt", "--prices", "p.json", "-q"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--prices p.json" in line and "larger than" in line


def _check_prices(data: bytes, name: str) -> None:
    from chains.engine.pricing import TIERS, parse_prices

    try:
        table = parse_prices(data, name)
    except UsageError as exc:
        assert str(exc).startswith(f"--prices {name}: ") and "\n" not in str(exc)
        return
    for price in table.values():
        assert all(math.isfinite(p) and p >= 0 for tier in TIERS for p in price.rates(tier))


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300), name=st.sampled_from(["p.json", "p.yaml"]))
def test_prices_parser_raises_only_usage_errors_for_any_bytes(data: bytes, name: str) -> None:
    _check_prices(data, name)


_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)
_ENTRIES = st.dictionaries(
    st.text(max_size=8),
    st.fixed_dictionaries({"input": _SCALARS, "output": _SCALARS}) | _VALUES,
    max_size=4,
)


@settings(max_examples=200, deadline=None)
@given(value=_VALUES | _ENTRIES)
def test_prices_parser_raises_only_usage_errors_for_any_json_or_yaml(value: Any) -> None:
    _check_prices(json.dumps(value).encode(), "p.json")
    _check_prices(yaml.safe_dump(value).encode(), "p.yaml")


# ----------------------------------------------------------------------------- 5. --metrics-out


@pytest.mark.parametrize("target", ["a-directory", "a-file/m.json", "missing-dir/m.json"])
def test_an_unwritable_metrics_out_is_refused_before_any_request(
    tmp_path: Path, fault_server: FaultServer, target: str
) -> None:
    (tmp_path / "a-directory").mkdir()
    (tmp_path / "a-file").write_text("not a directory")
    result = cli(*echo_run(tmp_path, fault_server.base_url, "--metrics-out", target), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    line = one_error_line(result.stderr)
    assert f"--metrics-out {target}" in line and "cannot write" in line
    assert fault_server.stats()["requests"] == 0
    assert not (tmp_path / "out.jsonl").exists()


def test_the_metrics_probe_leaves_no_file_behind_when_the_run_fails_otherwise(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "in.txt").write_text("one text\n")
    (tmp_path / "p.json").write_text('{"fake": {"input": NaN, "output": 1}}')
    args = ["run", "summarize", "--input", "in.txt", "--metrics-out", "m.json", "--prices", "p.json", "-q"]
    assert runner.main(args) == 2
    assert not (tmp_path / "m.json").exists()


# ----------------------------------------------------------------------------- 6. --cache


def test_a_corrupt_cache_row_is_a_miss_replaced_with_one_warning(tmp_path: Path, fault_server: FaultServer) -> None:
    args = echo_run(tmp_path, fault_server.base_url, "--cache", "c.sqlite")
    assert cli(*args, cwd=tmp_path).returncode == 0
    assert fault_server.stats()["requests"] == len(TEXTS)
    with sqlite3.connect(tmp_path / "c.sqlite") as db:
        assert db.execute("UPDATE generations SET value = 'garbage'").rowcount == len(TEXTS)
    db.close()

    (tmp_path / "out.jsonl").unlink()
    corrupt = cli(*args, cwd=tmp_path)
    assert corrupt.returncode == 0, corrupt.stderr
    assert all(r["error"] is None for r in records(tmp_path / "out.jsonl"))
    assert fault_server.stats()["requests"] == 2 * len(TEXTS)  # misses: requested again
    warnings = [line for line in corrupt.stderr.splitlines() if line.strip()]
    assert len(warnings) == 1 and "--cache c.sqlite" in warnings[0], corrupt.stderr

    (tmp_path / "out.jsonl").unlink()
    again = cli(*args, cwd=tmp_path)
    assert again.returncode == 0 and again.stderr == ""
    assert fault_server.stats()["requests"] == 2 * len(TEXTS)  # the rows were replaced: hits now


_CACHE_VALUES = (
    st.text(max_size=200)
    | st.builds(json.dumps, _VALUES)
    | st.builds(
        lambda items: json.dumps([{"message": m, "info": i} for m, i in items]),
        st.lists(st.tuples(_VALUES, _VALUES), max_size=3),
    )
)


@settings(max_examples=300, deadline=None)
@given(value=_CACHE_VALUES)
def test_any_cache_value_is_a_hit_or_a_miss_never_an_error(value: str) -> None:
    from chains.providers.cache import SQLiteCache

    cache = SQLiteCache(":memory:")
    try:
        cache._db.execute("INSERT INTO generations VALUES ('p', 'l', ?)", (value,))
        got = cache.lookup("p", "l")
        assert got is None or isinstance(got, list)
    finally:
        cache.close()


# ----------------------------------------------------------------------------- 7. usage errors


@pytest.mark.parametrize(
    ("flags", "env", "named"),
    [
        (["--base-url", "http://127.0.0.1:notaport/v1"], {}, "--base-url"),
        (["--base-url", "http://127.0.0.1:70000/v1"], {}, "--base-url"),
        (["--base-url", "http://127.0.0.1:8000/v1\r\nX-Injected: 1"], {}, "--base-url"),
        (["--base-url", "http://127.0.0.1:8000/v 1"], {}, "--base-url"),
        (["--base-url", ""], {}, "--base-url"),
        (["--base-url", "ftp://example.com/v1"], {}, "--base-url"),
        (["--base-url", "http:///v1"], {}, "--base-url"),
        (["--base-url", "http://[::1/v1"], {}, "--base-url"),
        ([], {"OPENAI_BASE_URL": "::::"}, "OPENAI_BASE_URL"),
        ([], {"OPENAI_BASE_URL": "http://localhost:port/v1"}, "OPENAI_BASE_URL"),
        (["--timeout", "inf"], {}, "--timeout"),
        (["--timeout", "nan"], {}, "--timeout"),
        (["--rpm", "inf"], {}, "--rpm"),
        (["--tpm", "nan"], {}, "--tpm"),
        (["--max-cost", "inf"], {}, "--max-cost"),
        (["--temperature", "nan"], {}, "--temperature"),
        (["--fake-delay", "inf"], {}, "--fake-delay"),
        (["--fake-delay", "-inf"], {}, "--fake-delay"),
    ],
)
def test_bad_urls_and_numbers_are_usage_errors_naming_the_flag(
    tmp_path: Path, flags: list[str], env: dict[str, str], named: str
) -> None:
    (tmp_path / "t.txt").write_text("a topic\n")
    result = cli("story", "--topics", "t.txt", "-q", *flags, cwd=tmp_path, env=runner_env(**env), timeout=30)
    assert result.returncode == 2, result.stderr
    assert named in one_error_line(result.stderr)


def test_an_empty_base_url_from_the_environment_is_ignored(tmp_path: Path) -> None:
    from chains.settings import RunSettings

    assert RunSettings.from_env({"OPENAI_BASE_URL": ""}).base_url is None


@settings(max_examples=500, deadline=None)
@given(
    url=st.text(max_size=60)
    | st.builds(
        lambda scheme, host, port, path: f"{scheme}://{host}{port}{path}",
        st.sampled_from(["http", "https", "HTTP", "ftp", ""]),
        st.text(max_size=20),
        st.sampled_from(["", ":", ":0", ":80", ":65536", ":x"]) | st.text(max_size=6).map(lambda t: ":" + t),
        st.text(max_size=20),
    )
)
def test_base_url_check_raises_only_usage_errors(url: str) -> None:
    from chains.engine.resume import model_identity
    from chains.settings import check_base_url

    try:
        checked = check_base_url(url, "--base-url")
    except UsageError as exc:
        assert str(exc).startswith("--base-url ") and "\n" not in str(exc) and "\r" not in str(exc)
        return
    assert checked == url
    assert model_identity("openai:m", checked).startswith("openai:m@")


# ----------------------------------------------------------------------------- 8. --timeout


def test_timeout_defaults_to_600_seconds_per_attempt(tmp_path: Path) -> None:
    from chains.settings import DEFAULT_TIMEOUT_S, RunSettings

    assert DEFAULT_TIMEOUT_S == 600 and RunSettings().timeout == 600
    result = cli("story", "--help", cwd=tmp_path)
    text = " ".join(result.stdout.split())
    assert "seconds per attempt, the whole answer included (default 600" in text
    assert "lower it to retry stalled requests sooner" in text
