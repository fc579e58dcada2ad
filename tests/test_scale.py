"""The Ray engine (``chains.scale``) on a real local Ray: the same records as one process, faults, and refusals.

Ray is started once for the module (``num_cpus=2``, no dashboard, on 127.0.0.1 only); runs that must start or
lack Ray themselves run in a subprocess.  Model traffic goes to the offline model or to the fault server on
127.0.0.1 through ``ChatOpenAI``.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT
from fault_server import FaultServer
from hypothesis import given, settings
from hypothesis import strategies as st
from langchain_core.callbacks import BaseCallbackHandler

from chains.engine.execution import Record, run_batch
from chains.engine.metrics import ItemMetrics
from chains.engine.resume import input_key
from chains.errors import ChainRunnerError, InputError, ProviderError, UsageError
from chains.providers.models import ModelSession
from chains.scale import run_on_ray
from chains.scale.address import parse_address, speaks_grpc
from chains.scale.pool import WorkerFailedError, WorkerPool
from chains.scale.ray_engine import RayRun, WorkerLostError
from chains.scale.wire import from_wire, rebuild_error, to_wire
from chains.scale.worker import WorkerSpec
from chains.settings import RunSettings
from chains.spec.registry import chain_info, get_chain

RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",  # no usage report to ray.io
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # Ray's node address is 127.0.0.1, not this machine's public one
    "NO_PROXY": "127.0.0.1,localhost",
}
CLEARED = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy")
FAKE = RunSettings(model="fake", max_concurrency=4)
TOPICS = [{"topic": f"topic {i}"} for i in range(12)]


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One local Ray for the module; its workers inherit an environment as isolated as the tests'."""
    with pytest.MonkeyPatch.context() as patch:
        for name in CLEARED:
            patch.delenv(name, raising=False)
        for name, value in {**RAY_ENV, "TIKTOKEN_CACHE_DIR": str(tmp_path_factory.mktemp("tiktoken"))}.items():
            patch.setenv(name, value)
        import ray

        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR)
        try:
            yield ray
        finally:
            ray.shutdown()


def _key(settings: RunSettings) -> Any:
    """The CLI's key function for ``story`` on the offline model."""
    return input_key(chain_info("story").digest, "fake", settings.model_overrides())


async def _records(run: Any) -> list[Record]:
    return [record async for record in run]


def _shape(record: Record) -> tuple[Any, ...]:
    m = record.metrics
    return (record.index, json.dumps(record.input), record.output, record.error, record.key, m.model_calls,
            m.input_tokens, m.output_tokens, m.status)  # fmt: skip


async def _in_process(settings: RunSettings, inputs: list[Any], key: Any) -> list[Record]:
    async with ModelSession(settings) as session:
        chain = get_chain("story", session.model)
        return await _records(run_batch(chain, inputs, settings=settings, limits=session.limits, key=key))


