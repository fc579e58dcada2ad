"""Cost: a price table (USD per million tokens, per tier, cached input apart) and the run's budget (``--max-cost``).

The built-in table covers common OpenAI and Anthropic models; a JSON or YAML file (``--prices FILE``) adds or
overrides entries::

    {"model": {"input": 2.0, "output": 8.0,          # online, USD per 1M tokens (the two required keys)
               "cached_input": 0.5,                  # input tokens read from the provider's prompt cache
               "cache_write": 2.5,                   # input tokens written to it (Anthropic's cache creation)
               "batch": {"input": 1.0, "output": 4.0, "cached_input": 0.5},
               "flex": {...}}}                       # any tier key left out is derived, see ``ModelPrice``

Unknown models have no price: their cost is reported as unknown, and ``--max-cost`` refuses to
run them rather than guess.  A known model's missing details are derived so as never to guess
cheaper than the provider bills.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, get_args

from chains.errors import BudgetExceededError, UsageError, clip

Tier = Literal["online", "flex", "batch"]
"""How a request is sent: at once (``online``), OpenAI's ``service_tier: "flex"``, or through a batch API."""
TIERS: tuple[Tier, ...] = get_args(Tier)

TIER_DISCOUNT = 0.5
"""Batch and flex input and output cost half the online price: OpenAI's Batch API and flex tier and
Anthropic's Message Batches all publish 50 % off, so a tier with no price of its own is derived so."""
CACHE_WRITE_MULTIPLIER = 1.25
"""Anthropic bills a prompt-cache write at 1.25x the input price (its 5-minute cache; the 1-hour cache
costs 2x: give ``cache_write`` for it).  OpenAI reports no cache writes, so this applies to none of its models."""


class Rates(NamedTuple):
    """One tier of one model with every price resolved: USD per 1M tokens of each kind."""

    input: float
    output: float
    cached_input: float
    cache_write: float


@dataclass(frozen=True)
class TierPrice:
    """A tier's own prices from a price file (``"batch": {...}``); each ``None`` is derived from the online price."""

    input: float | None = None
    output: float | None = None
    cached_input: float | None = None
    cache_write: float | None = None


@dataclass(frozen=True)
class ModelPrice:
    """A model's prices, USD per 1M tokens: online ``input`` and ``output``, and the optional details.

    Derivation, for what an entry leaves out (never cheaper than the provider's published prices,
    Anthropic's 1-hour cache writes aside):

    - ``cached_input`` unknown: the input price (no cache discount assumed).
    - ``cache_write`` unknown: 1.25x the input price (``CACHE_WRITE_MULTIPLIER``; the 1-hour cache is 2x).
    - a tier (``batch``, ``flex``) without its own ``input``/``output``: 50 % of the online price
      (``TIER_DISCOUNT``); without its own ``cached_input``: the online cached price, capped at the
      tier's input price (OpenAI's Batch bills gpt-4o and gpt-4.1 cached input at the online cached
      price: the two discounts are not assumed to stack); without its own ``cache_write``: the online one.
    """

    input: float
    output: float
    cached_input: float | None = None
    cache_write: float | None = None
    batch: TierPrice | None = None
    flex: TierPrice | None = None

    def rates(self, tier: Tier = "online") -> Rates:
        """Every price of ``tier``, derived where the entry gives none (see the class docstring)."""
        online = Rates(
            self.input,
            self.output,
            self.input if self.cached_input is None else self.cached_input,
            self.input * CACHE_WRITE_MULTIPLIER if self.cache_write is None else self.cache_write,
        )
        if tier == "online":
            return online
        if tier not in TIERS:
            raise UsageError(f"unknown price tier {clip(str(tier), 40)!r}; use {', '.join(TIERS[:-1])} or {TIERS[-1]}")
        own = (self.batch if tier == "batch" else self.flex) or TierPrice()
        input_ = _or(own.input, online.input * TIER_DISCOUNT)
        return Rates(
            input_,
            _or(own.output, online.output * TIER_DISCOUNT),
            _or(own.cached_input, min(online.cached_input, input_)),
            _or(own.cache_write, online.cache_write),
        )

    @property
    def pair(self) -> tuple[float, float]:
        """The online (input, output) prices, USD per 1M tokens."""
        return self.input, self.output


def _or(given: float | None, derived: float) -> float:
    return derived if given is None else given


