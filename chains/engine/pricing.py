"""Cost: a price table (USD per million input / output tokens) and the run's budget (``--max-cost``).

The built-in table covers common OpenAI models; a JSON or YAML file
(``--prices FILE``: ``{"model": {"input": 0.15, "output": 0.60}}``) adds or
overrides entries.  Unknown models have no price: their cost is reported as
unknown, and ``--max-cost`` refuses to run them rather than guess.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

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


_SNAPSHOT = re.compile(r"(?P<base>.+?)-(?:\d{4}-\d{2}-\d{2}|\d{4})")


@dataclass
class PriceTable:
    """Model name → (input, output) USD per 1M tokens.

    The built-in entries are OpenAI's list prices: they hold for OpenAI itself, not for the same
    model name on a local or third-party server (a llama.cpp server answering as ``gpt-4o-mini``
    costs nothing like it), so ``load(builtin=False)`` leaves them out and such a model's cost is
    unknown.  Entries from ``--prices`` hold wherever the model is served.
    """

    prices: dict[str, tuple[float, float]] = field(default_factory=lambda: dict(DEFAULT_PRICES))

    @classmethod
    def load(cls, path: str | None, *, builtin: bool = True) -> PriceTable:
        table = cls() if builtin else cls({})
        if path:
            table.prices.update(_read_prices(path))
        return table

    def price(self, model: str | None) -> tuple[float, float] | None:
        if not model:
            return None
        if model in self.prices:
            return self.prices[model]
        # dated snapshots only (gpt-4o-mini-2024-07-18, gpt-3.5-turbo-0125 → the base name): another
        # suffix is another model (gpt-4o-realtime-preview is not gpt-4o) and has no price here
        snapshot = _SNAPSHOT.fullmatch(model)
        return self.prices.get(snapshot.group("base")) if snapshot else None

    def cost(self, model: str | None, input_tokens: int, output_tokens: int) -> float | None:
        price = self.price(model)
        if price is None:
            return None
        return (input_tokens * price[0] + output_tokens * price[1]) / 1_000_000


MAX_PRICES_BYTES = 256 * 1024
"""A price table is a few kilobytes; anything much larger is the wrong file."""

_SHAPE = '{"model": {"input": USD, "output": USD}} per 1M tokens'


def _read_prices(path: str) -> dict[str, tuple[float, float]]:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_PRICES_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"--prices {path}: cannot read ({exc.strerror}); check the path") from exc
    return parse_prices(data, path)


def parse_prices(data: bytes, path: str) -> dict[str, tuple[float, float]]:
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
"""A price table is two levels deep; PyYAML's composer recurses, so deeper files are refused, not overflowed."""


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


def _entry(path: str, model: object, entry: object) -> tuple[float, float]:
    where = f"--prices {path}: entry {_name(model)[:80]!r}"
    if not isinstance(entry, Mapping) or "input" not in entry or "output" not in entry:
        raise UsageError(f"{where} needs numeric 'input' and 'output' (USD per 1M tokens)")
    return _price(where, "input", entry["input"]), _price(where, "output", entry["output"])


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
