"""Prometheus metrics of the HTTP server, in a registry of its own (one per app).

``ServerMetrics.observe(chain, record)`` folds one finished input into the
counters and histograms; ``MetricsMiddleware`` counts HTTP responses by chain,
endpoint and status code and keeps the in-flight gauge.  The model-level
gauges read the process's shared ``Limits`` when scraped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from chains.engine.execution import Record
    from chains.engine.limits import Limits
    from chains.engine.metrics import ItemStatus

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
ENDPOINTS = frozenset({"invoke", "batch", "stream"})


def outcome(record: Record) -> ItemStatus:
    """ok, failed, cancelled or not_run (the budget was spent before it could run): ``Record.outcome``."""
    return record.outcome


class ServerMetrics:
    """Every metric the server exports, registered in ``self.registry``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.http_requests = Counter(
            "chain_runner_http_requests",
            "HTTP requests to chain routes by chain, endpoint and status code",
            ["chain", "endpoint", "code"],
            registry=r,
        )
        self.http_in_flight = Gauge(
            "chain_runner_http_requests_in_flight", "HTTP requests to chain routes being handled", registry=r
        )
        self.generations = Counter(
            "chain_runner_generations",
            "Inputs by chain and outcome (ok, failed, cancelled, not_run)",
            ["chain", "status"],
            registry=r,
        )
        self.input_tokens = Counter("chain_runner_input_tokens", "Prompt tokens", ["chain"], registry=r)
        self.output_tokens = Counter("chain_runner_output_tokens", "Completion tokens", ["chain"], registry=r)
        self.latency = Histogram(
            "chain_runner_latency_seconds", "Time to run one input", ["chain"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.ttft = Histogram(
            "chain_runner_ttft_seconds",
            "Time to the first visible token of one streamed input",
            ["chain"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.cost = Counter("chain_runner_cost_usd", "Estimated cost in USD (priced models)", ["chain"], registry=r)
        self.retries = Counter("chain_runner_retries", "Model request retries", ["chain"], registry=r)
        self.wait = Counter(
            "chain_runner_rate_limit_wait_seconds",
            "Seconds inputs waited for a model request slot",
            ["chain"],
            registry=r,
        )
        self.cancelled = Counter(
            "chain_runner_cancelled",
            "Requests cancelled because the client disconnected",
            ["chain", "endpoint"],
            registry=r,
        )
        self.model_in_flight = Gauge(
            "chain_runner_model_requests_in_flight", "Model requests in flight (shared limit)", registry=r
        )
        self.model_waiting = Gauge(
            "chain_runner_model_requests_waiting", "Model requests waiting for a slot", registry=r
        )
        self.model_limit = Gauge("chain_runner_model_concurrency_limit", "Current model concurrency window", registry=r)

    def bind_limits(self, limits: Limits) -> None:
        """Read the shared limits' live numbers at scrape time."""
        self.model_in_flight.set_function(lambda: limits.concurrency.in_flight)
        self.model_waiting.set_function(lambda: limits.waiting)
        self.model_limit.set_function(lambda: limits.concurrency.current)

    def observe(self, chain: str, record: Record) -> None:
        m = record.metrics
        self.generations.labels(chain, outcome(record)).inc()
        if m.cost_usd:
            self.cost.labels(chain).inc(m.cost_usd)
        self.input_tokens.labels(chain).inc(m.input_tokens)
        self.output_tokens.labels(chain).inc(m.output_tokens)
        self.retries.labels(chain).inc(m.retries)
        self.wait.labels(chain).inc(m.wait_s)
        if m.latency_s is not None:
            self.latency.labels(chain).observe(m.latency_s)
        if m.ttft_s is not None:
            self.ttft.labels(chain).observe(m.ttft_s)

    def count_cancelled(self, chain: str, endpoint: str) -> None:
        self.cancelled.labels(chain, endpoint).inc()
        self.generations.labels(chain, "cancelled").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts responses of ``/chains/{name}/{endpoint}`` (any status, auth and size errors too)."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics, chains: frozenset[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.chains = chains

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        parts = scope["path"].strip("/").split("/") if scope["type"] == "http" else []
        if len(parts) != 3 or parts[0] != "chains" or parts[2] not in ENDPOINTS:
            await self.app(scope, receive, send)
            return
        chain = parts[1] if parts[1] in self.chains else "unknown"  # bounded label values
        code: dict[str, Any] = {"status": 500}

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                code["status"] = message["status"]
            await send(message)

        self.metrics.http_in_flight.inc()
        try:
            await self.app(scope, receive, counting_send)
        finally:
            self.metrics.http_in_flight.dec()
            self.metrics.http_requests.labels(chain, parts[2], str(code["status"])).inc()
