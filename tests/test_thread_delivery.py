"""Answers in threads: posted once, in the right thread, in as many parts as Slack's limits need;
a re-run posts only the parts Slack has not accepted yet; failures end in the thread too."""

from __future__ import annotations

import redis

from app.contract import keys
from app.contract.settings import Settings
from tests.support.fakes.server import Reply
from tests.support.fakes.slack import POST_MESSAGE, FakeSlack
from tests.support.jobs import drain, enqueue
from tests.support.threads import CHANNEL, FAIL, FAIL_REASON, KINDS, question
from workers.delivery import NOT_A_MEMBER
from workers.formatting import MARKDOWN_LIMIT, thread_answer

SHORT = "A **short** answer."
#: About three messages' worth of paragraphs.
LONG = "\n\n".join(f"Paragraph {n}. " + "Words that fill a long answer. " * 40 for n in range(26))


def _markdown(body: dict) -> str:
    return "".join(block["text"] for block in body.get("blocks", []) if block["type"] == "markdown")


def test_an_answer_is_posted_once_as_a_reply_in_its_thread(settings: Settings, fake_slack: FakeSlack) -> None:
    job = question(SHORT)
    enqueue(settings, job)

    drain(settings, kinds=KINDS)

    [post] = fake_slack.received(POST_MESSAGE)
    assert post.body["channel"] == CHANNEL
    assert post.body["thread_ts"] == job.reply_to.thread_ts
    assert post.body["blocks"] == [{"type": "markdown", "text": SHORT}]
    assert post.body["text"]


def test_a_long_answer_is_posted_in_parts_in_order_each_within_slacks_limit(
    settings: Settings, fake_slack: FakeSlack
) -> None:
    assert len(LONG) > 2 * MARKDOWN_LIMIT
    job = question(LONG)
    enqueue(settings, job)

    drain(settings, kinds=KINDS)

    posts = fake_slack.posts(CHANNEL, job.reply_to.thread_ts)
    assert len(posts) == len(thread_answer(LONG, cut_short=False)) >= 3
    assert all(len(_markdown(post)) <= MARKDOWN_LIMIT for post in posts)
    assert "\n\n".join(_markdown(post) for post in posts) == LONG


def test_a_failing_second_part_is_retried_without_posting_the_first_again(
    settings: Settings, fake_slack: FakeSlack
) -> None:
    fake_slack.script(POST_MESSAGE, Reply(json={"ok": True, "ts": "1700000100.000001"}), Reply(status=500))
    job = question(LONG)
    enqueue(settings, job)

    drain(settings, kinds=KINDS)

    posts = fake_slack.posts(CHANNEL, job.reply_to.thread_ts)
    parts = [message.blocks[0]["text"] for message in thread_answer(LONG, cut_short=False)]
    assert [_markdown(post) for post in posts] == parts
    assert len(fake_slack.received(POST_MESSAGE)) == len(parts) + 1  # the refused part, once more


def test_a_rerun_posts_only_the_parts_slack_has_not_accepted(
    settings: Settings, fake_slack: FakeSlack, redis_client: redis.Redis
) -> None:
    # As a worker that died right after Slack accepted the first two parts left it.
    job = question(LONG)
    redis_client.set(keys.part_delivered_key(job.job_id, 0), "chat.postMessage")
    redis_client.set(keys.part_delivered_key(job.job_id, 1), "chat.postMessage")
    enqueue(settings, job)

    drain(settings, kinds=KINDS)

    parts = [message.blocks[0]["text"] for message in thread_answer(LONG, cut_short=False)]
    assert [_markdown(post) for post in fake_slack.posts(CHANNEL)] == parts[2:]


def test_a_job_already_delivered_posts_nothing(
    settings: Settings, fake_slack: FakeSlack, redis_client: redis.Redis
) -> None:
    job = question(SHORT)
    redis_client.set(keys.delivered_key(job.job_id), "chat.postMessage")
    enqueue(settings, job)

    drain(settings, kinds=KINDS)

    assert fake_slack.received(POST_MESSAGE) == []


def test_a_failure_message_goes_in_the_thread_with_a_reference(
    settings: Settings, fake_slack: FakeSlack
) -> None:
    job = question(f"{FAIL} please")
    enqueue(settings, job)

    worker = drain(settings, kinds=KINDS)

    assert worker.jobs_failed == 1
    [post] = fake_slack.posts(CHANNEL, job.reply_to.thread_ts)
    assert FAIL_REASON in post["text"]
    assert job.reference in post["text"]


def test_rejected_blocks_are_reposted_as_plain_text_in_the_thread(
    settings: Settings, fake_slack: FakeSlack
) -> None:
    fake_slack.script(POST_MESSAGE, Reply(json={"ok": False, "error": "invalid_blocks"}))
    job = question(SHORT)
    enqueue(settings, job)

    drain(settings, kinds=KINDS)

    [post] = fake_slack.posts(CHANNEL, job.reply_to.thread_ts)
    assert not post.get("blocks")
    assert post["text"] == SHORT


def test_a_channel_the_app_is_not_in_fails_the_job_with_a_clear_reason(
    settings: Settings, fake_slack: FakeSlack, redis_client: redis.Redis
) -> None:
    fake_slack.script(POST_MESSAGE, Reply(json={"ok": False, "error": "not_in_channel"}))
    job = question(SHORT)
    enqueue(settings, job)

    worker = drain(settings, kinds=KINDS)

    assert worker.jobs_failed == 1
    assert len(fake_slack.received(POST_MESSAGE)) == 2  # the answer, then the failure message
    [told] = fake_slack.posts(CHANNEL)
    assert NOT_A_MEMBER in told["text"]
