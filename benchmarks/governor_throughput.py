"""How many leases per second the scale-out governor (one async Ray actor) sustains, on a local Ray.

    python benchmarks/governor_throughput.py [--callers 4] [--seconds 5]

Each caller is a Ray actor leasing one slot and handing it back on its next lease, as hard as it can: the
governor's ceiling in governor calls per second.  With a slice of 8 requests per lease (``chains.scale.leased_limits``),
the request rate it can govern is about 8x that.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import ray

from chains.scale.governor import Ask, Report, start_governor
from chains.settings import RunSettings


@ray.remote(num_cpus=0)
class _Caller:
    async def run(self, governor: Any, name: str, seconds: float) -> int:
        calls = 0
        held = 0
        ends = time.monotonic() + seconds
        while time.monotonic() < ends:
            grant = await governor.lease.remote(name, Ask(slots=1, requests=1, tokens=100), Report(slots=held))
            held = grant.slots
            calls += 1
        await governor.heartbeat.remote(name, Report(slots=held))
        return calls


async def main(callers: int, seconds: float) -> dict[str, Any]:
    governor = start_governor(RunSettings(max_concurrency=1_000, rpm=1e9, tpm=1e12))
    actors = [_Caller.remote() for _ in range(callers)]  # type: ignore[attr-defined]
    await asyncio.gather(*(a.run.remote(governor, f"warm{i}", 0.5) for i, a in enumerate(actors)))
    started = time.monotonic()
    counts = await asyncio.gather(*(a.run.remote(governor, f"c{i}", seconds) for i, a in enumerate(actors)))
    wall = time.monotonic() - started
    return {"callers": callers, "seconds": round(wall, 2), "leases_per_s": round(sum(counts) / wall)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--callers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        print(json.dumps(asyncio.run(main(args.callers, args.seconds))))
    finally:
        ray.shutdown()
