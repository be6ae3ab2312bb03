"""How the answer job meets Claude's failures: retry what is transient, report what is not."""

from __future__ import annotations

import itertools

import pytest
import redis
from starlette.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.conftest import SlashCommands, drain, settings_from
from tests.fakes.anthropic import MESSAGES, FakeAnthropic, error, message
from tests.fakes.server import Reply
from tests.fakes.slack import FakeSlack


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
        (error(404, "not_found_error"), "could not process"),
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
