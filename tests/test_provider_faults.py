"""The unusual provider failures: each one used to stop, stall or mislead a whole run.

End to end through ``ChatOpenAI`` against the fault-injecting server on 127.0.0.1 (see
tests/test_resilience.py for the ``echo`` chain and the helpers): every input ends with
exactly one record, transient faults end in success, final ones fail at once with a message
that says what happened, and every run ends in bounded time.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, runner_env
from fault_server import FaultServer
from test_resilience import CHUNKS, STREAM_MODES, answer, describe, echo_library, echo_session, run_texts

from chains.engine.execution import run_batch
from chains.engine.retry import BackoffWait
from chains.providers.models import ModelSession
from chains.settings import RunSettings
from chains.spec.registry import get_chain

# ----------------------------------------------------------------------------- odd waits


@pytest.mark.parametrize("stream", STREAM_MODES)
@pytest.mark.parametrize("value", ["soon", "1.5s", "", "inf", "-3", "Wed, 21 Oct 99999 07:28:00 GMT"])
async def test_a_retry_after_that_is_neither_seconds_nor_a_date_is_no_advice(
    fault_server: FaultServer, stream: bool, value: str
) -> None:
    fault_server.configure(chunks=CHUNKS)
    fault_server.add_fault("429", match="odd wait", times=1, headers={"retry-after": value})
    async with echo_session(fault_server, stream=stream, max_retries=2) as (session, chain):
        started = time.monotonic()
        records, _ = await run_texts(session, chain, ["odd wait", "plain"])

    assert records["odd wait"].output == answer("odd wait"), describe(records["odd wait"])
    assert records["odd wait"].metrics.retries == 1
    assert records["plain"].output == answer("plain")
    assert time.monotonic() - started < 5, "an unparsable Retry-After must not be waited on"


# ----------------------------------------------------------------------------- answers that never end


@pytest.mark.parametrize("stream", STREAM_MODES)
async def test_an_answer_that_keeps_trickling_is_cut_at_the_timeout_and_retried(
    fault_server: FaultServer, stream: bool
) -> None:
    """--timeout bounds an attempt as a whole: bytes that keep coming never reset it."""
    fault_server.configure(chunks=CHUNKS)
    fault_server.add_fault("endless", match="loops once", times=1, stall_s=30)
    async with echo_session(fault_server, stream=stream, timeout=1.0, max_retries=1) as (session, chain):
        started = time.monotonic()
        records, _ = await run_texts(session, chain, ["loops once", "quick"])
        wall = time.monotonic() - started

    assert records["loops once"].output == answer("loops once"), describe(records["loops once"])
    assert records["loops once"].metrics.retries == 1
    assert records["quick"].output == answer("quick")
    assert wall < 10, f"the endless answer held the run for {wall:.1f}s"


@pytest.mark.parametrize("stream", STREAM_MODES)
async def test_an_answer_that_never_ends_fails_its_input_after_the_last_attempt(
    fault_server: FaultServer, stream: bool
) -> None:
    fault_server.configure(chunks=CHUNKS)
    fault_server.add_fault("endless", match="loops forever", stall_s=30)
    async with echo_session(fault_server, stream=stream, timeout=0.5, max_retries=1) as (session, chain):
        started = time.monotonic()
        records, summary = await run_texts(session, chain, ["loops forever", "quick"])
        wall = time.monotonic() - started

    record = records["loops forever"]
    assert record.error is not None and record.error["attempts"] == 2, describe(record)
    assert "timed out" in record.error["message"] and "--timeout" in record.error["message"]
    assert fault_server.requests_for("loops forever") == 2
    assert summary["ok"] == 1 and summary["failed"] == 1
    assert wall < 10


# ----------------------------------------------------------------------------- answers that are not answers


@pytest.mark.parametrize("stream", STREAM_MODES)
async def test_a_200_with_no_choices_is_a_transient_provider_fault(fault_server: FaultServer, stream: bool) -> None:
    fault_server.configure(chunks=CHUNKS)
    fault_server.add_fault("empty_choices", match="empty once", times=1)
    fault_server.add_fault("empty_choices", match="always empty")
    async with echo_session(fault_server, stream=stream, max_retries=2) as (session, chain):
        records, _ = await run_texts(session, chain, ["empty once", "always empty"])

    assert records["empty once"].output == answer("empty once"), describe(records["empty once"])
    error = records["always empty"].error
    assert error is not None and error["type"] == "ProviderError" and error["attempts"] == 3, error
    assert "IndexError" not in error["message"]
    assert "no answer" in error["message"] or "broken stream" in error["message"], error


@pytest.mark.parametrize("stream", STREAM_MODES)
async def test_a_200_whose_body_is_an_error_is_retried_when_the_body_says_it_is_transient(
    fault_server: FaultServer, stream: bool
) -> None:
    fault_server.configure(chunks=CHUNKS)
    fault_server.add_fault("error_body", match="hiccup", times=1, error_type="server_error", message="Overloaded.")
    fault_server.add_fault(
        "error_body", match="refused", error_type="invalid_request_error", message="Unsupported parameter: 'seed'."
    )
    async with echo_session(fault_server, stream=stream, max_retries=2) as (session, chain):
        records, _ = await run_texts(session, chain, ["hiccup", "refused"])

    assert records["hiccup"].output == answer("hiccup"), describe(records["hiccup"])
    error = records["refused"].error
    assert error is not None and error["type"] == "ProviderError", describe(records["refused"])
    assert fault_server.requests_for("refused") == 1, "an error the body calls final must not be retried"
    assert "Unsupported parameter: 'seed'." in error["message"]
    assert "{'" not in error["message"], f"the message is a Python dict's repr: {error['message']}"


@pytest.mark.parametrize("stream", STREAM_MODES)
async def test_a_500_saying_the_request_is_invalid_is_not_retried(fault_server: FaultServer, stream: bool) -> None:
    """llama.cpp answers an unsupported response_format with a 500: retrying can never help."""
    fault_server.configure(chunks=CHUNKS)
    fault_server.add_fault("validation_500", match="json please")
    async with echo_session(fault_server, stream=stream, max_retries=5) as (session, chain):
        records, _ = await run_texts(session, chain, ["json please"])

    error = records["json please"].error
    assert error is not None and error["status"] == 500, describe(records["json please"])
    assert fault_server.requests_for("json please") == 1
    assert "try again later" not in error["message"]
    assert "response_format" in error["message"], error["message"]


# ----------------------------------------------------------------------------- misleading messages


async def test_a_refused_connection_is_reported_as_one_not_as_a_timeout() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = RunSettings(model="openai:m", base_url=f"http://127.0.0.1:{port}/v1", max_retries=1, timeout=5)
    async with ModelSession(settings) as session:
        session.model.wait = BackoffWait(base=0.01, cap=0.02)
        chain = get_chain("echo", session.model, library=echo_library(Path.cwd()))
        [record] = [r async for r in run_batch(chain, [{"text": "x"}], settings=settings, limits=session.limits)]

    assert record.error is not None
    message = record.error["message"]
    assert "refused" in message and "--base-url" in message, message
    assert "timed out" not in message and "raise --timeout" not in message, message


def test_a_key_echoed_in_a_401_is_never_written_in_clear(fault_server: FaultServer, tmp_path: Path) -> None:
    key = "-".join(["sk", "test", "0123456789abcdef", "NOTAREALKEY"])  # built here: no key-shaped literal in the repo
    fault_server.add_fault("401")
    (tmp_path / "topics.txt").write_text("a kite\nan owl\n", encoding="utf-8")
    args = ["story", "--topics", "topics.txt", "--output", "out.jsonl", "--max-retries", "0"]
    result = subprocess.run(
        [sys.executable, str(ROOT / "runner.py"), *args, "--base-url", fault_server.base_url, "--model", "openai:m"],
        env=runner_env(OPENAI_API_KEY=key),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    records = (tmp_path / "out.jsonl").read_text(encoding="utf-8")
    assert [json.loads(line)["error"]["status"] for line in records.splitlines()] == [401, 401]
    assert "[redacted]" in records
    assert key not in records and key not in result.stderr and key not in result.stdout


# ----------------------------------------------------------------------------- backoff floor


async def test_a_retry_never_races_its_failed_attempt(fault_server: FaultServer) -> None:
    """The retry starts no sooner than 75 % of the backoff step after the failed attempt."""
    fault_server.configure(chunks=CHUNKS)
    fault_server.add_fault("503", match="busy", times=1)
    async with echo_session(fault_server, stream=False) as (session, chain):
        session.model.wait = BackoffWait(base=0.2, cap=1.0)
        records, _ = await run_texts(session, chain, ["busy"])

    assert records["busy"].ok
    first, second = [entry for entry in fault_server.stats()["log"] if entry["key"] == "busy"]
    gap = second["t"] - (first["t"] + first["duration"])
    assert gap >= 0.15 * 0.99, f"retried {gap * 1000:.1f} ms after the failed attempt ended"


# ----------------------------------------------------------------------------- the deadline itself


async def test_the_attempt_deadline_holds_when_the_code_under_it_swallows_a_cancellation() -> None:
    """Python 3.11's asyncio.wait_for (used by langchain-openai per stream chunk) can absorb a
    cancellation; ``asyncio.timeout`` would then let the attempt run on until the server stops."""
    import asyncio

    from chains.engine.deadline import AttemptTimeout, within

    stopped = asyncio.Event()

    async def stubborn() -> str:
        try:
            for _ in range(3):  # absorbs the first two cancellations, as a racing wait_for does
                try:
                    await asyncio.sleep(30)
                except asyncio.CancelledError:
                    continue
            return "never"
        finally:
            stopped.set()

    started = time.monotonic()
    with pytest.raises(AttemptTimeout):
        await within(0.2, stubborn())
    assert stopped.is_set(), "the attempt must have stopped before the deadline's error is raised"
    assert time.monotonic() - started < 1.0
