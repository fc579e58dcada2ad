#!/usr/bin/env python
"""Where one contender's client CPU goes: cProfile over its measured run, grouped by package.

    python benchmarks/profile_contender.py project_lib --n 2000 --concurrency 20          # starts its own mock server
    python benchmarks/profile_contender.py project_lib --stream --chunks 200 --n 100
    python benchmarks/profile_contender.py lc_abatch --url http://127.0.0.1:PORT/v1       # an already running one

Prints the share of own time (``tottime``) per package (our ``chains/``, LangChain,
openai, httpx, pydantic, asyncio, ...), then the functions with the most own time and
the ``chains/`` functions with the most cumulative time.  cProfile slows everything
down by a similar factor, so read shares, not absolute numbers.  ``--out FILE.prof``
keeps the raw profile (for snakeviz / pstats).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import contenders as C  # noqa: E402

GROUPS = (
    ("/chains/", "chains (ours)"),
    ("langchain_core", "langchain_core"),
    ("langchain_openai", "langchain_openai"),
    ("/openai/", "openai SDK"),
    ("httpx_aiohttp", "httpx_aiohttp"),
    ("/httpx2/", "httpx2"),
    ("/httpcore2/", "httpcore2"),
    ("/httpx/", "httpx (legacy)"),
    ("/httpcore/", "httpcore (legacy)"),
    ("/anyio/", "anyio"),
    ("/h11/", "h11"),
    ("/aiohttp/", "aiohttp"),
    ("/pydantic", "pydantic"),
    ("/tenacity/", "tenacity"),
    ("/asyncio/", "asyncio"),
    ("/uuid", "uuid"),
    ("/typing.py", "typing"),
    ("/inspect.py", "inspect"),
    ("importlib", "importlib (runtime imports)"),
    ("/json/", "json"),
    ("/contextvars", "contextvars"),
)


def group_of(filename: str) -> str:
    for needle, name in GROUPS:
        if needle in filename:
            return name
    if filename.startswith("~") or filename == "<built-in>":
        return "builtins (C)"
    if "benchmarks/contenders" in filename:
        return "benchmark harness"
    return "other Python"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("contender", choices=sorted(C.CONTENDERS))
    parser.add_argument("--url", help="an OpenAI-compatible mock server (default: start tests/fault_server.py)")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--out", help="write the raw profile here")
    args = parser.parse_args(argv)

    server = None
    url = args.url
    if url is None:
        import run  # the suite's server wrapper

        pinning = run.Pinning()
        server = run.MockServer(pinning, run.child_env(HERE / "results", cache_bytecode=False), Path("/dev/null"))
        server.start()
        server.configure(chunks=args.chunks)
        url = server.url
        if pinning.enabled and pinning.client_core is not None:
            import os

            os.sched_setaffinity(0, {pinning.client_core})
    try:
        job = C.Job(args.contender, url, args.n, args.concurrency, stream=args.stream, chunks=args.chunks)
        profiler = cProfile.Profile()
        tally = C.Tally()

        async def start_profiling() -> None:  # contenders call this once set up: imports stay out
            profiler.enable()

        C.setup_done = start_profiling

        async def go() -> None:
            await C.CONTENDERS[job.contender](job, tally)

        asyncio.run(go())
        profiler.disable()
    finally:
        if server is not None:
            server.stop()
    print(f"{args.contender}: {tally.ok}/{args.n} ok, {tally.errors} errors, {tally.chunks} chunks")
    if args.out:
        profiler.dump_stats(args.out)
    stats = pstats.Stats(profiler)
    raw = stats.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in raw.values()) or 1.0
    per_group: dict[str, float] = defaultdict(float)
    for (filename, _line, _name), (_cc, _nc, tottime, _cum, _callers) in raw.items():
        per_group[group_of(filename)] += tottime
    print(f"\nown time by package (total {total:.2f} s under cProfile):")
    for name, seconds in sorted(per_group.items(), key=lambda kv: -kv[1]):
        print(
            f"  {name:<28} {seconds:7.2f} s  {100 * seconds / total:5.1f}%  {1000 * seconds / args.n:6.3f} ms/request"
        )

    def label(key: tuple[str, int, str]) -> str:
        filename, line, name = key
        short = filename
        for marker in ("site-packages/", str(HERE.parent) + "/", "python3.11/"):
            if marker in filename:
                short = filename.split(marker, 1)[1]
        return f"{short}:{line}({name})"

    print(f"\ntop {args.top} functions by own time:")
    for key, value in sorted(raw.items(), key=lambda kv: -kv[1][2])[: args.top]:
        print(f"  {value[2]:6.2f} s own {value[3]:6.2f} s cum {value[1]:8d} calls  {label(key)}")
    print("\nchains/ functions by cumulative time:")
    ours = [(k, v) for k, v in raw.items() if "/chains/" in k[0]]
    for key, value in sorted(ours, key=lambda kv: -kv[1][3])[: args.top]:
        print(f"  {value[3]:6.2f} s cum {value[2]:6.2f} s own {value[1]:8d} calls  {label(key)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
