"""Several endpoints of one model (``--base-url`` repeated): spread by free capacity, each with its own window and
health, a dead one taken out and probed back in — real HTTP through ``ChatOpenAI`` to several fault servers."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import cli, one_error_line, records
from fault_server import FaultServer
from test_resilience import answer, echo_library, run_texts

from chains.engine.retry import BackoffWait, Failure
from chains.providers import endpoints as endpoints_module
from chains.providers.endpoints import COOLDOWN_S, EJECT_AFTER, Endpoint, EndpointRouter
from chains.providers.models import ModelSession
from chains.settings import RunSettings
from chains.spec.registry import get_chain


@pytest.fixture
def servers() -> Iterator[list[FaultServer]]:
    started = [FaultServer(chunks=4).start() for _ in range(3)]
    try:
        yield started
    finally:
        for server in started:
            server.stop()


@asynccontextmanager
async def fleet_session(urls: list[str], **settings: Any) -> AsyncIterator[tuple[ModelSession, Any]]:
    values: dict[str, Any] = {"model": "openai:test-model", "max_retries": 6, "timeout": 10.0, "max_concurrency": 6}
    values.update(settings)
    async with ModelSession(RunSettings(base_url=urls[0], extra_base_urls=urls[1:], **values)) as session:
        session.model.wait = BackoffWait(base=0.05, cap=0.2, retry_after_cap=2)
        yield session, get_chain("echo", session.model, library=echo_library(Path.cwd()))


def _requests(server: FaultServer) -> int:
    return int(server.stats(include_log=False)["requests"])


def _answered_calls(recs: dict[str, Any]) -> int:
    return sum(record.metrics.model_calls for record in recs.values())


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_requests_are_spread_over_every_endpoint(servers: list[FaultServer], stream: bool) -> None:
    for server in servers:
        server.configure(latency_ms=20, chunks=4)
    texts = [f"text {i}" for i in range(30)]
    async with fleet_session([s.base_url for s in servers], stream=stream) as (session, chain):
        recs, _summary = await run_texts(session, chain, texts)
        stats = session.report()["endpoints"]
    assert [record.error for record in recs.values() if record.error] == []
    assert all(record.output == answer(text) for text, record in recs.items())
    seen = [_requests(server) for server in servers]
    assert sum(seen) == len(texts) and min(seen) >= 5, seen  # every endpoint took its share
    assert [row["requests"] for row in stats] == seen  # the summary counts what the servers saw
    assert {record.metrics.endpoint for record in recs.values()} == {s.base_url for s in servers}


async def test_the_fastest_endpoint_gets_the_most_work(servers: list[FaultServer]) -> None:
    """By free capacity: a slow endpoint's slots stay taken, so the fast ones take the next requests."""
    slow, fast_a, fast_b = servers
    slow.configure(latency_ms=400)
    fast_a.configure(latency_ms=10)
    fast_b.configure(latency_ms=10)
    texts = [f"text {i}" for i in range(60)]
    async with fleet_session([s.base_url for s in servers], max_concurrency=3) as (session, chain):
        recs, _ = await run_texts(session, chain, texts)
    assert all(record.error is None for record in recs.values())
    assert _requests(slow) < min(_requests(fast_a), _requests(fast_b)) / 3, [_requests(s) for s in servers]


async def test_one_endpoint_of_three_killed_mid_run_loses_no_input(servers: list[FaultServer]) -> None:
    for server in servers:
        server.configure(latency_ms=30, chunks=4)
    victim = servers[1]
    texts = [f"text {i}" for i in range(60)]

    def kill_after_some() -> None:
        while _requests(victim) < 5:
            threading.Event().wait(0.005)
        victim.stop()

    killer = threading.Thread(target=kill_after_some, daemon=True)
    killer.start()
    async with fleet_session([s.base_url for s in servers]) as (session, chain):
        recs, summary = await run_texts(session, chain, texts)
        stats = {row["endpoint"]: row for row in session.report()["endpoints"]}
    killer.join(5)
    assert all(record.error is None and record.output == answer(text) for text, record in recs.items()), [
        record.error for record in recs.values() if record.error
    ]
    dead = stats[victim.base_url]
    assert dead["taken_out"] >= 1 and dead["failures"] >= EJECT_AFTER
    # a dead endpoint gets a few probes, not a third of the traffic
    assert dead["requests"] - 5 < len(texts) / 6, dead
    # every answered request is one request some endpoint answered: the numbers add up
    answered = sum(row["requests"] - row["failures"] for row in stats.values())
    assert answered == _answered_calls(recs) == len(texts)
    assert summary["retries"] == sum(record.metrics.retries for record in recs.values()) >= 1


