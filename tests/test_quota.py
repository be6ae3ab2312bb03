"""Fair use: per-person and per-workspace limits refuse politely, before any job exists."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import redis
from starlette.testclient import TestClient

from app.contract import keys
from app.web.main import create_app
from tests.support.deployment import settings_from
from tests.support.jobs import queued_job_ids
from tests.support.processes import WebProcess
from tests.support.slack_requests import SlashCommands, ack_text

MakeWeb = Callable[..., TestClient]


@pytest.fixture
def web_with(env: dict[str, str]) -> Iterator[MakeWeb]:
    """The web app with some quota settings turned on."""
    clients: list[TestClient] = []

    def make(**quotas: int) -> TestClient:
        client = TestClient(
            create_app(settings_from({**env, **{k.upper(): str(v) for k, v in quotas.items()}}))
        )
        clients.append(client.__enter__())
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def test_a_person_over_the_per_minute_limit_is_told_when_to_ask_again_and_no_job_is_queued(
    web_with: MakeWeb, commands: SlashCommands, redis_client: redis.Redis
) -> None:
    web = web_with(quota_user_per_minute=2)
    for n in range(2):
        commands.send(web, f"question {n}")

    refused = commands.send(web, "one too many")

    assert refused.status_code == 200
    assert refused.json()["response_type"] == "ephemeral"
    text = ack_text(refused)
    assert "You have asked 2 questions this minute" in text
    assert "ask again in 1 min" in text or "ask again in 59 s" in text
    assert len(queued_job_ids(redis_client)) == 2


def test_another_person_in_the_same_workspace_is_not_held_back(
    web_with: MakeWeb, commands: SlashCommands, redis_client: redis.Redis
) -> None:
    web = web_with(quota_user_per_minute=1)
    commands.send(web, "mine")

    response = commands.send(web, "theirs", user_id="U0OTHER")

    assert "Working on it" in ack_text(response)
    assert len(queued_job_ids(redis_client)) == 2


def test_the_workspace_limit_counts_everyone_in_it(
    web_with: MakeWeb, commands: SlashCommands, redis_client: redis.Redis
) -> None:
    web = web_with(quota_team_per_day=3)
    for user in ("U1", "U2", "U3"):
        commands.send(web, "question", user_id=user)

    refused = commands.send(web, "question", user_id="U4")
    other_team = commands.send(web, "question", user_id="U4", team_id="T0OTHER")

    assert "Your workspace has asked 3 questions this day" in ack_text(refused)
    assert "Working on it" in ack_text(other_team)
    assert len(queued_job_ids(redis_client)) == 4


def test_a_refused_question_does_not_count_against_the_other_limits(
    web_with: MakeWeb, commands: SlashCommands, redis_client: redis.Redis
) -> None:
    web = web_with(quota_user_per_minute=1, quota_user_per_day=5)
    commands.send(web, "first")
    for _ in range(3):
        commands.send(web, "refused")

    assert redis_client.get(keys.quota_key("user", "day", "T0TEAM", "U0ASKER")) == b"1"


def test_a_duplicate_delivery_is_charged_once(
    web_with: MakeWeb, commands: SlashCommands, redis_client: redis.Redis
) -> None:
    web = web_with(quota_user_per_minute=2)
    form = commands.form("what is a p99?")
    commands.send(web, form=form)
    commands.send(web, form=form)

    response = commands.send(web, "another question")

    assert "Working on it" in ack_text(response)
    assert len(queued_job_ids(redis_client)) == 2


def test_the_limit_lifts_when_its_window_closes(
    web_with: MakeWeb, commands: SlashCommands, redis_client: redis.Redis
) -> None:
    web = web_with(quota_user_per_minute=1)
    commands.send(web, "first")
    assert "You have asked" in ack_text(commands.send(web, "refused"))

    # Stand-in for a minute passing.
    redis_client.pexpire(keys.quota_key("user", "minute", "T0TEAM", "U0ASKER"), 1)
    time.sleep(0.01)

    assert "Working on it" in ack_text(commands.send(web, "after the window"))


def test_the_wait_given_is_that_of_the_limit_that_lifts_last(
    web_with: MakeWeb, commands: SlashCommands
) -> None:
    web = web_with(quota_user_per_minute=1, quota_user_per_day=1)
    commands.send(web, "first")

    refused = commands.send(web, "second")

    assert "You have asked 1 question this day" in ack_text(refused)
    assert "ask again in 24 h" in ack_text(refused)


def test_a_duplicate_of_a_queued_command_at_the_limit_is_not_refused(
    web_with: MakeWeb, commands: SlashCommands, redis_client: redis.Redis
) -> None:
    web = web_with(quota_user_per_minute=1)
    form = commands.form("what is a p99?")
    commands.send(web, form=form)

    again = commands.send(web, form=form)

    assert "Working on it" in ack_text(again)
    assert len(queued_job_ids(redis_client)) == 1


def test_the_same_command_delivered_twice_at_once_is_charged_once(
    start_web: Callable[..., WebProcess], commands: SlashCommands, redis_client: redis.Redis
) -> None:
    web = start_web(QUOTA_USER_PER_MINUTE="1000")
    rounds = 10
    with httpx.Client(base_url=web.url) as first, httpx.Client(base_url=web.url) as second:
        for n in range(rounds):
            form = commands.form(f"question {n}")
            together = threading.Barrier(2)

            def deliver(
                client: httpx.Client, form: dict[str, str] = form, together: threading.Barrier = together
            ) -> httpx.Response:
                together.wait()
                return commands.send(client, form=form)

            with ThreadPoolExecutor(2) as pool:
                acks = list(pool.map(deliver, (first, second)))
            assert ["Working on it" in ack_text(ack) for ack in acks] == [True, True]

    assert redis_client.get(keys.quota_key("user", "minute", "T0TEAM", "U0ASKER")) == str(rounds).encode()
    assert len(queued_job_ids(redis_client)) == rounds
