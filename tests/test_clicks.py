"""Clicks at the web edge: a block_actions request (a signed form whose ``payload`` is JSON) goes
through the gate, is acked at once with an empty 200, and becomes one typed job or a stop request;
unreadable payloads get a 400, a Redis outage a non-2xx (Slack then shows the clicker an error)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import pytest
import redis
from starlette.testclient import TestClient

from app.contract import actions, answers, keys
from app.contract.answers import AnswerRecord
from app.contract.jobs import Asker, AskQuestion, DismissAnswer, ShareAnswer, ThreadNotice
from app.contract.settings import Settings
from app.contract.targets import Ephemeral, PrivateNote
from app.web.clicks import Unreadable, read_click
from app.web.main import create_app
from tests.support.deployment import settings_from
from tests.support.fakes.slack import FakeSlack
from tests.support.jobs import in_redis, queued_jobs
from tests.support.processes import free_port
from tests.support.slack_requests import TEAM_ID, Clicks, SlashCommands, ack_text, signature_headers

ANSWER_JOB_ID = "ask-0123456789abcdef0123456789abcdef"


@pytest.fixture
def clicks(fake_slack: FakeSlack) -> Clicks:
    return Clicks(fake_slack)


def _ask_answer(settings: Settings, *, asker: str = "U0ASKER") -> AnswerRecord:
    record = AnswerRecord(
        job_id=ANSWER_JOB_ID,
        kind="ask",
        asker=Asker(team_id=TEAM_ID, user_id=asker),
        channel_id="C0CHANNEL",
        question="what is a p99?",
        answer="Answer to: what is a p99?",
        answered_at=datetime.now(UTC),
    )
    in_redis(settings, lambda client: answers.save(client, record, 60))
    return record


def _without(payload: dict[str, Any], *path: str) -> dict[str, Any]:
    """``payload`` with the field at ``path`` removed (a list index as a digit)."""
    node: Any = payload
    for step in path[:-1]:
        node = node[int(step)] if step.isdigit() else node[step]
    del node[path[-1]]
    return payload


# --- reading the payload (pure) --------------------------------------------------------------


def test_a_click_names_who_clicked_what_where_and_how_to_answer_them(fake_slack: FakeSlack) -> None:
    payload = Clicks(fake_slack).payload(actions.SHARE, ANSWER_JOB_ID, user="U0CLICKER", ephemeral=True)

    click = read_click(payload)

    assert (click.team_id, click.user_id, click.channel_id) == (TEAM_ID, "U0CLICKER", "C0CHANNEL")
    assert (click.action_id, click.value) == (actions.SHARE, ANSWER_JOB_ID)
    assert click.response_url == payload["response_url"]
    assert click.trigger_id == payload["trigger_id"]
    assert click.action_ts == payload["actions"][0]["action_ts"]


def test_the_channel_is_read_from_the_container_when_the_payload_has_none(fake_slack: FakeSlack) -> None:
    payload = _without(Clicks(fake_slack).payload(actions.STOP, "thread-1", channel="D0DIRECT"), "channel")

    assert read_click(payload).channel_id == "D0DIRECT"


@pytest.mark.parametrize(
    "path",
    [
        ("type",),
        ("team",),
        ("user",),
        ("response_url",),
        ("trigger_id",),
        ("actions",),
        ("actions", "0", "action_id"),
        ("actions", "0", "value"),
        ("actions", "0", "action_ts"),
    ],
    ids=lambda path: ".".join(path),
)
def test_a_payload_missing_what_a_click_needs_is_unreadable(
    path: tuple[str, ...], fake_slack: FakeSlack
) -> None:
    payload = Clicks(fake_slack).payload(actions.SHARE, ANSWER_JOB_ID)
    if path == ("team",):
        payload["user"].pop("team_id")
    _without(payload, *path)

    with pytest.raises(Unreadable):
        read_click(payload)


@pytest.mark.parametrize("kind", ["view_submission", "shortcut", "interactive_message", None])
def test_interactivity_other_than_block_actions_is_unreadable(
    kind: str | None, fake_slack: FakeSlack
) -> None:
    payload = Clicks(fake_slack).payload(actions.SHARE, ANSWER_JOB_ID)
    payload["type"] = kind

    with pytest.raises(Unreadable):
        read_click(payload)


# --- the web edge ------------------------------------------------------------------------------


def test_a_click_is_acked_at_once_with_an_empty_200(web: TestClient, clicks: Clicks) -> None:
    started = time.monotonic()
    response = clicks.click(web, actions.STOP, "thread-0123")

    assert (response.status_code, response.text) == (200, "")
    assert time.monotonic() - started < 1.0


def test_an_unsigned_click_is_refused_before_it_is_read(
    web: TestClient, clicks: Clicks, redis_client: redis.Redis
) -> None:
    body = Clicks.body(clicks.payload(actions.STOP, "thread-0123"))
    headers = signature_headers(body, secret="not-the-signing-secret")

    response = web.post("/slack/events", content=body, headers=headers)

    assert response.status_code == 401
    assert redis_client.keys("asklane:stop:*") == []


@pytest.mark.parametrize("payload", ["{not json", "[1, 2]", '"a string"'])
def test_a_payload_that_is_not_a_json_object_is_refused_with_400(payload: str, web: TestClient) -> None:
    body = urlencode({"payload": payload}).encode()

    response = web.post("/slack/events", content=body, headers=signature_headers(body))

    assert response.status_code == 400


def test_a_block_actions_payload_missing_its_fields_gets_400_and_queues_nothing(
    web: TestClient, clicks: Clicks, redis_client: redis.Redis
) -> None:
    payload = _without(clicks.payload(actions.SHARE, ANSWER_JOB_ID), "response_url")

    response = clicks.send(web, payload)

    assert response.status_code == 400
    assert queued_jobs(redis_client) == []


def test_a_click_on_a_button_that_is_not_asklanes_is_acked_and_ignored(
    web: TestClient, clicks: Clicks, redis_client: redis.Redis
) -> None:
    response = clicks.click(web, "someone_elses_button", "x")

    assert (response.status_code, response.text) == (200, "")
    assert queued_jobs(redis_client) == []


def test_stop_requests_the_stop_of_the_job_its_button_names(
    web: TestClient, clicks: Clicks, redis_client: redis.Redis
) -> None:
    clicks.click(web, actions.STOP, "thread-0123", user="U0ANYONE")

    assert redis_client.exists(keys.stop_key("thread-0123"))
    assert queued_jobs(redis_client) == []


def test_share_queues_one_share_of_the_answer_in_its_channel_replying_privately_to_the_clicker(
    web: TestClient, clicks: Clicks, settings: Settings, redis_client: redis.Redis
) -> None:
    _ask_answer(settings)
    payload = clicks.payload(actions.SHARE, ANSWER_JOB_ID, ephemeral=True)

    clicks.send(web, payload)

    [job] = queued_jobs(redis_client)
    assert isinstance(job, ShareAnswer)
    assert (job.answer_job_id, job.channel_id) == (ANSWER_JOB_ID, "C0CHANNEL")
    assert job.reply_to == PrivateNote(
        response_url=payload["response_url"], channel_id="C0CHANNEL", user_id="U0ASKER"
    )


@pytest.mark.parametrize("action_id", [actions.SHARE, actions.DISMISS])
def test_a_double_click_on_share_or_dismiss_queues_one_job(
    action_id: str, web: TestClient, clicks: Clicks, settings: Settings, redis_client: redis.Redis
) -> None:
    _ask_answer(settings)

    clicks.click(web, action_id, ANSWER_JOB_ID, ephemeral=True)
    clicks.click(web, action_id, ANSWER_JOB_ID, ephemeral=True)

    assert len(queued_jobs(redis_client)) == 1


def test_dismiss_answers_through_the_clicks_own_response_url(
    web: TestClient, clicks: Clicks, settings: Settings, redis_client: redis.Redis
) -> None:
    _ask_answer(settings)
    payload = clicks.payload(actions.DISMISS, ANSWER_JOB_ID, ephemeral=True)

    clicks.send(web, payload)

    [job] = queued_jobs(redis_client)
    assert isinstance(job, DismissAnswer)
    assert job.reply_to == Ephemeral(
        response_url=payload["response_url"], channel_id="C0CHANNEL", user_id="U0ASKER"
    )


def test_regenerate_of_an_ask_answer_asks_the_recorded_question_to_the_clicks_response_url(
    web: TestClient, clicks: Clicks, settings: Settings, redis_client: redis.Redis
) -> None:
    _ask_answer(settings)
    payload = clicks.payload(actions.REGENERATE, ANSWER_JOB_ID, ephemeral=True)

    clicks.send(web, payload)

    [job] = queued_jobs(redis_client)
    assert isinstance(job, AskQuestion)
    assert (job.text, job.asker.user_id) == ("what is a p99?", "U0ASKER")
    assert job.reply_to == Ephemeral(
        response_url=payload["response_url"], channel_id="C0CHANNEL", user_id="U0ASKER"
    )


def test_regenerate_counts_against_the_fair_use_limit_like_any_question(
    env: dict[str, str], clicks: Clicks, redis_client: redis.Redis
) -> None:
    settings = settings_from({**env, "QUOTA_USER_PER_MINUTE": "1"})
    _ask_answer(settings)
    with TestClient(create_app(settings)) as web:
        clicks.click(web, actions.REGENERATE, ANSWER_JOB_ID, ephemeral=True)
        clicks.click(web, actions.REGENERATE, ANSWER_JOB_ID, ephemeral=True)

    kinds = [job.kind for job in queued_jobs(redis_client)]
    assert sorted(kinds) == ["ask", "notice"]
    [notice] = [job for job in queued_jobs(redis_client) if isinstance(job, ThreadNotice)]
    assert isinstance(notice.reply_to, PrivateNote)
    assert "this minute" in notice.text


@pytest.mark.parametrize("action_id", [actions.SHARE, actions.REGENERATE, actions.DISMISS])
def test_a_click_by_someone_else_queues_only_a_private_note(
    action_id: str, web: TestClient, clicks: Clicks, settings: Settings, redis_client: redis.Redis
) -> None:
    _ask_answer(settings)

    response = clicks.click(web, action_id, ANSWER_JOB_ID, user="U0SOMEONE", ephemeral=True)

    assert (response.status_code, response.text) == (200, "")
    [notice] = queued_jobs(redis_client)
    assert isinstance(notice, ThreadNotice)
    assert isinstance(notice.reply_to, PrivateNote) and notice.reply_to.user_id == "U0SOMEONE"


@pytest.mark.parametrize(
    "action_id", [actions.SHARE, actions.REGENERATE, actions.DISMISS, actions.FEEDBACK, actions.STOP]
)
def test_a_click_while_redis_is_down_gets_a_non_2xx_so_slack_shows_an_error(
    action_id: str, env: dict[str, str], clicks: Clicks
) -> None:
    settings = settings_from({**env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    value = actions.feedback_value("good", ANSWER_JOB_ID) if action_id == actions.FEEDBACK else ANSWER_JOB_ID

    with TestClient(create_app(settings)) as web:
        started = time.monotonic()
        response = clicks.click(web, action_id, value, ephemeral=True)
        elapsed = time.monotonic() - started

    assert response.status_code == 503
    assert elapsed < 2.5  # within Slack's 3 s


@pytest.mark.parametrize("value", ["meh:ask-1", "good:", "good", ""])
def test_a_feedback_value_that_is_not_good_or_bad_of_a_job_gets_400(
    value: str, web: TestClient, clicks: Clicks, redis_client: redis.Redis
) -> None:
    response = clicks.click(web, actions.FEEDBACK, value)

    assert response.status_code == 400
    assert queued_jobs(redis_client) == []


def test_a_slash_command_asking_about_a_payload_is_still_a_command_not_a_click(
    web: TestClient, commands: SlashCommands, redis_client: redis.Redis
) -> None:
    # Bolt alone reads any form mentioning "payload" as a click.
    response = commands.send(web, "what is a JSON payload?")

    assert response.status_code == 200
    assert "Working on it" in ack_text(response)
    [job] = queued_jobs(redis_client)
    assert isinstance(job, AskQuestion) and job.text == "what is a JSON payload?"
