"""Fast unit tests of what decides money: the price table, its tiers and cached input, and the ``--max-cost`` budget.

Price *files* as outside data (size, encoding, YAML, hostile numbers) are also tested in
test_run_safety.py and test_safe_yaml.py; here: which price a model name gets, what each tier
and each kind of input token costs, what a provider's usage costs, which price-file entries are
refused (one line naming the file, the entry and the key), and when the budget says no.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chains.engine.pricing import (
    DEFAULT_PRICES,
    TIERS,
    Budget,
    ModelPrice,
    PriceTable,
    Rates,
    Tier,
    TierPrice,
    parse_prices,
)
from chains.errors import BudgetExceededError, UsageError

M = 1_000_000

# -- PriceTable: which price a model gets ---------------------------------------------------------


@pytest.mark.parametrize(("model", "price"), sorted(DEFAULT_PRICES.items()))
def test_a_built_in_model_gets_its_own_price(model: str, price: ModelPrice) -> None:
    assert PriceTable().price(model) is price


@pytest.mark.parametrize(
    ("model", "priced_as"),
    [
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),  # not gpt-4o: the longest name wins
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4.1-mini-2025-04-14", "gpt-4.1-mini"),
        ("gpt-4.1-nano-2025-04-14", "gpt-4.1-nano"),
        ("gpt-4.1-2025-04-14", "gpt-4.1"),
        ("gpt-3.5-turbo-0125", "gpt-3.5-turbo"),
        ("o4-mini-2025-04-16", "o4-mini"),
    ],
)
def test_a_dated_snapshot_gets_its_models_price(model: str, priced_as: str) -> None:
    assert PriceTable().price(model) is DEFAULT_PRICES[priced_as]


@pytest.mark.parametrize(
    "model",
    [
        *(None, "", "claude-3-5-sonnet", "llama3.2", "GPT-4O-MINI", "gpt-4", "gpt-4omini", "my-gpt-4o"),
        # another suffix is another model, not a snapshot of the base one (its price would be wrong)
        *("gpt-4o-realtime-preview", "gpt-3.5-turbo-instruct", "gpt-4o-mini ", "gpt-4o-mini-audio-preview-2024-12-17"),
    ],
)
@pytest.mark.parametrize("tier", TIERS)
def test_an_unknown_model_has_no_price_at_any_tier(model: str | None, tier: Tier) -> None:
    table = PriceTable()
    assert table.price(model) is None and table.rates(model, tier) is None
    assert table.cost(model, 1000, 1000) is None
    assert table.cost(model, 1000, 1000, tier=tier, cached_input_tokens=10) is None
    assert table.cost_of_usage(model, {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2}, tier) is None


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(st.text(max_size=200), st.builds(lambda m, t: m + t, st.sampled_from(sorted(DEFAULT_PRICES)), st.text()))
)
def test_any_model_name_gets_a_price_from_the_table_or_none(model: str) -> None:
    price = PriceTable().price(model)
    assert price is None or any(price is entry for entry in DEFAULT_PRICES.values())
    cost = PriceTable().cost(model, 10, 10)
    assert (cost is None) is (price is None)


# -- tiers and cached input ------------------------------------------------------------------------


def test_the_tiers_are_online_flex_and_batch() -> None:
    assert get_args(Tier) == TIERS == ("online", "flex", "batch")


# OpenAI's published cached-input prices (USD per 1M tokens); gpt-3.5-turbo has none (no prompt cache).
CACHED = {
    "gpt-4o-mini": 0.075,
    "gpt-4o": 1.25,
    "gpt-4.1": 0.50,
    "gpt-4.1-mini": 0.10,
    "gpt-4.1-nano": 0.025,
    "o4-mini": 0.275,
    "o3-mini": 0.55,
}


@pytest.mark.parametrize(("model", "cached"), sorted(CACHED.items()))
def test_a_built_in_model_has_its_cached_input_price(model: str, cached: float) -> None:
    assert DEFAULT_PRICES[model].cached_input == cached
    assert PriceTable().rates(model).cached_input == cached  # type: ignore[union-attr]


def test_every_built_in_openai_model_but_the_uncached_ones_has_a_cached_price() -> None:
    assert {name for name, price in DEFAULT_PRICES.items() if price.cached_input is None} == {"gpt-3.5-turbo", "fake"}


@pytest.mark.parametrize(
    ("price", "tier", "rates"),
    [
        # online: the entry as written; an unknown cached price is the input price, a cache write 1.25x it
        (ModelPrice(2.0, 8.0, cached_input=0.5), "online", Rates(2.0, 8.0, 0.5, 2.5)),
        (ModelPrice(0.5, 1.5), "online", Rates(0.5, 1.5, 0.5, 0.625)),
        (ModelPrice(3.0, 15.0, cached_input=0.3, cache_write=3.75), "online", Rates(3.0, 15.0, 0.3, 3.75)),
        # batch and flex without prices of their own: half the online input and output; the cached
        # price stays the online one (the discounts are not assumed to stack), never above the tier's input
        (ModelPrice(2.0, 8.0, cached_input=0.5), "batch", Rates(1.0, 4.0, 0.5, 2.5)),  # gpt-4.1 at OpenAI's Batch
        (ModelPrice(2.0, 8.0, cached_input=0.5), "flex", Rates(1.0, 4.0, 0.5, 2.5)),
        (ModelPrice(2.5, 10.0, cached_input=1.25), "batch", Rates(1.25, 5.0, 1.25, 3.125)),  # gpt-4o
        (ModelPrice(0.15, 0.6, cached_input=0.1), "batch", Rates(0.075, 0.3, 0.075, 0.1875)),  # capped at input
        (ModelPrice(0.5, 1.5), "batch", Rates(0.25, 0.75, 0.25, 0.625)),  # no cache price: the tier's input
        # a tier's own prices win, key by key; the keys it leaves out are derived as above
        (
            ModelPrice(1.25, 10.0, 0.125, batch=TierPrice(cached_input=0.0625)),
            "batch",
            Rates(0.625, 5.0, 0.0625, 1.5625),
        ),
        (ModelPrice(2.0, 8.0, 0.5, flex=TierPrice(1.0, 4.0, 0.25)), "flex", Rates(1.0, 4.0, 0.25, 2.5)),
        (ModelPrice(2.0, 8.0, 0.5, flex=TierPrice(1.0, 4.0, 0.25)), "batch", Rates(1.0, 4.0, 0.5, 2.5)),
        (ModelPrice(3.0, 15.0, 0.3, 3.75, batch=TierPrice(cache_write=1.875)), "batch", Rates(1.5, 7.5, 0.3, 1.875)),
        (ModelPrice(1.0, 2.0, batch=TierPrice(input=0.9)), "batch", Rates(0.9, 1.0, 0.9, 1.25)),
    ],
)
def test_each_tier_has_its_rates(price: ModelPrice, tier: Tier, rates: Rates) -> None:
    assert price.rates(tier) == pytest.approx(rates)


def test_an_unknown_tier_is_one_usage_line() -> None:
    with pytest.raises(UsageError, match=r"^unknown price tier 'priority'; use online, flex or batch$"):
        DEFAULT_PRICES["gpt-4o"].rates("priority")  # type: ignore[arg-type]


@pytest.mark.parametrize("model", sorted(set(DEFAULT_PRICES) - {"fake"}))
def test_built_in_tiers_cost_half_and_cached_tokens_never_more(model: str) -> None:
    table = PriceTable()
    online = table.cost(model, 10_000, 1_000)
    assert online is not None and online > 0
    for tier in ("batch", "flex"):
        assert table.cost(model, 10_000, 1_000, tier=tier) == pytest.approx(online / 2)
    for tier in TIERS:
        plain = table.cost(model, 10_000, 1_000, tier=tier)
        cached = table.cost(model, 10_000, 1_000, tier=tier, cached_input_tokens=6_000)
        assert cached is not None and plain is not None and cached <= plain


# -- PriceTable.cost ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "input_tokens", "output_tokens", "cost"),
    [
        ("gpt-4o-mini", M, M, 0.75),
        ("gpt-4o-mini", M, 0, 0.15),
        ("gpt-4o", 0, M, 10.0),
        ("gpt-4o-mini-2024-07-18", 2_000, 500, (2_000 * 0.15 + 500 * 0.60) / M),
        ("gpt-4o", 0, 0, 0.0),
        ("fake", 10**9, 10**9, 0.0),
    ],
)
def test_cost_is_tokens_times_the_price_per_million(
    model: str, input_tokens: int, output_tokens: int, cost: float
) -> None:
    assert PriceTable().cost(model, input_tokens, output_tokens) == pytest.approx(cost)  # positional, as before


@pytest.mark.parametrize(
    ("kwargs", "cost"),
    [
        ({}, 2.0 + 8.0),
        ({"tier": "online"}, 2.0 + 8.0),
        ({"tier": "batch"}, 1.0 + 4.0),
        ({"tier": "flex"}, 1.0 + 4.0),
        # cached tokens are part of the input tokens: priced at the cached price instead
        ({"cached_input_tokens": 400_000}, 0.6 * 2.0 + 0.4 * 0.5 + 8.0),
        ({"cached_input_tokens": M}, 0.5 + 8.0),
        ({"cached_input_tokens": 400_000, "tier": "batch"}, 0.6 * 1.0 + 0.4 * 0.5 + 4.0),
        # cache writes too (at 1.25x the input price here, as the entry gives none)
        ({"cache_write_tokens": 200_000}, 0.8 * 2.0 + 0.2 * 2.5 + 8.0),
        ({"cached_input_tokens": 500_000, "cache_write_tokens": 500_000}, 0.5 * 0.5 + 0.5 * 2.5 + 8.0),
        # more cached or written tokens than input tokens: never a negative count, the input is all cached
        ({"cached_input_tokens": 5 * M}, 0.5 + 8.0),
        ({"cached_input_tokens": 600_000, "cache_write_tokens": 600_000}, 0.6 * 0.5 + 0.4 * 2.5 + 8.0),
        ({"cached_input_tokens": -5}, 2.0 + 8.0),
    ],
)
def test_cost_per_tier_with_cached_and_written_input(kwargs: dict[str, Any], cost: float) -> None:
    assert PriceTable().cost("gpt-4.1", M, M, **kwargs) == pytest.approx(cost)


@pytest.mark.parametrize(
    ("input_tokens", "output_tokens"), [(-1, -1), (10**400, 0), (0, 10**400), (True, 3), (1.5, 2.5), ("7", None)]
)
def test_a_token_count_that_is_not_one_costs_nothing_rather_than_raising(input_tokens: Any, output_tokens: Any) -> None:
    cost = PriceTable().cost("gpt-4o", input_tokens, output_tokens)
    assert cost is not None and math.isfinite(cost) and cost >= 0


# -- PriceTable.cost_of_usage: LangChain's UsageMetadata as each integration fills it --------------


def _usage(input_tokens: int, output_tokens: int, **details: int) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "total_tokens": input_tokens + output_tokens,
    }
    if details:
        usage["input_token_details"] = details
    return usage


@pytest.mark.parametrize(
    ("usage", "tier", "cached", "written"),
    [
        (_usage(1000, 100), "online", 0, 0),
        (_usage(1000, 100, audio=0), "online", 0, 0),
        # langchain-openai: prompt_tokens_details.cached_tokens
        (_usage(1000, 100, cache_read=600), "online", 600, 0),
        # ... prefixed with the service tier that answered (and a "flex"/"priority" count that is not a cache)
        (_usage(1000, 100, flex_cache_read=600, flex=400), "flex", 600, 0),
        (_usage(1000, 100, priority_cache_read=600, priority=400), "online", 600, 0),
        (_usage(1000, 100, cache_read=0, cache_creation=300), "online", 0, 300),
        (_usage(1000, 100, flex_cache_creation=300), "flex", 0, 300),
        # langchain-anthropic: input_tokens already includes cache reads and writes
        (_usage(1000, 100, cache_read=500, cache_creation=200), "online", 500, 200),
        (_usage(1000, 100, cache_read=500, cache_creation=200), "batch", 500, 200),
        # newer langchain-anthropic: the writes by cache lifetime, the generic key set to 0
        (_usage(1000, 100, cache_read=500, cache_creation=0, ephemeral_5m_input_tokens=150, ephemeral_1h_input_tokens=50),
         "online", 500, 200),
        # older langchain-anthropic: both the total and the breakdown; counted once
        (_usage(1000, 100, cache_read=500, cache_creation=200, ephemeral_5m_input_tokens=200), "online", 500, 200),
    ],
)  # fmt: skip
def test_usage_is_priced_with_its_cached_and_written_input(
    usage: dict[str, Any], tier: Tier, cached: int, written: int
) -> None:
    table = PriceTable({"m": ModelPrice(2.0, 8.0, cached_input=0.5, cache_write=2.5)})
    input_price, output_price = (2.0, 8.0) if tier == "online" else (1.0, 4.0)
    by_hand = (1000 - cached - written) * input_price + cached * 0.5 + written * 2.5 + 100 * output_price
    assert table.cost_of_usage("m", usage, tier) == pytest.approx(by_hand / M)


def test_usage_defaults_to_the_online_tier() -> None:
    table = PriceTable()
    usage = _usage(2000, 100, cache_read=1000)
    assert table.cost_of_usage("gpt-4o", usage) == table.cost("gpt-4o", 2000, 100, cached_input_tokens=1000)


USAGE_VALUES = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=5),
    st.lists(st.integers(), max_size=2),
)
BUILT_IN = PriceTable()
"""One table for every example: only the cost of a usage is timed (a 0.65 s stall of CI's machine once failed a 0.5 s
bound around the table's construction and the cost together)."""
USAGE_KEYS = st.sampled_from(["input_tokens", "output_tokens", "total_tokens", "input_token_details", "x"])
DETAIL_KEYS = st.sampled_from(
    ["cache_read", "cache_creation", "flex_cache_read", "priority_cache_read", "flex_cache_creation",
     "ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens", "audio", "flex"]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.dictionaries(USAGE_KEYS, st.one_of(USAGE_VALUES, st.dictionaries(DETAIL_KEYS, USAGE_VALUES)), max_size=5),
        USAGE_VALUES,
    ),
    st.sampled_from(TIERS),
)
def test_any_usage_costs_a_finite_amount_and_never_raises(usage: Any, tier: Tier) -> None:
    started = time.perf_counter()
    cost = BUILT_IN.cost_of_usage("gpt-4o", usage, tier)
    assert cost is not None and math.isfinite(cost) and cost >= 0
    assert time.perf_counter() - started < 2  # microseconds; the bound catches a blow-up, not a slow machine


