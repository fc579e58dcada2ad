"""One outcome object per input (issue 12): the record keeps its exception, one serialization of a record
for every caller, the HTTP answer to a failure beside the error classes, typed statuses."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from langchain_core.exceptions import OutputParserException
from langchain_core.runnables import RunnableLambda

from chains.engine.execution import (
    ANSWER_FIELDS,
    BATCH_FIELDS,
    LOG_FIELDS,
    Record,
    StreamEvent,
    run_batch,
)
from chains.engine.metrics import ItemMetrics
from chains.errors import (
    BudgetExceededError,
    InputError,
    PayloadTooLarge,
    PromptSpecError,
    ProviderError,
    UnknownChainError,
    http_answer,
)
from chains.io.sinks import JsonlSink


class Refused(ValueError):
    """A failure nobody foresaw (not one of the project's errors)."""


def _fails_on_bad(value: dict[str, Any]) -> str:
    if value["text"] == "bad":
        raise Refused("the chain refused it")
    return value["text"].upper()


async def test_a_failed_record_keeps_its_exception_as_well_as_its_description() -> None:
    bad_row = InputError("--input rows.jsonl line 2: not JSON; fix the line")
    inputs: list[Any] = [{"text": "fine"}, {"text": "bad"}, bad_row]
    records = sorted([r async for r in run_batch(RunnableLambda(_fails_on_bad), inputs)], key=lambda r: r.index)
    ok, failed, unread = records
    assert ok.ok and ok.exception is None and ok.output == "FINE"
    assert isinstance(failed.exception, Refused) and str(failed.exception) == "the chain refused it"
    assert failed.error == {"type": "Refused", "message": "the chain refused it"}  # the same dict as before
    assert unread.exception is bad_row and unread.error == {"type": "InputError", "message": str(bad_row)}


def test_a_record_has_one_serialization_with_the_views_its_callers_need() -> None:
    metrics = ItemMetrics(latency_s=0.123456, ttft_s=0.01234, input_tokens=3, output_tokens=5, model_calls=1)
    record = Record(4, {"topic": "kite"}, "a kite", None, metrics, key="k1")
    expected_metrics = metrics.to_dict()
    assert record.to_dict() == {
        "index": 4,
        "input": {"topic": "kite"},
        "output": "a kite",
        "error": None,
        "metrics": expected_metrics,
        "key": "k1",
    }
    assert "key" not in Record(0, {}).to_dict()  # a run without keys writes none
    assert record.to_dict(ANSWER_FIELDS) == {"output": "a kite", "metrics": expected_metrics}
    assert record.to_dict(BATCH_FIELDS) == {"index": 4, "output": "a kite", "error": None, "metrics": expected_metrics}
    line = record.to_dict(LOG_FIELDS)
    assert list(line) == ["index", "input", "output", "usage", "latency_s", "ttft_s", "status", "error"]
    assert line["usage"] == {"input_tokens": 3, "output_tokens": 5, "estimated": False}
    assert (line["latency_s"], line["ttft_s"], line["status"]) == (0.1235, 0.0123, "ok")
    failed = Record.failure(1, {"topic": "x"}, ProviderError("HTTP 400", status=400), ItemMetrics(status="failed"))
    assert failed.to_dict(LOG_FIELDS)["status"] == "failed"
    assert failed.to_dict(LOG_FIELDS)["error"] == {
        "type": "ProviderError",
        "message": "HTTP 400",
        "status": 400,
        "attempts": 1,
    }


def test_a_records_metrics_are_every_field_in_order_times_rounded_and_a_copy() -> None:
    fallback = {"model": "m1", "reason": "server", "error": "HTTP 503"}
    metrics = ItemMetrics(latency_s=0.123456, wait_s=1.000049, model="m2", fallbacks=[fallback], tier="online")
    data = metrics.to_dict()
    assert list(data) == [f.name for f in dataclasses.fields(ItemMetrics)]  # the order of the record's keys
    assert data == {**dataclasses.asdict(metrics), "latency_s": 0.1235, "ttft_s": None, "wait_s": 1.0}
    data["fallbacks"][0]["reason"] = "changed"
    data["fallbacks"].append({})
    assert metrics.fallbacks == [{"model": "m1", "reason": "server", "error": "HTTP 503"}]  # the record's own


def test_an_output_line_with_a_lone_surrogate_is_written_as_its_escape(tmp_path: Path) -> None:
    """A model may answer a lone surrogate (a JSON escape in its body): --output raised UnicodeEncodeError."""
    path = tmp_path / "out.jsonl"
    with JsonlSink(path) as sink:
        sink.write(Record(0, {"topic": "x"}, "bad \udfff answer"))
        sink.write(Record(1, {"topic": "y"}, "fine"))
    lines = path.read_bytes().decode("utf-8").splitlines()
    assert [json.loads(line)["output"] for line in lines] == ["bad \udfff answer", "fine"]


@pytest.mark.parametrize(
    ("exc", "status", "headers"),
    [
        (ProviderError("rate limited", status=429, retry_after=7), 503, {"Retry-After": "7"}),
        (ProviderError("rate limited", status=429, retry_after=0.2), 503, {"Retry-After": "1"}),
        (ProviderError("rate limited", status=429), 503, {"Retry-After": "5"}),
        (ProviderError("rate limited", status=429, retry_after=math.inf), 503, {"Retry-After": "5"}),
        (ProviderError("HTTP 400", status=400), 502, {}),
        (ProviderError("no answer"), 502, {}),
        (BudgetExceededError("not run: --max-cost reached"), 402, {}),
        (InputError("bad row"), 422, {}),
        (PayloadTooLarge("too big"), 413, {}),
        (UnknownChainError("nope", ["story"]), 404, {}),
        (PromptSpecError("p.yaml", "messages", "empty"), 500, {}),
        (OutputParserException("not JSON"), 502, {}),
    ],
)
def test_each_failure_has_its_http_status_and_headers(exc: BaseException, status: int, headers: dict[str, str]) -> None:
    answer = http_answer(exc)
    assert (answer.status, answer.headers, answer.explained) == (status, headers, True)


def test_a_failure_nobody_foresaw_is_a_500_whose_message_is_not_for_the_client() -> None:
    class ParserSubclass(OutputParserException):
        pass

    assert http_answer(ParserSubclass("odd")).status == 502  # a parser's own subclass is still a bad answer
    for exc in (Refused("internal detail"), KeyError("x"), RuntimeError()):
        answer = http_answer(exc)
        assert (answer.status, answer.headers, answer.explained) == (500, {}, False)


@settings(max_examples=200, deadline=None)
@given(st.none() | st.floats(allow_nan=True, allow_infinity=True))
def test_a_429_is_a_503_with_a_whole_retry_after_whatever_the_wait(wait: float | None) -> None:
    answer = http_answer(ProviderError("rate limited", status=429, retry_after=wait))
    assert answer.status == 503 and answer.headers["Retry-After"].isdigit()
    assert int(answer.headers["Retry-After"]) >= 1


def _literal_values(annotation: Any) -> set[str]:
    assert get_origin(annotation) is Literal, annotation
    return set(get_args(annotation))


def test_item_statuses_and_stream_event_kinds_are_typed() -> None:
    assert _literal_values(get_type_hints(ItemMetrics)["status"]) == {"ok", "failed", "cancelled", "not_run", "skipped"}
    assert _literal_values(get_type_hints(StreamEvent)["kind"]) == {"token", "discard", "end", "error"}
