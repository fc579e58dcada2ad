"""The CLI and the library against a real OpenAI-compatible server running a real model.

The server is llama.cpp (llama-cpp-python) serving the 260K-parameter
``stories260K`` model (the ``llama_server`` session fixture).  Every test talks
to it through a ``RecordingProxy``, so the records are checked against what
the server actually sent: its usage numbers for non-streamed answers, and the
text of every streamed delta.  llama.cpp's server sends no usage when
streaming (whatever ``stream_options`` asks), so streamed records must carry
estimated counts that say so.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, runner_env
from llama_server import MODEL_ALIAS, Exchange, RecordingProxy

from chains import ModelSession, PromptLibrary, RunSettings, get_chain, run_batch, stream_one

pytestmark = pytest.mark.slow

MODEL = f"openai:{MODEL_ALIAS}"
TOPICS = [
    "a lighthouse keeper who is afraid of the dark",
    "a dragon who collects teacups",
    "a robot learning to paint",
]
TEXTS = [
    "Tom had a red ball. He played with it in the park every day. One day the ball rolled into the pond, "
    "and a duck pushed it back to him.",
    "Lily found a little bird in the garden. It could not fly. She gave it water and seeds, and after three "
    "days it flew up into the tree and sang.",
]
TALE = """\
name: tale
description: Continue a bedtime story from its first words.
input_variables: [opening]
messages:
  - role: human
    content: "{opening}"
model:
  temperature: 0.7
  max_tokens: 60
"""
OPENINGS = ["Once upon a time there was a little fox", "One day Ben saw a big red boat", "Sue and her cat"]


@pytest.fixture
def wire(llama_server: str) -> Iterator[RecordingProxy]:
    """The llama.cpp server behind a proxy that keeps every exchange of this test."""
    with RecordingProxy(llama_server) as proxy:
        yield proxy


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "runner.py"), *args],
        capture_output=True,
        text=True,
        env=runner_env(),
        timeout=timeout,
    )


def run_on_server(wire: RecordingProxy, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI against the llama server (through the recording proxy), records in out.jsonl."""
    return run_cli(*args, "--base-url", wire.base_url, "--model", MODEL, "--output", "out.jsonl")


def read_records(path: Path) -> list[dict[str, Any]]:
    return sorted(
        (json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()), key=lambda r: r["index"]
    )


def settings(base_url: str, **values: Any) -> RunSettings:
    return RunSettings(model=MODEL, base_url=base_url, max_concurrency=2, **values)


def story_steps(wire: RecordingProxy, topic: str) -> tuple[Exchange, Exchange]:
    """The outline request and the story request of one topic."""
    exchanges = wire.about(f"about: {topic}") + wire.about(f"Topic: {topic}")
    outline = [e for e in exchanges if "Write an outline" in e.prompt_text()]
    story = [e for e in exchanges if "Outline:" in e.prompt_text()]
    assert len(outline) == 1 and len(story) == 1, [e.prompt_text()[:80] for e in exchanges]
    return outline[0], story[0]


def server_usage(exchanges: list[Exchange]) -> tuple[int, int]:
    """Input and output tokens as the server reported them, summed over the exchanges."""
    usages = [e.usage for e in exchanges]
    assert all(u is not None for u in usages), "a non-streamed answer came without usage"
    return (
        sum(int(u["prompt_tokens"]) for u in usages if u),
        sum(int(u["completion_tokens"]) for u in usages if u),
    )


def assert_streamed_without_usage(exchange: Exchange) -> None:
    """A clean stream from llama.cpp: deltas, a finish reason, [DONE], and no usage chunk."""
    assert exchange.status == 200 and exchange.streamed
    assert exchange.request.get("stream_options") == {"include_usage": True}
    assert exchange.done and exchange.finish_reason is not None
    assert exchange.usage is None, "llama.cpp now reports usage when streaming: compare it instead of estimates"


def assert_estimated(metrics: dict[str, Any], calls: int) -> None:
    assert metrics["tokens_estimated"] is True
    assert metrics["input_tokens"] > 0 and metrics["output_tokens"] > 0
    assert metrics["model_calls"] == calls and metrics["retries"] == 0


# --- the CLI ---------------------------------------------------------------------------


