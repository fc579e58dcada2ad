"""The CLI end to end: commands, outputs, and one clear line for every kind of bad input."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, runner_env

import runner

TOPICS = "a lighthouse keeper\n# a comment\n\na dragon who collects teacups\na robot learning to paint\n"


def run_cli(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "runner.py"), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env or runner_env(),
        timeout=120,
    )


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_story_over_a_topics_file_end_to_end(tmp_path: Path) -> None:
    (tmp_path / "topics.txt").write_text(TOPICS)
    result = run_cli("story", "--topics", "topics.txt", "--output", "out.jsonl", "--metrics-out", "m.json")
    assert result.returncode == 0, result.stderr
    assert "offline 'fake' model" in result.stderr
    assert "run summary" in result.stderr and "items ok / failed" in result.stderr
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert sorted(r["index"] for r in records) == [0, 1, 2]
    assert {r["input"]["topic"] for r in records} == {
        "a lighthouse keeper",
        "a dragon who collects teacups",
        "a robot learning to paint",
    }
    for record in records:
        assert set(record) == {"index", "input", "output", "error", "metrics", "key"}
        assert record["error"] is None and len(record["output"]) > 50
        assert record["metrics"]["output_tokens"] > 0 and record["metrics"]["latency_s"] > 0
    summary = json.loads((tmp_path / "m.json").read_text())
    assert summary["ok"] == 3 and summary["failed"] == 0
    assert summary["output_tokens"] == sum(r["metrics"]["output_tokens"] for r in records)


def test_outputs_go_to_stdout_labelled_by_input(tmp_path: Path) -> None:
    (tmp_path / "topics.txt").write_text(TOPICS)
    result = run_cli("story", "--topics", "topics.txt", "-q")
    assert result.returncode == 0
    assert result.stderr == ""
    assert result.stdout.count("── [") == 3
    assert "a dragon who collects teacups" in result.stdout


def test_one_topic_from_stdin_streams_live(tmp_path: Path) -> None:
    result = run_cli(
        "story", "--topics", "-", "--stream", "--fake-delay", "0.001", "--output", "o.jsonl", stdin="a brave snail\n"
    )
    assert result.returncode == 0, result.stderr
    [record] = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert record["metrics"]["ttft_s"] is not None
    assert record["output"] in result.stdout


def test_run_with_jsonl_csv_and_plain_lines(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_text(
        '{"text": "hello world", "language": "French"}\n{"text": "good night", "language": "German"}\n'
    )
    (tmp_path / "in.csv").write_text("text,language\nhello,Spanish\n")
    (tmp_path / "in.txt").write_text("first text\nsecond text\n")
    for args in (
        ("translate", "--input", "in.jsonl"),
        ("translate", "--input", "in.csv"),
        ("summarize", "--input", "in.txt"),
    ):
        assert runner.main(["run", *args, "-q", "--output", "out.jsonl", "--overwrite"]) == 0
        records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
        assert records and all(r["error"] is None for r in records)


def test_json_output_chain_from_a_prompt_file(tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("I loved the sunny beach\n")
    assert runner.main(["run", "keywords", "--input", "in.txt", "-q", "--output", "k.jsonl"]) == 0
    [record] = [json.loads(line) for line in (tmp_path / "k.jsonl").read_text().splitlines()]
    assert set(record["output"]) == {"keywords", "sentiment"}
    assert record["output"]["sentiment"] in {"positive", "neutral", "negative"}


def test_list_and_show(capsys: pytest.CaptureFixture[str]) -> None:
    assert runner.main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("story", "summarize", "translate", "keywords", "story_outline"):
        assert name in out
    assert runner.main(["show", "story"]) == 0
    out = capsys.readouterr().out
    assert "prompts/story_outline.yaml" in out and "{topic}" in out and "inputs:   topic" in out


def test_a_prompt_dropped_in_a_directory_becomes_a_chain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "haiku.yaml").write_text(
        "name: haiku\ndescription: A haiku.\ninput_variables: [topic]\n"
        "messages:\n  - role: human\n    content: 'Write a haiku about {topic}'\n"
    )
    (tmp_path / "t.txt").write_text("autumn\n")
    assert runner.main(["list", "--prompts-dir", str(mine)]) == 0
    assert "haiku" in capsys.readouterr().out
    assert (
        runner.main(["run", "haiku", "--input", "t.txt", "--prompts-dir", str(mine), "-q", "--output", "h.jsonl"]) == 0
    )
    assert json.loads((tmp_path / "h.jsonl").read_text())["output"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("args", "files", "expected"),
    [
        (["story", "--topics", "missing.txt"], {}, "--topics missing.txt: no such file"),
        (["story", "--topics", "empty.txt"], {"empty.txt": "\n# only a comment\n"}, "no topics found"),
        (["run", "nope", "--input", "x.txt"], {"x.txt": "a\n"}, "unknown chain 'nope'; known chains: keywords, story"),
        (["story", "--topics", "t.txt", "--model", "gpt4"], {"t.txt": "a\n"}, "--model 'gpt4' is not PROVIDER:MODEL"),
        (["story", "--topics", "t.txt", "--max-concurrency", "0"], {"t.txt": "a\n"}, "must be at least 1"),
        (["run", "translate", "--input", "t.csv"], {"t.csv": "text,lang\nhi,fr\n"}, "add a column named 'language'"),
        (["run", "translate", "--input", "t.txt"], {"t.txt": "hi\n"}, "plain lines only fit a chain with one input"),
        (
            ["run", "bad", "--input", "t.txt", "--prompts-dir", "p"],
            {
                "t.txt": "hi\n",
                "p/bad.yaml": "name: bad\ndescription: d\ninput_variables: [topic]\nmessages:\n  - role: human\n    content: 'about {topik}'\n",
            },
            "p/bad.yaml: messages[0]: uses {topik} but input_variables has 'topic'",
        ),
        (["story", "--topics", "t.txt", "--model", "openai:gpt-4o-mini"], {"t.txt": "a\n"}, "needs OPENAI_API_KEY"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], files: dict[str, str], expected: str
) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert runner.main(args) == 2
    line = one_error_line(capsys.readouterr().err)
    assert expected in line


def test_unreachable_base_url_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("a\n")
    url = f"http://127.0.0.1:{_free_port()}/v1"
    result = run_cli("story", "--topics", "t.txt", "--base-url", url, "--model", "openai:m", "-q")
    assert result.returncode == 2
    line = one_error_line(result.stderr)
    assert f"cannot reach --base-url {url}" in line and "start the server or fix the URL" in line


def test_rows_missing_a_variable_fail_alone_with_exit_1(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_text('{"text": "hi", "language": "French"}\n{"text": "no language"}\nnot json\n')
    assert runner.main(["run", "translate", "--input", "in.jsonl", "-q", "--output", "o.jsonl"]) == 1
    records = {r["index"]: r for r in map(json.loads, (tmp_path / "o.jsonl").read_text().splitlines())}
    assert records[0]["error"] is None
    assert "in.jsonl line 2: missing 'language'" in records[1]["error"]["message"]
    assert "in.jsonl line 3: not valid JSON" in records[2]["error"]["message"]


def test_verbose_shows_the_traceback(tmp_path: Path) -> None:
    result = run_cli("story", "--topics", "missing.txt", "-v")
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "UsageError" in result.stderr


def test_help_everywhere() -> None:
    for args in ([], ["story"], ["run"], ["list"], ["show"]):
        result = run_cli(*args, "--help")
        assert result.returncode == 0 and "usage:" in result.stdout
