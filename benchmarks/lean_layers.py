#!/usr/bin/env python
"""Where the lean path's client CPU per request goes, layer by layer, in one process against one mock server.

    python benchmarks/lean_layers.py              # N=2000, C=50, min of 5 rounds, the layers in alternation
    python benchmarks/lean_layers.py --quick      # seconds (never judged)

Four layers, each N non-streamed requests at concurrency C: the minimal aiohttp client (post the body, read the
JSON); ``LeanChatOpenAI._agenerate`` alone (the body built and the answer read as ``ChatOpenAI`` does);
``ManagedChatModel._agenerate`` over it (limits, deadline, usage, cost); and ``run_batch`` over the ``echo``
prompt file's chain (the compiled path, metrics, records).  Each layer's CPU ms per request is the cost of what
it adds on top of the one before; the mock server (``tests/fault_server.py``) is pinned to one core, this
process to the other.  The minimum of the rounds is reported: the machine's noise only ever adds.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from processes import MockServer, Pinning, child_env  # noqa: E402

LAYERS = ("minimal", "lean", "managed", "run_batch")


async def _pool(n: int, concurrency: int, call: Any) -> float:
    """``n`` calls by ``concurrency`` workers, as ``run_batch`` runs them (a ``gather`` of all ``n`` would keep ``n``
    coroutines alive at once, and the garbage collector's walks of them would be billed to the layer)."""
    left = iter(range(n))

    async def worker() -> None:
        for i in left:
            await call(f"item {i}")

    started = time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.process_time() - started


async def layer(name: str, url: str, n: int, concurrency: int) -> float:
    """CPU seconds of ``n`` requests through ``name``."""
    import aiohttp
    import orjson
    from langchain_core.messages import HumanMessage

    from chains.engine.execution import run_batch
    from chains.providers.models import ModelSession
    from chains.settings import RunSettings
    from chains.spec.prompts_library import PromptLibrary
    from chains.spec.registry import get_chain

    if name == "minimal":
        headers = {"Authorization": "Bearer k", "Content-Type": "application/json"}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency), headers=headers) as http:

            async def post(text: str) -> None:
                body = orjson.dumps({"model": "bench", "messages": [{"role": "user", "content": text}]})
                async with http.post(url + "/chat/completions", data=body) as response:
                    orjson.loads(await response.read())["choices"][0]["message"]["content"]

            return await _pool(n, concurrency, post)
    settings = RunSettings(model="openai:bench", base_url=url, api_key="k", max_concurrency=concurrency)  # type: ignore[arg-type]
    async with ModelSession(settings) as session:
        model = session.model
        if name == "lean":
            inner = model._inner(None)
            return await _pool(n, concurrency, lambda text: inner._agenerate([HumanMessage(text)]))
        if name == "managed":
            return await _pool(n, concurrency, lambda text: model._agenerate([HumanMessage(text)]))
        chain = get_chain("echo", model, library=PromptLibrary([HERE / "prompts"]))
        started = time.process_time()
        inputs = ({"text": f"item {i}"} for i in range(n))
        async for record in run_batch(chain, inputs, settings=session.settings, limits=session.limits):
            if record.error is not None:
                raise RuntimeError(f"run_batch: {record.error}")
        return time.process_time() - started


async def measure(url: str, n: int, concurrency: int, rounds: int) -> dict[str, float]:
    """ms per request of each layer: the minimum over ``rounds`` rounds, the layers in alternation."""
    best = {name: float("inf") for name in LAYERS}
    for _ in range(rounds):
        for name in LAYERS:
            gc.collect()
            best[name] = min(best[name], await layer(name, url, n, concurrency) / n * 1000)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one round; never judges speed")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    n, rounds = (100, 1) if args.quick else (args.n, args.rounds)
    pinning = Pinning()
    work = HERE / "results" / "work"
    work.mkdir(parents=True, exist_ok=True)
    server = MockServer(pinning, child_env(work), work / "lean-layers-server.log").start()
    try:
        if pinning.enabled and pinning.client_core is not None:
            import os

            os.sched_setaffinity(0, {pinning.client_core})
        ms = asyncio.run(measure(server.url, n, args.concurrency, rounds))
    finally:
        server.stop()
    print(f"| layer (N={n}, C={args.concurrency}, min of {rounds}) | client CPU ms/request | adds | × minimal |")
    print("|---|---:|---:|---:|")
    previous = 0.0
    for name in LAYERS:
        print(f"| {name} | {ms[name]:.3f} | {ms[name] - previous:+.3f} | {ms[name] / ms['minimal']:.2f} |")
        previous = ms[name]
    return 0


if __name__ == "__main__":
    sys.exit(main())