async def _gone(pids: list[int], within_s: float = 10.0) -> bool:
    """Every process of ``pids`` has exited within ``within_s`` (the loop runs meanwhile: the run's cleanup is on it)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if not any(_alive(pid) for pid in pids):
            return True
        await asyncio.sleep(0.1)
    return False


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# ---------------------------------------------------------------------------------------------- same run, N workers


async def test_story_on_two_workers_gives_the_records_of_one_process(ray_cluster: Any) -> None:
    key = _key(FAKE)
    expected = await _in_process(FAKE, TOPICS, key)
    run = run_on_ray("story", iter(TOPICS), settings=FAKE, workers=2, key=key)
    got = await _records(run)
    assert sorted(map(_shape, got)) == sorted(map(_shape, expected))
    summary = run.summary.to_dict()
    assert summary["ok"] == len(TOPICS) and summary["failed"] == 0
    assert summary["output_tokens"] == sum(r.metrics.output_tokens for r in expected)  # the sum of the records
    workers = summary["per_worker"]
    assert len(workers) == 2 and sum(w["items"] for w in workers) == len(TOPICS)
    assert all(w["items"] > 0 and w["items_per_s"] and w["pid"] != os.getpid() for w in workers)  # both worked
    assert len({w["pid"] for w in workers}) == 2 and run.in_flight == 0
    phases = [summary["startup_s"], summary["run_s"], summary["shutdown_s"]]
    assert all(p is not None and p >= 0 for p in phases) and summary["run_s"] > 0  # the wall time, split honestly
    assert sum(phases) <= summary["wall_s"] + 1e-3 and summary["run_items_per_s"] >= summary["items_per_s"]


async def test_skip_and_bad_rows_are_as_in_one_process(ray_cluster: Any) -> None:
    key = _key(FAKE)
    bad = InputError("--input rows.jsonl line 3: not JSON; fix the line")
    inputs: list[Any] = [TOPICS[0], TOPICS[1], bad, TOPICS[2], TOPICS[3]]
    skip = {key(TOPICS[1]), key(TOPICS[3])}
    run = run_on_ray("story", inputs, settings=FAKE, workers=2, key=key, skip=skip)
    got = {record.index: record for record in await _records(run)}
    assert sorted(got) == [0, 2, 3]  # the skipped ones have no record and made no request
    assert got[2].error == {"type": "InputError", "message": str(bad)} and got[2].exception is bad
    assert got[2].metrics.model_calls == 0 and got[2].key is None
    assert got[0].ok and got[3].ok and got[3].key == key(TOPICS[2])
    assert run.summary.skipped == 2 and run.summary.to_dict()["failed"] == 1


async def test_a_failed_input_comes_back_with_the_projects_error_rebuilt(
    ray_cluster: Any, fault_server: FaultServer
) -> None:
    fault_server.add_fault("400", match="topic 1", times=100)
    remote = RunSettings(model="openai:m", base_url=fault_server.base_url, max_concurrency=2, max_retries=0, timeout=10)
    got = {r.index: r for r in await _records(run_on_ray("story", TOPICS[:3], settings=remote, workers=2))}
    failed = got[1]
    assert not failed.ok and failed.error is not None and failed.error["status"] == 400
    assert isinstance(failed.exception, ProviderError) and failed.exception.status == 400
    assert got[0].ok and got[2].ok


# ---------------------------------------------------------------------------------------------- faults


async def test_kill_9_of_a_worker_loses_only_its_inputs_in_flight(ray_cluster: Any, fault_server: FaultServer) -> None:
    fault_server.configure(latency_ms=250)
    remote = RunSettings(model="openai:m", base_url=fault_server.base_url, max_concurrency=4, max_retries=0, timeout=20)
    inputs = [{"topic": f"kill {i}"} for i in range(16)]
    run = run_on_ray("story", inputs, settings=remote, workers=2)
    got: list[Record] = []
    async for record in run:
        got.append(record)
        if len(got) == 1:
            victim = next(w for w in run.workers if w.pid is not None and w.name == "w0")
            os.kill(victim.pid, signal.SIGKILL)  # type: ignore[arg-type]
    assert sorted(r.index for r in got) == list(range(16))  # one record per input, never two
    assert all(r.ok for r in got), [r.error for r in got if not r.ok]
    summary = run.summary.to_dict()
    assert summary["inputs_rerun"] >= 1  # what w0 had in flight ran again elsewhere
    w0 = next(w for w in summary["per_worker"] if w["worker"] == "w0")
    assert not w0["alive"] and w0["lost"] >= 1
    assert len(summary["per_worker"]) == 3  # a replacement took its place
    assert fault_server.stats(include_log=False)["peak_in_flight"] <= 4  # the cap held across the workers


async def test_an_input_whose_worker_dies_too_often_gets_an_error_record(
    ray_cluster: Any, fault_server: FaultServer
) -> None:
    fault_server.configure(latency_ms=250)
    remote = RunSettings(model="openai:m", base_url=fault_server.base_url, max_concurrency=2, max_retries=0, timeout=20)
    run = RayRun("story", [{"topic": f"lost {i}"} for i in range(8)], settings=remote, workers=2, max_losses=1)
    got: list[Record] = []
    async for record in run:
        got.append(record)
        if len(got) == 1:
            os.kill(next(w.pid for w in run.workers if w.name == "w0"), signal.SIGKILL)  # type: ignore[arg-type]
    assert sorted(r.index for r in got) == list(range(8))  # still one record per input
    lost = [r for r in got if not r.ok]
    assert lost and all(isinstance(r.exception, WorkerLostError) for r in lost)
    assert all(r.error is not None and "run it again with --resume" in r.error["message"] for r in lost)
    assert run.summary.to_dict()["failed"] == len(lost) and run.summary.rerun == 0


async def test_closing_the_run_early_kills_its_workers_and_keeps_ray(ray_cluster: Any) -> None:
    loop_errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, context: loop_errors.append(context))
    slow = FAKE.model_copy(update={"fake_token_delay": 0.02})
    run = run_on_ray("story", iter(TOPICS * 4), settings=slow, workers=2)
    async for _record in run:
        break  # the consumer goes away (a closed pipe, an exception): the dropped iterator is closed
    pids = [w.pid for w in run.workers if w.pid is not None]
    assert len(pids) == 2 and await _gone(pids)
    assert run.summary.cancelled >= 1 and run.summary.ok == 1  # those in flight are counted, not lost
    assert ray_cluster.is_initialized()  # not ours to shut down
    gc.collect()
    await asyncio.sleep(0.1)
    assert loop_errors == []  # the killed workers' tasks end quietly


async def test_a_task_cancelled_mid_run_stops_the_workers(ray_cluster: Any) -> None:
    slow = FAKE.model_copy(update={"fake_token_delay": 0.02})
    run = run_on_ray("story", iter(TOPICS * 4), settings=slow, workers=2)
    started = asyncio.Event()

    async def consume() -> None:
        async for _record in run:
            started.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), 60)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await _gone([w.pid for w in run.workers if w.pid is not None])


async def test_stop_cancels_the_inputs_in_flight_and_ends_the_run_quietly(ray_cluster: Any) -> None:
    loop_errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, context: loop_errors.append(context))
    slow = FAKE.model_copy(update={"fake_token_delay": 0.02})
    run = run_on_ray("story", iter(TOPICS * 4), settings=slow, workers=2)
    got = []
    async for record in run:
        got.append(record)
        run.stop()  # a first Ctrl-C: nothing new starts, what runs is cancelled, the iteration ends
    summary = run.summary.to_dict()
    assert summary["ok"] == len(got) and summary["cancelled"] >= 1 and run.in_flight == 0
    assert summary["ok"] + summary["cancelled"] < len(TOPICS) * 4  # the rest never started: --resume runs them
    assert await _gone([w.pid for w in run.workers if w.pid is not None])
    gc.collect()
    await asyncio.sleep(0.1)
    assert loop_errors == []  # no "Future exception was never retrieved" from the killed workers' tasks


def test_a_run_that_started_ray_leaves_no_ray_process_behind(tmp_path: Path) -> None:
    script = """
