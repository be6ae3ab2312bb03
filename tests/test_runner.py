"""The runner is generic: a second, test-only job kind goes through the lease, retry, give-up,
stall recovery and retention with none of the runner's code copied — only its steps and messages."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
import redis
from arq import Retry

from app.contract import keys
from app.contract.events import JobEvents
from app.contract.jobs import JobBase
from app.contract.queue import enqueue_ask, open_redis
from app.contract.settings import Settings
from tests.support.chores import KINDS, Step, chore
from tests.support.fakes.anthropic import FakeAnthropic
from tests.support.fakes.server import Reply
from tests.support.fakes.slack import POST_EPHEMERAL, RESPONSE, FakeSlack
from tests.support.jobs import drain
from tests.support.slack_requests import SlashCommands
from workers.errors import TransientError
from workers.outcomes import (
    Abandoned,
    AlreadyDone,
    Completed,
    Deferred,
    Failed,
    JobFailed,
    JobFailure,
    Outcome,
)
from workers.retry import ARQ_MAX_TRIES
from workers.runner import to_arq


def _enqueue(settings: Settings, job: JobBase) -> None:
    async def run() -> None:
        client = open_redis(settings)
        assert await enqueue_ask(client, job)
        await client.aclose()

    asyncio.run(run())


def _recording(*names: str) -> tuple[JobEvents, list[tuple[str, dict[str, Any]]]]:
    seen: list[tuple[str, dict[str, Any]]] = []

    async def hook(event: str, fields: dict[str, Any]) -> None:
        seen.append((event, fields))

    events = JobEvents()
    for name in names:
        events.subscribe(name, hook)
    return events, seen


LIFECYCLE = ("job.started", "job.retrying", "job.completed", "job.failed", "job.stalled")


def _records(client: redis.Redis, state: str) -> list[dict[str, Any]]:
    return [
        json.loads(raw)
        for raw in client.lrange(keys.COMPLETED_KEY if state == "completed" else keys.FAILED_KEY, 0, -1)
    ]


def test_a_second_kind_is_retried_after_a_transient_failure_under_its_lease_and_retained(
    settings: Settings, commands: SlashCommands, redis_client: redis.Redis, fake_slack: FakeSlack
) -> None:
    job = chore(commands, "flaky once", "transient", "ok")
    _enqueue(settings, job)
    events, seen = _recording(*LIFECYCLE)

    worker = drain(settings, events=events, kinds=KINDS)

    assert [name for name, _ in seen] == ["job.started", "job.retrying", "job.started", "job.completed"]
    assert seen[1][1]["phase"] == "ai" and seen[1][1]["attempt"] == 1
    assert [post["text"] for post in fake_slack.delivered()] == [f"chore {job.dedupe_key} done"]
    assert redis_client.get(f"test:chore-leased:{job.job_id}") == b"2"
    assert not redis_client.exists(keys.running_key(job.job_id))
    [record] = _records(redis_client, "completed")
    assert (record["job_id"], record["attempts"], record["via"]) == (job.job_id, 2, "response_url")
    assert record["payload"]["kind"] == "chore"
    assert worker.jobs_complete == 1 and worker.jobs_failed == 0


@pytest.mark.parametrize("step", ["permanent", "transient"], ids=["permanent failure", "retries exhausted"])
def test_a_second_kind_that_fails_is_given_up_with_its_message_through_its_reply_target(
    step: Step, settings: Settings, commands: SlashCommands, redis_client: redis.Redis, fake_slack: FakeSlack
) -> None:
    retries = 0 if step == "permanent" else settings.job_max_retries
    job = chore(commands, f"doomed {step}", step)
    _enqueue(settings, job)
    events, seen = _recording(*LIFECYCLE)

    worker = drain(settings, events=events, kinds=KINDS)

    assert [name for name, _ in seen].count("job.retrying") == retries
    assert seen[-1][0] == "job.failed" and seen[-1][1]["permanent"] is (step == "permanent")
    [told] = [post["text"] for post in fake_slack.delivered()]
    reason = "the chore cannot be done." if step == "permanent" else TransientError.default_reason
    assert told == f"chore failed: {reason} (ref {job.reference})"
    [record] = _records(redis_client, "failed")
    assert record["job_id"] == job.job_id and record["attempts"] == retries + 1
    assert worker.jobs_failed == 1


def test_a_second_kind_left_by_a_dead_worker_is_recovered_and_reported_stalled(
    settings: Settings,
    commands: SlashCommands,
    redis_client: redis.Redis,
    fake_anthropic: FakeAnthropic,
    fake_slack: FakeSlack,
) -> None:
    job = chore(commands, "orphaned", "ok")
    _enqueue(settings, job)
    redis_client.set(keys.running_key(job.job_id), json.dumps({"worker": "dead:1", "heartbeat": time.time()}))
    events, seen = _recording(*LIFECYCLE)

    drain(settings, events=events, kinds=KINDS)

    assert [name for name, _ in seen] == ["job.stalled", "job.started", "job.completed"]
    assert seen[0][1]["dead_worker"] == "dead:1"
    assert [post["text"] for post in fake_slack.delivered()] == [f"chore {job.dedupe_key} done"]
    assert fake_anthropic.calls == []


FAILURE = JobFailure(error="PermanentError", detail="chore refused", reason="no.", permanent=True)


@pytest.mark.parametrize(
    ("outcome", "result"),
    [
        (Completed("response_url"), "response_url"),
        (AlreadyDone(), "already-delivered"),
        (Abandoned("another run has this job"), "abandoned"),
        (Deferred(2.5), Retry(defer=2.5)),
        (Failed(FAILURE), JobFailed("PermanentError: chore refused")),
    ],
    ids=["completed", "already done", "abandoned", "deferred", "failed"],
)
def test_every_outcome_of_a_run_becomes_one_thing_in_arq(outcome: Outcome, result: object) -> None:
    if isinstance(result, Exception):
        with pytest.raises(type(result)) as raised:
            to_arq(outcome)
        assert str(raised.value) == str(result)
    else:
        assert to_arq(outcome) == result


def test_a_second_kind_reaches_its_reply_target_by_the_shared_fallback_when_the_response_url_refuses(
    settings: Settings, commands: SlashCommands, fake_slack: FakeSlack
) -> None:
    fake_slack.script(RESPONSE, Reply(status=404))
    job = chore(commands, "refused url", "ok")
    _enqueue(settings, job)

    drain(settings, events=JobEvents(), kinds=KINDS)

    [post] = fake_slack.received(POST_EPHEMERAL)
    assert (post.body["channel"], post.body["user"]) == (job.reply_to.channel_id, job.reply_to.user_id)
    assert [body["text"] for body in fake_slack.delivered()] == [f"chore {job.dedupe_key} done"]


def test_a_job_of_the_workers_own_kind_arq_gives_up_on_is_a_failed_job_not_an_unreadable_one(
    settings: Settings, commands: SlashCommands, redis_client: redis.Redis, fake_slack: FakeSlack
) -> None:
    # arq fails a job over its try count without running it and without any hook.
    job = chore(commands, "out of tries", "ok")
    _enqueue(settings, job)
    redis_client.set(keys.retry_key(job.job_id), ARQ_MAX_TRIES)

    drain(settings, events=JobEvents(), kinds=KINDS)

    [record] = _records(redis_client, "failed")
    assert "retries exceeded" in record["error"]
    assert record["payload"] == job.model_dump(mode="json")
    assert [post["text"] for post in fake_slack.delivered()] == [
        f":x: Sorry, I couldn't answer that: something went wrong on our side. (ref {job.reference})"
    ]
