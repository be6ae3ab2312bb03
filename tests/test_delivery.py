"""Posting the answer: response_url first, chat.postEphemeral as fallback, Slack's 429s respected."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
import redis
from starlette.testclient import TestClient

from app.contract import keys
from app.contract.keys import FAILED_KEY
from app.contract.settings import Settings
from app.web.main import create_app
from tests.support.deployment import BOT_TOKEN, settings_from
from tests.support.fakes.anthropic import MESSAGES, FakeAnthropic, error
from tests.support.fakes.server import Reply
from tests.support.fakes.slack import POST_EPHEMERAL, RESPONSE, FakeSlack
from tests.support.jobs import drain, queued_job_ids
from tests.support.slack_requests import SlashCommands
from workers.delivery import RESPONSE_URL_USES

ANSWER = "Answer to: what is a p99?"


@pytest.mark.parametrize("status", [404, 410, 403])
def test_refused_response_url_falls_back_to_post_ephemeral(
    web: TestClient, commands: SlashCommands, settings: Settings, fake_slack: FakeSlack, status: int
) -> None:
    fake_slack.script(RESPONSE, Reply(status=status, json={"ok": False, "error": "expired_url"}))

    commands.send(web, "what is a p99?")
    drain(settings)

    [fallback] = fake_slack.received(POST_EPHEMERAL)
    assert fallback.body["channel"] == "C0CHANNEL"
    assert fallback.body["user"] == "U0ASKER"
    assert fallback.body["blocks"][0]["text"] == ANSWER
    assert fallback.headers["authorization"] == f"Bearer {BOT_TOKEN}"
    assert [post["text"] for post in fake_slack.delivered()] == [ANSWER]


def test_slack_429_on_the_post_delivers_once_without_a_second_ai_call(
    web: TestClient,
    commands: SlashCommands,
    settings: Settings,
    fake_slack: FakeSlack,
    fake_anthropic: FakeAnthropic,
) -> None:
    fake_slack.script(RESPONSE, Reply(status=429, headers={"Retry-After": "1"}))

    commands.send(web, "what is a p99?")
    drain(settings)

    first, second = fake_slack.received(RESPONSE)
    assert second.at - first.at >= 1.0
    assert len(fake_anthropic.calls) == 1
    assert [post["text"] for post in fake_slack.delivered()] == [ANSWER]


def test_slack_5xx_on_the_post_retries_the_post_only(
    web: TestClient,
    commands: SlashCommands,
    settings: Settings,
    fake_slack: FakeSlack,
    fake_anthropic: FakeAnthropic,
) -> None:
    fake_slack.script(RESPONSE, Reply(status=503))

    commands.send(web, "what is a p99?")
    drain(settings)

    assert len(fake_anthropic.calls) == 1
    assert [post["text"] for post in fake_slack.delivered()] == [ANSWER]


def test_post_ephemeral_rate_limit_is_retried_after_retry_after(
    web: TestClient,
    commands: SlashCommands,
    settings: Settings,
    fake_slack: FakeSlack,
    fake_anthropic: FakeAnthropic,
) -> None:
    fake_slack.script(RESPONSE, Reply(status=404), Reply(status=404))
    fake_slack.script(
        POST_EPHEMERAL,
        Reply(status=429, json={"ok": False, "error": "ratelimited"}, headers={"Retry-After": "1"}),
    )

    commands.send(web, "what is a p99?")
    drain(settings)

    first, second = fake_slack.received(POST_EPHEMERAL)
    assert second.at - first.at >= 1.0
    assert len(fake_anthropic.calls) == 1
    assert [post["text"] for post in fake_slack.delivered()] == [ANSWER]


def test_channel_the_bot_cannot_post_in_fails_the_job_once(
    web: TestClient,
    commands: SlashCommands,
    settings: Settings,
    fake_slack: FakeSlack,
    fake_anthropic: FakeAnthropic,
) -> None:
    fake_slack.script(RESPONSE, Reply(status=404), Reply(status=404))
    fake_slack.script(POST_EPHEMERAL, *[Reply(json={"ok": False, "error": "channel_not_found"})] * 2)

    commands.send(web, "what is a p99?")
    worker = drain(settings)

    assert worker.jobs_failed == 1
    assert len(fake_anthropic.calls) == 1
    assert fake_slack.delivered() == []


def test_response_url_outside_the_allowed_prefixes_is_never_posted_to(
    env: dict[str, str], commands: SlashCommands, fake_slack: FakeSlack, redis_client: redis.Redis
) -> None:
    # The web side accepts the command (Slack signed it); the worker guards where it POSTs.
    web_settings = settings_from({**env, "SLACK_RESPONSE_URL_PREFIXES": f"{fake_slack.url}/"})
    worker_settings = settings_from({**env, "SLACK_RESPONSE_URL_PREFIXES": "https://hooks.slack.com/"})

    with TestClient(create_app(web_settings)) as web:
        commands.send(web, "what is a p99?")
    drain(worker_settings)

    assert fake_slack.received(RESPONSE) == []
    assert [post["text"] for post in fake_slack.delivered()] == [ANSWER]


def test_blocks_slack_rejects_are_resent_as_plain_text(
    web: TestClient,
    commands: SlashCommands,
    settings: Settings,
    fake_slack: FakeSlack,
    fake_anthropic: FakeAnthropic,
) -> None:
    fake_slack.script(RESPONSE, Reply(status=400, json={"ok": False, "error": "invalid_blocks"}))

    commands.send(web, "what is a p99?")
    drain(settings)

    [delivered] = fake_slack.delivered()
    assert delivered["text"] == ANSWER
    assert not delivered.get("blocks")
    assert len(fake_anthropic.calls) == 1


def test_a_generated_answer_gets_its_own_retries_to_reach_slack(
    web: TestClient,
    commands: SlashCommands,
    settings: Settings,
    fake_slack: FakeSlack,
    fake_anthropic: FakeAnthropic,
) -> None:
    # Claude fails until the last allowed attempt; then Slack rate-limits the post.
    fake_anthropic.script(MESSAGES, *[error(529, "overloaded_error")] * settings.job_max_retries)
    fake_slack.script(RESPONSE, Reply(status=429, headers={"Retry-After": "0"}))

    commands.send(web, "what is a p99?")
    drain(settings)

    assert len(fake_anthropic.calls) == settings.job_max_retries + 1
    assert [post["text"] for post in fake_slack.delivered()] == [ANSWER]


def test_a_failure_message_slack_refuses_at_first_is_retried_until_shown(
    web: TestClient,
    commands: SlashCommands,
    settings: Settings,
    fake_slack: FakeSlack,
    fake_anthropic: FakeAnthropic,
    redis_client: redis.Redis,
) -> None:
    fake_anthropic.script(MESSAGES, error(400, "invalid_request_error"))
    fake_slack.script(RESPONSE, Reply(status=503), Reply(status=429, headers={"Retry-After": "0"}))

    commands.send(web, "what is a p99?")
    worker = drain(settings)

    assert len(fake_anthropic.calls) == 1
    [shown] = [post["text"] for post in fake_slack.delivered()]
    assert "couldn't answer" in shown and "(ref " in shown
    assert worker.jobs_failed == 1
    [record] = [json.loads(raw) for raw in redis_client.lrange(FAILED_KEY, 0, -1)]
    assert record["error"].startswith("PermanentError")


def test_a_failure_message_goes_by_post_ephemeral_once_the_response_url_is_unusable(
    web: TestClient,
    commands: SlashCommands,
    settings: Settings,
    fake_slack: FakeSlack,
    fake_anthropic: FakeAnthropic,
) -> None:
    fake_anthropic.script(MESSAGES, error(400, "invalid_request_error"))
    fake_slack.inject_faults(RESPONSE, 1.0, [Reply(status=503)])

    commands.send(web, "what is a p99?")
    worker = drain(settings)

    # The post and one retry of it; then chat.postEphemeral.
    assert len(fake_slack.received(RESPONSE)) == 2
    [shown] = fake_slack.received(POST_EPHEMERAL)
    assert "couldn't answer" in shown.body["text"] and "(ref " in shown.body["text"]
    assert worker.jobs_failed == 1


def test_a_failure_message_slack_never_takes_still_fails_the_job_once(
    web: TestClient,
    commands: SlashCommands,
    settings: Settings,
    fake_slack: FakeSlack,
    fake_anthropic: FakeAnthropic,
) -> None:
    fake_anthropic.script(MESSAGES, error(400, "invalid_request_error"))
    fake_slack.inject_faults(RESPONSE, 1.0, [Reply(status=503)])
    fake_slack.inject_faults(
        POST_EPHEMERAL, 1.0, [Reply(status=500, json={"ok": False, "error": "internal_error"})]
    )

    commands.send(web, "what is a p99?")
    worker = drain(settings)

    assert len(fake_anthropic.calls) == 1
    assert len(fake_slack.received(RESPONSE)) == 2
    assert fake_slack.delivered() == []
    assert worker.jobs_failed == 1


def test_a_response_url_failing_for_good_gets_the_answer_through_post_ephemeral(
    env: dict[str, str],
    web: TestClient,
    commands: SlashCommands,
    fake_slack: FakeSlack,
    fake_anthropic: FakeAnthropic,
) -> None:
    # Claude's retries make progress updates want the response_url too.
    settings = settings_from({**env, "PROGRESS_AFTER_SECONDS": "0.1", "JOB_RETRY_BASE_SECONDS": "0.1"})
    fake_anthropic.script(MESSAGES, *[error(500, "api_error")] * 3)
    fake_slack.inject_faults(RESPONSE, 1.0, [Reply(status=500)])

    commands.send(web, "what is a p99?")
    drain(settings)

    assert len(fake_slack.received(RESPONSE)) <= RESPONSE_URL_USES
    [answer] = fake_slack.received(POST_EPHEMERAL)
    assert answer.body["blocks"][0]["text"] == ANSWER
    assert [post["text"] for post in fake_slack.delivered()] == [ANSWER]


def test_a_response_url_dropping_every_connection_gets_the_answer_through_post_ephemeral(
    web: TestClient, commands: SlashCommands, settings: Settings, fake_slack: FakeSlack
) -> None:
    fake_slack.inject_faults(RESPONSE, 1.0, [Reply(action="drop")])

    commands.send(web, "what is a p99?")
    drain(settings)

    assert len(fake_slack.received(RESPONSE)) == 2
    assert [post["text"] for post in fake_slack.delivered()] == [ANSWER]


@pytest.mark.parametrize(
    "retry_after",
    ["86400", format_datetime(datetime.now(UTC) + timedelta(days=1), usegmt=True)],
    ids=["seconds", "http-date"],
)
def test_a_429_whose_retry_after_outlives_the_job_falls_back_at_once(
    web: TestClient,
    commands: SlashCommands,
    settings: Settings,
    fake_slack: FakeSlack,
    retry_after: str,
) -> None:
    fake_slack.inject_faults(RESPONSE, 1.0, [Reply(status=429, headers={"Retry-After": retry_after})])

    commands.send(web, "what is a p99?")
    worker = drain(settings)

    assert len(fake_slack.received(RESPONSE)) == 1
    assert [post["text"] for post in fake_slack.delivered()] == [ANSWER]
    assert worker.jobs_retried == 0


def test_an_unreadable_stored_failure_still_tells_the_user_and_keeps_a_failed_record(
    web: TestClient,
    commands: SlashCommands,
    settings: Settings,
    fake_slack: FakeSlack,
    fake_anthropic: FakeAnthropic,
    redis_client: redis.Redis,
) -> None:
    commands.send(web, "what is a p99?")
    [job_id] = queued_job_ids(redis_client)
    # As an older or newer version might have written it.
    redis_client.set(keys.failure_key(job_id), json.dumps({"message": "timed out"}))

    worker = drain(settings)

    assert fake_anthropic.calls == []
    [shown] = [post["text"] for post in fake_slack.delivered()]
    assert "something went wrong" in shown and "(ref " in shown
    assert worker.jobs_failed == 1
    [record] = [json.loads(raw) for raw in redis_client.lrange(FAILED_KEY, 0, -1)]
    assert record["error"].startswith("UnreadableRecord")


@pytest.mark.parametrize(
    ("reply", "delivered"),
    [
        (Reply(status=429, json={"ok": False, "error": "ratelimited"}, headers={"Retry-After": "0"}), True),
        (Reply(json={"ok": False, "error": "internal_error"}), True),
        (Reply(json={"ok": False, "error": "fatal_error"}), True),
        (Reply(json={"ok": False, "error": "service_unavailable"}), True),
        (Reply(json={"ok": False, "error": "request_timeout"}), True),
        (Reply(status=500), True),
        (Reply(json={"ok": False, "error": "invalid_blocks"}), True),
        (Reply(json={"ok": False, "error": "channel_not_found"}), False),
        (Reply(json={"ok": False, "error": "user_not_in_channel"}), False),
    ],
    ids=[
        "ratelimited: retried",
        "internal_error: retried",
        "fatal_error: retried",
        "service_unavailable: retried",
        "request_timeout: retried",
        "500 without a body: retried",
        "invalid_blocks: resent as plain text",
        "channel_not_found: fails the job",
        "user_not_in_channel: fails the job",
    ],
)
def test_each_post_ephemeral_error_is_retried_resent_or_fails_the_job_as_its_kind_says(
    web: TestClient,
    commands: SlashCommands,
    settings: Settings,
    fake_slack: FakeSlack,
    fake_anthropic: FakeAnthropic,
    reply: Reply,
    delivered: bool,
) -> None:
    fake_slack.script(RESPONSE, Reply(status=404), Reply(status=404))
    # A job that fails tells the user the same way, which refuses again.
    fake_slack.script(POST_EPHEMERAL, *[reply] * (1 if delivered else 2))

    commands.send(web, "what is a p99?")
    worker = drain(settings)

    assert len(fake_anthropic.calls) == 1
    assert [post["text"] for post in fake_slack.delivered()] == ([ANSWER] if delivered else [])
    assert worker.jobs_failed == (0 if delivered else 1)
