#!/usr/bin/env python
"""Issue 16's table, regenerated: client CPU per request of the lean transport beside what it replaces.

    python benchmarks/lean_transport.py               # N=2000, C=50; streamed 200-chunk answers; medians of 3
    python benchmarks/lean_transport.py --quick       # CI smoke: tiny sizes, once (under a minute)
    python benchmarks/lean_transport.py --repeat 1 --n 1000
    python benchmarks/lean_transport.py --profile project_lean --n 2000 --concurrency 50   # profile_contender.py's

Contenders, each in its own process pinned to the client core, against one mock server (``tests/fault_server.py``)
pinned to the other (``benchmarks/processes.py``); the contenders of ``benchmarks/contenders.py`` plus three of
this file: a minimal aiohttp client (post the body, read the JSON, no SDK), LangChain ``abatch`` on the SDK's
aiohttp transport, and ``run_batch`` over the lean model (``RunSettings(http_backend="lean")``).  Reported: client
CPU ms per request (non-streamed) and chunks per client CPU-second (streamed), as ratios against raw
``AsyncOpenAI`` (httpx) of the same run; then start-up: the CLI's start to its first request per backend, and
``-X importtime`` of the lean path by package.  ``--out FILE.json`` keeps every sample.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import contenders as C  # noqa: E402
from processes import PY, RUNNER, MockServer, Pinning, child_env, run_process  # noqa: E402

ROWS = [
    ("minimal", "minimal aiohttp client (no SDK: post the body, read the JSON)"),
    ("raw_aiohttp", "raw AsyncOpenAI, aiohttp transport"),
    ("raw", "raw AsyncOpenAI (httpx)"),
    ("lc_abatch_aiohttp", "LangChain `abatch`, aiohttp transport"),
    ("project_lib", "chain-runner `run_batch` (ChatOpenAI, aiohttp transport)"),
    ("project_lean", "chain-runner `run_batch`, lean model"),
]
BASELINE = "raw"


# ----------------------------------------------------------------------------- this file's contenders


async def minimal(job: C.Job, tally: C.Tally) -> None:
    """What a client needs at the least: one aiohttp pool, orjson, a semaphore; streamed: data lines counted."""
    import aiohttp
    import orjson

    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=job.concurrency),
        headers={"Authorization": f"Bearer {C.API_KEY}", "Content-Type": "application/json"},
    )
    semaphore = asyncio.Semaphore(job.concurrency)
    url = job.url + "/chat/completions"

    async def one(text: str) -> None:
        body: dict[str, Any] = {"model": C.MODEL, "messages": [{"role": "user", "content": text}]}
        if job.stream:
            body.update(stream=True, stream_options={"include_usage": True})
        async with semaphore:
            try:
                async with session.post(url, data=orjson.dumps(body)) as response:
                    if not job.stream:
                        tally.output(text, orjson.loads(await response.read())["choices"][0]["message"]["content"])
                        return
                    parts = []
                    async for line in response.content:
                        if line.startswith(b"data: {"):
                            choices = orjson.loads(line[6:])["choices"]
                            if choices and (piece := choices[0]["delta"].get("content")):
                                parts.append(piece)
                                tally.chunks += 1
                    tally.output(text, "".join(parts))
            except Exception as exc:
                tally.error(exc)

    await C.setup_done()
    await asyncio.gather(*(one(t) for t in job.texts))
    await session.close()


async def lc_abatch_aiohttp(job: C.Job, tally: C.Tally) -> None:
    """``lc_abatch`` with ChatOpenAI on the SDK's aiohttp transport (``http_async_client=DefaultAioHttpClient()``)."""
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_openai import ChatOpenAI
    from openai import DefaultAioHttpClient

    model = ChatOpenAI(
        model=C.MODEL,
        base_url=job.url,
        api_key=C.API_KEY,  # type: ignore[arg-type]
        max_retries=0,
        timeout=60.0,
        streaming=job.stream,
        stream_usage=job.stream or None,
        http_async_client=DefaultAioHttpClient(),
    )
    chain = ChatPromptTemplate.from_messages([("human", "{text}")]) | model | StrOutputParser()
    config: dict[str, Any] = {"max_concurrency": job.concurrency}
    if job.stream:
        config["callbacks"] = [C._lc_token_handler(tally)]
    await C.setup_done()
    outputs = await chain.abatch([{"text": t} for t in job.texts], config=config, return_exceptions=True)  # type: ignore[arg-type]
    for text, output in zip(job.texts, outputs, strict=True):
        tally.error(output) if isinstance(output, BaseException) else tally.output(text, output)


