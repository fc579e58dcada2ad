#!/usr/bin/env python
"""Issue 16's table, regenerated: client CPU per request of the lean path beside what it replaces.

    python benchmarks/lean_transport.py               # N=2000, C=50; streamed 200-chunk answers; medians of 3
    python benchmarks/lean_transport.py --quick       # the smoke sizes (make bench-smoke runs them: seconds)
    python benchmarks/lean_transport.py --parts json --only raw_aiohttp project_lean --repeat 5
    python benchmarks/lean_transport.py --profile project_lean --n 2000 --concurrency 50   # profile_contender.py's
    python benchmarks/run.py --only 9                 # the same, as scenario 9 of the suite

Contenders, each in its own process pinned to the client core, against one mock server (``tests/fault_server.py``)
pinned to the other (``benchmarks/processes.py``); the contenders of ``benchmarks/contenders.py`` plus three of
this file: a minimal aiohttp client (post the body, read the JSON, no SDK), LangChain ``abatch`` on the SDK's
aiohttp transport, and ``run_batch`` over the lean model (``RunSettings(http_backend="lean")``).  Reported: client
CPU ms per request (non-streamed; also the CLI's whole process) and chunks per client CPU-second (streamed), as
ratios against raw ``AsyncOpenAI`` (httpx, as in the issue) and its aiohttp transport of the same run; then the
CLI's start to its first request per backend, its last answer to its exit (ended by ``runner.finish`` or, as
before, by ``sys.exit``), and ``-X importtime`` of its run by package.  ``--out FILE.json`` keeps every sample.
As scenario 9 it also runs ``lean_layers.py`` (the lean path's CPU per request, layer by layer).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
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
    ("project_chatopenai", "chain-runner `run_batch` (ChatOpenAI, aiohttp transport)"),
    ("project_lean", "chain-runner `run_batch`, lean model"),
]
BASELINE = "raw"
PARTS = ("json", "stream", "startup")
FLOORS = (
    ("`python -c pass`", "pass"),
    ("`import langchain_core.runnables.base` (a `Runnable`)", "import langchain_core.runnables.base"),
    (
        "the same, langsmith's generated types deferred as the CLI does",
        f"import sys; sys.path.insert(0, {str(HERE.parent)!r}); import chains.engine.lazy_imports as lazy; lazy.defer_all(); "
        "import langchain_core.runnables.base",
    ),
)
"""The start-up floor, measured beside the CLI: the interpreter, and what any process with a LangChain chain imports."""


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


async def project_chatopenai(job: C.Job, tally: C.Tally) -> None:
    """``run_batch`` over ``ChatOpenAI`` on the SDK's aiohttp transport (``--http-backend aiohttp``; lean is the default)."""
    await C.project_lib(job, tally, http_backend="aiohttp")


EXTRA = {
    "minimal": minimal,
    "lc_abatch_aiohttp": lc_abatch_aiohttp,
    "project_lean": project_lean,
    "project_chatopenai": project_chatopenai,
}


def child(spec: str) -> int:
    C.CONTENDERS.update(EXTRA)
    return C.main([spec])


def cli_child(exit_mode: str, argv: list[str]) -> None:
    """``runner.py ARGS``, ended as ``runner.py`` ends (``finish``: no interpreter finalization when nothing needs
    it) or, for the comparison, as it ended before (``sys.exit``)."""
    sys.path.insert(0, str(RUNNER.parent))
    import runner

    runner.own_process()  # as ``python runner.py`` starts
    code = runner.main(argv)
    if exit_mode == "finish":
        runner.finish(code)
    sys.exit(code)


# ----------------------------------------------------------------------------- measuring