# -- price files: the old two-key form and the new keys ---------------------------------------------


def _prices_file(tmp_path: Path, entries: dict[str, Any]) -> str:
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(entries), encoding="utf-8")
    return str(path)


def test_a_file_overrides_and_adds_to_the_built_in_table(tmp_path: Path) -> None:
    path = _prices_file(tmp_path, {"gpt-4o": {"input": 1, "output": 2}, "my-model": {"input": 0.5, "output": 0.25}})
    table = PriceTable.load(path)
    assert table.price("gpt-4o") == ModelPrice(1.0, 2.0)
    assert table.price("gpt-4o-2024-08-06") == ModelPrice(1.0, 2.0)  # the snapshot follows its override
    assert table.price("my-model") == ModelPrice(0.5, 0.25)
    assert table.price("my-model-2025-01-01") == ModelPrice(0.5, 0.25)
    assert table.price("gpt-4o-mini") is DEFAULT_PRICES["gpt-4o-mini"]  # the rest stays built in
    # an override replaces the whole entry: its cached price is no longer the built-in one
    assert table.rates("gpt-4o") == Rates(1.0, 2.0, 1.0, 1.25)


def test_the_two_key_form_still_reads_as_the_pair_it_was() -> None:
    table = parse_prices(b'{"m": {"input": 0.15, "output": "0.6"}}', "p.json")
    assert table == {"m": ModelPrice(0.15, 0.6)} and table["m"].pair == (0.15, 0.6)
    assert DEFAULT_PRICES["gpt-4o"].pair == (2.50, 10.00)
    assert DEFAULT_PRICES["gpt-4o"] != ModelPrice(2.50, 10.00)  # another price with other details


