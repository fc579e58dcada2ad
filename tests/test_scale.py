"""The Ray engine (``chains.scale``) on a real local Ray: the same records as one process, faults, resume, chunks.

Ray is started once for the module (the ``ray_cluster`` fixture, ``tests/ray_support.py``); runs that must start
Ray themselves run in a subprocess.  Model traffic goes to the offline model or to the fault server on 127.0.0.1
through ``ChatOpenAI``.  Limits across workers: ``test_scale_limits.py``; addresses, refusals and the parsers:
``test_scale_setup.py``.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT
from fault_server import FaultServer
from ray_support import collect, run_python

from chains.engine.execution import Record, run_batch
from chains.engine.resume import input_key
from chains.errors import InputError, ProviderError, UsageError
from chains.providers.models import ModelSession
from chains.scale import run_on_ray
from chains.scale.pool import CHUNK, Worker, WorkerPool
from chains.scale.ray_engine import RayRun, WorkerLostError
from chains.scale.throughput import WorkerStats
from chains.scale.worker import ChainWorker, WorkerSpec
from chains.settings import RunSettings
from chains.spec.registry import chain_info, get_chain

FAKE = RunSettings(model="fake", max_concurrency=4)
TOPICS = [{"topic": f"topic {i}"} for i in range(12)]


def _key(settings: RunSettings) -> Any:
    """The CLI's key function for ``story`` on the offline model."""
    return input_key(chain_info("story").digest, "fake", settings.model_overrides())


def _shape(record: Record) -> tuple[Any, ...]:
    m = record.metrics
    return (record.index, json.dumps(record.input), record.output, record.error, record.key, m.model_calls,
            m.input_tokens, m.output_tokens, m.status)  # fmt: skip


async def _in_process(settings: RunSettings, inputs: list[Any], key: Any) -> list[Record]:
    async with ModelSession(settings) as session:
        chain = get_chain("story", session.model)
        return await collect(run_batch(chain, inputs, settings=settings, limits=session.limits, key=key))


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
    paced = FAKE.model_copy(update={"fake_token_delay": 0.002})  # ~0.4 s an input: the second worker is up in time
    key = _key(paced)
    expected = await _in_process(paced, TOPICS, key)
    run = run_on_ray("story", iter(TOPICS), settings=paced, workers=2, key=key)
    got = await collect(run)
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


async def test_a_shard_on_workers_gives_the_records_and_indexes_of_the_same_shard_in_one_process(
    ray_cluster: Any,
) -> None:
    """Each record's index is its input's place in the whole file, as ``run_batch(shard=...)`` numbers it (they
    were numbered within the shard), and the inputs passed over are counted for the summary."""
    key = _key(FAKE)
    async with ModelSession(FAKE) as session:
        chain = get_chain("story", session.model)
        batch = run_batch(chain, TOPICS, settings=FAKE, limits=session.limits, key=key, shard=(1, 3))
        expected = await collect(batch)
    run = run_on_ray("story", iter(TOPICS), settings=FAKE, workers=2, key=key, shard=(1, 3))
    got = await collect(run)
    assert 0 < len(expected) < len(TOPICS) and sorted(map(_shape, got)) == sorted(map(_shape, expected))
    assert run.other_shards == batch.other_shards == len(TOPICS) - len(expected)
    with pytest.raises(UsageError, match="needs key"):
        run_on_ray("story", TOPICS, settings=FAKE, workers=1, shard=(0, 2))


async def test_skip_and_bad_rows_are_as_in_one_process(ray_cluster: Any) -> None:
    key = _key(FAKE)
    bad = InputError("--input rows.jsonl line 3: not JSON; fix the line")
    inputs: list[Any] = [TOPICS[0], TOPICS[1], bad, TOPICS[2], TOPICS[3]]
    skip = {key(TOPICS[1]), key(TOPICS[3])}
    run = run_on_ray("story", inputs, settings=FAKE, workers=2, key=key, skip=skip)
    got = {record.index: record for record in await collect(run)}
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
    got = {r.index: r for r in await collect(run_on_ray("story", TOPICS[:3], settings=remote, workers=2))}
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


