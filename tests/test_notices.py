"""The notice and prompts kinds, and what a user sees in a thread while a question waits or runs:
the thread's status, never an extra post."""

from __future__ import annotations

import redis
from arq.connections import ArqRedis

from app.contract import keys
from app.contract.settings import Settings
from tests.support.deployment import settings_from
from tests.support.fakes.server import Reply
from tests.support.fakes.slack import POST_MESSAGE, SET_STATUS, SET_SUGGESTED_PROMPTS, FakeSlack
from tests.support.jobs import drain, enqueue, in_redis
from tests.support.threads import CHANNEL, DM, KINDS, THINKING, notice, prompts, question
from workers.delivery import LOADING_MESSAGES, SlackDelivery
from workers.progress import sweep_once

OVER_QUOTA = ":raised_hand: You have asked 10 questions this minute."


def test_a_notice_is_posted_once_in_its_thread(settings: Settings, fake_slack: FakeSlack) -> None:
    job = notice(OVER_QUOTA)
    enqueue(settings, job)

    worker = drain(settings, kinds=KINDS)

    assert worker.jobs_complete == 1
    [post] = fake_slack.received(POST_MESSAGE)
    assert post.body["thread_ts"] == job.reply_to.thread_ts
    assert post.body["text"] == OVER_QUOTA


def test_a_reply_to_a_thread_gets_its_notice_in_that_thread(
    settings: Settings, fake_slack: FakeSlack
) -> None:
    job = notice(OVER_QUOTA, thread_ts="1600000000.000001")
    enqueue(settings, job)

    drain(settings, kinds=KINDS)

    assert [post["text"] for post in fake_slack.posts(CHANNEL, "1600000000.000001")] == [OVER_QUOTA]


def test_suggested_prompts_are_offered_in_the_users_dm(settings: Settings, fake_slack: FakeSlack) -> None:
    settings = settings.model_copy(update={"suggested_prompts": ("Summarise this", "Draft a reply")})
    enqueue(settings, prompts())

    worker = drain(settings, kinds=KINDS)

    assert worker.jobs_complete == 1
    [call] = fake_slack.received(SET_SUGGESTED_PROMPTS)
    assert call.body["channel_id"] == DM
    assert call.body["prompts"] == [
        {"title": "Summarise this", "message": "Summarise this"},
        {"title": "Draft a reply", "message": "Draft a reply"},
    ]
    assert fake_slack.received(POST_MESSAGE) == []


def test_prompts_slack_refuses_fail_the_job_without_posting_anything_to_the_user(
    settings: Settings, fake_slack: FakeSlack, redis_client: redis.Redis
) -> None:
    # The user only opened the Messages tab: an error message at every open would be noise.
    fake_slack.script(SET_SUGGESTED_PROMPTS, Reply(json={"ok": False, "error": "invalid_arguments"}))
    enqueue(settings, prompts())

    worker = drain(settings, kinds=KINDS)

    assert worker.jobs_failed == 1
    assert fake_slack.posts(DM) == []
    assert redis_client.llen(keys.FAILED_KEY) == 1


def test_a_running_question_shows_the_thinking_status_in_its_thread(
    settings: Settings, fake_slack: FakeSlack
) -> None:
    job = question("what is a p99?")
    enqueue(settings, job)

    drain(settings, kinds=KINDS)

    [status] = fake_slack.statuses(CHANNEL)
    assert status["thread_ts"] == job.reply_to.thread_ts
    assert status["status"] == THINKING
    assert status["loading_messages"] == list(LOADING_MESSAGES)


def test_a_question_waiting_in_the_queue_gets_a_status_not_a_post(
    settings: Settings, fake_slack: FakeSlack, redis_client: redis.Redis
) -> None:
    job = question("what is a p99?")
    enqueue(settings, job)

    in_redis(settings, lambda client: sweep_once(client, SlackDelivery(settings), wait_after=0, kinds=KINDS))

    [status] = fake_slack.statuses(CHANNEL)
    assert status["thread_ts"] == job.reply_to.thread_ts
    assert status["status"] == "is next in line…"
    assert fake_slack.received(POST_MESSAGE) == []


def test_a_question_still_waiting_when_slack_clears_its_status_is_shown_again(
    settings: Settings, fake_slack: FakeSlack, redis_client: redis.Redis
) -> None:
    job = question("what is a p99?")
    enqueue(settings, job)

    def sweep() -> None:
        redis_client.delete(keys.PROGRESS_SWEEP_LOCK_KEY)  # as if the next period had come
        in_redis(
            settings, lambda client: sweep_once(client, SlackDelivery(settings), wait_after=0, kinds=KINDS)
        )

    sweep()
    sweep()  # within the refresh period: the status shown is fresh
    redis_client.delete(keys.status_shown_key(job.job_id))  # STATUS_REFRESH_SECONDS later
    sweep()

    assert len(fake_slack.statuses(CHANNEL)) == 2


def test_a_question_whose_post_is_retried_shows_a_retrying_status(
    env: dict[str, str], fake_slack: FakeSlack
) -> None:
    settings = settings_from({**env, "PROGRESS_AFTER_SECONDS": "0.1"})
    fake_slack.script(POST_MESSAGE, Reply(status=503))
    job = question("what is a p99?")
    enqueue(settings, job)

    drain(settings, kinds=KINDS)

    assert [status["status"] for status in fake_slack.statuses(CHANNEL)][:2] == [
        THINKING,
        "is retrying in 1 s…",
    ]
    assert len(fake_slack.posts(CHANNEL, job.reply_to.thread_ts)) == 1


def test_a_finished_question_gets_no_status(
    settings: Settings, fake_slack: FakeSlack, redis_client: redis.Redis
) -> None:
    job = question("what is a p99?")
    enqueue(settings, job)
    redis_client.set(keys.delivered_key(job.job_id), "chat.postMessage")

    async def sweep(client: ArqRedis) -> None:
        await sweep_once(client, SlackDelivery(settings), wait_after=0, kinds=KINDS)

    in_redis(settings, sweep)

    assert fake_slack.received(SET_STATUS) == []


def test_notices_and_prompts_are_registered_with_every_worker() -> None:
    from workers.process import KINDS as REGISTERED

    assert {"notice", "prompts"} <= set(REGISTERED)
    assert not REGISTERED["notice"].uses_ai
    assert not REGISTERED["prompts"].uses_ai
