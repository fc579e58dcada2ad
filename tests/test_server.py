"""The HTTP server: routes, validation, auth, errors, metrics and the log in-process
(httpx ASGI transport, lifespan run), and SSE, disconnects and the shared concurrency
cap against a real ``runner.py serve`` uvicorn process on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ROOT, end_process, runner_env
from fault_server import FaultServer
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from chains.io.sinks import JsonlSink
from chains.server import create_app
from chains.server.middleware import bearer_key
from chains.settings import RunSettings

FAKE = RunSettings(model="fake")


@asynccontextmanager
async def client_for(settings: RunSettings = FAKE, **kwargs: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan running, behind an in-process httpx client."""
    app = create_app(settings, **kwargs)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


def on_fault_server(server: FaultServer, **values: Any) -> RunSettings:
    return RunSettings(model="openai:test", base_url=server.base_url, **values)


def parse_sse(text: str) -> list[tuple[str, Any]]:
    events, name, data = [], None, []
    for line in [*text.splitlines(), ""]:
        if line.startswith("event:"):
            name = line[len("event:") :].strip()
        elif line.startswith("data:"):
            data.append(line[len("data:") :].strip())
        elif not line and name:
            events.append((name, json.loads("\n".join(data))))
            name, data = None, []
    return events


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text (labels in any order)."""
    for line in text.splitlines():
        match = re.fullmatch(r"(\w+)(?:\{(.*)\})? (\S+)", line)
        if match and match[1] == name:
            found = dict(re.findall(r'(\w+)="([^"]*)"', match[2] or ""))
            if found == labels:
                return float(match[3])
    raise AssertionError(f"no sample {name}{labels}")


# ----------------------------------------------------------------------------- in-process


async def test_routes_on_the_offline_model() -> None:
    async with client_for() as client:
        listing = (await client.get("/chains")).json()
        story = next(c for c in listing if c["name"] == "story")
        assert story["required"] == ["topic"] and story["description"]
        assert story["input_schema"]["required"] == ["topic"]
        assert story["input_schema"]["additionalProperties"] is False
        assert next(c for c in listing if c["name"] == "keywords")["output_schema"]["type"] == "object"

        r = await client.post("/chains/story/invoke", json={"input": {"topic": "a brave snail"}})
        assert r.status_code == 200
        body = r.json()
        assert isinstance(body["output"], str) and "snail" in body["output"]
        assert body["metrics"]["model_calls"] == 2 and body["metrics"]["output_tokens"] > 0

        r = await client.post("/chains/keywords/invoke", json={"input": {"text": "rain"}, "config": {"tags": ["t"]}})
        assert set(r.json()["output"]) == {"keywords", "sentiment"}

        texts = [f"text number {i}" for i in range(5)]
        r = await client.post("/chains/summarize/batch", json={"inputs": [{"text": t} for t in texts]})
        assert r.status_code == 200
        records = r.json()["records"]
        assert [rec["index"] for rec in records] == list(range(5))
        assert all(rec["error"] is None and rec["output"] for rec in records)
        assert r.json()["summary"]["ok"] == 5

        r = await client.post("/chains/story/stream", json={"input": {"topic": "a kite"}})
        assert r.headers["content-type"].startswith("text/event-stream")
        events = parse_sse(r.text)
        assert [e for e, _ in events[:-1]] == ["token"] * (len(events) - 1) and len(events) > 5
        kind, end = events[-1]
        assert kind == "end" and end["output"] == "".join(d["text"] for _, d in events[:-1])
        assert end["metrics"]["ttft_s"] is not None

        assert (await client.get("/healthz")).json() == {"status": "ok"}
        assert (await client.get("/docs")).status_code == 200
        schemas = (await client.get("/openapi.json")).json()["components"]["schemas"]
        assert schemas["StoryInput"]["required"] == ["topic"]
        assert {"StoryInvokeRequest", "StoryBatchRequest", "StoryInvokeResponse", "ErrorOut"} <= set(schemas)

        r = await client.post("/chains/nope/invoke", json={"input": {}})
        assert r.status_code == 404 and "unknown chain 'nope'" in r.json()["error"]["message"]


async def test_a_prompt_in_prompts_dir_is_served_whatever_its_variable_names(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "odd.yaml").write_text(
        "name: odd\ndescription: Variables named like pydantic methods.\ninput_variables: [json, copy]\n"
        "defaults:\n  copy: 2\nmessages:\n  - role: human\n    content: 'Topic: {json} x{copy}'\n"
    )
    async with client_for(RunSettings(model="fake", prompts_dirs=[str(mine)])) as client:
        odd = next(c for c in (await client.get("/chains")).json() if c["name"] == "odd")
        assert (odd["required"], odd["optional"]) == (["json"], ["copy"])
        r = await client.post("/chains/odd/invoke", json={"input": {"json": "a lantern"}})
        assert r.status_code == 200 and "lantern" in r.json()["output"]
        r = await client.post("/chains/odd/invoke", json={"input": {"copy": 3}})
        assert r.status_code == 422 and "input.json: missing required field" in r.json()["error"]["message"]


async def test_a_missing_or_unknown_field_is_a_422_naming_it() -> None:
    async with client_for() as client:
        r = await client.post("/chains/translate/invoke", json={"input": {"text": "hi", "lang": "fr"}})
        assert r.status_code == 422
        error = r.json()["error"]
        assert error["type"] == "InputError"
        assert "input.language: missing required field" in error["message"]
        assert "input.lang: unknown field" in error["message"]
        assert "translate takes: text, language" in error["message"]

        r = await client.post("/chains/summarize/batch", json={"inputs": [{"text": "a"}, {"txt": "b"}]})
        assert r.status_code == 422
        assert "inputs[1].text: missing required field" in r.json()["error"]["message"]
        r = await client.post("/chains/summarize/invoke", json={"input": {"text": "a"}, "extra": 1})
        assert r.status_code == 422 and "extra: unknown field" in r.json()["error"]["message"]
        r = await client.post(
            "/chains/summarize/invoke", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert r.status_code == 422 and "Traceback" not in r.text


async def test_body_size_and_batch_length_are_limited_with_413() -> None:
    async with client_for(max_body_bytes=2000, max_batch=3) as client:
        r = await client.post("/chains/summarize/invoke", json={"input": {"text": "x" * 5000}})
        assert r.status_code == 413
        assert "limit of 2000 bytes" in r.json()["error"]["message"]

        async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted while read
            yield b'{"input": {"text": "'
            for _ in range(10):
                yield b"y" * 500
            yield b'"}}'

        r = await client.post(
            "/chains/summarize/invoke", content=chunked(), headers={"content-type": "application/json"}
        )
        assert r.status_code == 413

        r = await client.post("/chains/summarize/batch", json={"inputs": [{"text": "a"}] * 4})
        assert r.status_code == 413
        assert "batch of 4 inputs is over the limit of 3" in r.json()["error"]["message"]
        r = await client.post("/chains/summarize/batch", json={"inputs": [{"text": "a"}] * 3})
        assert r.status_code == 200


async def test_auth_needs_the_bearer_key_except_on_healthz(monkeypatch: pytest.MonkeyPatch) -> None:
    async with client_for(api_key="s3cret-token") as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-token"}):
            for method, path in (
                ("GET", "/chains"),
                ("GET", "/metrics"),
                ("POST", "/chains/story/invoke"),
            ):
                r = await client.request(method, path, headers=headers, json={"input": {"topic": "x"}})
                assert r.status_code == 401, (path, headers)
                assert r.headers["www-authenticate"] == "Bearer"
        assert (await client.get("/healthz")).status_code == 200
        ok = {"Authorization": "Bearer s3cret-token"}
        assert (await client.get("/chains", headers=ok)).status_code == 200
        assert (
            await client.post("/chains/story/invoke", headers=ok, json={"input": {"topic": "x"}})
        ).status_code == 200

    monkeypatch.setenv("RUNNER_API_KEY", "from-the-env")
    async with client_for() as client:
        assert (await client.get("/chains")).status_code == 401
        assert (await client.get("/chains", headers={"Authorization": "Bearer from-the-env"})).status_code == 200


async def test_batch_with_failures_gives_error_records_and_provider_errors_map_to_statuses(
    fault_server: FaultServer,
) -> None:
    fault_server.add_fault("400", match="BAD-ROW")
    fault_server.add_fault("429", match="BUSY", retry_after=7)
    async with client_for(on_fault_server(fault_server, max_retries=0)) as client:
        texts = ["first", "a BAD-ROW here", "third"]
        r = await client.post("/chains/summarize/batch", json={"inputs": [{"text": t} for t in texts]})
        assert r.status_code == 200
        records = r.json()["records"]
        assert [rec["index"] for rec in records] == [0, 1, 2]
        assert records[0]["error"] is None and records[0]["output"].startswith("echo: ")
        assert records[2]["error"] is None
        assert records[1]["output"] is None
        assert records[1]["error"]["type"] == "ProviderError" and records[1]["error"]["status"] == 400
        assert r.json()["summary"]["failed"] == 1

        r = await client.post("/chains/summarize/invoke", json={"input": {"text": "BAD-ROW"}})
        assert r.status_code == 502
        assert r.json()["error"]["type"] == "ProviderError" and "HTTP 400" in r.json()["error"]["message"]

        r = await client.post("/chains/summarize/invoke", json={"input": {"text": "BUSY"}})
        assert r.status_code == 503
        assert r.headers["retry-after"] == "7"
        assert "rate limited" in r.json()["error"]["message"]

        text = (await client.get("/metrics")).text
    assert metric(text, "chain_runner_generations_total", chain="summarize", status="ok") == 2
    assert metric(text, "chain_runner_generations_total", chain="summarize", status="failed") == 3
    assert metric(text, "chain_runner_http_requests_total", chain="summarize", endpoint="batch", code="200") == 1
    assert metric(text, "chain_runner_http_requests_total", chain="summarize", endpoint="invoke", code="503") == 1


@pytest.mark.parametrize("value", ["soon", "1.5s", "", "inf"])
async def test_a_429_with_an_odd_retry_after_is_a_503_with_a_sane_retry_after(
    fault_server: FaultServer, value: str
) -> None:
    """A Retry-After that is neither seconds nor a date used to raise inside classify: a 500."""
    fault_server.add_fault("429", match="BUSY", headers={"retry-after": value})
    async with client_for(on_fault_server(fault_server, max_retries=0)) as client:
        r = await client.post("/chains/summarize/invoke", json={"input": {"text": "BUSY"}})
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"].isdigit() and 1 <= int(r.headers["retry-after"]) <= 60


async def test_a_spent_budget_is_a_402_and_not_run_records(tmp_path: Path, fault_server: FaultServer) -> None:
    prices = tmp_path / "prices.json"  # --max-cost needs a price for the model (none is built in for "test")
    prices.write_text(json.dumps({"test": {"input": 1.0, "output": 2.0}}))
    async with client_for(on_fault_server(fault_server, max_cost=0.0, prices=str(prices))) as client:
        r = await client.post("/chains/summarize/invoke", json={"input": {"text": "x"}})
        assert r.status_code == 402 and r.json()["error"]["type"] == "BudgetExceededError"
        r = await client.post("/chains/summarize/batch", json={"inputs": [{"text": "x"}, {"text": "y"}]})
        assert r.status_code == 200 and r.json()["summary"]["not_run"] == 2
        text = (await client.get("/metrics")).text
    assert metric(text, "chain_runner_generations_total", chain="summarize", status="not_run") == 3
    assert fault_server.stats()["requests"] == 0


async def test_metrics_text_has_the_expected_names_and_counts() -> None:
    async with client_for() as client:
        for topic in ("a", "b"):
            assert (await client.post("/chains/story/invoke", json={"input": {"topic": topic}})).status_code == 200
        await client.post("/chains/story/stream", json={"input": {"topic": "c"}})
        await client.post("/chains/story/invoke", json={"input": {}})
        r = await client.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert metric(text, "chain_runner_http_requests_total", chain="story", endpoint="invoke", code="200") == 2
    assert metric(text, "chain_runner_http_requests_total", chain="story", endpoint="invoke", code="422") == 1
    assert metric(text, "chain_runner_http_requests_total", chain="story", endpoint="stream", code="200") == 1
    assert metric(text, "chain_runner_generations_total", chain="story", status="ok") == 3
    assert metric(text, "chain_runner_latency_seconds_count", chain="story") == 3
    assert metric(text, "chain_runner_ttft_seconds_count", chain="story") == 1
    assert metric(text, "chain_runner_input_tokens_total", chain="story") > 0
    assert metric(text, "chain_runner_output_tokens_total", chain="story") > 0
    assert metric(text, "chain_runner_retries_total", chain="story") == 0
    assert metric(text, "chain_runner_rate_limit_wait_seconds_total", chain="story") >= 0
    assert metric(text, "chain_runner_http_requests_in_flight") == 0
    assert metric(text, "chain_runner_model_requests_in_flight") == 0
    assert "# TYPE chain_runner_cancelled_total counter" in text


async def test_log_lines_are_written_after_the_response_without_secrets(
    tmp_path: Path, fault_server: FaultServer
) -> None:
    provider_key = "sk-provider-SECRET-123"
    fault_server.add_fault("401", match="LEAK", message=f"Incorrect API key provided: {provider_key}.")
    log = tmp_path / "gen.jsonl"
    settings = on_fault_server(fault_server, api_key=provider_key, max_retries=0)
    auth = {"Authorization": "Bearer server-key-456"}
    async with client_for(settings, api_key="server-key-456", log_path=str(log)) as client:
        r = await client.post("/chains/summarize/invoke", headers=auth, json={"input": {"text": "hello"}})
        assert r.status_code == 200
        r = await client.post("/chains/summarize/invoke", headers=auth, json={"input": {"text": "LEAK"}})
        assert r.status_code == 502 and provider_key not in r.text
        r = await client.post(
            "/chains/translate/batch",
            headers=auth,
            json={"inputs": [{"text": "a", "language": "fr"}, {"text": "LEAK", "language": "de"}]},
        )
        assert r.status_code == 200 and provider_key not in r.text
    text = log.read_text()
    entries = [json.loads(line) for line in text.splitlines()]
    assert [(e["chain"], e["status"]) for e in entries] == [
        ("summarize", "ok"),
        ("summarize", "failed"),
        ("translate", "ok"),
        ("translate", "failed"),
    ]
    first = entries[0]
    assert {"time", "chain", "input", "output", "usage", "latency_s", "status"} <= set(first)
    assert first["input"] == {"text": "hello"} and first["output"].startswith("echo: ")
    assert first["usage"]["output_tokens"] == 8 and first["latency_s"] > 0
    assert "[redacted]" in entries[1]["error"]["message"]
    for secret in (provider_key, "server-key-456", "Bearer", "uthorization"):
        assert secret not in text


# ----------------------------------------------------------------------------- the docs page (issue 10)

# What a browser needs to show /docs and press Authorize; everything else needs the key.
DOCS_PAGES = ("/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")


def _assets(html: str) -> list[str]:
    """The scripts, stylesheets and icons a page loads."""
    return re.findall(r'<(?:script|link)\b[^>]*?\b(?:src|href)="([^"]+)"', html)


async def test_the_docs_pages_load_every_asset_from_the_server_itself() -> None:
    """/docs was a blank page offline: Swagger UI's JS and CSS came from a CDN."""
    async with client_for() as client:
        for page, needed in (
            ("/docs", {"swagger-ui-bundle.js", "swagger-ui.css"}),
            ("/redoc", {"redoc.standalone.js"}),
        ):
            r = await client.get(page)
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
            assert not re.findall(r"https?://", r.text), (page, r.text)  # no CDN, no fonts, no validator
            # and the browser may fetch from nowhere else (ReDoc's bundle has its logo's CDN URL built in)
            policy = r.headers["content-security-policy"]
            assert "default-src 'self'" in policy and "img-src 'self' data:" in policy
            assets = _assets(r.text)
            assert needed <= {url.rsplit("/", 1)[-1] for url in assets}, assets
            for url in assets:
                assert url.startswith("/"), url
                asset = await client.get(url)
                assert asset.status_code == 200 and len(asset.content) > 1000, url
        bundle = (
            await client.get(next(u for u in _assets((await client.get("/docs")).text) if u.endswith(".js")))
        ).text
        # Swagger UI 4 cannot render FastAPI's OpenAPI 3.1 ("Unable to render this definition"); 5 can
        assert re.search(r'"5\.\d+\.\d+"', bundle)
        assert (await client.get("/openapi.json")).json()["openapi"].startswith("3.1")
        assert '"validatorUrl": null' in (await client.get("/docs")).text  # no badge fetched from swagger.io