# USD per 1M tokens: OpenAI's list prices (input, output, cached input), override with --prices.
DEFAULT_PRICES: dict[str, ModelPrice] = {
    "gpt-4o-mini": ModelPrice(0.15, 0.60, cached_input=0.075),
    "gpt-4o": ModelPrice(2.50, 10.00, cached_input=1.25),
    "gpt-4.1": ModelPrice(2.00, 8.00, cached_input=0.50),
    "gpt-4.1-mini": ModelPrice(0.40, 1.60, cached_input=0.10),
    "gpt-4.1-nano": ModelPrice(0.10, 0.40, cached_input=0.025),
    "gpt-3.5-turbo": ModelPrice(0.50, 1.50),
    "o4-mini": ModelPrice(1.10, 4.40, cached_input=0.275),
    "o3-mini": ModelPrice(1.10, 4.40, cached_input=0.55),
    "fake": ModelPrice(0.0, 0.0),
}


def _claude(input_: float, output: float, cache_read: float, cache_write: float) -> ModelPrice:
    """Anthropic's list price (5-minute cache writes); Message Batches halve every kind, cached ones too (the
    batch discount and the cache prices stack)."""
    half = TierPrice(
        input_ * TIER_DISCOUNT, output * TIER_DISCOUNT, cache_read * TIER_DISCOUNT, cache_write * TIER_DISCOUNT
    )
    return ModelPrice(input_, output, cached_input=cache_read, cache_write=cache_write, batch=half)


# USD per 1M tokens: Anthropic's list prices (platform.claude.com/docs/en/about-claude/pricing): input, output,
# cache hits, 5-minute cache writes.  The 1-hour cache's writes cost more (2x input): give them with --prices.
_OPUS_4_5 = _claude(5.00, 25.00, 0.50, 6.25)
_OPUS_4 = _claude(15.00, 75.00, 1.50, 18.75)
_SONNET = _claude(3.00, 15.00, 0.30, 3.75)
_HAIKU_4_5 = _claude(1.00, 5.00, 0.10, 1.25)
_HAIKU_3_5 = _claude(0.80, 4.00, 0.08, 1.00)
DEFAULT_PRICES |= {
    "claude-opus-4-6": _OPUS_4_5,
    "claude-opus-4-5": _OPUS_4_5,
    "claude-opus-4-1": _OPUS_4,
    "claude-opus-4-0": _OPUS_4,
    "claude-opus-4": _OPUS_4,
    "claude-sonnet-4-6": _SONNET,
    "claude-sonnet-4-5": _SONNET,
    "claude-sonnet-4-0": _SONNET,
    "claude-sonnet-4": _SONNET,
    "claude-3-7-sonnet": _SONNET,
    "claude-3-7-sonnet-latest": _SONNET,
    "claude-haiku-4-5": _HAIKU_4_5,
    "claude-3-5-haiku": _HAIKU_3_5,
    "claude-3-5-haiku-latest": _HAIKU_3_5,
    "claude-3-haiku": _claude(0.25, 1.25, 0.03, 0.30),
}


_SNAPSHOT = re.compile(r"(?P<base>.+?)-(?:\d{4}-\d{2}-\d{2}|\d{8}|\d{4})")
"""OpenAI's dated snapshots (``-2024-07-18``, ``-0125``) and Anthropic's (``-20250929``)."""

MAX_TOKENS = 2**53
"""A token count above this is not one (and would overflow a float product): counted as this many."""

# Where LangChain's integrations put cached input in ``UsageMetadata.input_token_details``: langchain-openai
# prefixes the keys with the service tier that answered (``flex_``, ``priority_``); langchain-anthropic gives
# the cache writes as one count or, in newer versions, by cache lifetime (the generic key then 0).
_CACHE_READ_KEYS = ("cache_read", "flex_cache_read", "priority_cache_read")
_CACHE_WRITE_KEYS = ("cache_creation", "flex_cache_creation", "priority_cache_creation")
_CACHE_WRITE_BY_LIFETIME = ("ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens")