async def test_a_run_whose_workers_all_died_and_whose_replacement_finds_no_place_ends_not_hangs(
    ray_cluster: Any,
) -> None:
    slow = FAKE.model_copy(update={"fake_token_delay": 0.01})
    run = RayRun("story", iter(TOPICS * 4), settings=slow, workers=1)
    run.start()
    assert run._pool is not None
    run._pool.start_timeout_s = 3.0
    run._pool._actor = ray_cluster.remote(ChainWorker).options(  # no replacement can be placed
        num_cpus=1, resources={"a node that is gone": 1}, max_concurrency=40, max_restarts=0
    )
    got: list[Record] = []

    async def drive() -> None:
        async for record in run:
            got.append(record)
            if len(got) == 1:
                os.kill(next(w.pid for w in run.workers if w.name == "w0"), signal.SIGKILL)  # type: ignore[arg-type]

    with pytest.raises(WorkerLostError) as caught:
        await asyncio.wait_for(drive(), 60)  # before, the run waited for the replacement for ever
    assert "no replacement started within 3 s" in str(caught.value) and "--resume" in str(caught.value)
    assert len(got) >= 1 and all(record.ok for record in got)  # what finished is kept


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
    result = run_python(script, tmp_path)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["ok"] and not report["initialized"]
    assert len(report["children"]) >= 3  # Ray's own processes and the two workers...
    assert asyncio.run(_gone(report["children"]))  # ...all gone with the run


# ---------------------------------------------------------------------------------------------- resume, chunks


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


async def test_a_worker_that_waits_for_a_place_holds_nobody_back(ray_cluster: Any) -> None:
    @ray_cluster.remote(num_cpus=1)
    class Holder:
        def ping(self) -> bool:
            return True

    holder = Holder.remote()
    await holder.ping.remote()  # one of the 2-CPU Ray's CPUs is taken: the run's second worker waits for it
    settings = FAKE.model_copy(update={"max_concurrency": 4, "fake_token_delay": 0.002})
    run = RayRun("story", [{"topic": f"late {i}"} for i in range(80)], settings=settings, workers=2)
    records: list[Record] = []

    async def drive() -> None:
        async for record in run:
            records.append(record)
            if len(records) == 1:  # the first worker runs alone; now a place frees for the second
                ray_cluster.kill(holder)

    await asyncio.wait_for(drive(), 60)  # before, the run waited for both workers: for a place that never freed
    first, second = run.summary.workers
    assert len(records) == 80 and all(record.ok for record in records)
    assert first.items > 0 and second.items > 0  # the second took inputs once it was up, in the same run
    assert first.items + second.items == 80


async def test_a_worker_whose_process_dies_before_it_is_up_is_replaced_while_the_others_run(
    ray_cluster: Any,
) -> None:
    class DiesStarting(ChainWorker):
        async def info(self) -> dict[str, Any]:
            if self.name == "w1":
                await asyncio.sleep(1.0)  # w0 is up by then: the run has begun
                os._exit(1)
            return await super().info()

    pool = WorkerPool(ray_cluster, WorkerSpec("story", FAKE, chain_info("story").digest), window=2, replacements=1)
    pool._actor = ray_cluster.remote(DiesStarting).options(num_cpus=1, max_concurrency=8, max_restarts=0)
    pool.start(2)
    try:
        await pool.first_up(within_s=60)
        while starting := pool.starting():  # what the run's loop does: each start noted as it ends
            done, _ = await asyncio.wait(starting, timeout=60, return_when=asyncio.FIRST_COMPLETED)
            assert done
            for future in done:
                pool.started(starting[future])
        w0, w1, w2 = pool.workers
        assert w0.up and not w1.stats.alive and w1.stats.lost == 0  # lost with nothing in flight, not the run
        assert w2.up and w2.stats.pid not in (None, w0.stats.pid)  # its replacement came up in its place
    finally:
        pool.kill()


def _fast_worker(pool: WorkerPool, load: int) -> Worker:
    """A worker of ``pool`` that delivered 400 records in its first second (the offline model's pace)."""
    worker = Worker(None, WorkerStats("w0", items=400, first=0.0, last=1.0), load=load)
    pool.workers.append(worker)
    return worker


