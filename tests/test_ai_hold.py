"""Only work that would call the AI waits for the AI limiter: while it has no slot for a long
while, a job that only has to post to Slack (a stored answer, a failure notice) still starts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import pytest
import redis
from arq.connections import ArqRedis

from app.contract import keys
from app.contract.events import JobEvents
from app.contract.job import AskJob
from app.contract.jobs import JobBase
from app.contract.queue import enqueue_ask, open_redis
from app.contract.settings import Settings
from tests.support.chores import KINDS, chore
from tests.support.deployment import settings_from
from tests.support.fakes.anthropic import MESSAGES, FakeAnthropic, error
from tests.support.fakes.server import Reply
from tests.support.fakes.slack import RESPONSE, FakeSlack
from tests.support.jobs import queued_job_ids, task_stacks, until_jobs_settle
from tests.support.slack_requests import SlashCommands
from tests.support.waiting import wait_until
from workers import job_state, loop
from workers.kinds import JobKind
from workers.process import worker_settings
from workers.ratelimit import RateLimiter

#: The shared pause the test stores: far longer than anything the test waits for.
PAUSE_SECONDS = 40.0

#: How long the first job's failed post defers it: enough to queue the second job meanwhile.
RETRY_SECONDS = "10"


def _due_in(client: redis.Redis, job_id: str) -> float:
    """Seconds until the queued job is due (negative once due); -inf when it is not queued."""
    score = client.zscore(keys.QUEUE_KEY, job_id)
    return float("-inf") if score is None else score / 1000 - time.time()


def _hold_settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    # The worker looks at the queue on its own only this rarely: only a wake-up or its wait for a
    # job's due moment can explain a prompt start.
    monkeypatch.setattr(loop, "IDLE_WAIT_SECONDS", 60.0)
    # No "still working" update may take the first post that fails.
    return settings_from(
        {
            **env,
            "JOB_RETRY_BASE_SECONDS": RETRY_SECONDS,
            "JOB_RETRY_JITTER": "0",
            "PROGRESS_AFTER_SECONDS": "60",
        }
    )


def _run_worker(
    settings: Settings,
    client_sync: redis.Redis,
    watched: JobBase,
    scenario: Callable[[ArqRedis, asyncio.Event], Awaitable[None]],
    kinds: Mapping[str, JobKind] | None = None,
) -> None:
    """Run one worker in this process through ``scenario``, which gets a Redis client and an event
    set once ``watched`` has ended with its message posted (job.completed for an answer,
    job.failed for a failure notice)."""

    async def run() -> None:
        told = asyncio.Event()

        async def note(_event: str, fields: dict[str, Any]) -> None:
            if fields.get("job_id") == watched.job_id:
                told.set()

        events = JobEvents()
        events.subscribe("job.completed", note)
        events.subscribe("job.failed", note)
        client = open_redis(settings)
        worker = loop.AsklaneWorker(**worker_settings(settings, events, kinds), handle_signals=False)
        running = asyncio.create_task(worker.async_run())
        try:
            await scenario(client, told)
            # The event comes from inside the job; arq records it finished just after.
            await asyncio.to_thread(
                wait_until, lambda: bool(client_sync.exists(keys.result_key(watched.job_id)))
            )
            await until_jobs_settle(worker)
        finally:
            running.cancel()
            _, stuck = await asyncio.wait([running], timeout=15)
            assert not stuck, f"worker ignored cancellation:\n{task_stacks()}"
            await asyncio.wait_for(worker.close(), 15)
            await client.aclose()

    asyncio.run(run())


async def _hold_ai_work(client: ArqRedis, redis_client: redis.Redis, job: AskJob) -> None:
    """The AI limiter has no slot for a long while (another worker met a 429, say), and ``job``,
    which needs the AI, arrives: it is deferred, and the worker holds AI work back."""
    await RateLimiter(client, 1, max_pause=PAUSE_SECONDS).pause(PAUSE_SECONDS, "test")
    assert await enqueue_ask(client, job)
    await asyncio.to_thread(wait_until, lambda: _due_in(redis_client, job.job_id) > 10.0)


async def _posted(told: asyncio.Event, what: str) -> None:
    try:
        async with asyncio.timeout(15):
            await told.wait()
    except TimeoutError:
        pytest.fail(f"{what} was not posted while the AI limiter held")


@pytest.mark.parametrize(
    ("ai_reply", "stored"),
    [
        (None, "the answer"),
        (error(400, "invalid_request_error"), "the failure notice"),
    ],
    ids=["delivery-retry", "failure-notice"],
)
def test_a_retry_with_its_answer_or_failure_stored_starts_when_due_while_ai_work_waits(
    env: dict[str, str],
    commands: SlashCommands,
    fake_anthropic: FakeAnthropic,
    fake_slack: FakeSlack,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    ai_reply: Reply | None,
    stored: str,
) -> None:
    settings = _hold_settings(env, monkeypatch)
    if ai_reply is not None:
        fake_anthropic.script(MESSAGES, ai_reply)
    # The first post of the first job fails: it is deferred with `stored` kept in Redis.
    fake_slack.script(RESPONSE, Reply(status=503))
    first = commands.job("first question")
    second = commands.job("second question")

    async def scenario(client: ArqRedis, told: asyncio.Event) -> None:
        assert await enqueue_ask(client, first)
        await asyncio.to_thread(wait_until, lambda: _due_in(redis_client, first.job_id) > 1.0)
        await _hold_ai_work(client, redis_client, second)
        assert not told.is_set(), "the retry came before the hold"

        await _posted(told, stored)

    _run_worker(settings, redis_client, first, scenario)

    # The second job never reached the AI: it is still queued, waiting for the limiter.
    assert len(fake_anthropic.calls) == 1
    assert second.job_id in queued_job_ids(redis_client)


def test_a_queued_job_with_its_answer_stored_starts_on_its_wake_up_while_ai_work_waits(
    env: dict[str, str],
    commands: SlashCommands,
    fake_anthropic: FakeAnthropic,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As a job cut off by SIGTERM after its answer was generated is re-queued, with a wake-up.
    settings = _hold_settings(env, monkeypatch)
    needs_ai = commands.job("a new question")
    answered = commands.job("an answered question")

    async def scenario(client: ArqRedis, told: asyncio.Event) -> None:
        await _hold_ai_work(client, redis_client, needs_ai)
        await job_state.save_answer(
            client, answered.job_id, job_state.StoredAnswer(text="stored", cut_short=False)
        )
        assert await enqueue_ask(client, answered)

        await _posted(told, "the stored answer")

    _run_worker(settings, redis_client, answered, scenario)

    assert fake_anthropic.calls == []
    assert needs_ai.job_id in queued_job_ids(redis_client)


def test_a_job_of_a_kind_that_calls_no_ai_starts_at_once_while_ai_work_waits(
    env: dict[str, str],
    commands: SlashCommands,
    fake_anthropic: FakeAnthropic,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A kind whose steps only post to Slack (a button click, say) has nothing to wait for.
    settings = _hold_settings(env, monkeypatch)
    needs_ai = commands.job("a new question")
    no_ai = chore(commands, "a chore", "ok")

    async def scenario(client: ArqRedis, told: asyncio.Event) -> None:
        await _hold_ai_work(client, redis_client, needs_ai)
        assert await enqueue_ask(client, no_ai)

        await _posted(told, "the chore's message")

    _run_worker(settings, redis_client, no_ai, scenario, KINDS)

    assert fake_anthropic.calls == []
    assert needs_ai.job_id in queued_job_ids(redis_client)
