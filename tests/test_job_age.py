"""A job's age is measured on Redis's clock, not the web host's: web and worker clocks may
disagree by minutes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from app.contract.events import ALL, JobEvents
from app.contract.settings import Settings
from tests.support.fakes.anthropic import FakeAnthropic
from tests.support.fakes.slack import FakeSlack
from tests.support.jobs import drain, enqueue_stamped
from tests.support.slack_requests import SlashCommands
from workers.retry import MAX_JOB_AGE_SECONDS


def _drain_recording(settings: Settings) -> dict[str, dict[str, Any]]:
    """Run a worker until the queue is empty; the last fields of each event it emitted."""
    events, seen = JobEvents(), {}

    async def keep(event: str, fields: dict[str, Any]) -> None:
        seen[event] = fields

    events.subscribe(ALL, keep)
    drain(settings, events=events)
    return seen


def test_a_job_the_web_clock_dates_26_minutes_ago_but_redis_stamped_now_is_answered(
    settings: Settings,
    redis_client: redis.Redis,
    commands: SlashCommands,
    fake_slack: FakeSlack,
) -> None:
    job = commands.job("what is a p99?", enqueued_at=datetime.now(UTC) - timedelta(minutes=26))
    enqueue_stamped(settings, redis_client, job, redis_age=0)

    _drain_recording(settings)

    assert fake_slack.answers() == ["Answer to: what is a p99?"]


def test_a_job_the_web_clock_dates_30_minutes_ahead_records_a_non_negative_queued_time(
    settings: Settings,
    redis_client: redis.Redis,
    commands: SlashCommands,
    fake_slack: FakeSlack,
) -> None:
    job = commands.job("what is a p99?", enqueued_at=datetime.now(UTC) + timedelta(minutes=30))
    enqueue_stamped(settings, redis_client, job, redis_age=0)

    seen = _drain_recording(settings)

    assert 0 <= seen["job.started"]["queued_ms"] < 60_000
    assert 0 <= seen["job.completed"]["total_ms"] < 60_000


def test_a_job_the_web_clock_dates_30_minutes_ahead_still_ages_from_its_redis_stamp(
    settings: Settings,
    redis_client: redis.Redis,
    commands: SlashCommands,
    fake_anthropic: FakeAnthropic,
    fake_slack: FakeSlack,
) -> None:
    job = commands.job("an old question", enqueued_at=datetime.now(UTC) + timedelta(minutes=30))
    enqueue_stamped(settings, redis_client, job, redis_age=MAX_JOB_AGE_SECONDS + 5)

    _drain_recording(settings)

    assert fake_anthropic.calls == []
    [text] = [post["text"] for post in fake_slack.delivered()]
    assert "waited too long" in text


def test_without_a_redis_stamp_a_payload_time_in_the_future_counts_as_now(
    settings: Settings,
    redis_client: redis.Redis,
    commands: SlashCommands,
    fake_slack: FakeSlack,
) -> None:
    job = commands.job("what is a p99?", enqueued_at=datetime.now(UTC) + timedelta(minutes=30))
    enqueue_stamped(settings, redis_client, job, redis_age=None)

    seen = _drain_recording(settings)

    assert 0 <= seen["job.started"]["queued_ms"] < 60_000
    assert fake_slack.answers() == ["Answer to: what is a p99?"]