async def test_the_docs_load_without_the_key_and_every_data_route_still_needs_it() -> None:
    async with client_for(api_key="s3cret-token") as client:
        html = (await client.get("/docs")).text
        for path in (*DOCS_PAGES, *_assets(html), *_assets((await client.get("/redoc")).text)):
            assert (await client.get(path)).status_code == 200, path
        wrong = {"Authorization": "Bearer wrong"}
        for method, path in (
            ("GET", "/chains"),
            ("GET", "/metrics"),
            ("POST", "/chains/story/invoke"),
            ("POST", "/chains/story/batch"),
            ("POST", "/chains/story/stream"),
            ("POST", "/chains/nope/invoke"),
            ("GET", "/no-such-page"),
            ("GET", "/docs/"),
            ("GET", "/docsx"),
            ("GET", "/static-offline-docs"),
            ("GET", "/static-offline-docs/../chains"),
        ):
            for headers in ({}, wrong):
                r = await client.request(method, path, headers=headers, json={"input": {"topic": "x"}})
                assert r.status_code == 401, (method, path, headers)
                assert r.json() == {
                    "error": {
                        "type": "Unauthorized",
                        "message": "missing or wrong API key; send 'Authorization: Bearer <key>'",
                    }
                }
                assert r.headers["www-authenticate"] == "Bearer"


