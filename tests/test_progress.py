"""Interim updates while a question waits, within Slack's response_url budget."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis
from arq.connections import ArqRedis
from starlette.testclient import TestClient

from app.contract import keys
from app.contract.job import ANSWER_JOB, AskJob, serialize
from app.contract.queue import open_redis
from app.contract.settings import Settings
from tests.support.deployment import settings_from
from tests.support.fakes.anthropic import MESSAGES, FakeAnthropic, error
from tests.support.fakes.slack import RESPONSE, FakeSlack
from tests.support.jobs import drain
from tests.support.logs import caplog_events
from tests.support.processes import WorkerProcess
from tests.support.slack_requests import SlashCommands
from tests.support.waiting import wait_until
from workers import job_state
from workers.delivery import SlackDelivery
from workers.outcomes import JobFailure
from workers.progress import MAX_INTERIM_UPDATES, sweep_forever, sweep_once


def _posts_to(fake_slack: FakeSlack, response_url: str) -> list[str]:
    path = response_url.removeprefix(fake_slack.url)
    return [request.body["text"] for request in fake_slack.received(path) if request.accepted]


def test_a_long_retry_tells_the_user_before_the_answer(
    env: dict[str, str],
    web: TestClient,
    commands: SlashCommands,
    fake_anthropic: FakeAnthropic,
    fake_slack: FakeSlack,
) -> None:
    # Long enough that a slow worker start-up cannot make the queue sweep speak first.
    settings = settings_from({**env, "PROGRESS_AFTER_SECONDS": "1.5"})
    fake_anthropic.script(MESSAGES, error(529, "overloaded_error", retry_after=2))
    form = commands.form("what is a p99?")
    commands.send(web, form=form)

    drain(settings)

    posts = _posts_to(fake_slack, form["response_url"])
    assert len(posts) == 2
    assert "Claude is busy, retrying in 2 s" in posts[0]
    assert posts[1] == "Answer to: what is a p99?"


def test_interim_updates_never_exceed_two_per_question(
    env: dict[str, str],
    web: TestClient,
    commands: SlashCommands,
    fake_anthropic: FakeAnthropic,
    fake_slack: FakeSlack,
) -> None:
    settings = settings_from({**env, "PROGRESS_AFTER_SECONDS": "0.1", "JOB_RETRY_BASE_SECONDS": "0.1"})
    fake_anthropic.script(MESSAGES, *[error(500, "api_error")] * 3)
    form = commands.form("what is a p99?")
    commands.send(web, form=form)

    drain(settings)

    posts = _posts_to(fake_slack, form["response_url"])
    # Three retries, each worth an update, but only two are spent: Slack allows five posts to a
    # response_url, and the answer must still have room for a retry of its own post.
    assert len(posts) == MAX_INTERIM_UPDATES + 1
    assert posts[-1] == "Answer to: what is a p99?"


def test_a_question_waiting_in_the_queue_is_told_where_it_stands(
    web: TestClient,
    commands: SlashCommands,
    start_worker: Callable[..., WorkerProcess],
    fake_anthropic: FakeAnthropic,
    fake_slack: FakeSlack,
) -> None:
    # Each answer takes 2.5 s, so several queue sweeps (one a second) see question 2 behind 1.
    fake_anthropic.default_delay = 2.5
    start_worker(WORKER_CONCURRENCY="1", PROGRESS_AFTER_SECONDS="0.5", AI_TIMEOUT_SECONDS="4")
    forms = [commands.form(f"question {n}") for n in range(3)]
    for form in forms:
        commands.send(web, form=form)

    wait_until(lambda: len(fake_slack.answers()) == 3, timeout=30)

    last = _posts_to(fake_slack, forms[2]["response_url"])
    assert "queued behind 1 other question" in last[0]
    assert last[-1] == "Answer to: question 2"
    assert all(len(_posts_to(fake_slack, form["response_url"])) <= MAX_INTERIM_UPDATES + 1 for form in forms)


def _in_redis(settings: Settings, work: Callable[[ArqRedis], Awaitable[object]]) -> None:
    """Run ``work`` with an async client, as a worker has one."""

    async def run() -> None:
        client = open_redis(settings)
        try:
            await work(client)
        finally:
            await client.aclose()

    asyncio.run(run())


def _enqueue(settings: Settings, job: AskJob) -> None:
    _in_redis(
        settings,
        lambda client: client.enqueue_job(ANSWER_JOB, job.model_dump(mode="json"), _job_id=job.job_id),
    )


def _enqueue_raw(redis_client: redis.Redis, job_id: str, args: object) -> None:
    """A job in arq's queue whose arguments are ``args``, as a damaged or foreign payload has."""
    now_ms = int(time.time() * 1000)
    raw = serialize({"t": 1, "f": ANSWER_JOB, "a": args, "k": {}, "et": now_ms})
    redis_client.set(keys.job_key(job_id), raw)
    redis_client.zadd(keys.QUEUE_KEY, {job_id: now_ms - 1})


