"""Schema repair: a JSON answer that breaks its schema is asked again with the validator's words — through the real
``ChatOpenAI`` against the fault server (its ``reply`` fault answers a given text word for word)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from uuid import uuid4

import pytest
from conftest import cli, records
from fault_server import FaultServer
from langchain_core.outputs import LLMResult

from chains.engine.callbacks import DISCARD_EVENT, live_token_handler

BAD = json.dumps({"keywords": ["sun"], "sentiment": "happy"})
GOOD = json.dumps({"keywords": ["sun"], "sentiment": "positive"})


@pytest.fixture
def texts(tmp_path: Path) -> Path:
    (tmp_path / "in.txt").write_text("a sunny day at the sea\n")
    return tmp_path


def _keywords(server: FaultServer, *extra: str) -> list[str]:
    return [
        "run", "keywords", "--input", "in.txt", "--model", "openai:test-model", "--base-url", server.base_url,
        "--output", "out.jsonl", "--metrics-out", "m.json", "--no-stream", "-q", *extra,
    ]  # fmt: skip


def _asked(server: FaultServer) -> list[str]:
    """The last user message of each request the server saw."""
    return [entry["key"] for entry in server.stats()["log"]]


def test_an_answer_that_breaks_the_schema_is_repaired_in_the_same_conversation(
    texts: Path, fault_server: FaultServer
) -> None:
    fault_server.add_fault("reply", match="sunny", times=1, message=BAD)
    fault_server.add_fault("reply", message=GOOD)
    run = cli(*_keywords(fault_server), cwd=texts)
    assert run.returncode == 0, run.stderr
    [record] = records(texts / "out.jsonl")
    assert record["output"] == json.loads(GOOD)
    assert record["metrics"]["repairs"] == 1 and record["metrics"]["model_calls"] == 2
    asked = _asked(fault_server)
    assert len(asked) == 2 and "sunny" in asked[0]
    assert "$.sentiment" in asked[1] and "'happy' is not one of" in asked[1] and "matching the schema" in asked[1]
    summary = json.loads((texts / "m.json").read_text())
    assert summary["repairs"] == 1 and summary["input_tokens"] == record["metrics"]["input_tokens"]


def test_after_the_last_repair_the_input_fails_with_the_validators_words_and_its_raw_answer(
    texts: Path, fault_server: FaultServer
) -> None:
    fault_server.add_fault("reply", message=BAD)
    run = cli(*_keywords(fault_server), cwd=texts)
    assert run.returncode == 1
    [record] = records(texts / "out.jsonl")
    assert "'happy' is not one of" in record["error"]["message"] and "after 2 repairs" in record["error"]["message"]
    assert record["error"]["raw"] == BAD
    assert record["metrics"]["repairs"] == 2 and len(_asked(fault_server)) == 3


@pytest.mark.parametrize(("flag", "requests"), [(["--repair-attempts", "0"], 1), (["--repair-attempts", "1"], 2)])
def test_repair_attempts_are_the_runs_to_choose(
    texts: Path, fault_server: FaultServer, flag: list[str], requests: int
) -> None:
    fault_server.add_fault("reply", message="not json at all")
    run = cli(*_keywords(fault_server, *flag), cwd=texts)
    assert run.returncode == 1
    assert len(_asked(fault_server)) == requests
    assert "not valid JSON" in records(texts / "out.jsonl")[0]["error"]["message"]


def test_a_prompt_file_sets_its_own_repair_attempts(texts: Path, fault_server: FaultServer) -> None:
    prompts = texts / "prompts"
    prompts.mkdir()
    spec = (Path(__file__).resolve().parent.parent / "prompts" / "keywords.yaml").read_text()
    (prompts / "keywords3.yaml").write_text(
        spec.replace("name: keywords", "name: keywords3").replace(
            "  kind: json\n", "  kind: json\n  repair_attempts: 3\n"
        )
    )
    fault_server.add_fault("reply", message=BAD)
    args = _keywords(fault_server, "--prompts-dir", str(prompts))
    args[1] = "keywords3"
    run = cli(*args, cwd=texts)
    assert run.returncode == 1 and len(_asked(fault_server)) == 4


def test_a_streamed_answer_is_repaired_too(texts: Path, fault_server: FaultServer) -> None:
    fault_server.add_fault("reply", match="sunny", times=1, message=BAD)
    fault_server.add_fault("reply", message=GOOD)
    args = [a for a in _keywords(fault_server) if a != "--no-stream"]
    run = cli(*args, "--stream", cwd=texts)
    assert run.returncode == 0, run.stderr
    assert records(texts / "out.jsonl")[0]["output"] == json.loads(GOOD)
    assert all(entry["stream"] for entry in fault_server.stats()["log"])


def test_in_the_batch_tier_a_repair_is_a_request_of_a_later_batch(texts: Path, fault_server: FaultServer) -> None:
    fault_server.configure_batches(validating_s=0.02, in_progress_s=0.05, finalizing_s=0.02)
    fault_server.add_fault("reply", match="sunny", times=1, message=BAD)
    fault_server.add_fault("reply", message=GOOD)
    run = cli(*_keywords(fault_server, "--tier", "batch", "--batch-poll", "0.05"), cwd=texts)
    assert run.returncode == 0, run.stderr
    [record] = records(texts / "out.jsonl")
    assert record["output"] == json.loads(GOOD) and record["metrics"]["repairs"] == 1
    assert [b["rows"] for b in fault_server.stats()["batches"]["created"]] == [1, 1]
    assert fault_server.stats()["requests"] == 0


async def test_a_streamed_answer_refused_by_the_schema_is_reported_discarded_to_stream_consumers(
    fault_server: FaultServer,
) -> None:
    """stream_one (and the server's SSE) showed the refused answer's tokens live: a ``discard`` event takes them
    back before the repaired answer's tokens, as for a failed attempt."""
    from chains import ModelSession, RunSettings, get_chain, stream_one

    fault_server.add_fault("reply", match="sunny", times=1, message=BAD)
    fault_server.add_fault("reply", message=GOOD)
    settings = RunSettings(model="openai:test-model", base_url=fault_server.base_url, stream=True)
    async with ModelSession(settings) as session:
        chain = get_chain("keywords", session.model)
        events = [event async for event in stream_one(chain, {"text": "a sunny day"}, settings=settings)]
    kinds = [event.kind for event in events]
    assert kinds.count("discard") == 1 and kinds[-1] == "end", (kinds, events[-1].record)
    cut = kinds.index("discard")
    before = "".join(e.text for e in events[:cut] if e.kind == "token")
    after = "".join(e.text for e in events[cut + 1 :] if e.kind == "token")
    assert before == BAD and events[cut].text == BAD and after == GOOD
    assert events[-1].record is not None and events[-1].record.output == json.loads(GOOD)


async def test_a_refused_answer_that_was_not_shown_announces_no_discard() -> None:
    """Nothing was shown, so nothing is taken back: the live handler only reports text it printed."""
    out, err = io.StringIO(), io.StringIO()
    handler = live_token_handler(out, err)
    await handler.on_custom_event(DISCARD_EVENT, {"text": BAD}, run_id=uuid4())
    assert out.getvalue() == "" and err.getvalue() == ""
    shown = uuid4()
    await handler.on_llm_new_token(BAD, run_id=shown)
    await handler.on_llm_end(LLMResult(generations=[]), run_id=shown)
    await handler.on_custom_event(DISCARD_EVENT, {"text": BAD}, run_id=uuid4())
    assert out.getvalue() == BAD + "\n" and "the text above is discarded" in err.getvalue()


async def test_a_json_step_in_the_middle_of_a_chain_is_repaired_before_the_next_step_runs(
    fault_server: FaultServer,
) -> None:
    """keywords (JSON, repaired) → a text step written from its parsed output: the next step sees the valid value."""
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.runnables import RunnableLambda, RunnablePassthrough

    from chains import ModelSession, RunSettings, run_batch
    from chains.spec.definitions import compile_spec
    from chains.spec.prompts_library import default_library

    fault_server.add_fault("reply", match="sunny", times=1, message=BAD)
    fault_server.add_fault("reply", match="answer was not accepted", message=GOOD)
    settings = RunSettings(model="openai:test-model", base_url=fault_server.base_url)
    async with ModelSession(settings) as session:
        keywords = compile_spec(default_library().spec("keywords"), session.model)
        write = ChatPromptTemplate.from_messages([("human", "Write a line with mood {mood}.")])
        mood = RunnableLambda(lambda value: {"mood": value["kw"]["sentiment"]})
        chain = RunnablePassthrough.assign(kw=keywords) | mood | write | session.model | StrOutputParser()
        [record] = [r async for r in run_batch(chain, [{"text": "a sunny day"}], settings=settings)]
    assert record.error is None, record.error
    assert record.output.startswith("echo: Write a line with mood positive.")
    assert record.metrics.repairs == 1 and record.metrics.model_calls == 3
    asked = _asked(fault_server)
    assert len(asked) == 3 and "'happy' is not one of" in asked[1] and "mood positive" in asked[2]