@dataclass
class PriceTable:
    """Model name → ``ModelPrice``.

    The built-in entries are OpenAI's and Anthropic's list prices: they hold at the provider itself, not for the same
    model name on a local or third-party server (a llama.cpp server answering as ``gpt-4o-mini``
    costs nothing like it), so ``load(builtin=False)`` leaves them out and such a model's cost is
    unknown.  Entries from ``--prices`` hold wherever the model is served; an entry replaces the
    built-in one whole (its cached price too).
    """

    prices: dict[str, ModelPrice] = field(default_factory=lambda: dict(DEFAULT_PRICES))

    @classmethod
    def load(cls, path: str | None, *, builtin: bool = True) -> PriceTable:
        table = cls() if builtin else cls({})
        if path:
            table.prices.update(_read_prices(path))
        return table

    def price(self, model: str | None) -> ModelPrice | None:
        if not model:
            return None
        if model in self.prices:
            return self.prices[model]
        # dated snapshots only (gpt-4o-mini-2024-07-18, gpt-3.5-turbo-0125, claude-sonnet-4-5-20250929 → the base
        # name): another suffix is another model (gpt-4o-realtime-preview is not gpt-4o) and has no price here
        snapshot = _SNAPSHOT.fullmatch(model)
        return self.prices.get(snapshot.group("base")) if snapshot else None

    def rates(self, model: str | None, tier: Tier = "online") -> Rates | None:
        price = self.price(model)
        return price.rates(tier) if price is not None else None

    def cost(
        self,
        model: str | None,
        input_tokens: int,
        output_tokens: int,
        *,
        tier: Tier = "online",
        cached_input_tokens: int = 0,
        cache_write_tokens: int = 0,
    ) -> float | None:
        """USD for one request at ``tier``; None when the model has no price.

        ``input_tokens`` is every input token; the cached and written ones are part of it (as in
        LangChain's ``UsageMetadata``), priced at their own rates instead of the input price.  A count
        that is not a non-negative integer costs nothing; parts larger than the whole are cut to it.
        """
        rates = self.rates(model, tier)
        if rates is None:
            return None
        total, output = _count(input_tokens), _count(output_tokens)
        cached = min(_count(cached_input_tokens), total)
        written = min(_count(cache_write_tokens), total - cached)
        uncached = total - cached - written
        usd = uncached * rates.input + cached * rates.cached_input + written * rates.cache_write
        return (usd + output * rates.output) / 1_000_000

    def cost_of_usage(self, model: str | None, usage: Any, tier: Tier = "online") -> float | None:
        """USD for a LangChain ``UsageMetadata`` (a provider's report: any shape is taken, none raises)."""
        if self.rates(model, tier) is None:
            return None  # no price: nothing to count
        if not isinstance(usage, Mapping):
            usage = {}
        details = usage.get("input_token_details")
        if not isinstance(details, Mapping):
            details = {}
        cached = sum(_count(details.get(key)) for key in _CACHE_READ_KEYS)
        written = max(
            sum(_count(details.get(key)) for key in _CACHE_WRITE_KEYS),
            sum(_count(details.get(key)) for key in _CACHE_WRITE_BY_LIFETIME),
        )
        return self.cost(
            model,
            _count(usage.get("input_tokens")),
            _count(usage.get("output_tokens")),
            tier=tier,
            cached_input_tokens=cached,
            cache_write_tokens=written,
        )


def _count(value: object) -> int:
    """A token count as reported: a non-negative integer (a float is cut to one), bounded; anything else is 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0
    if isinstance(value, float):
        if not math.isfinite(value):
            return 0
        value = int(min(value, MAX_TOKENS))
    return max(0, min(value, MAX_TOKENS))


MAX_PRICES_BYTES = 256 * 1024
"""A price table is a few kilobytes; anything much larger is the wrong file."""

_SHAPE = '{"model": {"input": USD, "output": USD}} per 1M tokens'
_PRICE_KEYS = ("input", "output", "cached_input", "cache_write")
_TIER_KEYS: tuple[Tier, ...] = ("batch", "flex")


def _read_prices(path: str) -> dict[str, ModelPrice]:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_PRICES_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"--prices {path}: cannot read ({exc.strerror}); check the path") from exc
    return parse_prices(data, path)


def parse_prices(data: bytes, path: str) -> dict[str, ModelPrice]:
    """The entries of a price file's bytes; any problem is one ``UsageError`` naming the file (and the entry).

    Prices must be finite and >= 0: a NaN would switch ``--max-cost`` off silently (every
    comparison with it is false) and write ``NaN`` (not JSON) into the records.
    """
    if len(data) > MAX_PRICES_BYTES:
        raise UsageError(f"--prices {path}: larger than {MAX_PRICES_BYTES // 1024} KiB; is it the right file?")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"--prices {path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    table = _load_yaml(text, path) if path.endswith((".yaml", ".yml")) else _load_json(text, path)
    if not isinstance(table, Mapping):
        raise UsageError(f"--prices {path}: expected {_SHAPE}")
    return {_name(model): _entry(path, model, entry) for model, entry in table.items()}


def _load_json(text: str, path: str) -> object:
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise UsageError(f"--prices {path}: not valid JSON ({_first_line(exc)}); fix the file") from None


def _load_yaml(text: str, path: str) -> object:
    from chains.spec import safe_yaml  # PyYAML is imported only when a price file is YAML

    try:  # values: never more than the size limit already allows (about one per byte)
        return safe_yaml.load(text, max_depth=MAX_DEPTH, max_nodes=MAX_PRICES_BYTES, max_number_chars=MAX_NUMBER_CHARS)
    except safe_yaml.YamlError as exc:
        problem = f"a number longer than {MAX_NUMBER_CHARS} characters" if exc.kind == "number" else exc.problem
        where = f"line {exc.line}, column {exc.column}: " if exc.line is not None else ""
        raise UsageError(f"--prices {path}: not valid YAML ({where}{problem}); fix the file") from None


MAX_NUMBER_CHARS = 64
"""YAML 1.1 reads ``1:2:3`` as a base-60 number, in time quadratic in its length: refuse long ones."""
MAX_DEPTH = 100
"""A price table is three levels deep; PyYAML's composer recurses, so deeper files are refused, not overflowed."""


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:199] + "…"


