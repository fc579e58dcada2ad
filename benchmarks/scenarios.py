"""What the request scenarios (targets 1-4 of issue 6) are, and how their numbers are judged.

A ``Throughput`` scenario is a size, a concurrency, the mock server's settings and its
contenders; its ``judge`` turns the medians into targets met or missed.  Nothing here runs.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Throughput:
    """A request scenario: every contender sends the same ``n`` requests to the mock server."""

    number: int
    key: str
    title: str
    target: str
    n: int
    concurrency: int
    server: dict[str, Any]
    contenders: list[str]
    stream: bool = False
    judge: Callable[[dict[str, dict[str, float]]], list[dict[str, Any]]] = field(default=lambda m: [])

    @property
    def chunks(self) -> int:
        return int(self.server.get("chunks", 8))


def check_target(
    name: str, value: float | None, limit: float, *, at_most: bool = True, unit: str = "", stretch: bool = False
) -> dict[str, Any]:
    ok = value is not None and (value <= limit if at_most else value >= limit)
    return {
        "name": name,
        "value": value,
        "limit": limit,
        "comparison": "<=" if at_most else ">=",
        "unit": unit,
        "pass": bool(ok),
        "stretch": stretch,
    }


def _ratio(m: dict[str, dict[str, float]], a: str, b: str, metric: str) -> float | None:
    if a not in m or b not in m or not m[b].get(metric):
        return None
    return m[a][metric] / m[b][metric]


def judge_latency(m: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    return [check_target("project_lib wall / raw wall", _ratio(m, "project_lib", "raw", "wall_s"), 1.03, unit="×")]


def judge_variable(m: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    return [
        check_target("project_lib wall / raw wall", _ratio(m, "project_lib", "raw", "wall_s"), 1.10, unit="×"),
        check_target(
            "raw_batches wall / project_lib wall",
            _ratio(m, "raw_batches", "project_lib", "wall_s"),
            1.8,
            at_most=False,
            unit="×",
        ),
    ]


def judge_cpu(m: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    return [
        check_target(
            "project_lib CPU/req / lc_abatch CPU/req",
            _ratio(m, "project_lib", "lc_abatch", "cpu_ms_per_req"),
            1.0,
            unit="×",
        ),
        check_target(
            "project_lib CPU/req / raw CPU/req",
            _ratio(m, "project_lib", "raw", "cpu_ms_per_req"),
            1.0,
            unit="×",
            stretch=True,
        ),
    ]


def judge_stream(m: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    return [
        check_target(
            "project_lib chunks/CPU-s / lc_astream",
            _ratio(m, "project_lib", "lc_astream", "chunks_per_cpu_s"),
            1.0,
            at_most=False,
            unit="×",
        ),
        check_target(
            "project_lib chunks/CPU-s / raw",
            _ratio(m, "project_lib", "raw", "chunks_per_cpu_s"),
            0.8,
            at_most=False,
            unit="×",
            stretch=True,
        ),
    ]


def throughput_scenarios(quick: bool, aiohttp: bool, http_backend: bool) -> list[Throughput]:
    """Targets 1-4 of the issue; ``quick`` keeps every code path with tiny sizes."""
    raw = ["raw", "raw_aiohttp"] if aiohttp else ["raw"]
    httpx_variant = ["project_httpx"] if http_backend else []
    wall_set = [*raw, "raw_batches", "lc_abatch", "project_lib", "project_cli"]
    latency, n1, c1 = (20, 20, 5) if quick else (200, 300, 10)
    (lo, hi), n2, c2 = ((5, 50), 40, 10) if quick else ((50, 500), 500, 50)
    n3, c3 = (50, 10) if quick else (2000, 20)
    chunks, n4, c4 = (20, 10, 5) if quick else (200, 200, 20)
    return [
        Throughput(
            1,
            "latency",
            f"Latency-bound: {latency} ms per request, N={n1:,}, concurrency {c1} (ideal {n1 / c1 * latency / 1000:.1f} s)",
            "project_lib wall ≤ 1.03 × raw",
            n=n1,
            concurrency=c1,
            server={"latency_ms": latency},
            contenders=wall_set,
            judge=judge_latency,
        ),
        Throughput(
            2,
            "variable",
            f"Variable latency: uniform {lo}–{hi} ms, N={n2:,}, concurrency {c2}",
            "project_lib wall ≤ 1.10 × raw; fixed batches ≥ 1.8 × project_lib",
            n=n2,
            concurrency=c2,
            server={"latency_range_ms": [lo, hi]},
            contenders=wall_set,
            judge=judge_variable,
        ),
        Throughput(
            3,
            "cpu",
            f"Non-streamed, zero latency, N={n3:,}, concurrency {c3}: client CPU per request",
            "project_lib CPU/req ≤ 1.0 × lc_abatch (stretch: ≤ 1.0 × raw)",
            n=n3,
            concurrency=c3,
            server={"latency_ms": 0},
            contenders=[*raw, "lc_ainvoke", "lc_abatch", "project_lib", "project_cli", *httpx_variant],
            judge=judge_cpu,
        ),
        Throughput(
            4,
            "stream",
            f"Streamed, {chunks} chunks per answer, N={n4:,}, concurrency {c4}, token callback on",
            "project_lib chunks/CPU-s ≥ 1.0 × lc_astream (stretch: ≥ 0.8 × raw)",
            n=n4,
            concurrency=c4,
            stream=True,
            server={"latency_ms": 0, "chunks": chunks},
            contenders=[
                *raw,
                "lc_abatch",
                "lc_astream",
                "project_lib",
                "project_cli",
                "project_nostream",
                *httpx_variant,
            ],
            judge=judge_stream,
        ),
    ]


def medians_of(samples: list[dict[str, Any]]) -> dict[str, float]:
    keys = {k for s in samples for k, v in s.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    out = {}
    for key in sorted(keys):
        values = [s[key] for s in samples if isinstance(s.get(key), (int, float))]
        if values:
            out[key] = statistics.median(values)
    return out
