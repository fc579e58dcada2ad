"""Input files: no row of a CSV, JSONL, lines or topics file can stop, hang or exhaust a run.

A bad row becomes a ``RowError`` item (its own error record, naming the line and the fix) and
every other row still runs; only a file that is unusable as a whole is a ``UsageError``, raised
before anything runs.  The property tests feed arbitrary bytes to every reader.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, runner_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chains.errors import ChainRunnerError, UsageError
from chains.io import inputs
from chains.io.inputs import RowError, count_inputs, read_inputs, read_topics

BIG = "word " * 40_000  # 200,000 characters: over Python's default CSV field limit of 131,072
DEEP_LIST = "[" * 1000 + "]" * 1000
DEEP_OBJECT = '{"text": ' + '{"a": ' * 1000 + "1" + "}" * 1000 + "}"


def items(path: Path, required: tuple[str, ...] = ("text",), **kwargs: Any) -> list[Any]:
    rows = read_inputs(str(path), chain="summarize", required=required, **kwargs)
    try:
        return list(rows)
    finally:
        rows.close()


def errors(found: list[Any]) -> list[str]:
    return [item.message for item in found if isinstance(item, RowError)]


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def assert_recordable(item: Any) -> None:
    """What the runner writes for an item must encode as UTF-8 JSON (a lone surrogate cannot)."""
    value = item.input if isinstance(item, RowError) else item
    json.dumps(value, ensure_ascii=False, default=str).encode("utf-8")


# -- 1. long CSV fields ------------------------------------------------------------------------


def test_a_csv_field_over_128_kb_is_read_whole(tmp_path: Path) -> None:
    path = write(tmp_path, "in.csv", f'text\nshort\n"{BIG}, with a comma"\nafter\n'.encode())
    assert items(path) == [{"text": "short"}, {"text": BIG + ", with a comma"}, {"text": "after"}]
    assert count_inputs(str(path), "csv") == 3


def test_a_csv_row_beyond_the_default_bound_is_an_error_record_and_the_rest_run(tmp_path: Path) -> None:
    huge = "x" * (inputs.MAX_ROW_CHARS + 10)
    path = write(tmp_path, "in.csv", f'text\nbefore\n"{huge}\nstill the same field"\nafter\n'.encode())
    found = items(path)
    assert found[0] == {"text": "before"} and found[2] == {"text": "after"} and len(found) == 3
    [message] = errors(found)
    assert message.startswith(f"{path} line 3: row is longer than 33,554,432 characters")
    assert message.endswith("; shorten the row or split it into several rows")
    assert len(found[1].input) < 200  # the record keeps a preview, not 32 MiB
    assert count_inputs(str(path), "csv") == 3


def test_an_oversized_quoted_csv_field_over_many_lines_resyncs_at_its_closing_quote(tmp_path: Path) -> None:
    """The lines of a too-long quoted field never turn into rows of their own."""
    field = "\n".join(f'paragraph {n}, with commas, and ""quotes""' for n in range(50))
    data = f'text,n\nbefore,1\n"{field}",2\nafter,3\n"small\nquoted",4\n'.encode()
    found = items(write(tmp_path, "in.csv", data), max_chars=200)
    assert found[0] == {"text": "before", "n": "1"}
    assert "line 3: row is longer than 200 characters" in found[1].message
    assert found[2:] == [{"text": "after", "n": "3"}, {"text": "small\nquoted", "n": "4"}]


def test_a_csv_header_longer_than_the_bound_is_a_usage_error(tmp_path: Path) -> None:
    path = write(tmp_path, "in.csv", b"text," + b"x" * 300 + b"\nhello,1\n")
    with pytest.raises(UsageError, match=r"line 1: the CSV header is longer than 200 characters"):
        items(path, max_chars=200)


# -- 2. deep and huge JSONL rows ---------------------------------------------------------------


@pytest.mark.parametrize("deep", [DEEP_LIST, DEEP_OBJECT], ids=["list", "object"])
def test_a_jsonl_row_nested_1000_deep_is_an_error_record(tmp_path: Path, deep: str) -> None:
    path = write(tmp_path, "in.jsonl", f'{{"text": "a"}}\n{deep}\n{{"text": "b"}}\n'.encode())
    found = items(path)
    assert found[0] == {"text": "a"} and found[2] == {"text": "b"}
    [message] = errors(found)
    assert message == f"{path} line 2: JSON nested deeper than 100 levels; flatten the row"
    assert count_inputs(str(path), "jsonl") == 3


def test_jsonl_nesting_up_to_the_bound_is_accepted(tmp_path: Path) -> None:
    ok = '{"text": "t", "deep": ' + "[" * 99 + "]" * 99 + "}"
    too_deep = '{"text": "t", "deep": ' + "[" * 100 + "]" * 100 + "}"
    found = items(write(tmp_path, "in.jsonl", f"{ok}\n{too_deep}\n".encode()))
    assert isinstance(found[0], dict) and isinstance(found[1], RowError)


def test_a_jsonl_line_beyond_the_default_bound_is_an_error_record(tmp_path: Path) -> None:
    huge = '{"text": "' + "x" * inputs.MAX_ROW_CHARS + '"}'
    path = write(tmp_path, "in.jsonl", f'{{"text": "a"}}\n{huge}\n{{"text": "b"}}\n'.encode())
    found = items(path)
    assert found[0] == {"text": "a"} and found[2] == {"text": "b"} and len(found) == 3
    [message] = errors(found)
    assert message == f"{path} line 2: line is longer than 33,554,432 characters; shorten the line or split it"
    assert count_inputs(str(path), "jsonl") == 3


def test_jsonl_values_python_refuses_are_error_records_not_crashes(tmp_path: Path) -> None:
    lines = ['{"text": ' + "9" * 5000 + "}", '{"text": "\\udc80 lone surrogate"}', '{"text": "fine \\ud83d\\ude00"}']
    found = items(write(tmp_path, "in.jsonl", "\n".join(lines).encode()))
    assert "line 1: not valid JSON (a number has more than 4300 digits); write it as a string" in found[0].message
    assert "line 2: the row has a lone surrogate" in found[1].message
    assert found[2] == {"text": "fine \U0001f600"}
    for item in found:
        assert_recordable(item)


# -- 3. bad UTF-8 in the middle of a file ------------------------------------------------------


def test_bad_utf8_in_a_csv_row_fails_that_row_only(tmp_path: Path) -> None:
    path = write(tmp_path, "in.csv", b"text,n\ngood,1\ncaf\xe9 au lait,2\nalso good,3\n")
    found = items(path)
    assert found[0] == {"text": "good", "n": "1"} and found[2] == {"text": "also good", "n": "3"}
    [message] = errors(found)
    assert message == f"{path} line 3: not UTF-8 text (byte 0xe9 at column 4); save the file as UTF-8"
    assert found[1].input == {"text": "caf\ufffd au lait", "n": "2"}
    assert_recordable(found[1])
    assert count_inputs(str(path), "csv") == 3


def test_bad_utf8_in_a_jsonl_row_fails_that_row_only(tmp_path: Path) -> None:
    path = write(tmp_path, "in.jsonl", b'{"text": "a"}\n{"text": "caf\xe9"}\n{"text": "b"}\n')
    found = items(path)
    assert found[0] == {"text": "a"} and found[2] == {"text": "b"}
    assert errors(found) == [f"{path} line 2: not UTF-8 text (byte 0xe9 at column 14); save the file as UTF-8"]
    assert_recordable(found[1])


def test_bad_utf8_in_plain_lines_and_topics_fails_that_line_only(tmp_path: Path) -> None:
    path = write(tmp_path, "in.txt", b"one\n\xff\xfe two\nthree\n")
    found = items(path)
    assert found[0] == {"text": "one"} and found[2] == {"text": "three"}
    assert errors(found) == [f"{path} line 2: not UTF-8 text (byte 0xff at column 1); save the file as UTF-8"]
    topics = list(read_topics(str(path)))
    assert topics[0] == {"topic": "one"} and topics[2] == {"topic": "three"}
    assert isinstance(topics[1], RowError) and "line 2: not UTF-8 text" in topics[1].message
    assert topics[1].input == {"topic": "\ufffd\ufffd two"}
    assert count_inputs(str(path), "lines") == 3


def test_a_binary_file_is_one_usage_error_up_front(tmp_path: Path) -> None:
    path = write(tmp_path, "in.csv", b"PK\x03\x04\x14\x00\x06\x00" + bytes(range(256)))
    with pytest.raises(UsageError, match=r"--input .*in.csv: not a text file \(NUL byte at offset 5\)"):
        items(path)


def test_a_utf16_file_is_one_usage_error_up_front(tmp_path: Path) -> None:
    path = write(tmp_path, "in.txt", "topic one\ntopic two\n".encode("utf-16"))
    with pytest.raises(UsageError, match=r"--topics .*in.txt: saved as UTF-16; save it as UTF-8"):
        read_topics(str(path))


# -- 4. byte-order marks (issue 10) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "body", "expected"),
    [
        ("in.csv", "text,n\nhello,1\n", {"text": "hello", "n": "1"}),
        ("in.jsonl", '{"text": "hello"}\n', {"text": "hello"}),
        ("in.txt", "hello\n", {"text": "hello"}),
    ],
)
def test_an_excel_byte_order_mark_is_dropped(tmp_path: Path, name: str, body: str, expected: dict[str, str]) -> None:
    path = write(tmp_path, name, b"\xef\xbb\xbf" + body.encode())
    assert items(path) == [expected]


def test_a_byte_order_mark_before_topics_is_dropped(tmp_path: Path) -> None:
    path = write(tmp_path, "t.txt", b"\xef\xbb\xbfa kite\n")
    assert list(read_topics(str(path))) == [{"topic": "a kite"}]


# -- 5. count_inputs agrees with the readers ---------------------------------------------------


def test_count_inputs_counts_multi_line_csv_records_and_skips_blank_rows(tmp_path: Path) -> None:
    path = write(tmp_path, "in.csv", b'text\n"one\n\ntwo"\n\n,\nthree\n# not a comment in CSV\n')
    assert items(path) == [{"text": "one\n\ntwo"}, {"text": "three"}, {"text": "# not a comment in CSV"}]
    assert count_inputs(str(path), "csv") == 3


def test_count_inputs_never_raises(tmp_path: Path) -> None:
    assert count_inputs(str(tmp_path / "missing.csv"), "csv") is None
    assert count_inputs(str(write(tmp_path, "bin.csv", b"\x00\x01")), "csv") is None
    assert count_inputs(str(write(tmp_path, "empty.jsonl", b"")), "jsonl") == 0


# -- the CSV record splitter agrees with Python's csv module ----------------------------------

CSV_TEXT = st.text(alphabet=st.sampled_from('ab ",\r\n\x00é'), max_size=60)


@settings(max_examples=400, deadline=None)
@given(CSV_TEXT)
def test_csv_records_group_lines_exactly_like_the_csv_module(text: str) -> None:
    expected = list(csv.reader(io.StringIO(text, newline="")))
    records = inputs._csv_records(io.StringIO(text, newline=""), max_chars=1000)
    got = [fields for record in records for fields in csv.reader(record.lines)]
    assert got == expected


def ending(record: Any) -> bool:
    """A record of line endings only: a CR LF the size limit cut in two leaves one (a blank row, skipped)."""
    return record.preview is None and not "".join(record.lines).strip("\r\n")


@settings(max_examples=300, deadline=None)
@given(CSV_TEXT, st.integers(min_value=2, max_value=12))
def test_csv_records_keep_their_boundaries_when_read_in_small_pieces(text: str, max_chars: int) -> None:
    """A record too long to keep is still skipped exactly to its end: the next record starts where csv says."""
    whole = [r.number for r in inputs._csv_records(io.StringIO(text, newline=""), max_chars=10_000) if not ending(r)]
    pieces = list(inputs._csv_records(io.StringIO(text, newline=""), max_chars=max_chars))
    assert [r.number for r in pieces if not ending(r)] == whole
    assert all(r.size <= max_chars or (r.preview is not None and not r.lines) for r in pieces)


# -- property tests: arbitrary bytes never raise anything but the project's errors ------------

ROW_BYTES = st.lists(
    st.one_of(
        st.binary(max_size=30),
        st.sampled_from([b"text", b"text,n", b'{"text": "x"}', b"[[[[", b'"', b",", b"\xef\xbb\xbf", b"#"]),
        st.text(max_size=20).map(str.encode),
    ),
    max_size=12,
).map(lambda parts: b"\n".join(parts))


def drain(rows_factory: Any) -> list[Any]:
    try:
        rows = rows_factory()
    except UsageError:
        return []
    try:
        found = list(rows)
    except ChainRunnerError as exc:  # only a file-level problem may surface, and only as our error
        assert isinstance(exc, UsageError)
        return []
    finally:
        rows.close()
    for item in found:
        assert isinstance(item, dict | RowError)
        assert_recordable(item)
    return found


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=ROW_BYTES, name=st.sampled_from(["in.csv", "in.jsonl", "in.txt"]), small=st.booleans())
def test_arbitrary_bytes_as_inputs_yield_only_rows_or_row_errors(
    tmp_path: Path, data: bytes, name: str, small: bool
) -> None:
    path = write(tmp_path, name, data)
    limit = 8 if small else inputs.MAX_ROW_CHARS
    found = drain(lambda: read_inputs(str(path), chain="c", required=("text",), max_chars=limit))
    if found:
        fmt = inputs.detect_format(name)
        assert count_inputs(str(path), fmt, max_chars=limit) == len(found)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=ROW_BYTES, small=st.booleans())
def test_arbitrary_bytes_as_topics_yield_only_topics_or_row_errors(tmp_path: Path, data: bytes, small: bool) -> None:
    path = write(tmp_path, "t.txt", data)
    limit = 8 if small else inputs.MAX_ROW_CHARS
    found = drain(lambda: read_topics(str(path), max_chars=limit))
    if found:
        assert count_inputs(str(path), "lines", max_chars=limit) == len(found)


# -- end to end: the CLI runs every row, and --resume finishes ---------------------------------


def run_summarize(tmp_path: Path, name: str, *extra: str) -> subprocess.CompletedProcess[str]:
    args = ["run", "summarize", "--input", name, "--output", "out.jsonl", "-q", "--model", "fake", *extra]
    return subprocess.run(
        [sys.executable, str(ROOT / "runner.py"), *args],
        capture_output=True,
        text=True,
        env=runner_env(),
        cwd=tmp_path,
        timeout=180,
    )


def records(tmp_path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]


E2E = {
    "in.csv": (
        b"\xef\xbb\xbftext\nfirst\n" + f'"{BIG}, the end"\n'.encode() + b"caf\xe9\nlast\n",
        {2: "line 4: not UTF-8 text"},
    ),
    "in.jsonl": (
        b'{"text": "first"}\n'
        + json.dumps({"text": BIG}).encode()
        + b"\n"
        + DEEP_OBJECT.encode()
        + b'\n{"text": "caf\xe9"}\n'
        + DEEP_LIST.encode()
        + b'\n{"text": "last"}\n',
        {2: "line 3: JSON nested deeper", 3: "line 4: not UTF-8 text", 4: "line 5: JSON nested deeper"},
    ),
    "in.txt": (
        b"first\n" + BIG.encode() + b"\ncaf\xe9\nlast\n",
        {2: "line 3: not UTF-8 text"},
    ),
}


@pytest.mark.parametrize("name", sorted(E2E))
def test_the_cli_runs_every_row_around_bad_ones_and_resume_finishes(tmp_path: Path, name: str) -> None:
    data, bad = E2E[name]
    (tmp_path / name).write_bytes(data)
    result = run_summarize(tmp_path, name)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    first = {r["index"]: r for r in records(tmp_path)}
    total = len(first)
    assert sorted(first) == list(range(total)) and total == len(bad) + 3
    for index, record in first.items():
        if index in bad:
            assert record["output"] is None and f"{name} {bad[index]}" in record["error"]["message"]
        else:
            assert record["error"] is None and record["output"], record
    assert first[1]["input"]["text"].startswith("word word")  # the 200 KB row ran

    again = run_summarize(tmp_path, name, "--resume")
    assert again.returncode == 1, again.stderr
    rerun = records(tmp_path)[total:]
    assert sorted(r["index"] for r in rerun) == sorted(bad)
    assert all(r["error"] is not None for r in rerun)


def test_bad_utf8_topics_on_stdin_fail_one_line_only(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "runner.py"), "story", "--topics", "-", "--output", "out.jsonl", "-q"],
        input=b"\xef\xbb\xbfa kite\nbad \xff topic\na lighthouse\n",
        capture_output=True,
        env=runner_env(),
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    found = {r["index"]: r for r in records(tmp_path)}
    assert found[0]["input"] == {"topic": "a kite"} and found[0]["error"] is None
    assert found[1]["error"]["message"] == "- line 2: not UTF-8 text (byte 0xff at column 5); save the file as UTF-8"
    assert found[2]["error"] is None
