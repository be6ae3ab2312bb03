"""Every AI call is charged after it ends, however it ends: its tokens and cost (micro-dollars)
added in one step to its person's and workspace's totals of the UTC day and month, each bucket
indexed and expiring; and to the cost and token metrics, which never name who asked."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import pytest
import redis

from app.contract import keys, metrics, usage
from app.contract.keys import COUNTERS_KEY
from app.contract.logs import configure_logging
from app.contract.prices import price_table
from app.contract.queue import open_redis
from app.contract.settings import Settings
from app.contract.usage import CallRecord, CallUsage, Retention
from tests.support.deployment import settings_from
from tests.support.fakes.anthropic import MESSAGES, FakeAnthropic, StreamReply, error
from tests.support.fakes.slack import START_STREAM, FakeSlack
from tests.support.jobs import in_redis
from tests.support.logs import caplog_events
from tests.support.threads import TEAM, USER, question, run_thread_question, stop_thread_question
from workers import spend
from workers.errors import PermanentError

HAIKU = "claude-haiku-5-5"

#: 2,000 input, 34 output, 200 cache-write and 500 cache-read tokens of Haiku 5.5, in
#: micro-dollars: 200 + 17 + 25 + 5.
CACHED_USAGE = {"input_tokens": 2000, "cache_creation_input_tokens": 200, "cache_read_input_tokens": 500}
CACHED_COST = 247


def _totals(client: redis.Redis, period: keys.UsagePeriod, scope: keys.UsageScope) -> dict[str, int]:
    now = datetime.now(UTC)
    bucket = usage.day_bucket(now) if period == "day" else usage.month_bucket(now)
    raw = client.hgetall(keys.usage_key(period, bucket, scope, TEAM, USER))
    return {name.decode(): int(value) for name, value in raw.items()}


def _counters(client: redis.Redis) -> dict[str, float]:
    return {name.decode(): float(value) for name, value in client.hgetall(COUNTERS_KEY).items()}


def _run(settings: Settings, text: str = "a question") -> str:
    return asyncio.run(run_thread_question(settings, question(text)))


def test_an_answered_call_is_charged_to_the_person_and_the_workspace_for_the_day_and_the_month(
    settings: Settings, fake_anthropic: FakeAnthropic, redis_client: redis.Redis
) -> None:
    fake_anthropic.script(MESSAGES, StreamReply(output_tokens=34, usage=CACHED_USAGE))

    _run(settings)

    expected = {
        "calls": 1,
        "cost": CACHED_COST,
        "input": 2000,
        "output": 34,
        "cache_write": 200,
        "cache_read": 500,
    }
    for period in ("day", "month"):
        for scope in ("user", "team"):
            totals = _totals(redis_client, period, scope)
            assert {kind: totals[kind] for kind in expected} == expected, (period, scope)
            assert {kind: totals[f"{HAIKU}|{kind}"] for kind in expected} == expected, (period, scope)


def test_each_bucket_indexes_who_spent_in_it_by_cost(
    settings: Settings, fake_anthropic: FakeAnthropic, redis_client: redis.Redis
) -> None:
    fake_anthropic.script(MESSAGES, StreamReply(output_tokens=34, usage=CACHED_USAGE))

    _run(settings)

    now = datetime.now(UTC)
    for period, bucket in (("day", usage.day_bucket(now)), ("month", usage.month_bucket(now))):
        assert redis_client.zrange(keys.usage_index_key(period, bucket, "user"), 0, -1, withscores=True) == [
            (f"{TEAM}:{USER}".encode(), CACHED_COST)
        ]
        assert redis_client.zrange(keys.usage_index_key(period, bucket, "team"), 0, -1, withscores=True) == [
            (TEAM.encode(), CACHED_COST)
        ]


def test_calls_add_up_in_whole_micro_dollars(
    settings: Settings, fake_anthropic: FakeAnthropic, redis_client: redis.Redis
) -> None:
    fake_anthropic.script(MESSAGES, *[StreamReply(output_tokens=34, usage=CACHED_USAGE)] * 3)

    for n in range(3):
        _run(settings, f"question {n}")

    assert _totals(redis_client, "day", "user")["cost"] == 3 * CACHED_COST
    assert _totals(redis_client, "month", "team")["calls"] == 3


def test_a_stopped_call_is_charged_what_it_used_until_the_stop(
    settings: Settings, fake_anthropic: FakeAnthropic, fake_slack: FakeSlack, redis_client: redis.Redis
) -> None:
    fake_anthropic.script(MESSAGES, StreamReply(text="token " * 500, chunk=6, event_delay=0.01))
    job = question("a long answer, please")

    asyncio.run(stop_thread_question(settings, job, lambda: fake_slack.wait_for(START_STREAM)))

    totals = _totals(redis_client, "day", "user")
    assert totals["calls"] == 1 and totals["input"] == 12
    # The final count never came: estimated from the text received, at least a token.
    assert totals["output"] >= 1 and totals["cost"] > 0
    assert _counters(redis_client)[f'asklane_ai_calls|model="{HAIKU}",outcome="stopped"'] == 1


def test_a_call_that_failed_mid_answer_is_charged_what_it_used(
    settings: Settings, fake_anthropic: FakeAnthropic, redis_client: redis.Redis
) -> None:
    fake_anthropic.script(MESSAGES, StreamReply(chunk=5, fail="error", fail_after=3))

    with pytest.raises(PermanentError):
        _run(settings)

    totals = _totals(redis_client, "month", "user")
    assert totals["calls"] == 1 and totals["input"] == 12 and totals["output"] >= 1
    # Recorded as failed although the thread kind handled the break inside the stream's block.
    assert (
        f'asklane_ai_calls_total{{model="{HAIKU}",outcome="failed"}} 1.0'
        in in_redis(settings, metrics.render).decode()
    )


def test_a_call_refused_before_any_answer_used_no_tokens_and_is_charged_nothing(
    settings: Settings, fake_anthropic: FakeAnthropic, redis_client: redis.Redis
) -> None:
    fake_anthropic.script(MESSAGES, error(400, "invalid_request_error"))

    with pytest.raises(PermanentError):
        _run(settings)

    assert not list(redis_client.scan_iter("asklane:usage:*"))


def test_day_and_month_totals_expire_their_kept_time_after_the_bucket_ends(
    env: dict[str, str], fake_anthropic: FakeAnthropic, redis_client: redis.Redis
) -> None:
    settings = settings_from({**env, "USAGE_DAYS_KEPT": "3", "USAGE_MONTHS_KEPT": "2"})
    fake_anthropic.script(MESSAGES, StreamReply())

    _run(settings)

    now = datetime.now(UTC)
    day_ends, month_ends = usage.next_day(now).timestamp(), usage.next_month(now).timestamp()
    charged = usage.charge_keys(TEAM, USER, now)
    for key in charged:
        ttl = redis_client.ttl(key)
        expected = day_ends + 3 * 86_400 if ":day:" in key else usage.next_month(now, 3).timestamp()
        assert abs(time.time() + ttl - expected) <= 2, key
    assert usage.next_month(now, 3).timestamp() > month_ends + 2 * 28 * 86_400


@pytest.mark.parametrize(
    ("moment", "day", "month", "next_day", "next_month"),
    [
        (datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC), "2026-12-31", "2026-12", "2027-01-01", "2027-01-01"),
        (datetime(2026, 2, 28, 0, 0, tzinfo=UTC), "2026-02-28", "2026-02", "2026-03-01", "2026-03-01"),
        (datetime(2026, 7, 15, 12, 0, tzinfo=UTC), "2026-07-15", "2026-07", "2026-07-16", "2026-08-01"),
    ],
    ids=["new-years-eve", "end-of-february", "mid-month"],
)
def test_a_moment_falls_in_its_utc_day_and_month(
    moment: datetime, day: str, month: str, next_day: str, next_month: str
) -> None:
    assert (usage.day_bucket(moment), usage.month_bucket(moment)) == (day, month)
    assert usage.next_day(moment).date().isoformat() == next_day
    assert usage.next_month(moment).date().isoformat() == next_month


def test_retention_counts_from_the_end_of_the_bucket() -> None:
    moment = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
    kept = Retention(days=62, months=13)

    # 30 November ends at 1 December 00:00; 62 days later is 1 February.
    assert datetime.fromtimestamp(kept.day_expires_at(moment), UTC) == datetime(2027, 2, 1, tzinfo=UTC)
    assert datetime.fromtimestamp(kept.month_expires_at(moment), UTC) == datetime(2028, 1, 1, tzinfo=UTC)


def _record(model: str) -> CallRecord:
    return CallRecord(
        job_id="thread-1",
        attempt=1,
        started_at=datetime.now(UTC),
        duration_ms=1.0,
        outcome="answered",
        usage=CallUsage(model=model, input_tokens=1_000_000),
    )


def test_a_model_missing_from_the_price_table_is_logged_once_and_charged_the_dearest_rates(
    settings: Settings, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    configure_logging(settings)
    job = question("which model?")
    table = price_table({})

    async def charge_twice() -> None:
        client = open_redis(settings)
        for _ in range(2):
            record = _record("claude-next-9")
            await spend.charge_call(client, settings, job, record, spend.price(record, table))
        await client.aclose()

    asyncio.run(charge_twice())

    logged = [event["model"] for event in caplog_events(caplog, "usage.price_unknown")]
    assert logged == ["claude-next-9"]
    # A million input tokens at the dearest input rate of the table (Mythos Preview's $25), twice.
    assert _totals(redis_client, "day", "user")["cost"] == 2 * 25_000_000


def test_cost_and_token_metrics_are_exposed_by_model_and_outcome_never_by_who_asked(
    settings: Settings, fake_anthropic: FakeAnthropic, redis_client: redis.Redis
) -> None:
    fake_anthropic.script(MESSAGES, StreamReply(output_tokens=34, usage=CACHED_USAGE))
    _run(settings)

    text = in_redis(settings, metrics.render).decode()

    assert f'asklane_ai_cost_usd_total{{model="{HAIKU}",outcome="answered"}} 0.000247' in text
    for kind, amount in (("input", 2000), ("output", 34), ("cache_write", 200), ("cache_read", 500)):
        line = f'asklane_ai_call_tokens_total{{kind="{kind}",model="{HAIKU}",outcome="answered"}} {amount}.0'
        assert line in text
    assert f'asklane_ai_calls_total{{model="{HAIKU}",outcome="answered"}} 1.0' in text
    assert USER not in text and TEAM not in text


def test_a_charge_redis_refuses_is_logged_and_never_fails_the_answered_job(
    settings: Settings,
    fake_anthropic: FakeAnthropic,
    fake_slack: FakeSlack,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    configure_logging(settings)
    fake_anthropic.script(MESSAGES, StreamReply(text="answered all the same"))
    # A string where the person's day totals go: the charge is refused by Redis (WRONGTYPE).
    redis_client.set(keys.usage_key("day", usage.day_bucket(datetime.now(UTC)), "user", TEAM, USER), b"x")

    job = question("charged?")
    via = asyncio.run(run_thread_question(settings, job))

    assert via == "stream"
    [message] = fake_slack.thread(job.reply_to.channel_id, job.reply_to.thread_ts)
    assert message.text == "answered all the same"
    assert caplog_events(caplog, "usage.uncharged")