async def test_a_fast_worker_is_sent_whole_chunks_before_its_window_runs_dry(ray_cluster: Any) -> None:
    pool = WorkerPool(ray_cluster, WorkerSpec("story", FAKE, chain_info("story").digest), window=32, replacements=0)
    chunk = pool.room(_fast_worker(pool, load=0))
    assert 1 < chunk <= CHUNK  # a fast worker gets its inputs several to a call
    # one record just came back, 31 inputs still run: the next call carries a whole chunk, not the one place freed
    assert pool.room(_fast_worker(pool, load=31)) == chunk
    # every place busy: a chunk more goes now, to wait in the worker, so it never idles while the driver hears of a
    # chunk done and sends the next...
    assert pool.room(_fast_worker(pool, load=32)) == chunk
    assert pool.room(_fast_worker(pool, load=32 + chunk)) == 0  # ...but never more than one chunk beyond its window


async def test_a_worker_that_has_not_delivered_yet_is_sent_twice_the_last_call_each_time(ray_cluster: Any) -> None:
    pool = WorkerPool(ray_cluster, WorkerSpec("story", FAKE, chain_info("story").digest), window=32, replacements=0)
    worker = Worker(None, WorkerStats("w0"))
    pool.workers.append(worker)
    sizes = []
    while (room := pool.room(worker)) > 0:
        sizes.append(room)
        worker.load += room
        worker.stats.dispatched()
    # its first input alone (a slow model's first record comes back by itself), then its window fills in a few calls
    # (one Ray call per place cost a fast worker about 0.1 s at its start), and one call more waits there
    assert sizes == [1, 2, 4, 8, 16, 32]


async def test_each_worker_runs_its_share_of_the_runs_in_flight_cap(ray_cluster: Any) -> None:
    settings = FAKE.model_copy(update={"max_concurrency": 6, "fake_token_delay": 0.001})
    run = RayRun("story", [{"topic": f"share {i}"} for i in range(24)], settings=settings, workers=2)
    assert all(record.ok for record in await collect(run))
    assert run.window == 3  # as many inputs in flight in all as one process would have, not 6 per worker...
    governor = run.summary.governor
    assert governor is not None and governor["peak_held"] <= 6
    assert governor["empty_leases"] == 0  # ...so none waits in a worker for a slot the other worker holds
    explicit = RayRun("story", [], settings=settings, workers=2, window=5)
    assert explicit.window == 5  # a window given is the window


async def test_a_workers_process_is_the_programs_own_its_heap_frozen_and_langsmiths_types_deferred(
    ray_cluster: Any,
) -> None:
    class Probe(ChainWorker):
        async def state(self) -> dict[str, Any]:
            import gc

            record = await self.run(0, {"topic": "probe"})
            types = sys.modules.get("langsmith.types")
            loaded = types is not None and "Run" in types.__dict__  # its __init__ ran: the ~170 generated modules
            return {"ok": record["error"] is None, "types_loaded": loaded, "frozen": gc.get_freeze_count()}

    spec = WorkerSpec("story", FAKE, chain_info("story").digest)
    actor = ray_cluster.remote(Probe).options(num_cpus=1).remote(spec, "probe", own_process=True)
    try:
        state = await actor.state.remote()
    finally:
        ray_cluster.kill(actor)
    assert state["ok"] and state["frozen"] > 0  # the chain's heap is walked by no later collection...
    assert not state["types_loaded"]  # ...and langsmith's generated types wait for a use that never comes


async def test_a_worker_runs_at_most_its_window_of_the_inputs_it_holds() -> None:
    settings = FAKE.model_copy(update={"max_concurrency": 2, "fake_token_delay": 0.002})
    worker = ChainWorker(WorkerSpec("story", settings, chain_info("story").digest), "w0")  # no Ray: the class itself
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, worker._run.in_flight if worker._run is not None else 0)
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())
    try:
        records = await worker.run_many([(i, topic) for i, topic in enumerate(TOPICS[:6])])
    finally:
        watcher.cancel()
        await worker.close()
    assert [r["error"] for r in records] == [None] * 6 and all(r["output"] for r in records)
    assert peak == 2  # what the driver sent beyond the window waited for a place


async def test_a_fast_worker_gets_its_inputs_in_few_ray_calls(ray_cluster: Any) -> None:
    settings = RunSettings(model="fake", max_concurrency=32)
    run = run_on_ray("story", [{"topic": f"calls {i}"} for i in range(800)], settings=settings, workers=1)
    assert all(record.ok for record in await collect(run))
    (worker,) = run.summary.to_dict()["per_worker"]
    assert worker["items"] == 800 and worker["calls"] <= 800 / 8  # a Ray call costs about 1 ms of the worker's CPU
