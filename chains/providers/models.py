"""The model factory: ``--model PROVIDER:MODEL`` and ``--base-url`` to one managed chat model.

A ``ModelSession`` owns what a run shares: one chat model, one HTTP
connection pool, one set of limits.  Open it once per run (or once per server
process), close it at the end.  The OpenAI integration is imported only when
an OpenAI model is used, so ``list``/``show`` and the offline model start fast.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, TextIO

from langchain_core.language_models import BaseChatModel

from chains.engine.limits import Limits
from chains.engine.pricing import PriceTable
from chains.engine.resume import model_identity
from chains.errors import ModelConfigError
from chains.providers.cache import SQLiteCache
from chains.providers.endpoints import Endpoint, EndpointRouter
from chains.providers.factories import build_inner, create_other, require_key
from chains.providers.managed import ManagedChatModel
from chains.providers.model_spec import (
    NO_KEY_NOTICE,
    ModelSpec,
    builtin_prices_apply,
    is_openai_endpoint,
    parse_model_spec,
    resolve_model_spec,
)
from chains.providers.pools import LoopPools
from chains.settings import FAKE_MODEL, RunSettings, check_base_url

__all__ = [
    "NO_KEY_NOTICE",
    "ModelSession",
    "ModelSpec",
    "builtin_prices_apply",
    "is_openai_endpoint",
    "parse_model_spec",
    "resolve_model_spec",
]


def _prices(spec: ModelSpec, settings: RunSettings) -> PriceTable:
    """The run's price table: ``--prices`` over the built-in one where that applies."""
    return PriceTable.load(settings.prices, builtin=builtin_prices_apply(spec, settings.base_url))


def _require_price(spec: ModelSpec, prices: PriceTable, settings: RunSettings) -> None:
    """``--max-cost`` needs the model's price: refuse the run now, as one line, rather than every input."""
    if settings.max_cost is None or prices.price(spec.name) is not None:
        return
    where = f" at {settings.base_url}" if settings.base_url else ""
    raise ModelConfigError(
        f"--max-cost needs a price for {spec.name}{where} (the built-in prices are OpenAI's and Anthropic's, at the provider); "
        f'add it with --prices FILE: {{"{spec.name}": {{"input": USD, "output": USD}}}} per 1M tokens'
    )


def _check_provider(spec: ModelSpec, settings: RunSettings) -> None:
    """The provider's model can be built: the key it needs, or the providers extra and the integration.

    Another provider's model is built and dropped: ``init_chat_model`` offers no other check of the provider
    and its integration, and its client connects on first use, so nothing is opened.  OpenAI's model is not
    built: that would open the run's HTTP pool.
    """
    if spec.provider == "openai":
        require_key(spec, settings)
    elif spec.provider != FAKE_MODEL:
        create_other(spec, settings, settings.base_url)


def _check_tier(spec: ModelSpec, settings: RunSettings) -> None:
    """The batch tier speaks OpenAI's batch API (files + batches) or Anthropic's Message Batches, to one endpoint;
    the flex tier is OpenAI's ``service_tier``."""
    if settings.tier == "batch" and len(settings.base_urls) > 1:
        raise ModelConfigError("--tier batch submits to one endpoint: give --base-url once, or use --tier online")
    if settings.tier == "batch" and spec.provider in ("openai", "anthropic"):
        return
    if settings.tier != "online" and spec.provider != "openai":
        needs = "an OpenAI or Anthropic model" if settings.tier == "batch" else "an OpenAI model"
        raise ModelConfigError(
            f"--tier {settings.tier} needs {needs} or an OpenAI-compatible server (--model openai:NAME), "
            f"not --model {spec}; use --tier online"
        )


