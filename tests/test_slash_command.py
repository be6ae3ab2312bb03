"""The web side of `/ask`: verification, input validation, deduplication, and Redis outages."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from starlette.testclient import TestClient

from app.contract.events import JobEvents
from app.contract.settings import Settings
from app.web.ask import MAX_QUESTION_CHARS
from app.web.main import create_app
from tests.support.deployment import settings_from
from tests.support.fakes.slack import FakeSlack
from tests.support.jobs import drain, queued_job_ids
from tests.support.processes import free_port
from tests.support.redis import RedisServer
from tests.support.slack_requests import SlashCommands, ack_text, signature_headers


@pytest.mark.parametrize("text", ["", "   ", "help", "HELP", "?"])
def test_empty_or_help_text_gets_usage_and_no_job(
    web: TestClient, commands: SlashCommands, redis_client: redis.Redis, text: str
) -> None:
    response = commands.send(web, text)

    assert response.status_code == 200
    assert response.json()["response_type"] == "ephemeral"
    assert "/ask how do I rotate an API key?" in ack_text(response)
    assert queued_job_ids(redis_client) == []


def test_oversized_text_gets_a_clear_error_and_no_job(
    web: TestClient, commands: SlashCommands, redis_client: redis.Redis
) -> None:
    response = commands.send(web, "x" * (MAX_QUESTION_CHARS + 1))

    assert response.json()["response_type"] == "ephemeral"
    assert f"takes up to {MAX_QUESTION_CHARS:,}" in ack_text(response)
    assert queued_job_ids(redis_client) == []


def test_question_at_the_limit_is_accepted(
    web: TestClient, commands: SlashCommands, redis_client: redis.Redis
) -> None:
    commands.send(web, "x" * MAX_QUESTION_CHARS)

    assert len(queued_job_ids(redis_client)) == 1


def test_slack_markup_in_the_question_is_echoed_harmlessly(web: TestClient, commands: SlashCommands) -> None:
    response = commands.send(web, "ping <!channel> and <@U999> & co")

    echoed = ack_text(response)
    assert "&lt;!channel&gt;" in echoed
    assert "&lt;@U999&gt; &amp; co" in echoed
    assert "<!channel>" not in echoed


def test_forged_signature_is_rejected_and_nothing_enqueued(
    web: TestClient, commands: SlashCommands, redis_client: redis.Redis
) -> None:
    body = commands.body("what is a p99?")
    headers = signature_headers(body, secret="not-the-signing-secret")

    response = web.post("/slack/events", content=body, headers=headers)

    assert response.status_code == 401
    assert queued_job_ids(redis_client) == []


def test_stale_timestamp_is_rejected_and_nothing_enqueued(
    web: TestClient, commands: SlashCommands, redis_client: redis.Redis
) -> None:
    body = commands.body("what is a p99?")
    headers = signature_headers(body, timestamp=int(time.time()) - 301)

    response = web.post("/slack/events", content=body, headers=headers)

    assert response.status_code == 401
    assert queued_job_ids(redis_client) == []


def test_missing_signature_headers_are_rejected(
    web: TestClient, commands: SlashCommands, redis_client: redis.Redis
) -> None:
    response = web.post(
        "/slack/events",
        content=commands.body("what is a p99?"),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )

    assert response.status_code == 401
    assert queued_job_ids(redis_client) == []


def test_duplicate_delivery_makes_one_job(
    web: TestClient, commands: SlashCommands, redis_client: redis.Redis
) -> None:
    form = commands.form("what is a p99?")

    first = commands.send(web, form=form)
    second = commands.send(web, form=form)

    assert first.status_code == second.status_code == 200
    assert "Working on it" in ack_text(second)
    assert len(queued_job_ids(redis_client)) == 1


def test_redelivery_after_the_answer_was_posted_is_not_answered_again(
    web: TestClient,
    commands: SlashCommands,
    settings: Settings,
    fake_slack: FakeSlack,
    redis_client: redis.Redis,
) -> None:
    form = commands.form("what is a p99?")
    commands.send(web, form=form)
    drain(settings)

    again = commands.send(web, form=form)
    drain(settings)

    assert again.status_code == 200
    assert queued_job_ids(redis_client) == []
    assert len(fake_slack.delivered()) == 1


def test_command_missing_fields_gets_a_reference_and_no_job(
    web: TestClient, commands: SlashCommands, redis_client: redis.Redis
) -> None:
    form = commands.form("what is a p99?")
    del form["response_url"]

    response = commands.send(web, form=form)

    assert response.status_code == 200
    assert "(ref " in ack_text(response)
    assert queued_job_ids(redis_client) == []


# --- Redis unreachable -------------------------------------------------------------------------


@pytest.fixture
def silent_redis_port() -> Iterator[int]:
    """A port that accepts TCP connections (kernel backlog) but never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield sock.getsockname()[1]


@pytest.mark.parametrize("outage", ["refused", "silent"])
def test_redis_outage_still_acks_fast_with_a_friendly_message(
    env: dict[str, str], commands: SlashCommands, silent_redis_port: int, outage: str
) -> None:
    port = free_port() if outage == "refused" else silent_redis_port
    settings = settings_from({**env, "REDIS_URL": f"redis://127.0.0.1:{port}/0"})

    with TestClient(create_app(settings)) as web:
        started = time.monotonic()
        response = commands.send(web, "what is a p99?")
        elapsed = time.monotonic() - started

    assert response.status_code == 200
    assert response.json()["response_type"] == "ephemeral"
    assert "temporarily unavailable" in ack_text(response)
    assert "(ref " in ack_text(response)
    # Slack shows the user a timeout error after 3 s; the ack must beat it with margin.
    assert elapsed < 2.5


def test_readyz_is_ok_when_redis_answers(web: TestClient) -> None:
    response = web.get("/readyz")

    assert response.status_code == 200
    assert response.json()["redis"] == "ok"


def test_readyz_is_503_but_healthz_200_when_redis_is_unreachable(env: dict[str, str]) -> None:
    settings = settings_from({**env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})

    with TestClient(create_app(settings)) as web:
        ready, alive = web.get("/readyz"), web.get("/healthz")

    assert ready.status_code == 503
    assert alive.status_code == 200


def test_readyz_is_503_while_redis_answers_but_refuses_writes(
    env: dict[str, str], commands: SlashCommands, full_redis: RedisServer
) -> None:
    settings = settings_from({**env, "REDIS_URL": full_redis.url})

    with TestClient(create_app(settings)) as web:
        ready = web.get("/readyz")
        command = commands.send(web, "what is a p99?")

    assert full_redis.client().ping()
    # Readiness agrees with what a command sent now gets.
    assert "temporarily unavailable" in ack_text(command)
    assert ready.status_code == 503
    assert ready.json() == {"status": "unavailable", "redis": "refusing writes"}


def test_enqueueing_a_job_reaches_subscribed_hooks_once(settings: Settings, commands: SlashCommands) -> None:
    seen: list[dict[str, Any]] = []

    async def hook(event: str, fields: dict[str, Any]) -> None:
        seen.append(fields)

    events = JobEvents()
    events.subscribe("job.enqueued", hook)
    form = commands.form("what is a p99?")

    with TestClient(create_app(settings, events)) as web:
        commands.send(web, form=form)
        commands.send(web, form=form)  # a re-delivery is no new job

    [enqueued] = seen
    assert enqueued["job_id"].startswith("ask-")
    assert enqueued["team"] == "T0TEAM" and enqueued["user"] == "U0ASKER"