def test_a_file_entry_takes_every_new_key(tmp_path: Path) -> None:
    entry = {
        "input": 3,
        "output": "15",
        "cached_input": 0.3,
        "cache_write": 3.75,
        "batch": {"input": 1.5, "output": 7.5, "cached_input": 0.15, "cache_write": 1.875},
        "flex": {"output": 7},
    }
    table = PriceTable.load(_prices_file(tmp_path, {"claude": entry}), builtin=False)
    price = table.price("claude")
    assert price == ModelPrice(3.0, 15.0, 0.3, 3.75, TierPrice(1.5, 7.5, 0.15, 1.875), TierPrice(output=7.0))
    assert table.rates("claude", "batch") == Rates(1.5, 7.5, 0.15, 1.875)
    assert table.rates("claude", "flex") == Rates(1.5, 7.0, 0.3, 3.75)


def test_a_yaml_file_takes_the_new_keys_too() -> None:
    text = b"m:\n  input: 2\n  output: 8\n  cached_input: 0.5\n  batch: {input: 1, output: 4}\n  flex: {}\n"
    assert parse_prices(text, "p.yaml") == {"m": ModelPrice(2.0, 8.0, 0.5, batch=TierPrice(1.0, 4.0), flex=TierPrice())}


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({"input": 1}, "needs numeric 'input' and 'output' (USD per 1M tokens)"),
        ([1, 2], "needs numeric 'input' and 'output' (USD per 1M tokens)"),
        ({"input": 1, "output": 1, "cached_input": -0.1}, ": cached_input must be a finite number >= 0"),
        ({"input": 1, "output": 1, "cached_input": "cheap"}, ": cached_input must be a finite number >= 0"),
        ({"input": 1, "output": 1, "cache_write": float("nan")}, ": cache_write must be a finite number >= 0"),
        ({"input": 1, "output": 1, "cached_input": None}, ": cached_input must be a finite number >= 0"),
        ({"input": 1, "output": 1, "batch": {"input": float("inf")}}, ": batch.input must be a finite number >= 0"),
        ({"input": 1, "output": 1, "flex": {"output": True}}, ": flex.output must be a finite number >= 0"),
        ({"input": 1, "output": 1, "batch": {"cached_input": [0.1]}}, ": batch.cached_input must be a finite number"),
        ({"input": 1, "output": 1, "batch": {"cache_write": -1}}, ": batch.cache_write must be a finite number >= 0"),
        ({"input": 1, "output": 1, "batch": 0.5}, ": batch must be a table of prices"),
        ({"input": 1, "output": 1, "flex": None}, ": flex must be a table of prices"),
        ({"input": 1, "output": 1, "cached": 0.5}, ": unknown key 'cached' (known: input, output, cached_input,"),
        ({"input": 1, "output": 1, "online": {}}, ": unknown key 'online' (known: input, output, cached_input,"),
        ({"input": 1, "output": 1, "batch": {"cached": 1}}, ": unknown key 'batch.cached' (known: input, output,"),
        ({"input": 1, "output": 1, "batch": {"batch": {}}}, ": unknown key 'batch.batch' (known: input, output,"),
    ],
)
def test_a_bad_entry_is_one_usage_line_naming_the_file_the_entry_and_the_key(entry: Any, problem: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_prices(json.dumps({"my-model": entry}).encode(), "p.json")
    message = str(info.value)
    assert message.startswith("--prices p.json: entry 'my-model'") and problem in message, message
    assert "\n" not in message and len(message) < 300
    assert message.endswith(("; fix it", "(USD per 1M tokens)")), message


def test_an_unknown_key_from_outside_is_shown_clipped() -> None:
    with pytest.raises(UsageError) as info:
        parse_prices(json.dumps({"m": {"input": 1, "output": 1, "x\n" * 500: 1}}).encode(), "p.json")
    assert "\n" not in str(info.value) and len(str(info.value)) < 300


def test_without_the_built_in_table_only_file_entries_have_prices(tmp_path: Path) -> None:
    path = _prices_file(tmp_path, {"gpt-4o-mini": {"input": 0.01, "output": 0.02}})
    table = PriceTable.load(path, builtin=False)
    assert table.price("gpt-4o-mini") == ModelPrice(0.01, 0.02)
    assert table.price("gpt-4o") is None and table.price("fake") is None
    assert PriceTable.load(None, builtin=False).prices == {}


def test_an_exact_file_entry_beats_the_snapshot_rule(tmp_path: Path) -> None:
    path = _prices_file(tmp_path, {"gpt-4o-mini-2024-07-18": {"input": 9, "output": 9}})
    table = PriceTable.load(path)
    assert table.price("gpt-4o-mini-2024-07-18") == ModelPrice(9.0, 9.0)
    assert table.price("gpt-4o-mini-2025-01-01") is DEFAULT_PRICES["gpt-4o-mini"]


def test_tables_do_not_share_their_entries(tmp_path: Path) -> None:
    PriceTable.load(_prices_file(tmp_path, {"gpt-4o": {"input": 7, "output": 7}}))
    assert PriceTable().price("gpt-4o") is DEFAULT_PRICES["gpt-4o"]
    assert (DEFAULT_PRICES["gpt-4o"].input, DEFAULT_PRICES["gpt-4o"].output) == (2.50, 10.00)


PRICE_VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**30), max_value=10**400),
    st.booleans(),
    st.none(),
    st.text(max_size=8),
    st.sampled_from(["0.5", "1e3", "-1", "nan", "inf", "1e999", "0x10", " 2 "]),
    st.lists(st.integers(), max_size=2),
)
PRICE_KEYS = st.sampled_from(["input", "output", "cached_input", "cache_write", "batch", "flex", "online", "x"])
TIER_TABLES = st.one_of(PRICE_VALUES, st.dictionaries(PRICE_KEYS, PRICE_VALUES, max_size=5))