async def test_the_openapi_declares_the_bearer_key_on_every_route_that_needs_it() -> None:
    """So that /docs has an Authorize button whose key the page sends with each call."""
    async with client_for(api_key="s3cret-token") as client:
        ok = {"Authorization": "Bearer s3cret-token"}
        spec = (await client.get("/openapi.json", headers=ok)).json()
        assert (
            await client.post("/chains/story/invoke", headers=ok, json={"input": {"topic": "x"}})
        ).status_code == 200
    [(scheme_name, scheme)] = spec["components"]["securitySchemes"].items()
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer" and "RUNNER_API_KEY" in scheme["description"]
    operations = {(path, method): op for path, ops in spec["paths"].items() for method, op in ops.items()}
    assert ("/chains/story/invoke", "post") in operations and ("/metrics", "get") in operations
    for (path, method), op in operations.items():
        expected = None if path == "/healthz" else [{scheme_name: []}]
        assert op.get("security") == expected, (path, method)
    async with client_for() as client:  # no key: nothing to authorize
        spec = (await client.get("/openapi.json")).json()
    assert "securitySchemes" not in spec.get("components", {})
    assert not [op for ops in spec["paths"].values() for op in ops.values() if "security" in op]


def test_without_the_key_only_healthz_and_the_docs_pages_answer() -> None:
    """Property: whatever the path, a request without the key is a 401 unless it is /healthz, a docs page or
    one of the docs' own assets (one app for every example: its start-up was most of this test's time)."""
    with TestClient(create_app(FAKE, api_key="s3cret-token")) as client:

        @settings(max_examples=200, deadline=None)
        @given(path=st.text(st.sampled_from("/.%-_adocsrehmtpijnf0"), max_size=30).map(lambda p: "/" + p))
        def answer_without_the_key(path: str) -> None:
            check = client.get("http://testserver" + path)  # whole: a relative "//x" would be a host to the client
            public = path in ("/healthz", *DOCS_PAGES) or path.startswith("/static-offline-docs/")
            assert public or check.status_code == 401, (path, check.status_code)

        answer_without_the_key()


