"""Rate limits, cost budget, cache, resume after SIGKILL and stopping on SIGTERM — over real HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import ROOT, runner_env
from fault_server import FaultServer

from chains import ModelSession, PromptLibrary, RunSettings, get_chain, run_batch
from chains.engine.limits import Limits

ECHO = "name: echo\ndescription: Echo.\ninput_variables: [text]\nmessages:\n  - role: human\n    content: '{text}'\n"


def echo_library(tmp_path: Path) -> tuple[PromptLibrary, Path]:
    directory = tmp_path / "prompts"
    directory.mkdir(exist_ok=True)
    (directory / "echo.yaml").write_text(ECHO)
    return PromptLibrary([directory]), directory


def settings_for(server: FaultServer, **values: object) -> RunSettings:
    return RunSettings(model="openai:test-model", base_url=server.base_url, api_key="test", **values)  # type: ignore[arg-type]


async def run_echo(
    tmp_path: Path, settings: RunSettings, texts: list[str], limits: Limits | None = None
) -> tuple[list, dict]:  # type: ignore[type-arg]
    library, _ = echo_library(tmp_path)
    async with ModelSession(settings, limits=limits) as session:
        chain = get_chain("echo", session.model, library=library)
        batch = run_batch(chain, [{"text": t} for t in texts], settings=session.settings, limits=session.limits)
        records = [r async for r in batch]
    return records, batch.summary.to_dict()


def max_in_window(events: list[tuple[float, int]], window: float) -> int:
    """The largest total weight of events inside any window of ``window`` seconds."""
    events = sorted(events)
    best, total, start = 0, 0, 0
    for end in range(len(events)):
        total += events[end][1]
        while events[end][0] - events[start][0] >= window:
            total -= events[start][1]
            start += 1
        best = max(best, total)
    return best


async def test_request_budget_is_never_exceeded_in_any_window(tmp_path: Path, fault_server: FaultServer) -> None:
    window, rpm = 0.5, 4
    settings = settings_for(fault_server, rpm=rpm, max_concurrency=8)
    shrunk = Limits.create(8, rpm=rpm, window_s=window)  # a window of 0.5 s, not a minute: the test's own limits
    records, summary = await run_echo(tmp_path, settings, [f"req {i}" for i in range(14)], shrunk)
    assert all(r.ok for r in records)
    times = [(entry["t"], 1) for entry in fault_server.stats()["log"]]
    assert len(times) == 14
    assert max_in_window(times, window) <= rpm
    # 14 requests at 4 per 0.5 s cannot finish in under 3 full windows: the limiter made them wait.
    assert max(t for t, _ in times) - min(t for t, _ in times) >= 3 * window * 0.95
    assert summary["rate_limit_wait_s"] > 0


async def test_token_budget_is_never_exceeded_in_any_window(tmp_path: Path, fault_server: FaultServer) -> None:
    window, tpm = 0.5, 60
    fault_server.configure(chunks=8)
    settings = settings_for(fault_server, tpm=tpm, max_concurrency=8, max_tokens=8)
    shrunk = Limits.create(8, tpm=tpm, window_s=window)
    records, _ = await run_echo(tmp_path, settings, [f"some words number {i}" for i in range(12)], shrunk)
    assert all(r.ok for r in records)
    log = fault_server.stats()["log"]
    usage = [(entry["t"], entry["prompt_tokens"] + entry["completion_tokens"]) for entry in log]
    assert max_in_window(usage, window) <= tpm
    assert sum(tokens for _, tokens in usage) > 2 * tpm  # the budget really was binding


async def test_server_rate_limit_headers_pause_before_a_429(tmp_path: Path, fault_server: FaultServer) -> None:
    fault_server.configure(rpm_limit=3, time_scale=0.5 / 60, send_ratelimit_headers=True)
    records, _ = await run_echo(tmp_path, settings_for(fault_server, max_concurrency=1), [f"h {i}" for i in range(7)])
    assert all(r.ok for r in records)
    stats = fault_server.stats()
    assert stats["requests"] == 7 and stats["rate_limited"] == 0


async def test_the_cache_answers_a_second_identical_run_without_a_request(
    tmp_path: Path, fault_server: FaultServer
) -> None:
    settings = settings_for(fault_server, cache=str(tmp_path / "cache.sqlite"))
    texts = [f"cache me {i}" for i in range(5)]
    first, _ = await run_echo(tmp_path, settings, texts)
    assert fault_server.stats()["requests"] == 5
    second, summary = await run_echo(tmp_path, settings, texts)
    assert fault_server.stats()["requests"] == 5  # nothing new reached the server
    assert {r.index: r.output for r in second} == {r.index: r.output for r in first}
    assert all(r.metrics.cache_hits == 1 and r.metrics.output_tokens == 0 for r in second)
    assert summary["cache_hits"] == 5 and summary["cost_usd"] == 0


async def test_max_cost_stops_admitting_inputs_in_time(tmp_path: Path, fault_server: FaultServer) -> None:
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"test-model": {"input": 1000.0, "output": 1000.0}}))  # $0.001 per token
    fault_server.configure(chunks=8)
    settings = settings_for(fault_server, max_cost=0.06, prices=str(prices), max_concurrency=1, max_tokens=8)
    records, summary = await run_echo(tmp_path, settings, [f"spend {i}" for i in range(10)])
    assert len(records) == 10
    ran = [r for r in records if r.ok]
    not_run = [r for r in records if r.metrics.status == "not_run"]
    assert ran and not_run and len(ran) + len(not_run) == 10
    assert all("--max-cost" in r.error["message"] for r in not_run)
    assert fault_server.stats()["requests"] == len(ran)  # no request was sent for an input not run
    assert summary["cost_usd"] <= 0.06
    assert summary["not_run"] == len(not_run)
    assert all(r.metrics.cost_usd and r.metrics.cost_usd > 0 for r in ran)


def _cli(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "runner.py"), *args]


def _records(path: Path) -> list[dict]:  # type: ignore[type-arg]
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # the torn last line of a killed run
    return out


def test_sigkill_then_resume_gives_one_success_per_input_and_no_repeat(
    tmp_path: Path, fault_server: FaultServer
) -> None:
    _, prompts = echo_library(tmp_path)
    texts = [f"resume item {i}" for i in range(30)]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n")
    fault_server.configure(latency_ms=60)
    common = [
        "run",
        "echo",
        "--input",
        "in.txt",
        "--prompts-dir",
        str(prompts),
        "--output",
        "out.jsonl",
        "--base-url",
        fault_server.base_url,
        "--model",
        "openai:test-model",
        "--max-concurrency",
        "3",
        "-q",
    ]
    proc = subprocess.Popen(
        _cli(*common), env=runner_env(), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    out = tmp_path / "out.jsonl"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not out.exists() or len(_records(out)) < 8):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    before = {r["input"]["text"] for r in _records(out) if r["error"] is None}
    assert 8 <= len(before) < 30
    requests_before = dict(fault_server.stats()["per_key"])

    result = subprocess.run(
        _cli(*common, "--resume"), env=runner_env(), cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    successes = [r for r in _records(out) if r["error"] is None]
    assert sorted(r["input"]["text"] for r in successes) == sorted(texts)  # exactly one success per input
    after = fault_server.stats()["per_key"]
    for text in before:
        assert after[text] == requests_before[text] == 1  # no request for an input already done


def test_resume_reruns_inputs_when_the_prompt_changes(tmp_path: Path) -> None:
    _, prompts = echo_library(tmp_path)
    (tmp_path / "in.txt").write_text("one\ntwo\n")
    args = ["run", "echo", "--input", "in.txt", "--prompts-dir", str(prompts), "--output", "o.jsonl", "-q"]
    assert subprocess.run(_cli(*args), env=runner_env(), cwd=tmp_path).returncode == 0
    assert (
        subprocess.run(_cli(*args, "--resume", "--metrics-out", "m.json"), env=runner_env(), cwd=tmp_path).returncode
        == 0
    )
    assert json.loads((tmp_path / "m.json").read_text())["skipped"] == 2
    (prompts / "echo.yaml").write_text(ECHO.replace("'{text}'", "'Say: {text}'"))
    assert (
        subprocess.run(_cli(*args, "--resume", "--metrics-out", "m.json"), env=runner_env(), cwd=tmp_path).returncode
        == 0
    )
    summary = json.loads((tmp_path / "m.json").read_text())
    assert summary["skipped"] == 0 and summary["ok"] == 2


def test_sigterm_stops_writes_finished_records_and_exits_130(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("".join(f"topic {i}\n" for i in range(40)))
    proc = subprocess.Popen(
        _cli(
            "story",
            "--topics",
            "t.txt",
            "--output",
            "o.jsonl",
            "--fake-delay",
            "0.01",
            "--max-concurrency",
            "2",
            "--stream",
        ),
        env=runner_env(),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out = tmp_path / "o.jsonl"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not out.exists() or len(_records(out)) < 2):
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "run summary" in stderr
    records = _records(out)
    assert 2 <= len(records) < 40
    assert all(r["error"] is None for r in records)  # cancelled inputs leave no record, finished ones all do


def test_cli_shows_discarded_tokens_and_logs_each_retry_with_its_reason(
    tmp_path: Path, fault_server: FaultServer
) -> None:
    _, prompts = echo_library(tmp_path)
    (tmp_path / "in.txt").write_text("tell me a tale\n")
    fault_server.add_fault("truncate", match="tell me a tale", times=1, after_chunks=2)
    fault_server.add_fault("503", match="tell me a tale", times=1)
    result = subprocess.run(
        _cli(
            "run",
            "echo",
            "--input",
            "in.txt",
            "--prompts-dir",
            str(prompts),
            "--stream",
            "-v",
            "--base-url",
            fault_server.base_url,
            "--model",
            "openai:test-model",
            "--output",
            "o.jsonl",
        ),
        env=runner_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "the text above is discarded; retrying" in result.stderr
    assert "retry 1/5" in result.stderr and "broken stream" in result.stderr  # -v: each decision and its reason
    assert "retry 2/5" in result.stderr and "HTTP 503" in result.stderr
    [record] = _records(tmp_path / "o.jsonl")
    assert record["output"] == "echo: tell me a tale t1 t2 t3 t4 t5 t6 t7" and record["metrics"]["retries"] == 2
    assert record["output"] in result.stdout  # the final answer was streamed live after the discarded one