import asyncio, json, psutil
from chains.scale import run_on_ray
from chains.settings import RunSettings

async def main():
    settings = RunSettings(model="fake", max_concurrency=2, fake_token_delay=0.01)
    run = run_on_ray("story", ({"topic": f"t{i}"} for i in range(100)), settings=settings, workers=2)
    records = aiter(run)
    record = await anext(records)
    children = [p.pid for p in psutil.Process().children(recursive=True)]
    await records.aclose()  # the consumer stops early
    import ray
    print(json.dumps({"ok": record.ok, "children": children, "initialized": ray.is_initialized()}))

asyncio.run(main())
"""
    result = _python(script, tmp_path)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["ok"] and not report["initialized"]
    assert len(report["children"]) >= 3  # Ray's own processes and the two workers...
    assert asyncio.run(_gone(report["children"]))  # ...all gone with the run


# ---------------------------------------------------------------------------------------------- refusals, one line


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and isinstance(exc, ChainRunnerError) and exc.exit_code == 2
    return text


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_an_address_where_no_cluster_answers_is_one_line_at_once(fault_server: FaultServer) -> None:
    for address, says in [
        (f"127.0.0.1:{_closed_port()}", "no Ray cluster answers there (ConnectionRefusedError)"),
        (f"127.0.0.1:{fault_server.port}", "something answers there, but not a Ray cluster"),
        ("nonsense", "has no :PORT"),
        ("ray://127.0.0.1:0", "port that is not a number from 1 to 65535"),
    ]:
        started = time.monotonic()
        with pytest.raises(UsageError) as caught:
            run_on_ray("story", TOPICS, settings=FAKE, address=address).start()
        line = _one_line(caught.value)
        assert says in line and "ray start --head" in line, line
        assert time.monotonic() - started < 6  # Ray itself would retry a silent address for minutes


async def test_the_address_of_a_running_cluster_is_accepted(ray_cluster: Any) -> None:
    address = ray_cluster.get_runtime_context().gcs_address
    run = run_on_ray("story", TOPICS[:2], settings=FAKE, address=address)
    assert [r.ok for r in await _records(run)] == [True, True]
    assert len(run.workers) == 2  # one per CPU of the cluster


def test_joining_a_cluster_by_address_runs_there(ray_cluster: Any, tmp_path: Path) -> None:
    address = ray_cluster.get_runtime_context().gcs_address
    script = f"""
