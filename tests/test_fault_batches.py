"""Tests for the fault server's Files + Batches API (tests/fault_batches.py), driven by the real OpenAI client.

Real HTTP on 127.0.0.1 only. The shapes asserted here are OpenAI's: the SDK's own types (``Batch``,
``FileObject``) and, for what the SDK does not type (input / output / error lines, validation errors),
what the real API answers (see the module docstring of fault_batches).
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Final

import httpx
import openai
import pytest
from fault_batches import BATCH_DEFAULTS, BatchRule, upload_format_error, validate_lines
from fault_server import FaultServer, fault_server_fixture
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types import Batch, FileObject

MODEL = "fake-model"
CHAT: Final = "/v1/chat/completions"
FAST = {"validating_s": 0.02, "in_progress_s": 0.04, "finalizing_s": 0.02, "cancelling_s": 0.02}


@pytest.fixture
def server() -> Iterator[FaultServer]:
    for started in fault_server_fixture():
        started.configure_batches(**FAST)
        yield started


@pytest.fixture
async def client(server: FaultServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=server.base_url, api_key="test", max_retries=0) as c:
        yield c


def row(custom_id: str, text: str, **body: Any) -> dict[str, Any]:
    """One batch input line, as the OpenAI docs write it."""
    request = {
        "model": MODEL,
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}],
    }
    return {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": {**request, **body}}


def jsonl(*lines: Any) -> bytes:
    return b"".join((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines)


async def upload(client: openai.AsyncOpenAI, data: bytes, name: str = "input.jsonl") -> FileObject:
    return await client.files.create(file=(name, data), purpose="batch")


async def submit(client: openai.AsyncOpenAI, *lines: Any, **kw: Any) -> Batch:
    file = await upload(client, jsonl(*lines))
    return await client.batches.create(input_file_id=file.id, endpoint=CHAT, completion_window="24h", **kw)


async def wait_for(client: openai.AsyncOpenAI, batch_id: str, *statuses: str, timeout: float = 5.0) -> Batch:
    deadline = time.monotonic() + timeout
    while True:
        batch = await client.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        if time.monotonic() > deadline:
            raise AssertionError(f"batch {batch_id} still {batch.status}, waited for {statuses}")
        await asyncio.sleep(0.01)


async def lines_of(client: openai.AsyncOpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    content = await client.files.content(file_id)
    return [json.loads(line) for line in content.content.decode().splitlines()]


def by_id(lines: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {line["custom_id"]: line for line in lines}


# ----------------------------------------------------------------------------- files


async def test_file_upload_retrieve_content_delete(client: openai.AsyncOpenAI, server: FaultServer) -> None:
    data = jsonl(row("a", "hello"), row("b", "world"))
    raw = await client.files.with_raw_response.create(file=("in.jsonl", data), purpose="batch")
    assert set(FileObject.model_fields) <= set(raw.http_response.json())  # every field the SDK knows
    file = raw.parse()
    assert file.id.startswith("file-") and file.object == "file" and file.status == "processed"
    assert (file.bytes, file.filename, file.purpose) == (len(data), "in.jsonl", "batch")
    assert abs(file.created_at - time.time()) < 5
    assert await client.files.retrieve(file.id) == file
    assert (await client.files.content(file.id)).content == data
    assert [f.id for f in (await client.files.list()).data] == [file.id]
    deleted = await client.files.delete(file.id)
    assert (deleted.id, deleted.deleted, deleted.object) == (file.id, True, "file")
    with pytest.raises(openai.NotFoundError) as exc:
        await client.files.retrieve(file.id)
    assert exc.value.body == {
        "message": f"No such File object: {file.id}",
        "type": "invalid_request_error",
        "param": "id",
        "code": None,
    }
    with pytest.raises(openai.NotFoundError):
        await client.files.content(file.id)
    assert server.stats()["batches"]["files"] == [
        {"id": file.id, "filename": "in.jsonl", "purpose": "batch", "bytes": len(data), "rows": 2, "deleted": True}
    ]


async def test_upload_refuses_what_openai_refuses(client: openai.AsyncOpenAI, server: FaultServer) -> None:
    server.configure_batches(max_bytes=300)
    cases = {
        b"": "Invalid file format for Batch API. Must be .jsonl",
        b"{not json\n" + jsonl(row("a", "x")): "Invalid file format for Batch API. Must be .jsonl",
        b"[1, 2]\n": "Invalid file format for Batch API. Must be .jsonl",
        jsonl(*(row(str(i), "x" * 50) for i in range(3))): "File is too large.",
    }
    for data, message in cases.items():
        with pytest.raises(openai.BadRequestError) as exc:
            await upload(client, data)
        assert exc.value.status_code == 400 and exc.value.body["message"] == message, data  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as exc:
        await client.files.create(file=("in.jsonl", b"{}"), purpose="nonsense")  # type: ignore[arg-type]
    assert exc.value.body["param"] == "purpose"  # type: ignore[index]
    assert server.stats()["batches"]["files"] == []
    # other purposes are stored as they are: only batch files are read
    other = await client.files.create(file=("notes.txt", b"not jsonl"), purpose="user_data")
    assert other.purpose == "user_data"


async def test_upload_bad_multipart_is_a_400_never_a_500(server: FaultServer) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, verify=False) as http:
        assert (await http.post("/files", data={"purpose": "batch"})).status_code == 400  # no file
        r = await http.post("/files", files={"file": ("a.jsonl", jsonl(row("a", "x")))})  # no purpose
        assert r.status_code == 400 and r.json()["error"]["message"] == "Missing required parameter: 'purpose'."
        assert (await http.post("/files", content=b"junk")).status_code == 400  # not multipart
        bad = {"content-type": "multipart/form-data; boundary=xyz"}
        for body in (b"--xyz\r\nno headers end", b"--abc\r\n\r\n", b"--xyz\r\nContent-Disposition: x\r\n\r\n--xyz--"):
            assert (await http.post("/files", content=body, headers=bad)).status_code == 400, body
        server.configure_batches(max_bytes=1000)  # a big upload is refused without being held in memory
        r = await http.post("/files", data={"purpose": "batch"}, files={"file": ("a.jsonl", b"x" * 5_000_000)})
        assert r.status_code == 400 and r.json()["error"]["message"] == "File is too large."


# ----------------------------------------------------------------------------- a batch that completes


async def test_batch_runs_through_its_statuses_and_answers_like_chat(
    client: openai.AsyncOpenAI, server: FaultServer
) -> None:
    server.configure_batches(in_progress_s=0.3)  # long enough to be seen on a busy machine
    lines = [row("r1", "one fish"), row("r2", "two fish", max_tokens=3), row("r3", "red fish")]
    created = await submit(client, *lines, metadata={"run": "test"})
    assert (created.status, created.endpoint, created.completion_window) == ("validating", CHAT, "24h")
    assert created.id.startswith("batch_") and created.metadata == {"run": "test"}
    assert created.request_counts is not None and created.request_counts.total == 0
    assert created.expires_at == created.created_at + 24 * 3600
    assert created.in_progress_at is None and created.output_file_id is None

    seen = {created.status}
    deadline = time.monotonic() + 5
    while (batch := await client.batches.retrieve(created.id)).status != "completed":
        seen.add(batch.status)
        assert time.monotonic() < deadline
        await asyncio.sleep(0.005)
    assert {"validating", "in_progress"} <= seen and seen <= {"validating", "in_progress", "finalizing"}
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (3, 3, 0)
    assert batch.created_at <= batch.in_progress_at <= batch.finalizing_at <= batch.completed_at  # type: ignore[operator]
    assert (batch.failed_at, batch.expired_at, batch.cancelling_at, batch.cancelled_at) == (None, None, None, None)
    assert batch.error_file_id is None and batch.errors is None and batch.model == MODEL

    output = await lines_of(client, batch.output_file_id)
    assert [line["custom_id"] for line in output] == ["r1", "r2", "r3"]
    # each row is answered exactly as POST /v1/chat/completions answers that body
    for line, request in zip(output, lines, strict=True):
        assert line["id"].startswith("batch_req_") and line["error"] is None
        assert line["response"]["status_code"] == 200 and line["response"]["request_id"].startswith("req_")
        online = (await client.chat.completions.with_raw_response.create(**request["body"])).http_response.json()
        answer = line["response"]["body"]
        for field in ("object", "model", "choices", "usage", "service_tier"):
            assert answer[field] == online[field], field
    assert output[0]["response"]["body"]["choices"][0]["message"]["content"] == "echo: one fish t1 t2 t3 t4 t5 t6 t7"
    assert output[1]["response"]["body"]["choices"][0]["finish_reason"] == "length"
    assert batch.usage is not None and batch.usage.input_tokens == 3 * 4  # "be brief" + two words, per row
    assert batch.usage.output_tokens == 8 + 3 + 8 and batch.usage.total_tokens == 12 + 19
    output_file = await client.files.retrieve(batch.output_file_id)  # type: ignore[arg-type]
    assert (output_file.purpose, output_file.filename) == ("batch_output", f"{batch.id}_output.jsonl")
    # batch rows are counted apart from online requests
    assert server.requests_for("one fish") == 1
    assert server.stats()["batches"]["rows_per_key"] == {"one fish": 1, "two fish": 1, "red fish": 1}


async def test_batch_object_has_every_field_of_the_sdk_type(client: openai.AsyncOpenAI) -> None:
    batch = await submit(client, row("a", "x"))
    for status in ("validating", "completed"):
        await wait_for(client, batch.id, status)
        raw = (await client.batches.with_raw_response.retrieve(batch.id)).http_response.json()
        assert set(Batch.model_fields) <= set(raw), set(Batch.model_fields) - set(raw)
        assert set(raw["request_counts"]) == {"total", "completed", "failed"}


async def test_list_batches_newest_first_with_cursor(client: openai.AsyncOpenAI) -> None:
    ids = [(await submit(client, row("a", f"n{i}"))).id for i in range(3)]
    first = (await client.batches.with_raw_response.list(limit=2)).http_response.json()
    assert [b["id"] for b in first["data"]] == [ids[2], ids[1]]
    assert (first["object"], first["first_id"], first["last_id"], first["has_more"]) == ("list", ids[2], ids[1], True)
    rest = (await client.batches.with_raw_response.list(limit=2, after=ids[1])).http_response.json()
    assert [b["id"] for b in rest["data"]] == [ids[0]] and rest["has_more"] is False
    assert [b.id async for b in client.batches.list(limit=2)] == ids[::-1]  # the SDK's own paging
    with pytest.raises(openai.BadRequestError):
        await client.batches.list(limit=0)


async def test_create_refuses_bad_parameters_with_400(client: openai.AsyncOpenAI, server: FaultServer) -> None:
    file = await upload(client, jsonl(row("a", "x")))
    bad: list[tuple[dict[str, Any], str]] = [
        ({"endpoint": "/v1/embeddings"}, "endpoint"),
        ({"completion_window": "1h"}, "completion_window"),
        ({"metadata": {"tags": ["a", "b"]}}, "metadata.tags"),
    ]
    for change, param in bad:
        kw: Any = {"input_file_id": file.id, "endpoint": CHAT, "completion_window": "24h", **change}
        with pytest.raises(openai.BadRequestError) as exc:
            await client.batches.create(**kw)
        assert exc.value.body["param"] == param  # type: ignore[index]
    async with httpx.AsyncClient(base_url=server.base_url, verify=False) as http:
        r = await http.post("/batches", json={"endpoint": CHAT, "completion_window": "24h"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "missing_required_parameter"
        assert (await http.post("/batches", content=b"[" * 100_000)).status_code == 400
    with pytest.raises(openai.NotFoundError):
        await client.batches.retrieve("batch_nope")
    with pytest.raises(openai.NotFoundError):
        await client.batches.cancel("batch_nope")
    assert server.stats()["batches"]["created"] == []


# ----------------------------------------------------------------------------- validation (a batch that fails)


async def test_bad_lines_fail_the_batch_at_validation(client: openai.AsyncOpenAI, server: FaultServer) -> None:
    no_method = row("m", "x")
    del no_method["method"]
    lines: list[Any] = [
        row("ok", "fine"),
        b"{not json",
        no_method,
        row("ok", "again"),
        row("s", "x", stream=True),
        {**row("u", "x"), "url": "/v1/embeddings"},
        row("d", "x", model="other-model"),
    ]
    batch = await submit(client, *lines)
    failed = await wait_for(client, batch.id, "failed", "completed")
    assert failed.status == "failed" and failed.failed_at is not None and failed.in_progress_at is None
    assert failed.errors is not None and failed.errors.object == "list"
    got = [(e.code, e.line, e.param) for e in failed.errors.data or []]
    assert got == [
        ("invalid_json_line", 2, None),
        ("missing_required_parameter", 3, "method"),
        ("duplicate_custom_id", 4, "custom_id"),
        ("streaming_unsupported", 5, "body.stream"),
        ("invalid_url", 6, "url"),
        ("model_mismatch", 7, "body.model"),
    ]
    assert failed.errors.data[0].message == "This line is not parseable as valid JSON."  # type: ignore[index]
    assert failed.output_file_id is None and failed.error_file_id is None
    assert server.stats()["batches"]["rows"] == 0  # nothing was answered


async def test_too_many_lines_and_missing_file_fail_the_batch(client: openai.AsyncOpenAI, server: FaultServer) -> None:
    server.configure_batches(max_lines=3)
    batch = await submit(client, *(row(str(i), "x") for i in range(4)))
    failed = await wait_for(client, batch.id, "failed", "completed")
    assert failed.errors is not None and [e.code for e in failed.errors.data or []] == ["too_many_tasks"]
    ok = await submit(client, *(row(str(i), "x") for i in range(3)))
    assert (await wait_for(client, ok.id, "failed", "completed")).status == "completed"

    missing = await client.batches.create(input_file_id="file-nope", endpoint=CHAT, completion_window="24h")
    failed = await wait_for(client, missing.id, "failed", "completed")
    assert failed.errors is not None and failed.errors.data is not None
    assert (failed.errors.data[0].code, failed.errors.data[0].param) == ("invalid_request", "file_id")


# ----------------------------------------------------------------------------- rows that error


async def test_online_fault_rules_answer_batch_rows_too(client: openai.AsyncOpenAI, server: FaultServer) -> None:
    server.add_fault("500", match="boom")
    server.add_fault("429", match="busy", times=1)
    server.add_fault("empty_choices", match="hollow")
    batch = await submit(
        client, row("a", "fine"), row("b", "boom"), row("c", "busy"), row("d", "busy"), row("e", "hollow")
    )
    done = await wait_for(client, batch.id, "completed")
    assert done.request_counts is not None and (done.request_counts.completed, done.request_counts.failed) == (3, 2)
    errors = by_id(await lines_of(client, done.error_file_id))
    assert sorted(errors) == ["b", "c"]
    assert errors["b"]["response"]["status_code"] == 500 and errors["b"]["error"] is None
    assert errors["b"]["response"]["body"]["error"]["type"] == "server_error"
    assert errors["c"]["response"]["status_code"] == 429
    assert errors["c"]["response"]["body"]["error"]["code"] == "rate_limit_exceeded"
    output = by_id(await lines_of(client, done.output_file_id))
    assert sorted(output) == ["a", "d", "e"]  # the 429 fired once; a 200 without choices is still a 200
    assert output["e"]["response"]["body"]["choices"] == []
    assert server.requests_for("boom") == 0 and server.stats()["requests"] == 0  # no online request was made
    assert server.stats()["batches"]["row_status_counts"] == {"200": 3, "500": 1, "429": 1}


async def test_row_error_fault(client: openai.AsyncOpenAI, server: FaultServer) -> None:
    server.add_batch_fault("row_error", match="bad", status=400, message="Bad row (injected).")
    batch = await submit(client, row("a", "good"), row("b", "bad one"))
    done = await wait_for(client, batch.id, "completed")
    (error,) = await lines_of(client, done.error_file_id)
    assert error["custom_id"] == "b" and error["response"]["status_code"] == 400
    assert error["response"]["body"]["error"] == {
        "message": "Bad row (injected).",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
    assert [line["custom_id"] for line in await lines_of(client, done.output_file_id)] == ["a"]
    with pytest.raises(ValueError, match="status"):
        server.add_batch_fault("row_error", status=418)


async def test_row_expire_fault_ends_the_batch_expired(client: openai.AsyncOpenAI, server: FaultServer) -> None:
    server.add_batch_fault("row_expire", match="late")
    batch = await submit(client, row("a", "early"), row("b", "late"), row("c", "late too"), row("d", "early"))
    done = await wait_for(client, batch.id, "expired", "completed")
    assert done.status == "expired" and done.expired_at is not None and done.completed_at is None
    assert done.request_counts is not None and (done.request_counts.completed, done.request_counts.failed) == (2, 2)
    errors = by_id(await lines_of(client, done.error_file_id))
    assert sorted(errors) == ["b", "c"]
    assert errors["b"]["response"] is None
    assert errors["b"]["error"] == {
        "code": "batch_expired",
        "message": "This request could not be executed before the completion window expired.",
    }
    assert sorted(by_id(await lines_of(client, done.output_file_id))) == ["a", "d"]
    assert server.batches.answers() == {"a": 1, "d": 1}  # expired rows were never answered


async def test_validation_failed_fault(client: openai.AsyncOpenAI, server: FaultServer) -> None:
    server.add_batch_fault(
        "validation_failed",
        match="cursed",
        times=1,
        code="token_limit_exceeded",
        message="Enqueued token limit reached.",
    )
    batch = await submit(client, row("a", "fine"), row("b", "cursed"))
    failed = await wait_for(client, batch.id, "failed", "completed")
    assert failed.status == "failed" and failed.errors is not None and failed.errors.data is not None
    error = failed.errors.data[0]
    assert (error.code, error.message, error.line) == ("token_limit_exceeded", "Enqueued token limit reached.", 2)
    again = await submit(client, row("a", "fine"), row("b", "cursed"))
    assert (await wait_for(client, again.id, "failed", "completed")).status == "completed"  # times=1
    assert server.batch_submissions() == {"a": 2, "b": 2}
    assert server.batches.answers() == {"a": 1, "b": 1}


# ----------------------------------------------------------------------------- stall, slow finalizing, cancel


async def test_stall_holds_the_batch_in_progress_until_released(
    client: openai.AsyncOpenAI, server: FaultServer
) -> None:
    server.add_batch_fault("stall", after_rows=2)
    batch = await submit(client, *(row(str(i), f"s{i}") for i in range(5)))
    await wait_for(client, batch.id, "in_progress")
    counts: list[int] = []
    deadline = time.monotonic() + 5
    while not counts or counts[-1] < 2:
        held = await client.batches.retrieve(batch.id)
        assert held.request_counts is not None and held.request_counts.total == 5
        counts.append(held.request_counts.completed)
        assert time.monotonic() < deadline
        await asyncio.sleep(0.005)
    assert counts == sorted(counts)  # request_counts only grow
    await asyncio.sleep(0.2)
    held = await client.batches.retrieve(batch.id)
    assert held.status == "in_progress" and held.request_counts is not None and held.request_counts.completed == 2
    assert server.release_batches() == 1
    done = await wait_for(client, batch.id, "completed")
    assert done.request_counts is not None and done.request_counts.completed == 5
    # a stall with a time limit ends by itself
    server.batches.clear_faults()
    server.add_batch_fault("stall", stall_s=0.1)
    timed = await submit(client, row("a", "x"))
    t0 = time.monotonic()
    await wait_for(client, timed.id, "completed")
    assert time.monotonic() - t0 >= 0.1


async def test_slow_finalizing(client: openai.AsyncOpenAI, server: FaultServer) -> None:
    server.add_batch_fault("slow_finalizing", seconds=0.3)
    batch = await submit(client, row("a", "x"))
    finalizing = await wait_for(client, batch.id, "finalizing", "completed")
    assert finalizing.status == "finalizing" and finalizing.finalizing_at is not None
    assert finalizing.completed_at is None and finalizing.output_file_id is None
    t0 = time.monotonic()
    done = await wait_for(client, batch.id, "completed")
    assert time.monotonic() - t0 >= 0.2 and done.output_file_id is not None


async def test_cancel_keeps_the_rows_already_answered(client: openai.AsyncOpenAI, server: FaultServer) -> None:
    server.configure_batches(cancelling_s=0.1)
    server.add_batch_fault("stall", after_rows=2)
    batch = await submit(client, *(row(str(i), f"c{i}") for i in range(4)))
    deadline = time.monotonic() + 5
    while (held := await client.batches.retrieve(batch.id)).request_counts.completed < 2:  # type: ignore[union-attr]
        assert time.monotonic() < deadline
        await asyncio.sleep(0.005)
    cancelling = await client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    assert (await client.batches.cancel(batch.id)).status in ("cancelling", "cancelled")  # again: no 409
    cancelled = await wait_for(client, batch.id, "cancelled")
    assert cancelled.cancelled_at is not None and cancelled.completed_at is None
    assert [line["custom_id"] for line in await lines_of(client, cancelled.output_file_id)] == ["0", "1"]
    assert held.request_counts is not None and held.request_counts.completed == 2
    assert server.batches.answers() == {"0": 1, "1": 1}
    server.batches.clear_faults()
    done = await submit(client, row("a", "x"))
    await wait_for(client, done.id, "completed")
    with pytest.raises(openai.ConflictError) as exc:  # a finished batch cannot be cancelled
        await client.batches.cancel(done.id)
    assert exc.value.body["message"] == "Cannot cancel a batch with status 'completed'."  # type: ignore[index]


async def test_cancel_while_validating(client: openai.AsyncOpenAI, server: FaultServer) -> None:
    server.configure_batches(validating_s=5.0)
    batch = await submit(client, row("a", "x"))
    assert (await client.batches.cancel(batch.id)).status == "cancelling"
    cancelled = await wait_for(client, batch.id, "cancelled", timeout=2)
    assert cancelled.output_file_id is None and cancelled.in_progress_at is None
    assert server.batches.answers() == {}


# ----------------------------------------------------------------------------- bookkeeping and control API


async def test_bookkeeping_and_reset(client: openai.AsyncOpenAI, server: FaultServer) -> None:
    first = await submit(client, row("a", "x"), row("b", "y"))
    second = await submit(client, row("a", "x"))
    first = await wait_for(client, first.id, "completed")
    second = await wait_for(client, second.id, "completed")
    assert server.batch_submissions() == {"a": 2, "b": 1}
    books = server.stats()["batches"]
    assert [b["id"] for b in books["created"]] == [first.id, second.id]
    assert books["created"][0]["status"] == "completed" and books["created"][0]["rows"] == 2
    uploads = [f for f in books["files"] if f["purpose"] == "batch"]
    assert [(f["id"], f["rows"]) for f in uploads] == [(first.input_file_id, 2), (second.input_file_id, 1)]
    outputs = [f for f in books["files"] if f["purpose"] == "batch_output"]
    assert {f["id"] for f in outputs} == {first.output_file_id, second.output_file_id}
    async with httpx.AsyncClient(base_url=server.root_url, verify=False) as http:
        stats = (await http.get("/_control/stats", params={"log": "0"})).json()
        assert stats["batches"]["submissions"] == {"a": 2, "b": 1} and stats["batches"]["rows"] == 3
        assert (await http.post("/_control/reset")).status_code == 200
    server.reset_stats()
    books = server.stats()["batches"]
    assert (books["submissions"], books["created"], books["files"], books["rows"]) == ({}, [], [], 0)
    assert (await client.batches.retrieve(first.id)).status == "completed"  # stats reset keeps the objects
    server.reset()
    with pytest.raises(openai.NotFoundError):  # a full reset drops them
        await client.batches.retrieve(first.id)
    assert server.batches.settings == BATCH_DEFAULTS


async def test_batch_faults_and_settings_through_the_control_api(
    client: openai.AsyncOpenAI, server: FaultServer
) -> None:
    async with httpx.AsyncClient(base_url=server.root_url, verify=False) as http:
        r = await http.post("/_control/batch_faults", json={"fault": "row_error", "match": "x", "status": 503})
        assert r.status_code == 200 and r.json()["faults"][0]["fault"] == "row_error"
        assert (await http.post("/_control/batch_faults", json={"fault": "nope"})).status_code == 400
        assert (await http.post("/_control/batch_faults", json={"fault": "stall", "bogus": 1})).status_code == 400
        assert (await http.post("/_control/batch_faults", content=b"{")).status_code == 400
        r = await http.post("/_control/batch_configure", json={"finalizing_s": 0.01})
        assert r.json()["settings"]["finalizing_s"] == 0.01
        assert (await http.post("/_control/batch_configure", json={"max_lines": 0})).status_code == 400
        assert (await http.post("/_control/batch_configure", json={"nope": 1})).status_code == 400
        batch = await submit(client, row("a", "x marks"))
        done = await wait_for(client, batch.id, "completed")
        (error,) = await lines_of(client, done.error_file_id)
        assert error["response"]["status_code"] == 503
        assert (await http.get("/_control/batch_faults")).json()["faults"][0]["applied"] == 1
        server.add_batch_fault("stall")
        stalled = await submit(client, row("b", "y"))
        await wait_for(client, stalled.id, "in_progress")
        assert (await http.post("/_control/batch_release")).json() == {"released": 1}
        await wait_for(client, stalled.id, "completed")
        assert (await http.delete("/_control/batch_faults")).json() == {"faults": []}


def test_standalone_process_serves_batches() -> None:
    script = Path(__file__).with_name("fault_server.py")
    cmd = [sys.executable, str(script), "--host", "127.0.0.1", "--port", "0"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            base_url = proc.stdout.readline().strip().split(" ", 1)[1]
            with openai.OpenAI(base_url=base_url, api_key="t") as sync:
                file = sync.files.create(file=("in.jsonl", jsonl(row("a", "proc"))), purpose="batch")
                batch = sync.batches.create(input_file_id=file.id, endpoint=CHAT, completion_window="24h")
                deadline = time.monotonic() + 5
                while (batch := sync.batches.retrieve(batch.id)).status != "completed":
                    assert time.monotonic() < deadline, batch.status
                    time.sleep(0.01)
                (line,) = sync.files.content(batch.output_file_id).content.decode().splitlines()  # type: ignore[arg-type]
                assert json.loads(line)["response"]["body"]["choices"][0]["message"]["content"].startswith("echo: proc")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


# ----------------------------------------------------------------------------- the parsers, by property


def test_batch_rule_refuses_unknown_keys_and_kinds() -> None:
    with pytest.raises(ValueError, match="unknown batch fault kind"):
        BatchRule.from_dict({"fault": "500"})
    with pytest.raises(ValueError, match="unknown batch fault rule key"):
        BatchRule.from_dict({"fault": "stall", "stall": 1})
    with pytest.raises(ValueError):
        BatchRule.from_dict(["stall"])
    with pytest.raises(ValueError):
        BatchRule.from_dict({"fault": "stall", "times": -1})


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_line = st.one_of(
    st.builds(lambda cid, text: json.dumps(row(cid, text)).encode(), st.text(max_size=4), st.text(max_size=8)),
    st.builds(lambda obj: json.dumps(obj).encode(), _json),
    st.builds(lambda obj: json.dumps({**row("x", "y"), "body": obj}).encode(), _json),
    st.binary(max_size=40),
    st.integers(1, 50_000).map(lambda depth: b"[" * depth),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_line, max_size=12), st.integers(1, 20), st.integers(1, 5))
def test_validate_lines_never_raises_and_is_bounded(lines: list[bytes], max_lines: int, max_errors: int) -> None:
    data = b"\n".join(lines)
    t0 = time.monotonic()
    result = validate_lines(data, CHAT, max_lines=max_lines, max_errors=max_errors)
    assert time.monotonic() - t0 < 1.0
    assert len(result.errors) <= max_errors
    for error in result.errors:
        assert isinstance(error["code"], str) and isinstance(error["message"], str)
        assert error["line"] is None or 1 <= error["line"] <= data.count(b"\n") + 1
    if not result.errors:
        assert 1 <= len(result.rows) <= max_lines
        assert len({r.custom_id for r in result.rows}) == len(result.rows)
        assert all(isinstance(r.body.get("messages"), list) for r in result.rows)
    upload_format_error(data)  # never raises either


@settings(max_examples=200, deadline=None)
@given(_json)
def test_any_json_row_body_gets_an_answer_or_a_validation_error(body: Any) -> None:
    line = json.dumps({**row("x", "y"), "body": body}).encode()
    result = validate_lines(line, CHAT, max_lines=10)
    assert bool(result.errors) != bool(result.rows)
    if result.rows:  # a valid body is answered like a chat request, whatever else it holds
        status, answer = asyncio.run(FaultServer().batches.answer(result.rows[0]))
        assert status == 200 and answer["object"] == "chat.completion"
        assert answer["choices"][0]["message"]["content"].startswith("echo: ")


_part = st.builds(
    lambda headers, payload: b"--b\r\n" + headers + b"\r\n\r\n" + payload + b"\r\n--b--\r\n",
    st.sampled_from(
        [
            b'Content-Disposition: form-data; name="file"; filename="a"',
            b'Content-Disposition: form-data; name="purpose"',
            b"X: y",
            b"",
        ]
    )
    | st.binary(max_size=60),
    st.binary(max_size=60) | st.just(b"batch"),
)
_content_type = st.sampled_from(
    [
        "multipart/form-data; boundary=b",
        "multipart/form-data",
        "multipart/mixed; boundary=b",
        "text/plain",
        "",
        "multipart/form-data; boundary=" + "b" * 80,
        'multipart/form-data; boundary="b"; charset=nope',
    ]
)


def test_no_body_makes_the_upload_or_create_answer_anything_but_200_or_400() -> None:
    for server in fault_server_fixture():
        server.configure_batches(validating_s=60.0)  # the batches created here need not run
        with httpx.Client(base_url=server.base_url, verify=False) as http:

            @settings(max_examples=80, deadline=None)
            @given(_part | st.binary(max_size=200), _content_type)
            def upload_body(body: bytes, content_type: str) -> None:
                r = http.post("/files", content=body, headers={"content-type": content_type})
                assert r.status_code in (200, 400), (r.status_code, r.text)
                assert "error" in r.json() or r.json()["object"] == "file"

            @settings(max_examples=80, deadline=None)
            @given(
                _json
                | st.dictionaries(
                    st.sampled_from(["input_file_id", "endpoint", "completion_window", "metadata"]), _json
                )
            )
            def create_body(body: Any) -> None:
                r = http.post("/batches", content=json.dumps(body).encode())  # Infinity and NaN too
                assert r.status_code in (200, 400), (r.status_code, r.text)

            upload_body()
            create_body()
