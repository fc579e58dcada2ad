"""The Ray engine's setup on a real local Ray: cluster addresses, the refusals (each one line) and the parsers.

Ray is started once for the module (the ``ray_cluster`` fixture); runs that must join Ray or lack it run in a
subprocess.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import cli
from fault_server import FaultServer
from hypothesis import given, settings
from hypothesis import strategies as st
from langchain_core.callbacks import BaseCallbackHandler
from ray_support import collect, run_python

from chains.engine.execution import Record
from chains.engine.metrics import ItemMetrics
from chains.errors import ChainRunnerError, ProviderError, UsageError
from chains.scale import run_on_ray
from chains.scale.address import parse_address, speaks_grpc
from chains.scale.cluster import stop_monitor
from chains.scale.pool import WorkerFailedError, WorkerPool
from chains.scale.wire import from_wire, rebuild_error, to_wire
from chains.scale.worker import WorkerSpec
from chains.settings import RunSettings
from chains.spec.registry import chain_info

FAKE = RunSettings(model="fake", max_concurrency=4)
TOPICS = [{"topic": f"topic {i}"} for i in range(12)]


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
    assert [r.ok for r in await collect(run)] == [True, True]
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
    report = json.loads(run_python(script, tmp_path).stdout.strip().splitlines()[-1])
    assert report == {"ok": [True, True], "connected": True}  # joined, not started: left connected


def test_a_shard_on_a_cluster_writes_the_records_of_the_same_shard_in_one_process(
    ray_cluster: Any, tmp_path: Path
) -> None:
    """``--shard 1/3`` with ``--ray-address``: the same keys, outputs and indexes (each input's place in the file)
    as ``--shard 1/3`` in one process, and the same shard line."""
    (tmp_path / "topics.txt").write_text("".join(f"topic {i}\n" for i in range(12)))
    address = ray_cluster.get_runtime_context().gcs_address
    common = ["story", "--topics", "topics.txt", "--shard", "1/3", "--no-stream"]
    alone = cli(*common, "--output", "alone.jsonl", cwd=tmp_path)
    spread = cli(*common, "--output", "ray.jsonl", "--ray-address", address, "--workers", "1", cwd=tmp_path)
    assert (alone.returncode, spread.returncode) == (0, 0), spread.stderr[-1500:]

    def view(name: str) -> list[tuple[Any, ...]]:
        rows = [json.loads(line) for line in (tmp_path / name).read_text().splitlines()]
        return sorted((r["index"], r["key"], r["output"]) for r in rows)

    assert view("ray.jsonl") == view("alone.jsonl") and 0 < len(view("alone.jsonl")) < 12
    shard_line = [line for line in alone.stderr.splitlines() if line.startswith("shard 1/3")]
    assert shard_line and shard_line == [line for line in spread.stderr.splitlines() if line.startswith("shard 1/3")]


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
        await collect(run_on_ray("story", TOPICS, settings=broken, workers=2))
    assert "--cache" in _one_line(caught.value)


async def test_callbacks_that_cannot_go_to_the_workers_are_one_line(ray_cluster: Any) -> None:
    class Local(BaseCallbackHandler):
        def __init__(self) -> None:
            self.lock = threading.Lock()  # does not pickle: such a handler cannot run in a worker

    with pytest.raises(UsageError) as caught:
        run_on_ray("story", TOPICS, settings=FAKE, workers=2, callbacks=[Local()]).start()
    assert "must pickle" in _one_line(caught.value)


async def test_workers_that_find_no_place_are_one_line_not_a_hang(ray_cluster: Any) -> None:
    @ray_cluster.remote(num_cpus=1)
    class Holder:
        def ping(self) -> bool:
            return True

    holders = [Holder.remote() for _ in range(2)]
    await asyncio.gather(*(holder.ping.remote() for holder in holders))  # both CPUs of the 2-CPU Ray are taken
    pool = WorkerPool(ray_cluster, WorkerSpec("story", FAKE, chain_info("story").digest), window=2, replacements=0)
    pool.start(2)
    try:
        with pytest.raises(WorkerFailedError) as caught:
            await pool.first_up(within_s=3)
        assert "no Ray worker started within 3 s" in str(caught.value) and "\n" not in str(caught.value)
    finally:
        pool.kill()
        for holder in holders:
            ray_cluster.kill(holder)


def test_a_ray_whose_private_parts_changed_still_shuts_down_as_before() -> None:
    import types

    stop_monitor(types.SimpleNamespace())  # no _private.worker._global_node: nothing killed, nothing raised
    stop_monitor(types.SimpleNamespace(_private=types.SimpleNamespace(worker=types.SimpleNamespace(_global_node=None))))


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
    assert run_python(script, tmp_path).stdout.strip() == "False"
