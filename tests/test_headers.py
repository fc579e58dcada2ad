"""The parsers of server-sent waits and the failure classifier: fast unit and property tests.

Header values and error bodies are outside data: whatever they hold, parsing returns a finite
wait (or no advice) and classifying returns a ``Failure``; neither ever raises.
"""

from __future__ import annotations

import math
import time
from typing import Any

import pytest
from fakes import StatusError
from hypothesis import given, settings
from hypothesis import strategies as st

from chains.engine.headers import DEFAULT_RETRY_AFTER_CAP, header_seconds, parse_reset, parse_retry_after
from chains.engine.ratelimit import RateLimiter
from chains.engine.retry import BackoffWait, classify

HEADER_TEXT = st.one_of(
    st.text(max_size=80),
    st.from_regex(r"-?[0-9]{0,400}(\.[0-9]*)?(e[+-]?[0-9]{1,4})?(ms|s|m|h)?", fullmatch=True),
    st.sampled_from(["inf", "-inf", "nan", "1e309", "soon", "1.5s", "", " ", "6m0s", "86400s", "0.5s", "20ms"]),
    st.builds(
        lambda d, y: f"{d}, 21 Oct {y} 07:28:00 GMT",
        st.sampled_from(["Wed", "Mon", "Xyz", ""]),
        st.integers(-1, 10**6),
    ),
)
HEADER_NAMES = st.sampled_from(
    [
        "retry-after",
        "retry-after-ms",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-requests",
        "x-ratelimit-reset-tokens",
    ]
)
HEADERS = st.dictionaries(HEADER_NAMES, HEADER_TEXT, max_size=6)


def _finite_wait(value: float | None, cap: float = math.inf) -> bool:
    return value is None or (math.isfinite(value) and 0.0 <= value <= cap)


@settings(max_examples=400, deadline=None)
@given(HEADER_TEXT)
def test_header_seconds_is_a_finite_non_negative_number_or_nothing(text: str) -> None:
    assert _finite_wait(header_seconds(text))


@settings(max_examples=400, deadline=None)
@given(HEADERS)
def test_retry_after_never_raises_and_is_finite(headers: dict[str, str]) -> None:
    started = time.perf_counter()
    assert _finite_wait(parse_retry_after(headers))
    assert time.perf_counter() - started < 2  # microseconds; the bound catches a blow-up, not a slow machine


@settings(max_examples=400, deadline=None)
@given(HEADER_TEXT)
def test_a_ratelimit_reset_is_capped(text: str) -> None:
    assert _finite_wait(parse_reset(text), DEFAULT_RETRY_AFTER_CAP)


@settings(max_examples=300, deadline=None)
@given(HEADERS)
def test_rate_limit_headers_can_pause_the_run_for_a_minute_at_most(headers: dict[str, str]) -> None:
    now = [1000.0]
    limiter = RateLimiter(rpm=100, clock=lambda: now[0])
    limiter.observe_headers(headers, next_tokens=10)
    assert 0.0 <= max(0.0, limiter.blocked_until - now[0]) <= DEFAULT_RETRY_AFTER_CAP


@settings(max_examples=300, deadline=None)
@given(st.integers(100, 599), HEADERS)
def test_classify_turns_any_status_and_headers_into_a_failure(status: int, headers: dict[str, str]) -> None:
    failure = classify(StatusError(status, headers))
    assert failure.status == status
    assert _finite_wait(failure.retry_after)
    assert _finite_wait(BackoffWait()(_state_for(StatusError(status, headers))))


def _state_for(exc: BaseException, attempt: int = 1) -> Any:
    class Outcome:
        def exception(self) -> BaseException:
            return exc

    class State:
        attempt_number = attempt
        outcome = Outcome()

    return State()


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "2"}, 2.0),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "soon", "retry-after": "3"}, 3.0),
        ({"retry-after": "soon"}, None),
        ({"retry-after": "1.5s"}, None),
        ({"retry-after": ""}, None),
        ({"retry-after": "inf"}, None),
        ({"retry-after": "-4"}, 0.0),
        ({"retry-after": "Wed, 21 Oct 99999 07:28:00 GMT"}, None),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),
    ],
)
def test_retry_after_values(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(headers) == expected


def test_an_http_date_in_the_future_is_the_time_until_then() -> None:
    now = 1_700_000_000.0
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now + 30))
    assert parse_retry_after({"retry-after": date}, now=now) == pytest.approx(30.0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1s", 1.0), ("6m0s", 60.0), ("20ms", 0.02), ("0.5s", 0.5), ("86400s", 60.0), ("7", 7.0), ("soon", None)],
)
def test_ratelimit_reset_values(text: str, expected: float | None) -> None:
    assert parse_reset(text) == expected


def test_a_reset_of_a_day_pauses_new_requests_for_the_cap_only() -> None:
    now = [50.0]
    limiter = RateLimiter(rpm=10, clock=lambda: now[0])
    limiter.observe_headers({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "86400s"})
    assert limiter.blocked_until - now[0] == DEFAULT_RETRY_AFTER_CAP


@pytest.mark.parametrize("attempt", [1, 2, 3, 6, 40, 10_000])
def test_backoff_has_a_floor_of_three_quarters_of_its_step(attempt: int) -> None:
    wait = BackoffWait(base=0.5, cap=30.0)
    step = min(30.0, 0.5 * 2 ** (attempt - 1)) if attempt < 64 else 30.0
    delays = [wait.delay(attempt) for _ in range(200)]
    assert min(delays) >= 0.75 * step
    assert max(delays) <= step


@pytest.mark.parametrize(
    ("status", "body", "retryable"),
    [
        (429, None, True),
        (503, None, True),
        (500, {"error": {"message": "boom", "type": "server_error"}}, True),
        (
            500,
            {"error": {"message": "1 validation error:\n  {'type': 'literal_error'}", "type": "internal_server_error"}},
            False,
        ),
        (500, {"error": {"message": "bad", "type": "invalid_request_error"}}, False),
        (400, {"error": {"message": "too long", "code": "context_length_exceeded"}}, False),
        (401, None, False),
        (404, None, False),
    ],
)
def test_classify_by_status_and_body(status: int, body: dict[str, Any] | None, retryable: bool) -> None:
    exc = StatusError(status)
    exc.body = body  # type: ignore[attr-defined]
    assert classify(exc).retryable is retryable


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        ({"message": "Overloaded", "type": "server_error"}, True),
        ({"message": "try again", "type": None}, True),
        ({"message": "Unsupported parameter", "type": "invalid_request_error"}, False),
    ],
)
def test_an_error_object_in_a_successful_answer_is_a_provider_failure(error: dict[str, Any], retryable: bool) -> None:
    failure = classify(ValueError(error))  # what langchain-openai raises for a 200 whose body is an error
    assert failure.provider and failure.retryable is retryable
    assert failure.detail == error["message"]


def test_an_exception_that_breaks_when_inspected_is_still_classified() -> None:
    class Hostile(Exception):
        @property
        def status_code(self) -> int:
            raise RuntimeError("no")

    failure = classify(Hostile("x"))
    assert not failure.retryable and not failure.provider