@settings(max_examples=400, deadline=None)
@given(
    st.dictionaries(
        st.text(max_size=20),
        st.one_of(PRICE_VALUES, st.dictionaries(PRICE_KEYS, st.one_of(PRICE_VALUES, TIER_TABLES), max_size=7)),
        max_size=4,
    )
)
def test_any_json_price_file_is_a_table_with_finite_rates_or_one_usage_error(entries: dict[str, Any]) -> None:
    started = time.perf_counter()
    try:
        table = parse_prices(json.dumps(entries).encode(), "p.json")
    except UsageError as exc:
        assert str(exc).startswith("--prices p.json: ") and "\n" not in str(exc)
    else:
        for price in table.values():
            for tier in TIERS:
                rates = price.rates(tier)
                assert all(math.isfinite(r) and r >= 0 for r in rates)
    assert time.perf_counter() - started < 1


YAML_FRAGMENTS = [
    "m", ": ", "input", "output", "cached_input", "cache_write", "batch", "flex", "{", "}", ",", "\n", "  ",
    "1", "0.5", "-1", ".nan", ".inf", "'", "[", "]", "- ", "&a ", "*a", "!!float ", "1:2",
]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(YAML_FRAGMENTS), max_size=40).map("".join))
def test_any_yamlish_price_file_with_tiers_is_a_table_or_one_usage_error(text: str) -> None:
    started = time.perf_counter()
    try:
        table = parse_prices(text.encode(), "p.yaml")
    except UsageError as exc:
        assert str(exc).startswith("--prices p.yaml: ") and "\n" not in str(exc)
    else:
        assert all(isinstance(price.rates("batch"), Rates) for price in table.values())
    assert time.perf_counter() - started < 1