class Bench:
    """One run of this file's tables: the sizes (``args``), the pinning, the children's environment, the failures."""

    def __init__(
        self,
        args: argparse.Namespace,
        pinning: Pinning | None = None,
        env: dict[str, str] | None = None,
        work: Path | None = None,
    ) -> None:
        self.args = args
        self.pinning = pinning or Pinning()
        self.work = work or Path(tempfile.mkdtemp(prefix="lean-bench-"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.env = env or child_env(self.work, cache_bytecode=not args.quick)
        self.failures: list[str] = []

    def names(self) -> list[str]:
        return [name for name, _ in ROWS if not self.args.only or name in self.args.only]

    def children(self, server: MockServer, jobs: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
        """Run ``jobs`` one after the other in one child process (one job: its own process, as measured)."""
        for job in jobs:
            job["url"] = server.url
        argv = [*self.pinning.client(), PY, __file__, "--child", json.dumps(jobs if len(jobs) > 1 else jobs[0])]
        proc = run_process(argv, env=self.env, timeout=600, stdout_path=self.work / "child.out")
        results = [json.loads(x[7:]) for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        checked: list[dict[str, Any] | None] = []
        for index, job in enumerate(jobs):
            result = results[index] if index < len(results) else None
            if result is None or result["ok"] != job["n"]:
                self.failures.append(f"{job['contender']} stream={job['stream']}: {result or proc.stderr[-600:]}")
                result = None
            checked.append(result)
        return checked

    def job(self, name: str, stream: bool) -> dict[str, Any]:
        a = self.args
        n, chunks = (a.stream_n, a.chunks) if stream else (a.n, a.json_chunks)
        return {"contender": name, "n": n, "concurrency": a.concurrency, "stream": stream, "chunks": chunks}

    def table(self, server: MockServer, stream: bool) -> dict[str, list[dict[str, Any]]]:
        server.configure(chunks=self.args.chunks if stream else self.args.json_chunks)
        samples: dict[str, list[dict[str, Any]]] = defaultdict(list)
        names = self.names()
        for rep in range(self.args.repeat):
            for name in names[rep % len(names) :] + names[: rep % len(names)]:  # the order rotates
                (result,) = self.children(server, [self.job(name, stream)])
                if result is not None:
                    samples[name].append(result)
                    print(f"  {'stream' if stream else 'json'} {name}: cpu {result['cpu_s']:.3f}s", file=sys.stderr)
        return samples

    def quick_tables(self, server: MockServer) -> tuple[dict[str, Any], dict[str, Any]]:
        """``--quick``: every contender, both tables, once, in one child (no numbers to judge: every code path)."""
        server.configure(chunks=self.args.chunks)
        jobs = [self.job(name, stream) for stream in (False, True) for name in self.names()]
        tables: tuple[dict[str, Any], dict[str, Any]] = ({}, {})
        for job, result in zip(jobs, self.children(server, jobs), strict=True):
            if result is not None:
                tables[job["stream"]][job["contender"]] = [result]
        return tables

    def cli_times(self, server: MockServer, backend: str, n: int = 1, exit_mode: str = "finish") -> dict[str, float]:
        """The CLI over ``n`` inputs: seconds from its spawn to its first request at the server, and from its last
        request to its exit (both on CLOCK_MONOTONIC)."""
        inputs = self.work / f"in-{n}.txt"
        inputs.write_text("".join(f"item {i}\n" for i in range(n)))
        server.reset_stats()
        run = ["run", "echo", "--input", str(inputs), "--prompts-dir", str(HERE / "prompts"), "--base-url", server.url]
        run += ["--model", f"openai:{C.MODEL}", "--http-backend", backend, "--max-concurrency", "50"]
        run += ["--output", str(self.work / "o.jsonl"), "--overwrite", "-q", "--no-stream"]
        argv = [*self.pinning.client(), PY, __file__, "--cli", exit_mode, *run]
        started = time.monotonic()
        proc = run_process(argv, env=self.env, timeout=300)
        ended = started + proc.wall_s
        with urllib.request.urlopen(server.root + "/_control/stats?log=1", timeout=10) as response:
            log = json.loads(response.read())["log"]
        if proc.returncode != 0 or len(log) < n:
            self.failures.append(f"cli {backend} n={n}: exit {proc.returncode}: {proc.stderr[-400:]}")
            return {"first_request_s": float("nan"), "after_last_s": float("nan"), "cpu_ms": float("nan")}
        first = min(float(entry["t"]) for entry in log)
        last = max(float(entry["t"]) + float(entry.get("duration") or 0.0) for entry in log)
        return {"first_request_s": first - started, "after_last_s": ended - last, "cpu_ms": proc.cpu_s / n * 1000}

    def import_times(self, server: MockServer, backend: str) -> dict[str, float]:
        """``-X importtime`` of the CLI over one input: self time (ms) per top-level package."""
        inputs = self.work / "in-1.txt"
        inputs.write_text("item 0\n")
        run = ["run", "echo", "--input", str(inputs), "--prompts-dir", str(HERE / "prompts"), "--base-url", server.url]
        run += ["--model", f"openai:{C.MODEL}", "--http-backend", backend, "-q", "--no-stream"]
        proc = run_process([PY, "-X", "importtime", str(RUNNER), *run], env=self.env, timeout=120)
        per: dict[str, float] = defaultdict(float)
        for line in proc.stderr.splitlines():
            if line.startswith("import time:") and "|" in line and "self" not in line:
                self_us, _cum, name = (part.strip() for part in line[len("import time:") :].split("|"))
                per[name.split(".")[0]] += int(self_us) / 1000
        return dict(per)

    def startup(self, server: MockServer) -> dict[str, Any]:
        """Start to first request per backend (one input), after the last answer to the exit (``--teardown-n``
        inputs, ended by ``runner.finish`` or by ``sys.exit``), and ``-X importtime`` of the lean path."""
        server.configure(chunks=self.args.json_chunks)
        backends = ("lean",) if self.args.quick else ("aiohttp", "lean")
        first: dict[str, list[float]] = defaultdict(list)
        after: dict[str, list[float]] = defaultdict(list)
        whole: dict[str, list[float]] = defaultdict(list)
        n = self.args.teardown_n
        floors: dict[str, list[float]] = defaultdict(list)
        for _ in range(self.args.repeat):
            for label, code in FLOORS:
                floors[label].append(
                    run_process([*self.pinning.client(), PY, "-c", code], env=self.env, timeout=120).wall_s
                )
            for backend in backends:
                first[backend].append(self.cli_times(server, backend)["first_request_s"])
                if backend != "lean":
                    whole[backend].append(self.cli_times(server, backend, n)["cpu_ms"])
            for mode in ("sys.exit", "finish"):
                times = self.cli_times(server, "lean", n, mode)
                after[mode].append(times["after_last_s"])
                if mode == "finish":
                    whole["lean"].append(times["cpu_ms"])
        return {
            "first_request_s": {b: statistics.median(v) for b, v in first.items()},
            "after_last_s": {m: statistics.median(v) for m, v in after.items()},
            "cli_cpu_ms": {b: statistics.median(v) for b, v in whole.items()},
            "imports_ms": {b: self.import_times(server, b) for b in backends},
            "floors_s": {label: statistics.median(v) for label, v in floors.items()},
        }


def _median(samples: list[dict[str, Any]], key: str) -> float:
    return statistics.median(s[key] for s in samples) if samples else float("nan")


def report(bench: Bench, json_rows: dict[str, Any], stream_rows: dict[str, Any], startup: dict[str, Any]) -> str:
    """The issue's tables: ratios against raw AsyncOpenAI (httpx, as the issue's) and its aiohttp transport."""
    a = bench.args
    lines: list[str] = []
    if json_rows:
        ms = {name: _median(json_rows.get(name, []), "cpu_s") / a.n * 1000 for name, _ in ROWS}
        lines += [
            f"| non-streamed, N={a.n}, C={a.concurrency} | client CPU ms/request | × raw (httpx) | × raw aiohttp |"
        ]
        lines.append("|---|---:|---:|---:|")
        for name, label in ROWS:
            lines.append(
                f"| {label} | {ms[name]:.2f} | {ms[name] / ms[BASELINE]:.2f} | {ms[name] / ms['raw_aiohttp']:.2f} |"
            )
        for backend, cpu_ms in (startup.get("cli_cpu_ms") or {}).items():
            label = f"chain-runner CLI, whole process ({a.teardown_n:,} inputs, http_backend={backend})"
            lines.append(f"| {label} | {cpu_ms:.2f} | {cpu_ms / ms[BASELINE]:.2f} | {cpu_ms / ms['raw_aiohttp']:.2f} |")
        lines += ["", f"run_batch, lean: {ms['project_lean'] / ms['minimal']:.1f} × the minimal client", ""]
    if stream_rows:
        rate = {name: a.stream_n * a.chunks / _median(stream_rows.get(name, []), "cpu_s") for name, _ in ROWS}
        lines += [
            f"| streamed {a.chunks}-chunk answers, N={a.stream_n} | chunks per client CPU-second | × raw (httpx) | × raw aiohttp |"
        ]
        lines.append("|---|---:|---:|---:|")
        for name, label in ROWS:
            r = rate[name]
            lines.append(f"| {label} | {r:,.0f} | {r / rate[BASELINE]:.2f} | {r / rate['raw_aiohttp']:.2f} |")
        lines.append("")
    if startup.get("first_request_s"):
        lines += ["| CLI (`runner.py run echo`) | seconds |", "|---|---:|"]
        for backend, seconds in startup["first_request_s"].items():
            lines.append(f"| start to first request, one input, http_backend={backend} | {seconds:.2f} |")
        for label, seconds in (startup.get("floors_s") or {}).items():
            lines.append(f"| floor: {label} | {seconds:.2f} |")
        for mode, seconds in startup["after_last_s"].items():
            lines.append(f"| last answer to exit, {a.teardown_n:,} inputs, lean, ended by `{mode}` | {seconds:.2f} |")
        for backend, per in startup["imports_ms"].items():
            top = sorted(per.items(), key=lambda kv: -kv[1])[:10]
            total = sum(per.values())
            lines.append(
                f"\n-X importtime, {backend} (self times, {total:.0f} ms in all): "
                + ", ".join(f"{k} {v:.0f}" for k, v in top)
            )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke: tiny sizes, once; never judges speed")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--stream-n", type=int, default=200)
    parser.add_argument("--chunks", type=int, default=200)
    parser.add_argument("--teardown-n", type=int, default=2000, help="inputs of the CLI run whose exit is timed")
    parser.add_argument("--out", help="write every sample here (JSON)")
    parser.add_argument("--only", nargs="+", choices=[name for name, _ in ROWS], help="just these contenders")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="which tables (default: all)")
    args = parser.parse_args(argv)
    args.json_chunks = 8
    if args.quick:
        args.repeat, args.n, args.concurrency, args.stream_n, args.chunks, args.teardown_n = 1, 100, 20, 10, 20, 50
        args.json_chunks = args.chunks  # one child runs both tables against one server setting
    return args


def measure(bench: Bench) -> dict[str, Any]:
    """Every wanted table against one mock server: ``{"json", "stream", "startup", "table"}``."""
    args = bench.args
    server = MockServer(bench.pinning, bench.env, bench.work / "server.log").start()
    out: dict[str, Any] = {"json": {}, "stream": {}, "startup": {}}
    try:
        if args.quick and {"json", "stream"} <= set(args.parts):
            out["json"], out["stream"] = bench.quick_tables(server)
        else:
            for part, stream in (("json", False), ("stream", True)):
                if part in args.parts:
                    out[part] = bench.table(server, stream)
        if "startup" in args.parts:
            out["startup"] = bench.startup(server)
    finally:
        server.stop()
    out["table"] = report(bench, out["json"], out["stream"], out["startup"])
    return out


def run_wire(suite: Any) -> None:
    """Scenario 9 of the suite (``benchmarks/run.py``): this file's tables, ``--quick`` sizes in the smoke run."""
    args = parse_args(["--quick"] if suite.quick else ["--repeat", str(suite.repeat)])
    bench = Bench(args, pinning=suite.pinning, env=suite.env, work=suite.work / "wire")
    suite.log("9. close to the wire (issue 16): client CPU per request, streamed chunks, CLI start-up and exit")
    out = measure(bench)
    layers = subprocess.run(
        [PY, str(HERE / "lean_layers.py"), *(["--quick"] if suite.quick else [])],
        env=suite.env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if layers.returncode != 0:
        bench.failures.append(f"lean_layers.py: exit {layers.returncode}: {layers.stderr[-400:]}")
    out["layers"] = layers.stdout
    suite.results["wire"] = {"title": "Close to the wire: the lean model beside raw clients", **out}
    suite.log(out["table"] + "\n\n" + layers.stdout)
    for failure in bench.failures:
        suite.fail(f"wire: {failure}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bench = Bench(args)
    bench.pinning.pin_self()
    out = measure(bench)
    print(out["table"])
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))
    for failure in bench.failures:
        print(f"failed: {failure}", file=sys.stderr)
    return 1 if bench.failures else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        sys.exit(child(sys.argv[2]))
    if sys.argv[1:2] == ["--cli"]:
        cli_child(sys.argv[2], sys.argv[3:])
    if sys.argv[1:2] == ["--profile"]:  # profile_contender.py, with this file's contenders too
        import profile_contender

        C.CONTENDERS.update(EXTRA)
        sys.exit(profile_contender.main(sys.argv[2:]))
    sys.exit(main())