def _sweep(settings: Settings) -> None:
    _in_redis(settings, lambda client: sweep_once(client, SlackDelivery(settings), wait_after=0))


@pytest.mark.parametrize("finished", ["delivered", "failed", "not finished"])
def test_the_sweep_posts_no_notice_for_a_finished_job_still_in_the_queue(
    settings: Settings, commands: SlashCommands, fake_slack: FakeSlack, finished: str
) -> None:
    # The answer (or the error) was posted and recorded, but arq could not record the job finished
    # (a Redis error at that moment): it is still queued, with no in-progress key.
    job = commands.job("what is a p99?")
    _enqueue(settings, job)
    if finished == "delivered":
        _in_redis(settings, lambda client: job_state.mark_delivered(client, job.job_id, "response_url"))
    elif finished == "failed":
        notice = JobFailure(error="PermanentError", detail="x", reason="no.", permanent=True)
        _in_redis(settings, lambda client: job_state.save_failure(client, job.job_id, notice))

    _sweep(settings)

    # The same job not finished is told: the sweep did look at it.
    assert len(fake_slack.received(RESPONSE)) == (1 if finished == "not finished" else 0)


@pytest.mark.parametrize("args", [{"question": "why?"}, 5, None], ids=["object", "number", "null"])
def test_the_sweep_skips_a_job_that_is_not_an_ask_job_and_tells_the_ones_behind_it(
    settings: Settings, commands: SlashCommands, fake_slack: FakeSlack, redis_client: redis.Redis, args: Any
) -> None:
    _enqueue_raw(redis_client, "damaged-job", args)
    job = commands.job("what is a p99?")
    _enqueue(settings, job)

    _sweep(settings)

    [notice] = _posts_to(fake_slack, job.response_url)
    assert "queued behind 1 other question" in notice


def test_a_failing_sweep_is_logged_once_per_kind_and_its_recovery_once(
    settings: Settings, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)

    def failed_queue_reads() -> int:
        stats = redis_client.info("commandstats").get("cmdstat_zrangebyscore", {})
        return int(stats.get("failed_calls", 0))

    # Not a sorted set: every sweep's read of the queue fails (WRONGTYPE).
    redis_client.set(keys.QUEUE_KEY, "damaged")
    before = failed_queue_reads()
    loop = asyncio.new_event_loop()
    stopping = asyncio.Event()

    async def sweep() -> None:
        client = open_redis(settings)
        await sweep_forever(client, SlackDelivery(settings), 0, stopping, every=0.01)
        await client.aclose()

    sweeper = threading.Thread(target=loop.run_until_complete, args=(sweep(),))
    sweeper.start()
    try:
        wait_until(lambda: failed_queue_reads() >= before + 5)
        redis_client.delete(keys.QUEUE_KEY)
        wait_until(lambda: caplog_events(caplog, "progress.sweep_recovered"))
    finally:
        loop.call_soon_threadsafe(stopping.set)
        sweeper.join(10)
        loop.close()

    [failed] = caplog_events(caplog, "progress.sweep_failed")
    assert failed["error"] == "ResponseError"
    [recovered] = caplog_events(caplog, "progress.sweep_recovered")
    assert recovered["failed_sweeps"]["ResponseError"] >= 5
