"""How many leases per second the scale-out governor (one async Ray actor) sustains, on a local Ray.

    python benchmarks/governor_throughput.py [--callers 4] [--seconds 5] [--server-words]

Each caller is a Ray actor leasing one slot and handing it back on its next lease, as hard as it can: the
governor's ceiling in governor calls per second.  With a slice of 8 requests per lease (``chains.scale.leased_limits``),
the request rate it can govern is about 8x that.  ``--server-words``: every report also carries what the server's
``x-ratelimit-*`` headers said and the request it sent (the governor then counts what the server has not seen).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import ray

from chains.scale.governor import Ask, Report, start_governor
from chains.scale.server_limits import Heard
from chains.settings import RunSettings

WORD = (Heard("requests", 1e9, 60.0, age_s=0.001),)


@ray.remote(num_cpus=0)
class _Caller:
    async def run(self, governor: Any, name: str, seconds: float, words: bool) -> int:
        calls = 0
        held = 0
        ends = time.monotonic() + seconds
        while time.monotonic() < ends:
            report = Report(slots=held, heard=WORD, sent=((0.001, 100),)) if words and calls else Report(slots=held)
            grant = await governor.lease.remote(name, Ask(slots=1, requests=1, tokens=100), report)
            held = grant.slots
            calls += 1
        await governor.heartbeat.remote(name, Report(slots=held))
        return calls


async def main(callers: int, seconds: float, words: bool) -> dict[str, Any]:
    governor = start_governor(RunSettings(max_concurrency=1_000, rpm=1e9, tpm=1e12))
    actors = [_Caller.remote() for _ in range(callers)]  # type: ignore[attr-defined]
    await asyncio.gather(*(a.run.remote(governor, f"warm{i}", 0.5, words) for i, a in enumerate(actors)))
    started = time.monotonic()
    counts = await asyncio.gather(*(a.run.remote(governor, f"c{i}", seconds, words) for i, a in enumerate(actors)))
    wall = time.monotonic() - started
    return {
        "callers": callers,
        "server_words": words,
        "seconds": round(wall, 2),
        "leases_per_s": round(sum(counts) / wall),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--callers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--server-words", action="store_true", help="reports carry x-ratelimit words and sends")
    args = parser.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        print(json.dumps(asyncio.run(main(args.callers, args.seconds, args.server_words))))
    finally:
        ray.shutdown()