async def test_a_429_holds_and_halves_that_endpoint_only(servers: list[FaultServer]) -> None:
    throttled = servers[0]
    throttled.add_fault("429", retry_after=1, times=1)
    texts = [f"text {i}" for i in range(24)]
    async with fleet_session([s.base_url for s in servers], max_concurrency=6) as (session, chain):
        recs, _ = await run_texts(session, chain, texts)
        router = session.endpoints
        assert router is not None
        windows = [endpoint.window.current for endpoint in router.endpoints]
        run_window = session.limits.concurrency.current
    assert all(record.error is None for record in recs.values())
    assert run_window == 6  # the run's own window is untouched
    assert windows[0] < 6 and windows[1:] == [6, 6], windows


async def test_an_endpoint_whose_headers_say_its_limit_is_used_up_is_held_the_others_go_on(
    servers: list[FaultServer],
) -> None:
    """Several endpoints are often several keys: each one's x-ratelimit-* headers hold that endpoint only, before
    it would answer 429, and never the run-wide limiter."""
    limited = servers[0]
    limited.configure(rpm_limit=3, send_ratelimit_headers=True)  # a 60 s window: used up for the whole run
    texts = [f"text {i}" for i in range(15)]
    async with fleet_session([s.base_url for s in servers], max_concurrency=1, rpm=10_000) as (session, chain):
        recs, summary = await run_texts(session, chain, texts)
        router = session.endpoints
        assert router is not None
        held = router.endpoints[0].held_until - router._clock()
        run_pause = session.limits.rate.blocked_until if session.limits.rate is not None else None
    assert all(record.error is None for record in recs.values())
    stats = limited.stats(include_log=False)
    assert stats["requests"] == 3 and stats["rate_limited"] == 0 and summary["retries"] == 0
    assert held > 30  # until the server's reset (its window is a minute)
    assert run_pause == 0.0  # the run-wide limiter never heard of it
    assert _requests(servers[1]) + _requests(servers[2]) == len(texts) - 3


async def test_an_endpoint_unreachable_at_start_starts_out_and_the_run_goes_on(servers: list[FaultServer]) -> None:
    down = servers[2]
    down.stop()
    texts = [f"text {i}" for i in range(12)]
    async with fleet_session([s.base_url for s in servers]) as (session, chain):
        await session.check_reachable()
        router = session.endpoints
        assert router is not None and router.endpoints[2].out and not router.endpoints[0].out
        recs, _ = await run_texts(session, chain, texts)
    assert all(record.error is None for record in recs.values())


async def test_consumer_streaming_goes_through_the_endpoints(servers: list[FaultServer]) -> None:
    servers[0].stop()  # dead, and not known to be: the consumer's stream is retried elsewhere before its first token
    async with fleet_session([s.base_url for s in servers]) as (session, _chain):
        for i in range(6):
            text = "".join([chunk.text async for chunk in session.model.astream(f"stream {i}")])
            assert text == answer(f"stream {i}")
    assert _requests(servers[1]) + _requests(servers[2]) == 6


# ----------------------------------------------------------------------------- the router's health, on its own clock


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _router(n: int = 2, sleep: Any = asyncio.sleep) -> tuple[EndpointRouter, _Clock]:
    clock = _Clock()
    endpoints = [Endpoint(f"http://e{i}", pools=None, window=4) for i in range(n)]  # type: ignore[arg-type]
    return EndpointRouter(endpoints, clock=clock, sleep=sleep), clock


async def _attempt(router: EndpointRouter, exc: Exception | None) -> Endpoint:
    chosen: Endpoint | None = None
    try:
        async with router.attempt() as endpoint:
            chosen = endpoint
            if exc is not None:
                raise exc
    except _Down:
        pass
    assert chosen is not None
    return chosen


class _Down(Exception):
    """A transport failure (classify: no status, retryable)."""


