"""What Claude costs: US dollars per million tokens, per model, and the cost of one call.

The shipped table covers every model the installed anthropic SDK lists (``anthropic.types.Model``,
tests/test_prices.py checks it); AI_PRICES in the settings overrides or adds entries without a
release. Prices change: the table says when it was last checked against Anthropic's pricing page,
and a model missing from it is priced at the table's dearest rates (the worker logs it once) so a
budget is never undercharged.

Claude Haiku 5.5 is priced by prompt length: a call whose prompt (input, cache writes and cache
reads together) is over 100,000 tokens pays higher rates on every token of that call, output
included. :class:`Price` carries that as an optional second tier, applied per call.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date

from pydantic import BaseModel, ConfigDict, Field, model_validator

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
    #: A call whose prompt (input + cache writes + cache reads) is over this many tokens is priced
    #: at ``long_prompt`` instead, every token of it (Haiku 5.5's tier); None: one rate for all.
    long_prompt_over: int | None = Field(default=None, gt=0)
    long_prompt: Price | None = None

    @model_validator(mode="after")
    def _tier_whole(self) -> Price:
        if (self.long_prompt_over is None) != (self.long_prompt is None):
            raise ValueError("long_prompt_over and long_prompt go together")
        if self.long_prompt is not None and self.long_prompt.long_prompt is not None:
            raise ValueError("a long-prompt price has no tier of its own")
        return self

    def for_prompt(self, prompt_tokens: int) -> Price:
        """The rates a call with a prompt of ``prompt_tokens`` pays."""
        if self.long_prompt is not None and self.long_prompt_over is not None:
            if prompt_tokens > self.long_prompt_over:
                return self.long_prompt
        return self


def _standard(input: float, output: float, cache_read: float | None = None) -> Price:
    """A price with Anthropic's usual cache rates: writes at 1.25 times the input rate, reads at 0.1 times."""
    return Price(
        input=input,
        output=output,
        cache_write=input * 1.25,
        cache_read=input * 0.1 if cache_read is None else cache_read,
    )


_OPUS_4_5_TO_5 = _standard(5.00, 25.00)
_FABLE_5 = _standard(10.00, 50.00)
_FABLE_5_1 = _standard(10.00, 50.00, cache_read=0.25)
_FABLE_5_2 = _standard(8.00, 40.00, cache_read=0.20)
_HAIKU_4_5 = _standard(1.00, 5.00)

#: The shipped prices, by model id (checked PRICES_CHECKED against PRICES_SOURCE and the models'
#: overview pages). Every id of ``anthropic.types.Model`` in the pinned SDK has a row. Mythos
#: models share their Fable twin's prices (Anthropic prices them alike). Mythos Preview's page
#: gives only input and output ($25 / $125); its cache rates here are the usual 1.25x and 0.1x.
DEFAULT_PRICES: Mapping[str, Price] = {
    "claude-fable-5-2": _FABLE_5_2,
    "claude-mythos-5-2": _FABLE_5_2,
    "claude-fable-5-1": _FABLE_5_1,
    "claude-mythos-5-1": _FABLE_5_1,
    "claude-fable-5": _FABLE_5,
    "claude-mythos-5": _FABLE_5,
    "claude-mythos-preview": _standard(25.00, 125.00),
    "claude-opus-5-5": _standard(4.00, 20.00, cache_read=0.20),
    "claude-opus-5": _OPUS_4_5_TO_5,
    "claude-opus-4-8": _OPUS_4_5_TO_5,
    "claude-opus-4-7": _OPUS_4_5_TO_5,
    "claude-opus-4-6": _OPUS_4_5_TO_5,
    "claude-opus-4-5": _OPUS_4_5_TO_5,
    "claude-opus-4-5-20251101": _OPUS_4_5_TO_5,
    # Cache reads cut from $0.20 to $0.10 on 2026-10-07.
    "claude-sonnet-5-5": _standard(2.00, 10.00, cache_read=0.10),
    "claude-sonnet-5": _standard(2.00, 10.00),
    "claude-sonnet-4-6": _standard(3.00, 15.00),
    "claude-haiku-5-5": Price(
        input=0.10,
        output=0.50,
        cache_write=0.125,
        cache_read=0.01,
        long_prompt_over=100_000,
        long_prompt=Price(input=0.50, output=2.50, cache_write=0.625, cache_read=0.05),
    ),
    "claude-haiku-4-5": _HAIKU_4_5,
    "claude-haiku-4-5-20251001": _HAIKU_4_5,
}


def price_table(overrides: Mapping[str, Price]) -> dict[str, Price]:
    """The shipped table with the settings' AI_PRICES over it."""
    return {**DEFAULT_PRICES, **overrides}


def is_priced(model: str, table: Mapping[str, Price]) -> bool:
    """Whether ``table`` has a price of its own for ``model`` (else :func:`cost_usd` uses the dearest)."""
    return model in table


def prompt_tokens(usage: CallUsage) -> int:
    """The tokens of a call's prompt, as Anthropic's prompt-length tiers count them."""
    return usage.input_tokens + usage.cache_creation_input_tokens + usage.cache_read_input_tokens


def cost_usd(usage: CallUsage, table: Mapping[str, Price]) -> float:
    """What ``usage`` cost in US dollars at ``table``'s price for its model."""
    return cost_micro_usd(usage, table) / 1_000_000


def cost_micro_usd(usage: CallUsage, table: Mapping[str, Price]) -> int:
    """What ``usage`` cost in millionths of a US dollar, rounded: the unit totals and budgets are
    kept in, so that adding many calls never drifts. Dollars per million tokens times tokens is
    exactly micro-dollars."""
    price = (table.get(usage.model) or _dearest(table)).for_prompt(prompt_tokens(usage))
    return round(
        usage.input_tokens * price.input
        + usage.output_tokens * price.output
        + usage.cache_creation_input_tokens * price.cache_write
        + usage.cache_read_input_tokens * price.cache_read
    )


def _dearest(table: Mapping[str, Price]) -> Price:
    """The highest rate of each kind in ``table`` (long-prompt tiers included): a model missing
    from it is never undercharged."""
    prices = list(table.values()) or list(DEFAULT_PRICES.values())
    rates = [tier for price in prices for tier in (price, price.long_prompt) if tier is not None]
    return Price(
        input=max(rate.input for rate in rates),
        output=max(rate.output for rate in rates),
        cache_write=max(rate.cache_write for rate in rates),
        cache_read=max(rate.cache_read for rate in rates),
    )