def test_story_cli_streams_every_topic_concurrently(wire: RecordingProxy, tmp_path: Path) -> None:
    (tmp_path / "topics.txt").write_text("\n".join([TOPICS[0], "# skipped", "", *TOPICS[1:]]) + "\n")
    result = run_on_server(
        wire, "story", "--topics", "topics.txt", "--max-concurrency", "2", "--stream", "--metrics-out", "summary.json"
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    records = read_records(tmp_path / "out.jsonl")
    assert [r["input"]["topic"] for r in records] == TOPICS
    assert wire.max_in_flight == 2  # two inputs at once, and never more
    for record in records:
        assert record["error"] is None
        assert record["output"].strip(), f"empty story for {record['input']['topic']!r}"
        outline, story = story_steps(wire, record["input"]["topic"])
        assert_streamed_without_usage(outline)
        assert_streamed_without_usage(story)
        # The story step's streamed deltas are exactly the record's output.
        assert story.text == record["output"]
        assert record["metrics"]["ttft_s"] is not None
        assert_estimated(record["metrics"], calls=2)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["ok"] == 3 and summary["failed"] == 0
    assert summary["tokens_estimated"] is True
    assert "(estimated)" in result.stderr  # the summary table says so too


def test_story_cli_live_tokens_are_the_story(wire: RecordingProxy, tmp_path: Path) -> None:
    (tmp_path / "topics.txt").write_text(TOPICS[1] + "\n")
    result = run_on_server(wire, "story", "--topics", "topics.txt", "--stream")
    assert result.returncode == 0, result.stderr
    [record] = read_records(tmp_path / "out.jsonl")
    outline, story = story_steps(wire, TOPICS[1])
    assert outline.text.strip()  # the outline was generated, and streamed, but is not shown
    assert record["output"].strip()
    assert result.stdout == record["output"] + "\n" == story.text + "\n"


def test_story_cli_usage_equals_the_servers_numbers(wire: RecordingProxy, tmp_path: Path) -> None:
    (tmp_path / "topics.txt").write_text("\n".join(TOPICS) + "\n")
    result = run_on_server(
        wire,
        "story",
        "--topics",
        "topics.txt",
        "--max-concurrency",
        "2",
        "--no-stream",
        "--metrics-out",
        "summary.json",
    )
    assert result.returncode == 0, result.stderr
    records = read_records(tmp_path / "out.jsonl")
    assert len(records) == 3 and len(wire.chat()) == 6
    for record in records:
        assert record["error"] is None and record["output"].strip()
        outline, story = story_steps(wire, record["input"]["topic"])
        assert not outline.streamed and not story.streamed
        assert story.text == record["output"]
        metrics = record["metrics"]
        assert metrics["tokens_estimated"] is False
        assert (metrics["input_tokens"], metrics["output_tokens"]) == server_usage([outline, story])
        assert metrics["model_calls"] == 2
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["input_tokens"], summary["output_tokens"]) == server_usage(wire.chat())
    assert summary["tokens_estimated"] is False


def test_summarize_cli_usage_equals_the_servers_numbers(wire: RecordingProxy, tmp_path: Path) -> None:
    (tmp_path / "texts.jsonl").write_text("".join(json.dumps({"text": t, "sentences": 2}) + "\n" for t in TEXTS))
    result = run_on_server(wire, "run", "summarize", "--input", "texts.jsonl", "--max-concurrency", "2", "--no-stream")
    assert result.returncode == 0, result.stderr
    records = read_records(tmp_path / "out.jsonl")
    assert [r["input"]["text"] for r in records] == TEXTS
    for record in records:
        [exchange] = wire.about(record["input"]["text"])
        assert record["error"] is None and record["output"].strip()
        assert record["output"] == exchange.text
        assert record["metrics"]["tokens_estimated"] is False
        assert (record["metrics"]["input_tokens"], record["metrics"]["output_tokens"]) == server_usage([exchange])


def test_prompt_only_chain_from_a_prompts_dir_streams(wire: RecordingProxy, tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "tale.yaml").write_text(TALE)
    (tmp_path / "openings.txt").write_text("\n".join(OPENINGS) + "\n")
    result = run_on_server(
        wire, "run", "tale", "--prompts-dir", "mine", "--input", "openings.txt", "--max-concurrency", "2", "--stream"
    )
    assert result.returncode == 0, result.stderr
    records = read_records(tmp_path / "out.jsonl")
    assert [r["input"]["opening"] for r in records] == OPENINGS
    for record in records:
        [exchange] = wire.about(record["input"]["opening"])
        # Only the user's message goes to the model: no system prompt was added.
        assert exchange.request["messages"] == [{"role": "user", "content": record["input"]["opening"]}]
        assert_streamed_without_usage(exchange)
        assert record["error"] is None and record["output"].strip()
        assert record["output"] == exchange.text
        assert_estimated(record["metrics"], calls=1)