async def test_an_endpoint_is_taken_out_after_failures_in_a_row_and_probed_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    router, clock = _router(2)
    bad, good = router.endpoints
    monkeypatch.setattr(endpoints_module, "classify", lambda exc: Failure(True, "connection refused"))
    for _ in range(EJECT_AFTER):
        bad.window.current = good.window.current = 4
        good.window.in_flight = 1  # keep the bad one the freest, so it is chosen
        assert await _attempt(router, _Down()) is bad
    good.window.in_flight = 0
    assert bad.out and bad.ejections == 1
    assert router.choose() is good and router.choose() is good  # out: never chosen while cooling down
    clock.now += COOLDOWN_S
    assert await _attempt(router, _Down()) is bad  # the probe after the cooldown ... fails
    assert bad.out and bad.cooldown_s == 2 * COOLDOWN_S and bad.ejections == 2
    clock.now += 2 * COOLDOWN_S
    assert await _attempt(router, None) is bad  # ... and later succeeds: back in, cooldown reset
    assert not bad.out and bad.cooldown_s == COOLDOWN_S and bad.failures_in_row == 0


async def test_a_request_s_own_fault_says_nothing_about_the_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    router, _clock = _router(1)
    [only] = router.endpoints
    monkeypatch.setattr(endpoints_module, "classify", lambda exc: Failure(False, "bad request", status=400))
    for _ in range(EJECT_AFTER + 2):
        await _attempt(router, _Down())
    assert not only.out and only.failures == EJECT_AFTER + 2 and only.failures_in_row == 0


async def test_with_every_endpoint_out_a_request_waits_for_the_first_back() -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.now += seconds

    router, clock = _router(2, sleep=sleep)
    for endpoint in router.endpoints:
        endpoint.take_out(clock.now, "down")
    router.endpoints[1].out_until = clock.now + 0.5 * COOLDOWN_S  # the second comes back first
    assert await _attempt(router, None) is router.endpoints[1]
    assert slept == [pytest.approx(0.5 * COOLDOWN_S)]


# ----------------------------------------------------------------------------- the command line


def test_the_cli_spreads_over_repeated_base_urls_and_shows_each(tmp_path: Path, servers: list[FaultServer]) -> None:
    (tmp_path / "topics.txt").write_text("".join(f"topic {i}\n" for i in range(8)))
    urls = [arg for server in servers for arg in ("--base-url", server.base_url)]
    run = cli(
        "story", "--topics", "topics.txt", "--model", "openai:test-model", *urls, "--output", "out.jsonl",
        "--metrics-out", "m.json", cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    summary = json.loads((tmp_path / "m.json").read_text())
    rows = {row["endpoint"]: row for row in summary["endpoints"]}
    assert sorted(rows) == sorted(s.base_url for s in servers)
    assert sum(row["requests"] for row in rows.values()) == sum(_requests(s) for s in servers)
    calls = sum(record["metrics"]["model_calls"] for record in records(tmp_path / "out.jsonl"))
    assert calls == sum(_requests(s) for s in servers) == 16  # story: two requests per topic
    for server in servers:
        assert server.base_url in run.stderr  # the summary shows each endpoint


def test_the_batch_tier_with_several_endpoints_is_one_line(tmp_path: Path, servers: list[FaultServer]) -> None:
    (tmp_path / "topics.txt").write_text("a\n")
    run = cli(
        "story", "--topics", "topics.txt", "--model", "openai:test-model", "--tier", "batch",
        "--base-url", servers[0].base_url, "--base-url", servers[1].base_url, "--output", "out.jsonl", cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 2
    assert "--tier batch submits to one endpoint" in one_error_line(run.stderr)


def test_no_endpoint_reachable_is_one_line(tmp_path: Path, servers: list[FaultServer]) -> None:
    (tmp_path / "topics.txt").write_text("a\n")
    for server in servers[:2]:
        server.stop()
    run = cli(
        "story", "--topics", "topics.txt", "--model", "openai:test-model",
        "--base-url", servers[0].base_url, "--base-url", servers[1].base_url, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 2
    assert "cannot reach any of the 2 --base-url endpoints" in one_error_line(run.stderr)


def test_resume_keys_name_the_first_endpoint(tmp_path: Path, servers: list[FaultServer]) -> None:
    """The endpoints of one model are one model: a run resumed with an endpoint fewer redoes nothing."""
    (tmp_path / "topics.txt").write_text("a\nb\n")
    first = [arg for server in servers for arg in ("--base-url", server.base_url)]
    run = cli(
        "story", "--topics", "topics.txt", "--model", "openai:test-model", *first, "--output", "out.jsonl", cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr
    before = sum(_requests(s) for s in servers)
    again = cli(
        "story", "--topics", "topics.txt", "--model", "openai:test-model", "--base-url", servers[0].base_url,
        "--base-url", servers[2].base_url, "--output", "out.jsonl", "--resume", cwd=tmp_path,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert sum(_requests(s) for s in servers) == before and len(records(tmp_path / "out.jsonl")) == 2