# ----------------------------------------------------------------------------- real uvicorn


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serving(tmp_path: Path, server: FaultServer, *args: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``runner.py serve`` on a free port of 127.0.0.1 against the fault server; SIGTERM at the end."""
    port = _free_port()
    errors = (tmp_path / "serve.err").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "runner.py"),
            "serve",
            "--port",
            str(port),
            "--base-url",
            server.base_url,
            "--model",
            "openai:test",
            "--grace",
            "2",
            *args,
        ],
        stdout=subprocess.DEVNULL,
        stderr=errors,
        env=runner_env(),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, (tmp_path / "serve.err").read_text()
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        yield url, process
    finally:
        if process.poll() is None:
            end_process(process, signal.SIGTERM, within_s=15)
        errors.close()


async def _wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_sse_streaming_and_disconnects_over_real_http(tmp_path: Path, fault_server: FaultServer) -> None:
    fault_server.configure(chunks=5, chunk_delay_ms=5)
    log = tmp_path / "gen.jsonl"
    with serving(tmp_path, fault_server, "--log", str(log)) as (url, process):
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            # token events in order, then one end event
            events: list[tuple[str, Any]] = []
            async with client.stream("POST", "/chains/summarize/stream", json={"input": {"text": "hi"}}) as r:
                assert r.status_code == 200
                buffer: list[str] = []
                async for line in r.aiter_lines():
                    buffer.append(line)
                    if not line:
                        events += parse_sse("\n".join(buffer))
                        buffer = []
            tokens = [data["text"] for kind, data in events if kind == "token"]
            assert [kind for kind, _ in events] == ["token"] * 5 + ["end"]
            assert tokens[0].startswith("echo: ") and tokens[1:] == [" t1", " t2", " t3", " t4"]
            assert events[-1][1]["output"] == "".join(tokens)
            assert events[-1][1]["metrics"]["ttft_s"] is not None

            # the client reads two events and goes away: the upstream request is cancelled
            fault_server.configure(chunks=200, chunk_delay_ms=50)
            async with client.stream("POST", "/chains/summarize/stream", json={"input": {"text": "slow"}}) as r:
                seen = 0
                async for line in r.aiter_lines():
                    seen += line.startswith("event: token")
                    if seen == 2:
                        break
            await _wait_for(lambda: fault_server.stats()["cancelled"] == 1)

            # the same before /invoke returns
            fault_server.configure(latency_ms=3000)
            with pytest.raises(httpx.ReadTimeout):
                await client.post("/chains/summarize/invoke", json={"input": {"text": "gone"}}, timeout=0.3)
            await _wait_for(lambda: fault_server.stats()["cancelled"] == 2)
            stats = fault_server.stats()
            assert stats["completed"] == 1 and stats["in_flight"] == 0

            text = (await client.get("/metrics")).text
            assert metric(text, "chain_runner_cancelled_total", chain="summarize", endpoint="stream") == 1
            assert metric(text, "chain_runner_cancelled_total", chain="summarize", endpoint="invoke") == 1
            assert metric(text, "chain_runner_generations_total", chain="summarize", status="cancelled") == 2
        process.send_signal(signal.SIGTERM)  # graceful: the log is complete once the process exits
        assert process.wait(15) == 130  # interrupted, like the CLI (issue 9: it was 143, uvicorn's re-raise)
    statuses = [json.loads(line)["status"] for line in log.read_text().splitlines()]
    assert statuses == ["ok", "cancelled", "cancelled"]


async def test_max_concurrency_holds_across_simultaneous_http_requests(
    tmp_path: Path, fault_server: FaultServer
) -> None:
    fault_server.configure(latency_ms=150)
    with serving(tmp_path, fault_server, "--max-concurrency", "3") as (url, process):
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            replies = await asyncio.gather(
                *(client.post("/chains/summarize/invoke", json={"input": {"text": f"text {i}"}}) for i in range(12))
            )
            assert [r.status_code for r in replies] == [200] * 12
            assert all(f"text {i}" in r.json()["output"] for i, r in enumerate(replies))
            stats = fault_server.stats()
            assert stats["requests"] == 12 and stats["completed"] == 12
            assert stats["peak_in_flight"] == 3

            # SIGTERM: stop accepting, let the in-flight request finish within the grace period
            fault_server.configure(latency_ms=600)
            pending = asyncio.ensure_future(client.post("/chains/summarize/invoke", json={"input": {"text": "last"}}))
            await _wait_for(lambda: fault_server.stats()["in_flight"] == 1)
            process.send_signal(signal.SIGTERM)
            reply = await pending
            assert reply.status_code == 200 and reply.json()["output"].startswith("echo: ")
        assert process.wait(15) == 130


# ----------------------------------------------------------------------------- odd inputs, clients and shutdowns (issue 9)


def _post_raw(client: Any, path: str, body: bytes, **headers: str) -> Any:
    return client.post(path, content=body, headers={"content-type": "application/json", **headers})


async def test_a_lone_surrogate_in_an_input_is_a_422_naming_the_field(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = tmp_path / "gen.jsonl"
    async with client_for(log_path=str(log)) as client:
        for path, body, field in (
            ("/chains/story/invoke", rb'{"input": {"topic": "a \ud800 kite"}}', "input.topic"),
            ("/chains/story/stream", rb'{"input": {"topic": "\udfff"}}', "input.topic"),
            ("/chains/summarize/batch", rb'{"inputs": [{"text": "ok"}, {"text": ["x", "\ud83d"]}]}', "inputs[1].text"),
        ):
            r = await _post_raw(client, path, body)
            assert r.status_code == 422, (path, r.text)
            error = r.json()["error"]
            assert error["type"] == "InputError"
            assert f"{field}: not valid Unicode (lone surrogate)" in error["message"], error["message"]
        # a surrogate in a field's name: still a clear 422, never a 500
        r = await _post_raw(client, "/chains/story/invoke", rb'{"input": {"topic": "x", "\ud800": 1}}')
        assert r.status_code == 422 and "not valid Unicode (lone surrogate)" in r.json()["error"]["message"]
        # deep in a nested value: found without recursion, named in one short line
        deep = b"[" * 900 + rb'"\ud800"' + b"]" * 900
        r = await _post_raw(client, "/chains/story/invoke", b'{"input": {"topic": ' + deep + b"}}")
        assert r.status_code == 422 and "input.topic: not valid Unicode (lone surrogate) in ...[0]" in r.text
        assert len(r.json()["error"]["message"]) < 300
        # a well-formed pair (an emoji) is fine, and its request is logged
        r = await _post_raw(client, "/chains/story/invoke", rb'{"input": {"topic": "a \ud83d\ude00 kite"}}')
        assert r.status_code == 200 and "\U0001f600" in r.json()["output"]
    assert not [rec for rec in caplog.records if rec.levelno >= logging.WARNING], caplog.text
    entries = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    assert [e["input"] for e in entries] == [{"topic": "a \U0001f600 kite"}]  # rejected requests did not run


def test_the_generation_log_writes_a_line_with_a_lone_surrogate(tmp_path: Path) -> None:
    path = tmp_path / "gen.jsonl"
    log = JsonlSink(path, flag="--log", append=True, lock=False, redact=lambda text: text)  # the server's log
    try:
        log.write_entries([{"input": {"topic": "bad \ud800 text"}, "output": "\udfff"}, {"input": {"topic": "next"}}])
    finally:
        log.close()
    lines = path.read_bytes().decode("utf-8").splitlines()  # the file is valid UTF-8
    assert [json.loads(line) for line in lines] == [
        {"input": {"topic": "bad \ud800 text"}, "output": "\udfff"},
        {"input": {"topic": "next"}},
    ]


# any text, lone surrogates included (and made common: they are what breaks UTF-8 encoders)
# (st.text filters surrogates out of its alphabet, so the text is joined from characters)
_any_text = st.lists(st.characters() | st.sampled_from(["\ud800", "\udfff", "\ud83d"]), max_size=20).map("".join)
# Two levels of nesting, spelled out: st.recursive sometimes warns (as an error here) that its extend
# function "can't actually recurse" when an example happens not to draw from it.
_json_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _any_text
_json_values = (
    _json_leaf
    | st.lists(_json_leaf, max_size=4)
    | st.dictionaries(_any_text, _json_leaf | st.lists(_json_leaf, max_size=3), max_size=4)
)


def test_any_json_input_is_answered_200_or_a_clear_422() -> None:
    """Property: whatever JSON (lone surrogates included) a client sends, the server answers a JSON 200 or
    422 InputError, never a 500."""
    app = create_app(FAKE)
    with TestClient(app) as client:

        @settings(max_examples=100, deadline=None)
        @given(
            value=st.fixed_dictionaries(
                {"topic": _any_text | _json_values}, optional={"\ud800": _json_values, "topc": _json_values}
            )
        )
        def check(value: dict[str, Any]) -> None:
            body = json.dumps({"input": value}).encode()  # ASCII: a lone surrogate is sent as \\ud800
            r = _post_raw(client, "/chains/story/invoke", body)
            assert r.status_code in (200, 422), r.text
            if r.status_code == 422:
                assert r.json()["error"]["type"] == "InputError"

        check()


async def test_every_route_with_a_body_documents_its_400_and_answers_it() -> None:
    async with client_for() as client:
        paths = (await client.get("/openapi.json")).json()["paths"]
        posts = {path: ops["post"] for path, ops in paths.items() if "requestBody" in ops.get("post", {})}
        assert "/chains/story/stream" in posts and "/chains/summarize/batch" in posts
        for path, op in posts.items():
            for code in ("400", "413", "422"):
                schema = op["responses"][code]["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorOut"}, (path, code)
        r = await _post_raw(client, "/chains/story/invoke", b'{"input": {"topic": "\xff"}}')  # not UTF-8
        assert r.status_code == 400
        error = r.json()["error"]
        assert error["type"] == "BadRequest" and "JSON" in error["message"]


async def test_the_bearer_scheme_is_case_insensitive_and_the_key_is_not() -> None:
    async with client_for(api_key="s3cret-token") as client:
        for value in ("bearer s3cret-token", "BEARER s3cret-token", "bEaReR   s3cret-token"):
            r = await client.get("/chains", headers={"Authorization": value})
            assert r.status_code == 200, value
        for value in ("bearer wrong", "bearer S3CRET-TOKEN", "Basic s3cret-token", "Bearers3cret-token", "bearer"):
            r = await client.get("/chains", headers={"Authorization": value})
            assert r.status_code == 401, value


@settings(max_examples=300, deadline=None)
@given(header=st.binary(max_size=64) | st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_the_authorization_header_parser_takes_any_bytes(header: bytes) -> None:
    key = bearer_key(header)
    assert key is None or (header.lower().startswith(b"bearer ") and header.endswith(key))


@given(scheme=st.sampled_from(["bearer", "Bearer", "BEARER", "bEARER"]), spaces=st.integers(1, 5))
@settings(max_examples=20, deadline=None)
def test_the_bearer_key_is_found_after_any_case_and_spaces(scheme: str, spaces: int) -> None:
    assert bearer_key(f"{scheme}{' ' * spaces}the-key".encode()) == b"the-key"


async def _read_events(lines: AsyncIterator[str], until: Any = None) -> list[tuple[str, Any]]:
    """SSE events from a response's lines, until the connection closes (or ``until(events)`` is true)."""
    events: list[tuple[str, Any]] = []
    buffer: list[str] = []
    async for line in lines:
        buffer.append(line)
        if not line:
            events += parse_sse("\n".join(buffer))
            buffer = []
            if until is not None and until(events):
                break
    return events


async def test_a_stream_cut_by_the_end_of_the_grace_period_gets_an_error_event(
    tmp_path: Path, fault_server: FaultServer
) -> None:
    fault_server.configure(chunks=400, chunk_delay_ms=50)  # 20 s: longer than --grace 2
    log = tmp_path / "gen.jsonl"
    with serving(tmp_path, fault_server, "--log", str(log)) as (url, process):
        async with (
            httpx.AsyncClient(base_url=url, timeout=15) as client,
            client.stream("POST", "/chains/summarize/stream", json={"input": {"text": "long"}}) as r,
        ):
            lines = r.aiter_lines()
            first = await _read_events(lines, until=lambda events: len(events) >= 2)
            process.send_signal(signal.SIGTERM)
            started = time.monotonic()
            rest = await _read_events(lines)
            waited = time.monotonic() - started
        assert [kind for kind, _ in first] == ["token", "token"]
        assert rest and rest[-1][0] == "error", rest[-3:]
        assert {kind for kind, _ in rest[:-1]} <= {"token"}
        error = rest[-1][1]
        assert error["type"] == "ServiceUnavailable" and error["status"] == 503
        assert "shutting down" in error["message"]
        assert 1.0 < waited < 2.5  # the stream went on for the grace period, then was told why it ends
        assert process.wait(15) == 130
    assert [json.loads(line)["status"] for line in log.read_text().splitlines()] == ["cancelled"]
    await _wait_for(lambda: fault_server.stats()["in_flight"] == 0)


def _spawn_serve(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    err = tmp_path / "serve.err"
    with err.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "runner.py"), "serve", "--port", str(_free_port()), "--model", "fake", *args],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=runner_env(PYTHONFAULTHANDLER="1"),  # a SIGABRT (see _exit_code) dumps every thread's stack
        )
    return process, err


