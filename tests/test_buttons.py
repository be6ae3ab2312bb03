"""Every button on an answer, end to end on real parts: a signed click to the real web app, the
job in Redis, a real worker, the fake Slack and Claude. Share, Regenerate and Dismiss on an
ephemeral /ask answer; feedback and Regenerate on a thread answer."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Literal

import pytest
import redis
from starlette.testclient import TestClient

from app.contract import actions, answers, keys, metrics
from app.contract.answers import AnswerRecord
from app.contract.jobs import Asker, ThreadQuestion
from app.contract.settings import Settings
from tests.support.fakes.anthropic import FakeAnthropic
from tests.support.fakes.server import Reply
from tests.support.fakes.slack import POST_EPHEMERAL, POST_MESSAGE, RESPONSE, FakeSlack
from tests.support.jobs import drain, in_redis, queued_jobs
from tests.support.slack_requests import TEAM_ID, Clicks, SlashCommands
from workers import retention


@pytest.fixture
def clicks(fake_slack: FakeSlack) -> Clicks:
    return Clicks(fake_slack)


def _answered(web: TestClient, commands: SlashCommands, settings: Settings, fake_slack: FakeSlack) -> str:
    """Ask with /ask, let a worker answer; returns the answer's job id (its buttons' value)."""
    commands.send(web, "what is a p99?")
    drain(settings)
    [post] = fake_slack.received(RESPONSE)
    [buttons] = [block for block in post.body["blocks"] if block["type"] == "actions"]
    values = {button["value"] for button in buttons["elements"]}
    assert len(values) == 1
    return values.pop()


def _posts_to(fake_slack: FakeSlack, response_url: str) -> list[Any]:
    path = response_url.removeprefix(fake_slack.url)
    return [request.body for request in fake_slack.received(RESPONSE) if request.path == path]


def _private_notes(fake_slack: FakeSlack, response_url: str) -> list[str]:
    return [str(body["text"]) for body in _posts_to(fake_slack, response_url)]


def test_an_ask_answer_carries_share_regenerate_and_dismiss_buttons_naming_its_job(
    web: TestClient,
    commands: SlashCommands,
    settings: Settings,
    fake_slack: FakeSlack,
    redis_client: redis.Redis,
) -> None:
    commands.send(web, "what is a p99?")
    [job] = queued_jobs(redis_client)
    drain(settings)

    [post] = fake_slack.received(RESPONSE)
    actions_block = post.body["blocks"][-1]
    assert [(b["action_id"], b["value"]) for b in actions_block["elements"]] == [
        (actions.SHARE, job.job_id),
        (actions.REGENERATE, job.job_id),
        (actions.DISMISS, job.job_id),
    ]


def test_an_ask_answer_is_recorded_for_its_buttons_when_delivered(
    web: TestClient, commands: SlashCommands, settings: Settings, fake_slack: FakeSlack
) -> None:
    job_id = _answered(web, commands, settings, fake_slack)

    record = in_redis(settings, lambda client: answers.load(client, job_id))

    assert record is not None
    assert (record.kind, record.question, record.answer) == (
        "ask",
        "what is a p99?",
        "Answer to: what is a p99?",
    )
    assert (record.asker.user_id, record.channel_id, record.thread_ts) == ("U0ASKER", "C0CHANNEL", None)


def test_share_posts_the_question_and_answer_in_the_channel_as_the_app_attributed_to_the_asker(
    web: TestClient, commands: SlashCommands, settings: Settings, fake_slack: FakeSlack, clicks: Clicks
) -> None:
    job_id = _answered(web, commands, settings, fake_slack)

    assert clicks.click(web, actions.SHARE, job_id, ephemeral=True).status_code == 200
    drain(settings)

    [shared] = fake_slack.posts("C0CHANNEL")
    assert shared.get("thread_ts") is None
    blocks = json.dumps(shared["blocks"])
    assert "<@U0ASKER> asked:" in blocks
    assert "what is a p99?" in blocks
    assert "Answer to: what is a p99?" in blocks


def test_a_double_click_on_share_shares_once(
    web: TestClient, commands: SlashCommands, settings: Settings, fake_slack: FakeSlack, clicks: Clicks
) -> None:
    job_id = _answered(web, commands, settings, fake_slack)

    first = clicks.click(web, actions.SHARE, job_id, ephemeral=True)
    second = clicks.click(web, actions.SHARE, job_id, ephemeral=True)
    drain(settings)
    third = clicks.click(web, actions.SHARE, job_id, ephemeral=True)
    drain(settings)

    assert [r.status_code for r in (first, second, third)] == [200, 200, 200]
    assert len(fake_slack.posts("C0CHANNEL")) == 1


@pytest.mark.parametrize("error", ["not_in_channel", "channel_not_found"])
def test_share_where_the_app_cannot_post_tells_the_clicker_why_and_to_invite_it(
    error: str,
    web: TestClient,
    commands: SlashCommands,
    settings: Settings,
    fake_slack: FakeSlack,
    clicks: Clicks,
) -> None:
    job_id = _answered(web, commands, settings, fake_slack)
    fake_slack.script_channel(POST_MESSAGE, "C0CHANNEL", Reply(json={"ok": False, "error": error}))
    click = clicks.payload(actions.SHARE, job_id, ephemeral=True)

    clicks.send(web, click)
    drain(settings)

    assert fake_slack.posts("C0CHANNEL") == []
    [note] = _private_notes(fake_slack, click["response_url"])
    assert "/invite @asklane" in note
    [body] = _posts_to(fake_slack, click["response_url"])
    assert body["replace_original"] is False


def test_dismiss_deletes_the_ephemeral_answer_through_the_clicks_response_url(
    web: TestClient, commands: SlashCommands, settings: Settings, fake_slack: FakeSlack, clicks: Clicks
) -> None:
    job_id = _answered(web, commands, settings, fake_slack)
    click = clicks.payload(actions.DISMISS, job_id, ephemeral=True)

    clicks.send(web, click)
    drain(settings)

    assert _posts_to(fake_slack, click["response_url"]) == [{"delete_original": True}]


def test_a_double_click_on_dismiss_dismisses_once(
    web: TestClient, commands: SlashCommands, settings: Settings, fake_slack: FakeSlack, clicks: Clicks
) -> None:
    job_id = _answered(web, commands, settings, fake_slack)
    first = clicks.payload(actions.DISMISS, job_id, ephemeral=True)
    second = clicks.payload(actions.DISMISS, job_id, ephemeral=True)

    clicks.send(web, first)
    clicks.send(web, second)
    drain(settings)

    assert _posts_to(fake_slack, first["response_url"]) == [{"delete_original": True}]
    assert _posts_to(fake_slack, second["response_url"]) == []


def test_regenerate_of_an_ask_answer_asks_again_and_replaces_it_through_the_clicks_response_url(
    web: TestClient,
    commands: SlashCommands,
    settings: Settings,
    fake_slack: FakeSlack,
    fake_anthropic: FakeAnthropic,
    clicks: Clicks,
) -> None:
    job_id = _answered(web, commands, settings, fake_slack)
    click = clicks.payload(actions.REGENERATE, job_id, ephemeral=True)

    clicks.send(web, click)
    drain(settings)

    assert len(fake_anthropic.received("/v1/messages")) == 2
    [again] = _posts_to(fake_slack, click["response_url"])
    assert again["replace_original"] is True
    assert again["blocks"][0] == {"type": "markdown", "text": "Answer to: what is a p99?"}
    # The new answer has buttons of its own, naming the new job.
    new_ids = {button["value"] for button in again["blocks"][-1]["elements"]}
    assert new_ids and job_id not in new_ids


@pytest.mark.parametrize("action_id", [actions.SHARE, actions.REGENERATE, actions.DISMISS])
def test_someone_else_clicking_an_ask_answers_button_is_told_it_is_not_theirs_and_nothing_happens(
    action_id: str,
    web: TestClient,
    commands: SlashCommands,
    settings: Settings,
    fake_slack: FakeSlack,
    fake_anthropic: FakeAnthropic,
    clicks: Clicks,
) -> None:
    job_id = _answered(web, commands, settings, fake_slack)
    click = clicks.payload(action_id, job_id, user="U0SOMEONE", ephemeral=True)

    assert clicks.send(web, click).status_code == 200
    drain(settings)

    [note] = _private_notes(fake_slack, click["response_url"])
    assert "Only the person who asked" in note
    assert fake_slack.posts() == []
    assert len(fake_anthropic.received("/v1/messages")) == 1
    assert _posts_to(fake_slack, click["response_url"])[0]["replace_original"] is False


@pytest.mark.parametrize("action_id", [actions.SHARE, actions.REGENERATE, actions.DISMISS])
def test_a_click_on_an_answer_whose_record_expired_gets_a_polite_explanation(
    action_id: str,
    web: TestClient,
    commands: SlashCommands,
    settings: Settings,
    fake_slack: FakeSlack,
    fake_anthropic: FakeAnthropic,
    clicks: Clicks,
    redis_client: redis.Redis,
) -> None:
    job_id = _answered(web, commands, settings, fake_slack)
    redis_client.delete(keys.answer_record_key(job_id))  # as ANSWER_RECORD_TTL_SECONDS would
    click = clicks.payload(action_id, job_id, ephemeral=True)

    clicks.send(web, click)
    drain(settings)

    [note] = _private_notes(fake_slack, click["response_url"])
    assert "too old" in note
    assert fake_slack.posts() == []
    assert len(fake_anthropic.received("/v1/messages")) == 1


def _thread_answer(settings: Settings, *, retained: bool) -> AnswerRecord:
    """A thread answer as its worker records it (and, when ``retained``, its job's record)."""
    record = AnswerRecord(
        job_id="thread-0123456789abcdef",
        kind="thread",
        asker=Asker(team_id=TEAM_ID, user_id="U0ASKER"),
        channel_id="C0CHANNEL",
        thread_ts="1700000000.000100",
        question="what is a p99?",
        answer="Answer to: what is a p99?",
        answered_at=datetime.now(UTC),
    )

    async def save(client: Any) -> None:
        await answers.save(client, record, settings.answer_record_ttl_seconds)
        if retained:
            await retention.keep(
                client,
                retention.JobRecord(
                    job_id=record.job_id,
                    reference="ref",
                    state="completed",
                    payload={},
                    attempts=1,
                    enqueued_at=None,
                    finished_at=datetime.now(UTC),
                ),
                10,
            )

    in_redis(settings, save)
    return record


@pytest.mark.parametrize("value", ["good", "bad"])
def test_feedback_is_recorded_against_the_answered_job_and_thanked_privately(
    value: Literal["good", "bad"],
    web: TestClient,
    settings: Settings,
    fake_slack: FakeSlack,
    clicks: Clicks,
    redis_client: redis.Redis,
) -> None:
    answer = _thread_answer(settings, retained=True)
    click = clicks.payload(
        actions.FEEDBACK,
        actions.feedback_value(value, answer.job_id),
        user="U0READER",
        thread_ts=answer.thread_ts,
    )

    assert clicks.send(web, click).status_code == 200
    drain(settings)

    records = [json.loads(raw) for raw in redis_client.lrange(keys.COMPLETED_KEY, 0, -1)]
    [record] = [record for record in records if record["job_id"] == answer.job_id]
    assert record["feedback"] == {"U0READER": value}
    [note] = _private_notes(fake_slack, click["response_url"])
    assert "Thanks" in note
    exposition = in_redis(settings, metrics.render).decode()
    assert f'asklane_feedback_total{{value="{value}"}} 1.0' in exposition


def test_feedback_on_an_answer_no_longer_retained_is_still_thanked(
    web: TestClient, settings: Settings, fake_slack: FakeSlack, clicks: Clicks
) -> None:
    answer = _thread_answer(settings, retained=False)
    click = clicks.payload(actions.FEEDBACK, actions.feedback_value("good", answer.job_id))

    clicks.send(web, click)
    drain(settings)

    [note] = _private_notes(fake_slack, click["response_url"])
    assert "Thanks" in note


def test_two_feedback_clicks_are_two_feedback_jobs(
    web: TestClient, settings: Settings, clicks: Clicks, redis_client: redis.Redis
) -> None:
    answer = _thread_answer(settings, retained=False)

    clicks.click(web, actions.FEEDBACK, actions.feedback_value("good", answer.job_id))
    clicks.click(web, actions.FEEDBACK, actions.feedback_value("bad", answer.job_id))

    assert [job.kind for job in queued_jobs(redis_client)] == ["feedback", "feedback"]


def test_regenerate_of_a_thread_answer_is_a_new_question_of_the_thread_with_the_same_text(
    web: TestClient, settings: Settings, fake_slack: FakeSlack, clicks: Clicks, redis_client: redis.Redis
) -> None:
    answer = _thread_answer(settings, retained=False)

    clicks.click(web, actions.REGENERATE, answer.job_id, user="U0READER", thread_ts=answer.thread_ts)

    [question] = queued_jobs(redis_client)
    assert isinstance(question, ThreadQuestion)
    assert (question.source, question.text, question.asker.user_id) == (
        "regenerate",
        "what is a p99?",
        "U0READER",
    )
    assert (question.reply_to.channel_id, question.reply_to.thread_ts) == ("C0CHANNEL", answer.thread_ts)
    drain(settings)
    [reply] = fake_slack.thread_texts("C0CHANNEL", answer.thread_ts)
    assert "Answer to: what is a p99?" in reply


def test_share_is_not_offered_for_a_thread_answer(
    web: TestClient, settings: Settings, fake_slack: FakeSlack, clicks: Clicks
) -> None:
    answer = _thread_answer(settings, retained=False)
    click = clicks.payload(actions.SHARE, answer.job_id)

    clicks.send(web, click)
    drain(settings)

    assert fake_slack.received(POST_MESSAGE) == [] and fake_slack.received(POST_EPHEMERAL) == []
    [note] = _private_notes(fake_slack, click["response_url"])
    assert "only private `/ask` answers" in note
