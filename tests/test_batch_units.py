"""The batch tier's parsers of outside data (result lines, the journal) and its request ids, unit by unit."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from chains.providers.batch.backend import BatchState, RowAnswer, parse_result_line, parse_result_lines
from chains.providers.batch.collector import BatchCollector, _missing_row
from chains.providers.batch.journal import BatchJournal, journal_path


def _line(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def test_an_answered_row_is_ok_and_its_body_kept() -> None:
    body = {"choices": [{"message": {"role": "assistant", "content": "hi"}}]}
    row = parse_result_line(_line(custom_id="a", response={"status_code": 200, "body": body}, error=None))
    assert row == RowAnswer("a", 200, body)
    assert row.ok and not row.resubmittable


def test_a_row_with_another_status_is_never_an_answer() -> None:
    body = {"error": {"message": "bad request: max_tokens too large"}}
    row = parse_result_line(_line(custom_id="a", response={"status_code": 400, "body": body}, error=None))
    assert row is not None and not row.ok and not row.resubmittable
    assert "HTTP 400" in row.describe() and "max_tokens too large" in row.describe()


def test_throttled_server_failed_and_expired_rows_may_go_into_a_later_batch() -> None:
    for status in (429, 500, 503):
        row = parse_result_line(_line(custom_id="a", response={"status_code": status, "body": {}}, error=None))
        assert row is not None and row.resubmittable and not row.ok
    expired = parse_result_line(_line(custom_id="a", response=None, error={"code": "batch_expired", "message": "late"}))
    assert expired is not None and expired.resubmittable and "batch_expired" in expired.describe()


def test_a_200_with_an_error_code_is_not_an_answer() -> None:
    row = parse_result_line(_line(custom_id="a", response={"status_code": 200, "body": {}}, error={"code": "x"}))
    assert row is not None and not row.ok


def test_lines_that_name_no_request_are_skipped() -> None:
    data = b"\n".join([b"not json", b"[1,2]", _line(custom_id=3), _line(custom_id="ok", response=None), b"{"])
    assert [r.custom_id for r in parse_result_lines(data)] == ["ok"]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_result_files_never_raise(data: bytes) -> None:
    for row in parse_result_lines(data):
        assert isinstance(row.custom_id, str)
        row.describe()


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
        max_leaves=20,
    )
)
def test_any_json_line_is_a_row_or_nothing(value: object) -> None:
    row = parse_result_line(json.dumps(value).encode())
    if row is not None:
        assert not row.ok or row.status == 200
        row.describe()


def test_a_batch_without_a_line_for_a_request_says_why(tmp_path: Path) -> None:
    failed = _missing_row(BatchState("b1", "failed", errors=("line 1: bad model",)), "a")
    assert not failed.resubmittable and "bad model" in failed.describe()
    expired = _missing_row(BatchState("b1", "expired"), "a")
    assert expired.resubmittable


def test_the_journal_reads_back_batches_and_files_without_a_batch(tmp_path: Path) -> None:
    path = journal_path(str(tmp_path / "out.jsonl"))
    journal = BatchJournal(path)
    journal.file("file-1", ["a", "b"])
    journal.batch("file-1", "batch-1")
    journal.file("file-2", ["c"])
    journal.close()
    with open(path, "ab") as handle:
        handle.write(b'{"event": "batch", "file_id": "file-2", "batch_')  # a kill mid-line
    state = BatchJournal(path).load()
    assert state.batches == {"batch-1": ["a", "b"]}
    assert state.orphan_files == {"file-2": ["c"]}
    assert BatchJournal(path, fresh=True).load().batches == {}


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000))
def test_any_journal_file_loads(data: bytes) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "out.jsonl.batches")
        Path(path).write_bytes(data)
        state = BatchJournal(path).load()
        assert all(isinstance(i, str) for ids in state.batches.values() for i in ids)


def test_request_ids_follow_the_input_key_and_the_body_and_are_unique_in_a_run() -> None:
    collector = BatchCollector(lambda model: None)  # type: ignore[arg-type,return-value]
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    first = collector._custom_id("key-1", body)
    assert first == BatchCollector(lambda model: None)._custom_id("key-1", dict(reversed(body.items())))  # type: ignore[arg-type,return-value]
    assert collector._custom_id("key-1", body) == first + "-1"  # a duplicate input in the same file
    assert collector._custom_id("key-2", body) != first
    assert collector._custom_id("key-1", {**body, "max_tokens": 5}) != first