def _exit_code(process: subprocess.Popen[bytes], err: Path, within_s: float = 15) -> int:
    """The process's exit code; one that does not end in time is made to show where each thread is (faulthandler
    on SIGABRT, into its stderr) and fails the test with that, never left running into the next tests."""
    try:
        return process.wait(within_s)
    except subprocess.TimeoutExpired:
        end_process(process, signal.SIGABRT, within_s=10)
        pytest.fail(f"serve did not end within {within_s:g}s of SIGTERM; its stderr:\n{err.read_text()[-6000:]}")


def test_a_sigterm_before_serve_listens_is_an_interrupt(tmp_path: Path) -> None:
    process, err = _spawn_serve(tmp_path)
    time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    assert _exit_code(process, err) == 130, err.read_text()
    text = err.read_text()
    assert [line for line in text.splitlines() if line.startswith("interrupted")], text
    assert "Traceback" not in text


async def test_a_sigterm_after_start_exits_130_with_one_line(tmp_path: Path, fault_server: FaultServer) -> None:
    with serving(tmp_path, fault_server, "-q") as (_, process):
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 130
    assert (tmp_path / "serve.err").read_text().splitlines() == ["interrupted"]


async def test_a_client_gone_mid_stream_does_not_flood_the_log(tmp_path: Path, fault_server: FaultServer) -> None:
    with serving(tmp_path, fault_server, "--model", "fake", "--fake-delay", "0.05") as (url, _):
        port = int(url.rsplit(":", 1)[1])
        body = json.dumps({"input": {"topic": "a kite"}}).encode()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(
                b"POST /chains/story/stream HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            seen = b""
            while seen.count(b"event: token") < 2:
                seen += sock.recv(4096)
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:

            async def cancelled() -> float:
                return metric(
                    (await client.get("/metrics")).text,
                    "chain_runner_cancelled_total",
                    chain="story",
                    endpoint="stream",
                )

            deadline = time.monotonic() + 10
            while await cancelled() < 1:
                assert time.monotonic() < deadline, "the stream was not cancelled"
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)  # the story would still be streaming: 20 tokens a second
    text = (tmp_path / "serve.err").read_text()
    assert text.count("socket.send() raised exception") == 0, text[-2000:]
    assert "Traceback" not in text