# -- Budget -------------------------------------------------------------------------------------


def test_a_reservation_within_the_budget_is_held() -> None:
    budget = Budget(1.0)
    assert budget.reserve(0.25) == 0.25
    assert budget.reserve(0.75) == 0.75  # exactly up to the limit is allowed
    assert (budget.reserved, budget.spent, budget.exhausted) == (1.0, 0.0, False)


@pytest.mark.parametrize(
    ("spent", "reserved", "estimate"),
    [(0.0, 0.0, 1.5), (0.5, 0.0, 0.75), (0.0, 0.5, 0.75), (0.25, 0.5, 0.5), (1.0, 0.0, 0.001)],
)
def test_a_reservation_past_the_budget_is_refused_and_exhausts_it(
    spent: float, reserved: float, estimate: float
) -> None:
    budget = Budget(1.0, spent=spent, reserved=reserved)
    with pytest.raises(BudgetExceededError, match=r"past --max-cost \$1 \(spent \$[0-9.]+\); raise --max-cost"):
        budget.reserve(estimate)
    assert budget.exhausted
    assert (budget.spent, budget.reserved) == (spent, reserved)  # the refused request holds nothing


def test_an_exhausted_budget_refuses_even_a_free_request() -> None:
    budget = Budget(1.0)
    with pytest.raises(BudgetExceededError):
        budget.reserve(2.0)
    with pytest.raises(BudgetExceededError):
        budget.reserve(0.0)


@pytest.mark.parametrize(("actual", "room"), [(0.5, 0.5), (0.125, 0.875), (0.0, 1.0)])
def test_settling_replaces_the_reservation_with_the_real_cost(actual: float, room: float) -> None:
    budget = Budget(1.0)
    budget.settle(budget.reserve(0.5), actual)
    assert (budget.reserved, budget.spent) == (0.0, actual)
    budget.reserve(room)  # what the real cost left is all usable
    with pytest.raises(BudgetExceededError):
        budget.reserve(0.001)