def _shown(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return "a number too large"
    text = repr(value)
    return text if len(text) <= 40 else text[:39] + "…"


def _name(model: object) -> str:
    return model if isinstance(model, str) else json.dumps(model, default=str)


def _entry(path: str, model: object, entry: object) -> ModelPrice:
    where = f"--prices {path}: entry {_name(model)[:80]!r}"
    if not isinstance(entry, Mapping) or "input" not in entry or "output" not in entry:
        raise UsageError(f"{where} needs numeric 'input' and 'output' (USD per 1M tokens)")
    _known_keys(where, entry, (*_PRICE_KEYS, *_TIER_KEYS), "")
    prices = _prices(where, entry, "")
    tiers = {tier: _tier(where, tier, entry[tier]) for tier in _TIER_KEYS if tier in entry}
    return ModelPrice(
        prices["input"],
        prices["output"],
        prices.get("cached_input"),
        prices.get("cache_write"),
        batch=tiers.get("batch"),
        flex=tiers.get("flex"),
    )


def _tier(where: str, tier: str, table: object) -> TierPrice:
    if not isinstance(table, Mapping):
        raise UsageError(
            f'{where}: {tier} must be a table of prices like {{"input": USD, "output": USD}}, '
            f"got {_shown(table)}; fix it"
        )
    _known_keys(where, table, _PRICE_KEYS, f"{tier}.")
    return TierPrice(**_prices(where, table, f"{tier}."))


def _known_keys(where: str, table: Mapping[Any, Any], known: tuple[str, ...], prefix: str) -> None:
    """A misspelt key (``cached``, ``Batch``) would silently leave a price at its derived value: refuse it."""
    for key in table:
        if key not in known:
            name = clip(_name(key), 40)
            raise UsageError(f"{where}: unknown key {prefix + name!r} (known: {', '.join(known)}); fix it")


def _prices(where: str, table: Mapping[Any, Any], prefix: str) -> dict[str, float]:
    return {key: _price(where, prefix + key, table[key]) for key in _PRICE_KEYS if key in table}


def _price(where: str, side: str, value: object) -> float:
    number: float | None = None
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            number = float(value)
        except (ValueError, OverflowError):
            number = None
    if number is None or not math.isfinite(number) or number < 0:
        raise UsageError(
            f"{where}: {side} must be a finite number >= 0 (USD per 1M tokens), got {_shown(value)}; fix it"
        )
    return number


@dataclass
class Budget:
    """``--max-cost``: reserve each request's estimated cost before sending it."""

    max_usd: float
    spent: float = 0.0
    reserved: float = 0.0
    exhausted: bool = False

    def reserve(self, estimate: float) -> float:
        if self.exhausted or self.spent + self.reserved + estimate > self.max_usd:
            self.exhausted = True
            raise BudgetExceededError(
                f"not run: the next request (about ${estimate:.4f}) would take the run past "
                f"--max-cost ${self.max_usd:g} (spent ${self.spent:.4f}); raise --max-cost to run the rest"
            )
        self.reserved += estimate
        return estimate

    def settle(self, reserved: float, actual: float) -> None:
        self.reserved -= reserved
        self.spent += actual