# ----------------------------------------------------------------------------- one outcome, one writer (issue 12)


async def test_serve_refuses_an_unwritable_log_in_one_line(tmp_path: Path) -> None:
    from chains.errors import UsageError
    from chains.server import serve

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    target = blocker / "gen.jsonl"  # under a regular file: no directory can be made there
    with pytest.raises(UsageError) as refused:
        await serve(FAKE, log_path=str(target), quiet=True)
    assert str(refused.value) == f"--log {target}: cannot write (Not a directory); pick a writable path"


def test_a_log_that_is_a_fifo_without_a_reader_is_refused_not_waited_on(tmp_path: Path) -> None:
    """``serve --log FIFO`` opened the FIFO for writing before serving: with no reader, it hung there."""
    import os

    fifo = tmp_path / "gen.fifo"
    os.mkfifo(fifo)
    process, err = _spawn_serve(tmp_path, "--log", str(fifo))
    try:
        code = process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)
        raise AssertionError("serve hung opening a --log FIFO that has no reader") from None
    lines = err.read_text().splitlines()
    assert code == 2 and lines[-1].startswith(f"error: --log {fifo}: cannot write ("), lines
    assert lines[-1].endswith("; pick a writable path")
    assert "Traceback" not in err.read_text()


async def test_a_log_cut_short_by_a_crash_gets_its_next_line_on_a_line_of_its_own(tmp_path: Path) -> None:
    """The log is written by the --output writer: a last line left half-written by a crash no longer swallows
    the next entry (it used to be appended to the broken line, losing both)."""
    log = tmp_path / "gen.jsonl"
    log.write_text('{"chain": "story", "status": "ok"}\n{"chain": "story", "inp')
    async with client_for(log_path=str(log)) as client:
        assert (await client.post("/chains/story/invoke", json={"input": {"topic": "a kite"}})).status_code == 200
    lines = log.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3 and lines[1] == '{"chain": "story", "inp'
    entry = json.loads(lines[2])
    assert entry["chain"] == "story" and entry["input"] == {"topic": "a kite"} and entry["status"] == "ok"


