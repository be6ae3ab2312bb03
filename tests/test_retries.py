"""How the answer job meets Claude's failures: retry what is transient, report what is not,
and wait out back-pressure without spending retries."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from starlette.testclient import TestClient

from app.contract.events import ALL, JobEvents
from app.contract.keys import RATE_PAUSE_KEY
from app.contract.queue import open_redis
from app.contract.settings import Settings
from app.web.main import create_app
from tests.support.deployment import settings_from
from tests.support.fakes.anthropic import MESSAGES, FakeAnthropic, RawReply, error, message, trickled
from tests.support.fakes.server import Reply
from tests.support.fakes.slack import FakeSlack
from tests.support.jobs import drain, enqueue_stamped
from tests.support.slack_requests import SlashCommands
from workers.ratelimit import RateLimiter
from workers.retry import MAX_JOB_AGE_SECONDS


def _texts(fake_slack: FakeSlack) -> list[str]:
    return [post["text"] for post in fake_slack.delivered()]


def test_transient_failures_then_success_posts_one_answer(
    web: TestClient,
    commands: SlashCommands,
    settings: Settings,
    fake_anthropic: FakeAnthropic,
    fake_slack: FakeSlack,
) -> None:
    fake_anthropic.script(MESSAGES, error(529, "overloaded_error"), error(500, "api_error"))

    commands.send(web, "what is a p99?")
    drain(settings)

    assert len(fake_anthropic.calls) == 3
    assert _texts(fake_slack) == ["Answer to: what is a p99?"]


def test_retries_wait_the_configured_exponential_backoff(
    web: TestClient,
    commands: SlashCommands,
    settings: Settings,
    fake_anthropic: FakeAnthropic,
) -> None:
    fake_anthropic.script(MESSAGES, error(500, "api_error"), error(500, "api_error"), error(500, "api_error"))

    commands.send(web, "what is a p99?")
    drain(settings)

    starts = [request.at for request in fake_anthropic.received(MESSAGES)]
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    base = settings.job_retry_base_seconds
    assert len(gaps) == 3
    for gap, nominal in zip(gaps, [base, 2 * base, 4 * base], strict=True):
        # Never early; late only by arq's poll interval and scheduling.
        assert nominal <= gap < nominal + 0.5


def test_a_longer_retry_after_from_claude_is_honoured(
    web: TestClient,
    commands: SlashCommands,
    settings: Settings,
    fake_anthropic: FakeAnthropic,
) -> None:
    fake_anthropic.script(MESSAGES, error(429, "rate_limit_error", retry_after=1.0))

    commands.send(web, "what is a p99?")
    drain(settings)

    first, second = (request.at for request in fake_anthropic.received(MESSAGES))
    assert second - first >= 1.0


def test_exhausted_retries_end_with_an_error_message_with_a_reference(
    web: TestClient,
    commands: SlashCommands,
    settings: Settings,
    fake_anthropic: FakeAnthropic,
    fake_slack: FakeSlack,
    redis_client: redis.Redis,
) -> None:
    fake_anthropic.script(MESSAGES, *[error(529, "overloaded_error")] * 10)

    commands.send(web, "what is a p99?")
    worker = drain(settings)

    assert len(fake_anthropic.calls) == settings.job_max_retries + 1
    [text] = _texts(fake_slack)
    assert "Claude is busy" in text
    assert "(ref " in text
    assert worker.jobs_failed == 1


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (error(400, "invalid_request_error"), "could not process"),
        (error(401, "authentication_error"), "API key"),
        (error(403, "permission_error"), "API key"),
        (error(404, "not_found_error"), "an admin needs to fix ANTHROPIC_MODEL"),
        (error(429, "rate_limit_error", error_code="enforced_spend_limit_reached"), "usage limit"),
        (Reply(json=message("", stop_reason="refusal")), "declined"),
    ],
    ids=["400", "401", "403", "404", "spend-limit-429", "refusal"],
)
def test_permanent_failures_are_not_retried_and_the_user_is_told(
    web: TestClient,
    commands: SlashCommands,
    settings: Settings,
    fake_anthropic: FakeAnthropic,
    fake_slack: FakeSlack,
    reply: Reply,
    expected: str,
) -> None:
    fake_anthropic.script(MESSAGES, reply)

    commands.send(web, "what is a p99?")
    drain(settings)

    assert len(fake_anthropic.calls) == 1
    [text] = _texts(fake_slack)
    assert expected in text
    assert "(ref " in text


def test_an_ai_timeout_is_retried(
    env: dict[str, str],
    commands: SlashCommands,
    fake_anthropic: FakeAnthropic,
    fake_slack: FakeSlack,
) -> None:
    settings = settings_from({**env, "AI_TIMEOUT_SECONDS": "0.5"})
    fake_anthropic.script(MESSAGES, Reply(action="hang"))

    with TestClient(create_app(settings)) as web:
        commands.send(web, "what is a p99?")
    drain(settings)

    assert len(fake_anthropic.calls) == 2
    assert _texts(fake_slack) == ["Answer to: what is a p99?"]


def test_a_dropped_connection_is_retried(
    web: TestClient,
    commands: SlashCommands,
    settings: Settings,
    fake_anthropic: FakeAnthropic,
    fake_slack: FakeSlack,
) -> None:
    fake_anthropic.script(MESSAGES, Reply(action="drop"))

    commands.send(web, "what is a p99?")
    drain(settings)

    assert len(fake_anthropic.calls) == 2
    assert _texts(fake_slack) == ["Answer to: what is a p99?"]


def test_an_answer_cut_short_by_max_tokens_is_delivered_with_a_note(
    web: TestClient,
    commands: SlashCommands,
    settings: Settings,
    fake_anthropic: FakeAnthropic,
    fake_slack: FakeSlack,
) -> None:
    fake_anthropic.script(MESSAGES, Reply(json=message("The first half of", stop_reason="max_tokens")))

    commands.send(web, "what is a p99?")
    drain(settings)

    [post] = fake_slack.delivered()
    assert post["blocks"][0]["text"] == "The first half of"
    assert "cut short" in post["blocks"][1]["elements"][0]["text"]


def _recording() -> tuple[JobEvents, list[tuple[str, dict[str, Any]]]]:
    """Job events with a hook that keeps every event, in order."""
    events, seen = JobEvents(), []

    async def keep(event: str, fields: dict[str, Any]) -> None:
        seen.append((event, fields))

    events.subscribe(ALL, keep)
    return events, seen


def test_an_ai_call_trickling_a_byte_at_a_time_is_cut_at_ai_timeout_and_retried(
    env: dict[str, str],
    commands: SlashCommands,
    fake_anthropic: FakeAnthropic,
    fake_slack: FakeSlack,
) -> None:
    # Every byte arrives well within the SDK's per-read timeout; the whole body would take 12 s.
    settings = settings_from({**env, "AI_TIMEOUT_SECONDS": "1", "JOB_TIMEOUT_SECONDS": "30"})
    fake_anthropic.script(MESSAGES, trickled(message("a slow answer " * 10), byte_every=0.05))
    events, seen = _recording()

    with TestClient(create_app(settings)) as web:
        commands.send(web, "what is a p99?")
    drain(settings, events=events)

    assert len(fake_anthropic.calls) == 2
    assert _texts(fake_slack) == ["Answer to: what is a p99?"]
    [retrying] = [fields for event, fields in seen if event == "job.retrying"]
    assert "AI_TIMEOUT_SECONDS" in retrying["reason"]


@pytest.mark.parametrize(
    "reply",
    [
        RawReply(body=b'{"id": "msg_fake", "type": "message", "content": [{"type": "te'),
        RawReply(body=b"<html><body><h1>502 Bad Gateway</h1></body></html>", content_type="text/html"),
        Reply(json={}),
        Reply(json={**message("unused"), "content": None}),
    ],
    ids=["truncated-json", "html", "empty-object", "content-null"],
)
def test_a_200_whose_body_cannot_be_used_is_retried_as_transient(
    web: TestClient,
    commands: SlashCommands,
    settings: Settings,
    fake_anthropic: FakeAnthropic,
    fake_slack: FakeSlack,
    reply: Reply,
) -> None:
    fake_anthropic.script(MESSAGES, reply)
    events, seen = _recording()

    commands.send(web, "what is a p99?")
    drain(settings, events=events)

    assert len(fake_anthropic.calls) == 2
    assert _texts(fake_slack) == ["Answer to: what is a p99?"]
    [retrying] = [fields for event, fields in seen if event == "job.retrying"]
    assert "unusable body" in retrying["reason"]


def _limit_used_up_for_a_day() -> Reply:
    """An answer saying the output-token limit is used up until this time tomorrow."""
    reset = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    headers = {
        "anthropic-ratelimit-output-tokens-remaining": "0",
        "anthropic-ratelimit-output-tokens-reset": reset,
    }
    return Reply(json=message("Answer to: the first question"), headers=headers)


@pytest.mark.parametrize(
    "reply",
    [error(429, "rate_limit_error", retry_after=86400), _limit_used_up_for_a_day()],
    ids=["retry-after-a-day", "ratelimit-reset-in-a-day"],
)
def test_a_pause_asked_for_a_day_is_stored_no_longer_than_the_job_timeout(
    web: TestClient,
    commands: SlashCommands,
    settings: Settings,
    fake_anthropic: FakeAnthropic,
    fake_slack: FakeSlack,
    redis_client: redis.Redis,
    reply: Reply,
) -> None:
    fake_anthropic.script(MESSAGES, reply)
    events, _ = _recording()
    stored: list[float] = []

    async def read_the_pause(event: str, fields: dict[str, Any]) -> None:
        seconds, micros = redis_client.time()
        until_us = int(redis_client.get(RATE_PAUSE_KEY) or 0)
        stored.append((until_us - (seconds * 1_000_000 + micros)) / 1_000_000)

    # Read while the pause is in force: after the 429 (deferred), or after the answer (completed).
    events.subscribe("job.deferred", read_the_pause)
    events.subscribe("job.completed", read_the_pause)

    commands.send(web, "the first question")
    drain(settings, events=events)

    assert 0 < max(stored) <= settings.job_timeout_seconds
    # Waited out, then answered: a capped pause delays a question, it does not fail it.
    assert len(fake_slack.answers()) == 1


def test_a_job_whose_rate_limit_wait_would_pass_its_max_age_is_told_at_once(
    settings: Settings,
    redis_client: redis.Redis,
    commands: SlashCommands,
    fake_anthropic: FakeAnthropic,
    fake_slack: FakeSlack,
) -> None:
    # Two seconds of its life left, and every worker paused for five.
    job = commands.job(
        "an old question", enqueued_at=datetime.now(UTC) - timedelta(seconds=MAX_JOB_AGE_SECONDS - 2)
    )

    async def pause() -> None:
        client = open_redis(settings)
        await RateLimiter(client, settings.jobs_per_second).pause(5.0, "429 from Anthropic")
        await client.aclose()

    asyncio.run(pause())
    enqueue_stamped(settings, redis_client, job, redis_age=MAX_JOB_AGE_SECONDS - 2)
    events, seen = _recording()
    drain(settings, events=events)

    assert fake_anthropic.calls == []
    assert "job.deferred" not in [event for event, _ in seen]
    [text] = _texts(fake_slack)
    assert "waited too long" in text
    assert "(ref " in text


def test_rate_limit_refusals_use_no_retries_so_every_queued_question_is_answered(
    env: dict[str, str],
    commands: SlashCommands,
    fake_anthropic: FakeAnthropic,
    fake_slack: FakeSlack,
) -> None:
    # One retry each, and a limit that refuses most of the first calls: spending retries on
    # 429s would fail most questions.
    settings = settings_from({**env, "JOB_MAX_RETRIES": "1"})
    fake_anthropic.rate_limit(requests=3, window=2.0)
    questions = [f"question {n}" for n in range(12)]

    with TestClient(create_app(settings)) as web:
        for question in questions:
            commands.send(web, question)
    worker = drain(settings)

    assert fake_anthropic.refused > 0
    assert sorted(fake_slack.answers()) == sorted(f"Answer to: {q}" for q in questions)
    assert not [text for text in _texts(fake_slack) if text.startswith(":x:")]
    assert worker.jobs_failed == 0


def test_a_question_held_back_longer_than_the_backpressure_max_wait_gets_the_error_message(
    env: dict[str, str],
    commands: SlashCommands,
    fake_anthropic: FakeAnthropic,
    fake_slack: FakeSlack,
) -> None:
    settings = settings_from({**env, "JOB_MAX_RETRIES": "5", "AI_BACKPRESSURE_MAX_WAIT_SECONDS": "1.5"})
    fake_anthropic.rate_limit(requests=0, window=1.0)  # refuses every call, retry-after 1 s

    with TestClient(create_app(settings)) as web:
        commands.send(web, "what is a p99?")
    worker = drain(settings)

    # Ended by the wait bound, not by spending its retries on the refusals.
    assert 1 <= len(fake_anthropic.calls) < settings.job_max_retries + 1
    [text] = [text for text in _texts(fake_slack) if text.startswith(":x:")]
    assert "Claude is busy" in text
    assert "(ref " in text
    assert worker.jobs_failed == 1
