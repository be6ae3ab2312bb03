"""The price table: a price for every model the SDK lists, the cost of a call at it, overrides
from the settings, Haiku 5.5's long-prompt tier, and the dearest rates for a model not in it."""

from __future__ import annotations

import typing

import anthropic.types
import pytest
from pydantic import ValidationError

from app.contract.prices import DEFAULT_PRICES, Price, cost_micro_usd, cost_usd, price_table
from app.contract.usage import CallUsage
from tests.support.deployment import settings_from


def _usage(model: str, input: int = 0, output: int = 0, write: int = 0, read: int = 0) -> CallUsage:
    return CallUsage(
        model=model,
        input_tokens=input,
        output_tokens=output,
        cache_creation_input_tokens=write,
        cache_read_input_tokens=read,
    )


def _sdk_models() -> list[str]:
    return [
        name
        for member in typing.get_args(anthropic.types.Model)
        for name in typing.get_args(member)
        if isinstance(name, str)
    ]


def test_every_model_the_sdk_lists_has_a_shipped_price() -> None:
    missing = [model for model in _sdk_models() if model not in DEFAULT_PRICES]

    assert _sdk_models() and not missing


@pytest.mark.parametrize(
    ("usage", "dollars"),
    [
        (_usage("claude-haiku-5-5", input=100_000), 0.01),
        (_usage("claude-haiku-5-5", output=1_000_000), 0.50),
        (_usage("claude-haiku-5-5", write=80_000, read=20_000), 0.0102),
        (_usage("claude-sonnet-5-5", input=1_000_000, output=1_000_000), 12.00),
        (_usage("claude-sonnet-5-5", write=1_000_000, read=1_000_000), 2.60),
        (
            _usage("claude-opus-5-5", input=1_000_000, output=1_000_000, write=1_000_000, read=1_000_000),
            29.20,
        ),
        (_usage("claude-opus-4-8", input=1_000_000, output=1_000_000), 30.00),
        (_usage("claude-fable-5-2", input=1_000_000, output=1_000_000, read=1_000_000), 48.20),
        (_usage("claude-fable-5-1", write=1_000_000, read=1_000_000), 12.75),
        (_usage("claude-haiku-4-5-20251001", input=1_000_000, output=1_000_000), 6.00),
        (_usage("claude-sonnet-4-6", input=1_000, output=1_000), 0.018),
    ],
    ids=[
        "haiku-5.5-input",
        "haiku-5.5-output",
        "haiku-5.5-cache",
        "sonnet-5.5",
        "sonnet-5.5-cache",
        "opus-5.5-all-kinds",
        "opus-4.8",
        "fable-5.2",
        "fable-5.1-cache",
        "haiku-4.5-dated",
        "sonnet-4.6-small",
    ],
)
def test_a_call_costs_its_tokens_at_its_models_rates(usage: CallUsage, dollars: float) -> None:
    assert cost_usd(usage, price_table({})) == pytest.approx(dollars)


@pytest.mark.parametrize(
    ("prompt", "dollars"),
    [
        # At the threshold: the base rates (0.10 in, 0.50 out).
        ((100_000, 0, 0), 0.01 + 0.0005),
        # One token over, counting cache writes and reads: every token at the long rates, output too.
        ((60_000, 30_000, 10_001), 0.03 + 0.01875 + 0.00050005 + 0.0025),
    ],
    ids=["at-100k", "over-100k"],
)
def test_haiku_5_5_prices_a_prompt_over_100k_tokens_at_its_long_prompt_rates(
    prompt: tuple[int, int, int], dollars: float
) -> None:
    input, write, read = prompt

    cost = cost_usd(
        _usage("claude-haiku-5-5", input=input, output=1_000, write=write, read=read), price_table({})
    )

    assert cost == pytest.approx(dollars, abs=1e-6)


def test_ai_prices_in_the_settings_override_the_shipped_price_and_add_models(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "AI_PRICES",
        '{"claude-haiku-5-5": {"input": 1, "output": 2, "cache_write": 0, "cache_read": 0},'
        ' "our-proxy-model": {"input": 3, "output": 4, "cache_write": 5, "cache_read": 6}}',
    )
    settings = settings_from(env)
    table = price_table(settings.ai_prices)

    assert cost_usd(_usage("claude-haiku-5-5", input=1_000_000, output=1_000_000), table) == 3.0
    assert cost_usd(_usage("our-proxy-model", input=1_000_000, read=1_000_000), table) == 9.0
    assert cost_usd(_usage("claude-opus-5-5", input=1_000_000), table) == 4.0


def test_a_model_missing_from_the_table_is_charged_the_dearest_rate_of_each_kind() -> None:
    table = {
        "cheap": Price(input=1, output=50, cache_write=1, cache_read=0.1),
        "dear": Price(input=10, output=5, cache_write=2, cache_read=0.2),
    }

    assert cost_usd(_usage("claude-next", input=1_000_000, output=1_000_000, read=1_000_000), table) == 60.2


def test_the_dearest_rates_include_long_prompt_tiers() -> None:
    table = {
        "tiered": Price(
            input=1,
            output=1,
            cache_write=1,
            cache_read=1,
            long_prompt_over=10,
            long_prompt=Price(input=7, output=8, cache_write=9, cache_read=10),
        )
    }

    assert cost_usd(_usage("claude-next", input=1_000_000), table) == 7.0


def test_costs_are_whole_micro_dollars() -> None:
    # 12 input and 34 output tokens of Haiku 5.5: 1.2 + 17 micro-dollars.
    assert cost_micro_usd(_usage("claude-haiku-5-5", input=12, output=34), price_table({})) == 18


@pytest.mark.parametrize(
    "fields",
    [{"long_prompt_over": 10}, {"long_prompt": {"input": 1, "output": 1, "cache_write": 1, "cache_read": 1}}],
    ids=["threshold-without-rates", "rates-without-threshold"],
)
def test_a_long_prompt_tier_needs_both_its_threshold_and_its_rates(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError, match="go together"):
        Price.model_validate({"input": 1, "output": 1, "cache_write": 1, "cache_read": 1, **fields})
