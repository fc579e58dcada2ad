"""Fast unit tests of what decides money: the price table and the ``--max-cost`` budget.

Price *files* as outside data (size, encoding, YAML, hostile numbers) are tested in
test_run_safety.py and test_safe_yaml.py; here: which price a model name gets, what a request
costs, and when the budget says no.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chains.engine.pricing import DEFAULT_PRICES, Budget, PriceTable
from chains.errors import BudgetExceededError

# -- PriceTable ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "price"), sorted(DEFAULT_PRICES.items()))
def test_a_built_in_model_gets_its_own_price(model: str, price: tuple[float, float]) -> None:
    assert PriceTable().price(model) == price


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
    assert PriceTable().price(model) == DEFAULT_PRICES[priced_as]


@pytest.mark.parametrize(
    "model",
    [
        *(None, "", "claude-3-5-sonnet", "llama3.2", "GPT-4O-MINI", "gpt-4", "gpt-4omini", "my-gpt-4o"),
        # another suffix is another model, not a snapshot of the base one (its price would be wrong)
        *("gpt-4o-realtime-preview", "gpt-3.5-turbo-instruct", "gpt-4o-mini ", "gpt-4o-mini-audio-preview-2024-12-17"),
    ],
)
def test_an_unknown_model_has_no_price(model: str | None) -> None:
    table = PriceTable()
    assert table.price(model) is None
    assert table.cost(model, 1000, 1000) is None


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(st.text(max_size=200), st.builds(lambda m, t: m + t, st.sampled_from(sorted(DEFAULT_PRICES)), st.text()))
)
def test_any_model_name_gets_a_price_from_the_table_or_none(model: str) -> None:
    price = PriceTable().price(model)
    assert price is None or price in DEFAULT_PRICES.values()
    cost = PriceTable().cost(model, 10, 10)
    assert (cost is None) is (price is None)


@pytest.mark.parametrize(
    ("model", "input_tokens", "output_tokens", "cost"),
    [
        ("gpt-4o-mini", 1_000_000, 1_000_000, 0.75),
        ("gpt-4o-mini", 1_000_000, 0, 0.15),
        ("gpt-4o", 0, 1_000_000, 10.0),
        ("gpt-4o-mini-2024-07-18", 2_000, 500, (2_000 * 0.15 + 500 * 0.60) / 1_000_000),
        ("gpt-4o", 0, 0, 0.0),
        ("fake", 10**9, 10**9, 0.0),
    ],
)
def test_cost_is_tokens_times_the_price_per_million(
    model: str, input_tokens: int, output_tokens: int, cost: float
) -> None:
    assert PriceTable().cost(model, input_tokens, output_tokens) == pytest.approx(cost)


def _prices_file(tmp_path: Path, entries: dict[str, dict[str, float]]) -> str:
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(entries), encoding="utf-8")
    return str(path)


def test_a_file_overrides_and_adds_to_the_built_in_table(tmp_path: Path) -> None:
    path = _prices_file(tmp_path, {"gpt-4o": {"input": 1, "output": 2}, "my-model": {"input": 0.5, "output": 0.25}})
    table = PriceTable.load(path)
    assert table.price("gpt-4o") == (1.0, 2.0)
    assert table.price("gpt-4o-2024-08-06") == (1.0, 2.0)  # the snapshot follows its override
    assert table.price("my-model") == (0.5, 0.25)
    assert table.price("my-model-2025-01-01") == (0.5, 0.25)
    assert table.price("gpt-4o-mini") == DEFAULT_PRICES["gpt-4o-mini"]  # the rest stays built in


def test_without_the_built_in_table_only_file_entries_have_prices(tmp_path: Path) -> None:
    path = _prices_file(tmp_path, {"gpt-4o-mini": {"input": 0.01, "output": 0.02}})
    table = PriceTable.load(path, builtin=False)
    assert table.price("gpt-4o-mini") == (0.01, 0.02)
    assert table.price("gpt-4o") is None and table.price("fake") is None
    assert PriceTable.load(None, builtin=False).prices == {}


def test_an_exact_file_entry_beats_the_snapshot_rule(tmp_path: Path) -> None:
    path = _prices_file(tmp_path, {"gpt-4o-mini-2024-07-18": {"input": 9, "output": 9}})
    table = PriceTable.load(path)
    assert table.price("gpt-4o-mini-2024-07-18") == (9.0, 9.0)
    assert table.price("gpt-4o-mini-2025-01-01") == DEFAULT_PRICES["gpt-4o-mini"]


def test_tables_do_not_share_their_entries(tmp_path: Path) -> None:
    PriceTable.load(_prices_file(tmp_path, {"gpt-4o": {"input": 7, "output": 7}}))
    assert PriceTable().price("gpt-4o") == DEFAULT_PRICES["gpt-4o"]
    assert DEFAULT_PRICES["gpt-4o"] == (2.50, 10.00)


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