import asyncio, json, sys
from chains.scale import run_on_ray
from chains.settings import RunSettings
assert "ray" not in sys.modules  # nothing imports Ray before a run starts

async def main():
    settings = RunSettings(model="fake", max_concurrency=2)
    run = run_on_ray("story", [{{"topic": "a"}}, {{"topic": "b"}}], settings=settings, address={address!r}, workers=1)
    records = [r async for r in run]
    import ray
    print(json.dumps({{"ok": [r.ok for r in records], "connected": ray.is_initialized()}}))

asyncio.run(main())
"""
    report = json.loads(_python(script, tmp_path).stdout.strip().splitlines()[-1])
    assert report == {"ok": [True, True], "connected": True}  # joined, not started: left connected


async def test_more_workers_than_cpus_is_one_line(ray_cluster: Any) -> None:
    with pytest.raises(UsageError) as caught:
        run_on_ray("story", TOPICS, settings=FAKE, workers=3).start()
    assert "--workers 3 needs 3 CPUs" in _one_line(caught.value)


async def test_ray_not_installed_is_one_line_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets without the extra
    with pytest.raises(UsageError) as caught:
        run_on_ray("story", TOPICS, settings=FAKE, workers=2).start()
    assert "pip install 'chain-runner[ray]'" in _one_line(caught.value)


async def test_a_worker_that_cannot_build_its_chain_stops_the_run_with_its_line(
    ray_cluster: Any, tmp_path: Path
) -> None:
    broken = FAKE.model_copy(update={"cache": str(tmp_path)})  # a directory: no worker can open it as sqlite
    with pytest.raises(UsageError) as caught:
        await _records(run_on_ray("story", TOPICS, settings=broken, workers=2))
    assert "--cache" in _one_line(caught.value)


async def test_callbacks_that_cannot_go_to_the_workers_are_one_line(ray_cluster: Any) -> None:
    class Local(BaseCallbackHandler):
        def __init__(self) -> None:
            self.lock = threading.Lock()  # does not pickle: such a handler cannot run in a worker

    with pytest.raises(UsageError) as caught:
        run_on_ray("story", TOPICS, settings=FAKE, workers=2, callbacks=[Local()]).start()
    assert "must pickle" in _one_line(caught.value)


async def test_workers_that_find_no_place_are_one_line_not_a_hang(ray_cluster: Any) -> None:
    spec = WorkerSpec("story", FAKE, chain_info("story").digest)
    pool = WorkerPool(ray_cluster, spec, window=2, replacements=0)
    pool.start(3)  # one CPU each, on a 2-CPU Ray: the third waits for a place
    try:
        with pytest.raises(WorkerFailedError) as caught:
            await pool.ready(within_s=3)
        assert "did not start within 3 s" in str(caught.value) and "\n" not in str(caught.value)
    finally:
        pool.kill()


def test_the_batch_tier_is_refused() -> None:
    with pytest.raises(UsageError) as caught:
        run_on_ray("story", TOPICS, settings=RunSettings(model="openai:m", tier="batch"), workers=2)
    assert "--tier batch" in _one_line(caught.value)


# ---------------------------------------------------------------------------------------------- parsers, properties


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=400), st.from_regex(r"(ray://)?\[?[0-9a-f:.]{0,40}\]?:[0-9]{0,7}", fullmatch=True)))
def test_any_address_text_parses_or_is_one_usage_line(text: str) -> None:
    try:
        address = parse_address(text)
    except UsageError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 500
        return
    assert address.text == "auto" or (address.host and address.port and 0 < address.port < 65536)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_any_reply_is_judged_without_raising(reply: bytes) -> None:
    assert speaks_grpc(reply) in (True, False)


_JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["type", "message", "status", "attempts", "other"]),
        st.one_of(
            st.sampled_from(["ProviderError", "UsageError", "PromptSpecError", "ValueError", "__class__"]), _JSONISH
        ),
    )
)
def test_any_error_description_rebuilds_or_stays_a_description(error: dict[str, Any]) -> None:
    rebuilt = rebuild_error(error)
    assert rebuilt is None or (isinstance(rebuilt, ChainRunnerError) and type(rebuilt).__name__ == error["type"])
    record = from_wire(7, {"topic": "x"}, "k", {"output": None, "error": error, "metrics": {"retries": 2, "x": 1}})
    assert record.index == 7 and record.metrics.retries == 2 and record.error == error


def test_a_record_survives_the_wire() -> None:
    exc = ProviderError("HTTP 503 after 3 attempts; try later", status=503, attempts=3)
    record = Record.failure(4, {"topic": "t"}, exc, ItemMetrics(latency_s=1.23456789, retries=2, status="failed"))
    back = from_wire(4, {"topic": "t"}, "key", to_wire(record))
    assert back.to_dict() == {**record.to_dict(), "key": "key"} and back.metrics.latency_s == 1.23456789
    assert isinstance(back.exception, ProviderError) and (back.exception.status, back.exception.attempts) == (503, 3)


def test_nothing_imports_ray_until_a_run_starts(tmp_path: Path) -> None:
    script = """