def test_max_tokens_is_respected(wire: RecordingProxy, tmp_path: Path) -> None:
    (tmp_path / "topics.txt").write_text("\n".join(TOPICS[:2]) + "\n")
    result = run_on_server(
        wire, "story", "--topics", "topics.txt", "--max-concurrency", "2", "--no-stream", "--max-tokens", "5"
    )
    assert result.returncode == 0, result.stderr
    exchanges = wire.chat()
    assert len(exchanges) == 4
    for exchange in exchanges:
        sent = exchange.request.get("max_tokens", exchange.request.get("max_completion_tokens"))
        assert sent == 5, exchange.request
    for record in read_records(tmp_path / "out.jsonl"):
        assert record["error"] is None
        outline, story = story_steps(wire, record["input"]["topic"])
        usage = server_usage([outline, story])
        assert record["metrics"]["output_tokens"] == usage[1]
        assert outline.usage["completion_tokens"] <= 5, outline.usage  # type: ignore[index]
        assert story.usage["completion_tokens"] <= 5, story.usage  # type: ignore[index]


# --- the library -------------------------------------------------------------------------


async def test_stream_one_summary_tokens_equal_the_record(wire: RecordingProxy) -> None:
    async with ModelSession(settings(wire.base_url, stream=True)) as session:
        chain = get_chain("summarize", session.model)
        kinds: list[str] = []
        tokens: list[str] = []
        record = None
        async for event in stream_one(chain, {"text": TEXTS[0]}, settings=session.settings, limits=session.limits):
            kinds.append(event.kind)
            if event.kind == "token":
                tokens.append(event.text)
            elif event.kind == "end":
                record = event.record
    assert record is not None and record.ok, record
    assert set(kinds) == {"token", "end"}  # no discarded attempts
    [exchange] = wire.chat()
    assert_streamed_without_usage(exchange)
    assert record.output.strip()
    assert "".join(tokens) == record.output == exchange.text
    assert record.metrics.ttft_s is not None
    assert_estimated(record.metrics.to_dict(), calls=1)


async def test_stream_one_story_shows_only_the_story_step(wire: RecordingProxy) -> None:
    topic = TOPICS[2]
    async with ModelSession(settings(wire.base_url, stream=True)) as session:
        chain = get_chain("story", session.model)
        tokens: list[str] = []
        record = None
        async for event in stream_one(chain, {"topic": topic}, settings=session.settings, limits=session.limits):
            assert event.kind in ("token", "end"), event
            if event.kind == "token":
                tokens.append(event.text)
            else:
                record = event.record
    assert record is not None and record.ok, record
    outline, story = story_steps(wire, topic)
    assert_streamed_without_usage(outline)
    assert_streamed_without_usage(story)
    assert outline.text.strip()  # generated and streamed, but tagged intermediate: not shown
    story_deltas = [c for e in story.events for c in [(e["choices"][0].get("delta") or {}).get("content")] if c]
    assert tokens == story_deltas
    assert "".join(tokens) == record.output == story.text
    assert_estimated(record.metrics.to_dict(), calls=2)


async def test_run_batch_prompt_only_chain_usage_equals_the_servers(wire: RecordingProxy, tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "tale.yaml").write_text(TALE)
    library = PromptLibrary([tmp_path / "mine"])
    async with ModelSession(settings(wire.base_url)) as session:
        chain = get_chain("tale", session.model, library=library)
        batch = run_batch(chain, [{"opening": o} for o in OPENINGS], settings=session.settings, limits=session.limits)
        records = sorted([r async for r in batch], key=lambda r: r.index)
    assert [r.input["opening"] for r in records] == OPENINGS
    assert wire.max_in_flight == 2
    for record in records:
        assert record.ok and record.output.strip(), record
        [exchange] = wire.about(record.input["opening"])
        assert not exchange.streamed and exchange.text == record.output
        assert record.metrics.tokens_estimated is False
        assert (record.metrics.input_tokens, record.metrics.output_tokens) == server_usage([exchange])
    summary = batch.summary.to_dict()
    assert summary["ok"] == 3 and (summary["input_tokens"], summary["output_tokens"]) == server_usage(wire.chat())


def test_a_json_chain_on_llama_cpp_fails_at_once_without_retries(wire: RecordingProxy, tmp_path: Path) -> None:
    """llama.cpp answers response_format json_schema with a 500 that is a validation error: retrying
    it can never help, so each input fails after one request with a message that says why."""
    (tmp_path / "texts.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    result = run_on_server(wire, "run", "keywords", "--input", "texts.jsonl", "--max-retries", "5")
    assert result.returncode == 1, result.stderr
    records = read_records(tmp_path / "out.jsonl")
    assert len(records) == len(TEXTS)
    for record in records:
        error = record["error"]
        assert error is not None and error["status"] == 500 and error["attempts"] == 1, error
        assert "response_format" in error["message"] and "try again later" not in error["message"], error
    assert len(wire.chat()) == len(TEXTS), "a request the server calls invalid was retried"