async def test_a_failed_stream_ends_with_an_error_event_of_the_failure_status(fault_server: FaultServer) -> None:
    """The status comes from the record's own exception (no callback recovering it on the side)."""
    fault_server.add_fault("400", match="BAD-ROW")
    fault_server.add_fault("429", match="BUSY", retry_after=7)
    async with client_for(on_fault_server(fault_server, max_retries=0)) as client:
        for text, status in (("a BAD-ROW", 502), ("BUSY", 503)):
            r = await client.post("/chains/summarize/stream", json={"input": {"text": text}})
            kind, data = parse_sse(r.text)[-1]
            assert kind == "error" and data["type"] == "ProviderError" and data["status"] == status, r.text


async def test_a_json_answer_that_breaks_its_schema_is_repaired_through_invoke(fault_server: FaultServer) -> None:
    """Schema repair is part of the chain, so the server's routes get it: one more request, counted in the metrics."""
    bad = json.dumps({"keywords": ["sun"], "sentiment": "happy"})
    good = json.dumps({"keywords": ["sun"], "sentiment": "positive"})
    fault_server.add_fault("reply", match="sunny", times=1, message=bad)
    fault_server.add_fault("reply", message=good)
    async with client_for(on_fault_server(fault_server)) as client:
        r = await client.post("/chains/keywords/invoke", json={"input": {"text": "a sunny day"}})
        assert r.status_code == 200, r.text
        assert r.json()["output"] == json.loads(good)
        r = await client.post("/chains/keywords/batch", json={"inputs": [{"text": "a sunny day"}]})
    [record] = r.json()["records"]
    assert record["output"] == json.loads(good) and record["metrics"]["repairs"] == 0  # the fault was spent
    assert "'happy' is not one of" in fault_server.stats()["log"][1]["key"]
    assert fault_server.stats()["requests"] == 3


async def test_the_server_spreads_over_several_endpoints(fault_server: FaultServer) -> None:
    with FaultServer() as other:
        settings = on_fault_server(fault_server, extra_base_urls=[other.base_url])
        async with client_for(settings) as client:
            r = await client.post("/chains/summarize/batch", json={"inputs": [{"text": f"t{i}"} for i in range(8)]})
        assert r.status_code == 200 and r.json()["summary"]["failed"] == 0
        seen = (fault_server.stats()["requests"], other.stats()["requests"])
    assert sum(seen) == 8 and min(seen) >= 2, seen