import sys
import chains, chains.scale, chains.scale.ray_engine, chains.scale.governor, chains.cli.commands, runner
from chains.scale import RayRun, run_on_ray
print("ray" in sys.modules)
"""
    assert _python(script, tmp_path).stdout.strip() == "False"


def _python(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    env.update(RAY_ENV)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_kill_9_of_the_driver_then_resume_finishes_the_run(tmp_path: Path) -> None:
    from conftest import runner_env

    topics = [f"driver kill {i}" for i in range(40)]
    (tmp_path / "t.txt").write_text("\n".join(topics) + "\n")
    args = [sys.executable, str(ROOT / "runner.py"), "story", "--topics", "t.txt", "--workers", "2",
            "--output", "out.jsonl", "--fake-delay", "0.002", "--max-concurrency", "2", "-q"]  # fmt: skip
    env = runner_env(RAY_USAGE_STATS_ENABLED="0")
    run = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    out = tmp_path / "out.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not out.exists() or out.read_text().count("\n") < 5):
        time.sleep(0.05)
    run.send_signal(signal.SIGKILL)
    run.communicate(timeout=10)
    before = out.read_text().count("\n")
    assert 5 <= before < 40
    resumed = subprocess.run([*args, "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines() if line.endswith("}")]
    ok = sorted(r["input"]["topic"] for r in lines if r["error"] is None)
    assert ok == sorted(topics)  # one success per input, none twice


async def test_rpm_and_the_in_flight_cap_hold_across_workers_at_the_server(
    ray_cluster: Any, fault_server: FaultServer
) -> None:
    fault_server.configure(latency_ms=20)
    rpm, window = 30, 3.0  # 30 requests per 3-second window, shared by both workers
    remote = RunSettings(
        model="openai:m", base_url=fault_server.base_url, max_concurrency=3, max_retries=0, timeout=20, rpm=rpm
    )
    inputs = [{"text": f"rate {i}"} for i in range(90)]
    run = RayRun("summarize", inputs, settings=remote, workers=2, rate_window_s=window)
    got = await _records(run)
    assert len(got) == 90 and all(r.ok for r in got)
    log = fault_server.stats()["log"]
    sent = sorted(entry["t"] for entry in log)
    for i, t in enumerate(sent):  # no window of the server's own clock holds more than rpm requests
        assert sum(1 for u in sent[i:] if u < t + window) <= rpm
    assert fault_server.stats(include_log=False)["peak_in_flight"] <= 3
    reached = (len(sent) - rpm) / (sent[-1] - sent[0]) / (rpm / window)  # after the first window's burst
    assert reached >= 0.85, reached  # the limit is used, not just respected
    assert {w["worker"] for w in run.summary.per_worker if w["items"]} == {"w0", "w1"}


async def test_the_servers_ratelimit_headers_hold_every_worker_without_a_429(
    ray_cluster: Any, fault_server: FaultServer
) -> None:
    window, limit = 2.0, 12  # the server takes 12 requests per 2 s and says so in x-ratelimit-* headers
    fault_server.configure(rpm_limit=limit, time_scale=window / 60, send_ratelimit_headers=True, latency_ms=20)
    remote = RunSettings(  # no --rpm: only the server's headers can hold the run to its limit
        model="openai:m", base_url=fault_server.base_url, max_concurrency=4, max_retries=0, timeout=20
    )
    inputs = [{"text": f"headers {i}"} for i in range(30)]
    run = RayRun("summarize", inputs, settings=remote, workers=2)
    got = await _records(run)
    assert len(got) == 30 and all(r.ok for r in got), [r.error for r in got if not r.ok]  # a 429 would fail one
    stats = fault_server.stats()
    assert stats["requests"] == 30 and stats["rate_limited"] == 0
    sent = sorted(entry["t"] for entry in stats["log"])
    assert sent[-1] - sent[0] >= 2 * window - 0.5  # 30 at 12 per window: the limit was binding for two windows
    assert run.summary.governor is not None and run.summary.governor["server_holds"] > 0  # the governor held them
    assert {w["worker"] for w in run.summary.per_worker if w["items"]} == {"w0", "w1"}


async def test_a_retry_after_holds_only_its_own_request_not_the_other_workers(
    ray_cluster: Any, fault_server: FaultServer
) -> None:
    hold = 4.0
    fault_server.configure(latency_ms=30)
    fault_server.add_fault("429", match="held back", times=1, retry_after=hold)
    remote = RunSettings(model="openai:m", base_url=fault_server.base_url, max_concurrency=4, max_retries=2, timeout=20)
    inputs = [{"text": "held back"}] + [{"text": f"goes on {i}"} for i in range(40)]
    run = RayRun("summarize", inputs, settings=remote, workers=2)
    got = await _records(run)
    assert len(got) == 41 and all(r.ok for r in got), [r.error for r in got if not r.ok]
    log = fault_server.stats()["log"]
    held = sorted(entry["t"] for entry in log if "held back" in entry["key"])
    assert len(held) == 2 and held[1] - held[0] >= hold  # the request itself waited what the server asked
    others = [entry["t"] for entry in log if "held back" not in entry["key"]]
    # meanwhile every worker went on (halved window): all 40 others were sent while the held one waited (40 requests
    # of 30 ms take well under a second even on loaded cores; the hold is 4 s)
    assert sum(held[0] < t < held[1] for t in others) == len(others) - sum(t < held[0] for t in others)
    assert len(others) == 40 and sum(t > held[1] for t in others) == 0
    assert next(r for r in got if r.input == inputs[0]).metrics.retries == 1


async def test_a_slow_input_does_not_hold_back_the_records_of_its_workers_other_inputs(
    ray_cluster: Any, fault_server: FaultServer
) -> None:
    fault_server.add_fault("stall", match="slow one", stall_s=2.0, times=1)
    remote = RunSettings(model="openai:m", base_url=fault_server.base_url, max_concurrency=4, max_retries=0, timeout=20)
    inputs = [{"text": "slow one"}] + [{"text": f"quick {i}"} for i in range(20)]
    arrived: list[tuple[float, str]] = []
    async for record in RayRun("summarize", inputs, settings=remote, workers=1):
        assert record.ok, record.error
        arrived.append((time.monotonic(), record.input["text"]))
    assert len(arrived) == 21 and arrived[-1][1] == "slow one"
    assert arrived[-1][0] - arrived[-2][0] >= 1.0  # the others were all back long before: none waited in its chunk
