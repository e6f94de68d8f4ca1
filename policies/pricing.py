"""What a request costs: a built-in per-model price table, overridable from the config.

Prices are USD per million tokens (list prices of the providers; verify against your
contract and override with `spend-limit.prices`). A model name matches its exact entry,
else the longest entry it starts with ("gpt-4o-mini-2024-07-18" -> "gpt-4o-mini",
"claude-sonnet-4-20250514" -> "claude-sonnet-4"); a "provider/" prefix is ignored.
A model with no price costs 0 and `price_for` returns None, so callers can say so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Price:
    input_per_mtok: float
    output_per_mtok: float


PRICES: dict[str, Price] = {
    # OpenAI
    "gpt-5": Price(1.25, 10.0),
    "gpt-5-mini": Price(0.25, 2.0),
    "gpt-5-nano": Price(0.05, 0.40),
    "gpt-4.1": Price(2.0, 8.0),
    "gpt-4.1-mini": Price(0.40, 1.60),
    "gpt-4.1-nano": Price(0.10, 0.40),
    "gpt-4o": Price(2.50, 10.0),
    "gpt-4o-mini": Price(0.15, 0.60),
    "gpt-4-turbo": Price(10.0, 30.0),
    "gpt-4": Price(30.0, 60.0),
    "gpt-3.5-turbo": Price(0.50, 1.50),
    "o1": Price(15.0, 60.0),
    "o1-mini": Price(1.10, 4.40),
    "o3": Price(2.0, 8.0),
    "o3-mini": Price(1.10, 4.40),
    "o4-mini": Price(1.10, 4.40),
    "text-embedding-3-small": Price(0.02, 0.0),
    "text-embedding-3-large": Price(0.13, 0.0),
    "text-embedding-ada-002": Price(0.10, 0.0),
    # Anthropic
    "claude-opus-4": Price(15.0, 75.0),
    "claude-opus-4-1": Price(15.0, 75.0),
    "claude-sonnet-4": Price(3.0, 15.0),
    "claude-3-7-sonnet": Price(3.0, 15.0),
    "claude-3-5-sonnet": Price(3.0, 15.0),
    "claude-3-5-haiku": Price(0.80, 4.0),
    "claude-3-opus": Price(15.0, 75.0),
    "claude-3-haiku": Price(0.25, 1.25),
}


class PriceTable(dict[str, Price]):
    """A resolved table: the built-in prices with a config's overrides on top, built once when the
    config compiles (`Config.prices`); `price_for`/`cost_usd` use it as it is."""


def price_table(overrides: Mapping[str, Mapping[str, Any] | Price] | None = None) -> PriceTable:
    """The built-in table with `overrides` (`{model: {input_per_mtok, output_per_mtok}}`) on top."""
    table = PriceTable({key.lower(): price for key, price in PRICES.items()})
    for key, entry in (overrides or {}).items():
        if not isinstance(entry, Price):
            entry = Price(float(entry.get("input_per_mtok", 0.0)), float(entry.get("output_per_mtok", 0.0)))
        table[key.lower()] = entry
    return table


_DEFAULT_TABLE = price_table()


def lookup(model: str, table: Mapping[str, Price]) -> Price | None:
    """`model`'s entry in a table from `price_table`: exact, else the longest prefix; None if absent."""
    name = model.lower()
    for candidate in (name, name.rsplit("/", 1)[-1]):
        if candidate in table:
            return table[candidate]
    name = name.rsplit("/", 1)[-1]
    matches = [key for key in table if name.startswith(key)]
    return table[max(matches, key=len)] if matches else None


def price_for(model: str, overrides: Mapping[str, Mapping[str, Any]] | PriceTable | None = None) -> Price | None:
    """The price of `model` with config overrides (or an already resolved `PriceTable`) applied, or None."""
    if isinstance(overrides, PriceTable):
        return lookup(model, overrides)
    return lookup(model, price_table(overrides) if overrides else _DEFAULT_TABLE)


def cost_usd(
    model: str, input_tokens: int, output_tokens: int,
    overrides: Mapping[str, Mapping[str, Any]] | PriceTable | None = None,
) -> float:
    """USD cost of one call; 0.0 for a model without a price (see `price_for`)."""
    price = price_for(model, overrides)
    if price is None:
        return 0.0
    return (input_tokens * price.input_per_mtok + output_tokens * price.output_per_mtok) / 1_000_000