async def project_lean(job: C.Job, tally: C.Tally) -> None:
    await C.project_lib(job, tally, http_backend="lean")


EXTRA = {"minimal": minimal, "lc_abatch_aiohttp": lc_abatch_aiohttp, "project_lean": project_lean}


def child(spec: str) -> int:
    C.CONTENDERS.update(EXTRA)
    return C.main([spec])


def cli_child(backend: str, argv: list[str]) -> int:
    """``runner.py ARGS`` with ``http_backend`` defaulting to ``backend`` (the CLI has no flag for it yet)."""
    sys.path.insert(0, str(RUNNER.parent))
    from chains.settings import RunSettings

    RunSettings.model_fields["http_backend"].default = backend
    RunSettings.model_rebuild(force=True)
    import runner

    return runner.main(argv)


# ----------------------------------------------------------------------------- measuring


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.pinning = Pinning()
        self.work = Path(tempfile.mkdtemp(prefix="lean-bench-"))
        self.env = child_env(self.work, cache_bytecode=not args.quick)
        self.failures: list[str] = []

    def contender(self, server: MockServer, name: str, n: int, concurrency: int, stream: bool, chunks: int) -> Any:
        job = {
            "contender": name,
            "url": server.url,
            "n": n,
            "concurrency": concurrency,
            "stream": stream,
            "chunks": chunks,
        }
        argv = [*self.pinning.client(), PY, __file__, "--child", json.dumps(job)]
        proc = run_process(argv, env=self.env, timeout=600, stdout_path=self.work / "child.out")
        result = next((json.loads(x[7:]) for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if result is None or result["ok"] != n:
            self.failures.append(f"{name} stream={stream}: {result or proc.stderr[-600:]}")
            return None
        return result

    def table(self, server: MockServer, stream: bool) -> dict[str, list[dict[str, Any]]]:
        a = self.args
        n, concurrency, chunks = (a.stream_n, a.concurrency, a.chunks) if stream else (a.n, a.concurrency, 8)
        server.configure(chunks=chunks)
        samples: dict[str, list[dict[str, Any]]] = defaultdict(list)
        names = [name for name, _ in ROWS]
        for rep in range(a.repeat):
            for name in names[rep % len(names) :] + names[: rep % len(names)]:  # the order rotates
                result = self.contender(server, name, n, concurrency, stream, chunks)
                if result is not None:
                    samples[name].append(result)
                    print(f"  {'stream' if stream else 'json'} {name}: cpu {result['cpu_s']:.3f}s", file=sys.stderr)
        return samples

    def first_request_s(self, server: MockServer, backend: str) -> float:
        """Seconds from the CLI's spawn to its first request at the server (both on CLOCK_MONOTONIC)."""
        inputs = self.work / "one.txt"
        inputs.write_text("item 0\n")
        server.reset_stats()
        run = ["run", "echo", "--input", str(inputs), "--prompts-dir", str(HERE / "prompts"), "--base-url", server.url]
        run += [
            "--model",
            f"openai:{C.MODEL}",
            "--output",
            str(self.work / "o.jsonl"),
            "--overwrite",
            "-q",
            "--no-stream",
        ]
        started = time.monotonic()
        proc = run_process([*self.pinning.client(), PY, __file__, "--cli", backend, *run], env=self.env, timeout=120)
        with urllib.request.urlopen(server.root + "/_control/stats?log=1", timeout=10) as response:
            log = json.loads(response.read())["log"]
        if proc.returncode != 0 or not log:
            self.failures.append(f"cli {backend}: exit {proc.returncode}: {proc.stderr[-400:]}")
            return float("nan")
        return float(log[0]["t"]) - started

    def import_times(self, server: MockServer, backend: str) -> dict[str, float]:
        """``-X importtime`` of the CLI up to its first request: self time (ms) per top-level package."""
        code = (
            f"import sys; sys.path.insert(0, {str(RUNNER.parent)!r}); from chains.settings import RunSettings; "
            "from chains.providers.models import ModelSession; from chains.spec.registry import get_chain; "
            "import runner, chains.cli.commands; "
            f"s = ModelSession(RunSettings(model='openai:bench', base_url={server.url!r}, http_backend={backend!r})); "
            "get_chain('story', s.model)"
        )
        proc = run_process([PY, "-X", "importtime", "-c", code], env=self.env, timeout=120)
        per: dict[str, float] = defaultdict(float)
        for line in proc.stderr.splitlines():
            if line.startswith("import time:") and "|" in line and "self" not in line:
                self_us, _cum, name = (part.strip() for part in line[len("import time:") :].split("|"))
                per[name.split(".")[0]] += int(self_us) / 1000
        return dict(per)


def _median(samples: list[dict[str, Any]], key: str) -> float:
    return statistics.median(s[key] for s in samples) if samples else float("nan")


def report(bench: Bench, json_rows: dict[str, Any], stream_rows: dict[str, Any], startup: dict[str, Any]) -> str:
    a = bench.args
    base = _median(json_rows.get(BASELINE, []), "cpu_s") / a.n * 1000
    lines = [f"| non-streamed, N={a.n}, C={a.concurrency} | client CPU ms/request | × raw AsyncOpenAI (httpx) |"]
    lines.append("|---|---:|---:|")
    for name, label in ROWS:
        ms = _median(json_rows.get(name, []), "cpu_s") / a.n * 1000
        lines.append(f"| {label} | {ms:.2f} | {ms / base:.2f} |")
    rate = {name: a.stream_n * a.chunks / _median(stream_rows.get(name, []), "cpu_s") for name, _ in ROWS}
    lines += [
        "",
        f"| streamed {a.chunks}-chunk answers, N={a.stream_n} | chunks per client CPU-second | × raw AsyncOpenAI (httpx) |",
    ]
    lines.append("|---|---:|---:|")
    for name, label in ROWS:
        lines.append(f"| {label} | {rate[name]:,.0f} | {rate[name] / rate[BASELINE]:.2f} |")
    lines += ["", "| start-up (CLI, one input) | start to first request, s |", "|---|---:|"]
    for backend, seconds in startup["first_request_s"].items():
        lines.append(f"| http_backend={backend} | {seconds:.2f} |")
    for backend, per in startup["imports_ms"].items():
        top = sorted(per.items(), key=lambda kv: -kv[1])[:12]
        lines.append(
            f"\n-X importtime, {backend} (total {sum(per.values()):.0f} ms self time): "
            + ", ".join(f"{k} {v:.0f}" for k, v in top)
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke: tiny sizes, once; never judges speed")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--stream-n", type=int, default=200)
    parser.add_argument("--chunks", type=int, default=200)
    parser.add_argument("--out", help="write every sample here (JSON)")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeat, args.n, args.concurrency, args.stream_n, args.chunks = 1, 200, 20, 20, 50
    bench = Bench(args)
    bench.pinning.pin_self()
    server = MockServer(bench.pinning, bench.env, bench.work / "server.log").start()
    try:
        json_rows = bench.table(server, stream=False)
        stream_rows = bench.table(server, stream=True)
        server.configure(chunks=8)
        backends = ("aiohttp", "lean")
        startup = {
            "first_request_s": {b: bench.first_request_s(server, b) for b in backends},
            "imports_ms": {b: bench.import_times(server, b) for b in backends},
        }
    finally:
        server.stop()
    print(report(bench, json_rows, stream_rows, startup))
    if args.out:
        Path(args.out).write_text(json.dumps({"json": json_rows, "stream": stream_rows, "startup": startup}, indent=1))
    for failure in bench.failures:
        print(f"failed: {failure}", file=sys.stderr)
    return 1 if bench.failures else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        sys.exit(child(sys.argv[2]))
    if sys.argv[1:2] == ["--cli"]:
        sys.exit(cli_child(sys.argv[2], sys.argv[3:]))
    if sys.argv[1:2] == ["--profile"]:  # profile_contender.py, with this file's contenders too
        import profile_contender

        C.CONTENDERS.update(EXTRA)
        sys.exit(profile_contender.main(sys.argv[2:]))
    sys.exit(main())
