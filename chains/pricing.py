"""Cost: a price table (USD per million input / output tokens) and the run's budget (``--max-cost``).

The built-in table covers common OpenAI models; a JSON or YAML file
(``--prices FILE``: ``{"model": {"input": 0.15, "output": 0.60}}``) adds or
overrides entries.  Unknown models have no price: their cost is reported as
unknown, and ``--max-cost`` refuses to run them rather than guess.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from chains.errors import BudgetExceededError, UsageError

# USD per 1M tokens (input, output); public list prices, override with --prices.
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-3.5-turbo": (0.50, 1.50),
    "o4-mini": (1.10, 4.40),
    "o3-mini": (1.10, 4.40),
    "fake": (0.0, 0.0),
}


@dataclass
class PriceTable:
    prices: dict[str, tuple[float, float]] = field(default_factory=lambda: dict(DEFAULT_PRICES))

    @classmethod
    def load(cls, path: str | None) -> PriceTable:
        table = cls()
        if path:
            table.prices.update(_read_prices(path))
        return table

    def price(self, model: str | None) -> tuple[float, float] | None:
        if not model:
            return None
        if model in self.prices:
            return self.prices[model]
        # dated snapshots: gpt-4o-mini-2024-07-18 → gpt-4o-mini
        best = max((name for name in self.prices if model.startswith(name + "-")), key=len, default=None)
        return self.prices[best] if best else None

    def cost(self, model: str | None, input_tokens: int, output_tokens: int) -> float | None:
        price = self.price(model)
        if price is None:
            return None
        return (input_tokens * price[0] + output_tokens * price[1]) / 1_000_000


def _read_prices(path: str) -> dict[str, tuple[float, float]]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--prices {path}: cannot read ({exc.strerror}); check the path") from exc
    try:
        if path.endswith((".yaml", ".yml")):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:
        raise UsageError(f"--prices {path}: not valid JSON/YAML ({exc}); fix the file") from exc
    if not isinstance(data, Mapping):
        raise UsageError(f'--prices {path}: expected {{"model": {{"input": USD, "output": USD}}}} per 1M tokens')
    prices: dict[str, tuple[float, float]] = {}
    for model, entry in data.items():
        try:
            prices[str(model)] = (float(entry["input"]), float(entry["output"]))
        except (TypeError, KeyError, ValueError):
            raise UsageError(
                f"--prices {path}: entry {model!r} needs numeric 'input' and 'output' (USD per 1M tokens)"
            ) from None
    return prices


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