class ModelSession:
    """One chat model, one HTTP pool and one set of limits, shared by a whole run."""

    def __init__(self, settings: RunSettings | None = None, *, limits: Limits | None = None) -> None:
        self.settings = settings or RunSettings.from_env()
        self.spec, self.notice = resolve_model_spec(self.settings)
        self.limits = limits or Limits.create(
            self.settings.max_concurrency,
            rpm=self.settings.rpm,
            tpm=self.settings.tpm,
            max_cost=self.settings.max_cost,
            prices=_prices(self.spec, self.settings),
        )
        self.cache = SQLiteCache(self.settings.cache) if self.settings.cache else None
        self._pools = LoopPools(self._build_inner)  # one inner model and HTTP pool per event loop
        self.inner = self._pools.first
        self.model = self._managed(self.spec, self._pools, batches=self._batch_collector())
        self.endpoints = self.model.endpoints = self._endpoint_router()
        self.fallback_specs = [parse_model_spec(text) for text in self.settings.fallback_models]
        self._fallback_pools: list[LoopPools] = []
        previous = self.model
        for spec in self.fallback_specs:  # each fallback: its own pools, retries and prices; the same limits
            pools = LoopPools(functools.partial(self._build_inner_for, spec))
            self._fallback_pools.append(pools)
            previous.fallback = previous = self._managed(spec, pools, batches=None)

    def _managed(self, spec: ModelSpec, pools: LoopPools, *, batches: Any) -> ManagedChatModel:
        return ManagedChatModel(
            inner=pools.first,
            inner_for_loop=pools.for_loop,
            stream_requests=self.settings.stream,
            max_retries=self.settings.max_retries,
            timeout=self.settings.timeout,
            overrides=self.settings.model_overrides(),
            limits=self.limits,
            base_url=self.settings.base_url,
            token_model=spec.name,
            label=str(spec),
            cache=self.cache,  # None: LangChain's global cache, if the user set one
            batches=batches,
            tier="flex" if self.settings.tier == "flex" else "online",
            flex_fallback=self.settings.flex_fallback,
        )

    def _endpoint_router(self) -> EndpointRouter | None:
        """With several ``--base-url``: one endpoint each, the first on the session's own pools."""
        urls = self.settings.base_urls
        if len(urls) < 2 or self.spec.provider == FAKE_MODEL:
            return None
        window = self.settings.max_concurrency
        endpoints = [Endpoint(urls[0], self._pools, window)]
        for url in urls[1:]:
            endpoints.append(
                Endpoint(url, LoopPools(functools.partial(build_inner, self.spec, self.settings, url)), window)
            )
        return EndpointRouter(endpoints)

    def report(self) -> dict[str, Any]:
        """The session's part of the run summary: the tier, the batch tier's numbers, each endpoint's requests."""
        report: dict[str, Any] = {"tier": self.settings.tier}
        if self.model.batches is not None:
            report["batches"] = self.model.batches.stats.to_dict()
        if self.endpoints is not None:
            report["endpoints"] = self.endpoints.stats()
        return report

    def _batch_collector(self) -> Any:
        """The batch tier's collector (``chains.providers.batch``), or None online."""
        if self.settings.tier != "batch":
            return None
        _check_tier(self.spec, self.settings)
        from chains.providers.batch.backend import OpenAIBatches
        from chains.providers.batch.collector import BatchCollector

        backend: Any = OpenAIBatches.for_model
        if self.spec.provider == "anthropic":
            from chains.providers.batch.anthropic import AnthropicBatches

            backend = AnthropicBatches.for_model
        limits = self.limits
        return BatchCollector(
            backend,
            poll_s=self.settings.batch_poll_s,
            max_retries=self.settings.max_retries,
            active=lambda: limits.inputs_in_flight,
        )

    def open_batch_journal(self, output: str, *, fresh: bool = False) -> None:
        """Journal the batch tier's submissions beside ``output`` (``--resume`` reads it back)."""
        from chains.providers.batch.journal import BatchJournal, journal_path

        if self.model.batches is not None:
            self.model.batches.journal = BatchJournal(journal_path(output), fresh=fresh)

    @staticmethod
    def check(settings: RunSettings) -> str | None:
        """Refuse now, with the line a session would give, what opening a session for ``settings`` would refuse;
        the notice to show (e.g. the offline model was chosen), if any.

        For ``serve``, which checks its settings before it starts and opens its one session in the app: the base
        URL, the model spec, the price table, the cache file, the key or the providers extra the model needs, and
        the price ``--max-cost`` needs.  No HTTP pool is opened; the cache database is opened and closed again,
        as the app will open it (a path that cannot be one is refused here, not at start-up).
        """
        if settings.base_url is not None:  # validated by RunSettings, unless a model_copy(update=...) skipped it
            check_base_url(settings.base_url)
        spec, notice = resolve_model_spec(settings)
        prices = _prices(spec, settings)
        if settings.cache:
            SQLiteCache(settings.cache).close()
        _check_provider(spec, settings)
        _check_tier(spec, settings)
        for other in (spec, *map(parse_model_spec, settings.fallback_models)):
            _require_price(other, prices, settings)
        return notice

    def check_budget_priced(self) -> None:
        """``--max-cost`` needs the model's price: refuse the run now, as one line, rather than every input."""
        for spec in (self.spec, *self.fallback_specs):
            _require_price(spec, self.limits.prices, self.settings)

    def _build_inner(self) -> tuple[BaseChatModel, Any]:
        return self._build_inner_for(self.spec)

    def _build_inner_for(self, spec: ModelSpec) -> tuple[BaseChatModel, Any]:
        """A provider model and the HTTP client it owns (None when there is none to close)."""
        return build_inner(spec, self.settings, self.settings.base_url)

    @property
    def identity(self) -> str:
        """The model and its normalised endpoint, as part of resume keys (see ``chains.engine.resume.model_identity``)."""
        return model_identity(str(self.spec), self.settings.base_url)

    def announce(self, stream: TextIO | None = None) -> None:
        """Print the one-line notice (e.g. offline model chosen) if there is one."""
        if self.notice:
            print(self.notice, file=stream or sys.stderr)

    async def check_reachable(self) -> None:
        """Fail fast, with one clear line, when ``--base-url`` cannot be reached at all.  With several endpoints,
        only when none can: one that cannot starts out of the rotation and is probed back in."""
        if self.endpoints is None:
            problem = await self._unreachable(self._pools, self.settings.base_url)
            if problem is not None:
                raise ModelConfigError(
                    f"cannot reach --base-url {self.settings.base_url} ({problem}); start the server or fix the URL"
                )
            return
        problems = [await self._unreachable(e.pools, e.url) for e in self.endpoints.endpoints]
        if all(problems):
            raise ModelConfigError(
                f"cannot reach any of the {len(problems)} --base-url endpoints ({problems[0]} at "
                f"{self.endpoints.endpoints[0].url}); start the servers or fix the URLs"
            )
        for endpoint, problem in zip(self.endpoints.endpoints, problems, strict=True):
            if problem is not None:
                self.endpoints.mark_unreachable(endpoint, f"unreachable at start ({problem})")

    async def _unreachable(self, pools: LoopPools, base_url: str | None) -> str | None:
        """Why ``base_url`` cannot be reached (the transport error's name), or None when it answers."""
        http = pools.http_here() if base_url else None
        if base_url is None or http is None:
            return None
        try:
            await http.get(base_url.rstrip("/") + "/models", timeout=min(5.0, self.settings.timeout))
        except Exception as exc:  # httpx/httpx2/aiohttp transport errors alike: the server is unreachable
            return type(exc).__name__
        return None

    async def aclose(self, *, cancel_batches: bool = False) -> list[str]:
        """Close the pools; the batch tier's batches still open at the provider are returned (cancelled first
        with ``cancel_batches``)."""
        left: list[str] = []
        if self.model.batches is not None:
            left = await self.model.batches.aclose(cancel=cancel_batches)
        if self.cache is not None:
            self.cache.close()
            self.cache = None
        await self._pools.aclose()
        for endpoint in self.endpoints.endpoints[1:] if self.endpoints is not None else ():
            await endpoint.pools.aclose()
        for pools in self._fallback_pools:
            await pools.aclose()
        self.model.close_portal()
        return left

    async def __aenter__(self) -> ModelSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
