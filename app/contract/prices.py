"""What Claude costs: US dollars per million tokens, per model, and the cost of one call.

The shipped table covers the models the installed anthropic SDK lists (``anthropic.types.Model``);
AI_PRICES in the settings overrides or adds entries without a release. Prices change: the table
says when it was last checked against Anthropic's pricing page, and a model missing from it is
priced at the table's dearest rates (logged once per process) so a budget is never undercharged.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date

from pydantic import BaseModel, ConfigDict, Field

from app.contract.usage import CallUsage

#: When the table below was last compared with PRICES_SOURCE.
PRICES_CHECKED = date(2026, 12, 1)
PRICES_SOURCE = "https://platform.claude.com/docs/en/about-claude/pricing"

NonNegative = Field(ge=0)


class Price(BaseModel):
    """US dollars per million tokens of each kind (cache writes at the default 5-minute TTL)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input: float = NonNegative
    output: float = NonNegative
    cache_write: float = NonNegative
    cache_read: float = NonNegative


def _standard(input: float, output: float, cache_read: float | None = None) -> Price:
    """A price with Anthropic's usual cache rates: writes at 1.25 times the input rate, reads at 0.1 times."""
    return Price(
        input=input,
        output=output,
        cache_write=input * 1.25,
        cache_read=input * 0.1 if cache_read is None else cache_read,
    )


#: The shipped prices, by model id (checked PRICES_CHECKED).
DEFAULT_PRICES: Mapping[str, Price] = {
    "claude-haiku-5-5": _standard(0.10, 0.50),
    "claude-sonnet-5-5": _standard(2.00, 10.00),
    "claude-opus-5-5": _standard(4.00, 20.00),
}


def price_table(overrides: Mapping[str, Price]) -> dict[str, Price]:
    """The shipped table with the settings' AI_PRICES over it."""
    return {**DEFAULT_PRICES, **overrides}


def cost_usd(usage: CallUsage, table: Mapping[str, Price]) -> float:
    """What ``usage`` cost in US dollars at ``table``'s price for its model."""
    price = table.get(usage.model) or _dearest(table)
    return (
        usage.input_tokens * price.input
        + usage.output_tokens * price.output
        + usage.cache_creation_input_tokens * price.cache_write
        + usage.cache_read_input_tokens * price.cache_read
    ) / 1_000_000


def _dearest(table: Mapping[str, Price]) -> Price:
    """The highest rate of each kind in ``table``: a model missing from it is never undercharged."""
    prices = list(table.values()) or list(DEFAULT_PRICES.values())
    return Price(
        input=max(price.input for price in prices),
        output=max(price.output for price in prices),
        cache_write=max(price.cache_write for price in prices),
        cache_read=max(price.cache_read for price in prices),
    )
