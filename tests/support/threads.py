"""Jobs answered in threads and DMs: queue them as the web would; a stand-in for the thread kind
(:class:`EchoKind`) whose answer is the question itself, so a delivery test chooses the answer's
length and shape without an AI call; and :func:`run_thread_question`, the real thread kind run
once in the test's process (:func:`stop_thread_question`: stopped part-way, as the Stop button
does)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import TypeVar

import pytest
from arq.connections import ArqRedis

from app.contract import stops
from app.contract.events import JobEvents
from app.contract.jobs import (
    JobBase,
    SuggestPrompts,
    ThreadNotice,
    ThreadQuestion,
    notice_for_message,
    prompts_for,
    question_from_message,
)
from app.contract.messages import SlackMessage
from app.contract.queue import open_redis
from app.contract.settings import Settings
from workers import job_state
from workers.ai import Claude
from workers.delivery import SlackDelivery
from workers.errors import PermanentError, StopRequested
from workers.formatting import thread_answer
from workers.kinds import JobKind, Run, Timings, WorkerDeps
from workers.lease import lease
from workers.notice import NOTICE, PROMPTS, THINKING_STATUS, queued_status, waiting_status
from workers.ratelimit import RateLimiter
from workers.thread_answer import THREAD

TEAM = "T0TEAM"
USER = "U0ASKER"
CHANNEL = "C0CHANNEL"
DM = "D0DM"
#: An echoed question starting with this fails permanently, with FAIL_REASON.
FAIL = "!fail"
FAIL_REASON = "the test asked to fail."
THINKING = THINKING_STATUS.text

T = TypeVar("T")

_ts = iter(range(1, 1_000_000))


def next_ts() -> str:
    """A fresh message ts, ordered as Slack's are."""
    return f"1700000000.{next(_ts):06d}"


def question(
    text: str,
    *,
    channel: str = CHANNEL,
    thread_ts: str | None = None,
    message_ts: str | None = None,
    user_id: str = USER,
) -> ThreadQuestion:
    """A mention asked in ``channel`` (a new thread unless ``thread_ts``), as the web queues it."""
    return question_from_message(
        team_id=TEAM,
        enterprise_id=None,
        user_id=user_id,
        channel_id=channel,
        message_ts=message_ts or next_ts(),
        thread_ts=thread_ts,
        text=text,
        source="mention",
        enqueued_at=datetime.now(UTC),
    )


def notice(text: str, *, channel: str = CHANNEL, thread_ts: str | None = None) -> ThreadNotice:
    return notice_for_message(
        team_id=TEAM,
        enterprise_id=None,
        user_id=USER,
        channel_id=channel,
        message_ts=next_ts(),
        thread_ts=thread_ts,
        text=text,
        enqueued_at=datetime.now(UTC),
    )


def prompts(*, channel: str = DM) -> SuggestPrompts:
    return prompts_for(
        team_id=TEAM,
        enterprise_id=None,
        user_id=USER,
        channel_id=channel,
        event_id=f"Ev{next_ts()}",
        enqueued_at=datetime.now(UTC),
    )


class EchoKind:
    """Stands in for the thread kind: sets the thread's status, stores the "answer" (the
    question's text) before posting it, and posts it through :meth:`Run.deliver` in parts."""

    model: type[JobBase] = ThreadQuestion
    uses_ai = True

    async def perform(self, run: Run) -> str:
        job = run.job
        assert isinstance(job, ThreadQuestion)
        redis = run.deps.redis
        await run.deps.slack.update_notice(redis, job, THINKING_STATUS)
        if job.text.startswith(FAIL):
            raise PermanentError("echo refused", reason=FAIL_REASON)
        stored = await job_state.load_answer(redis, job.job_id)
        if stored is None:
            stored = job_state.StoredAnswer(text=job.text, cut_short=False)
            await job_state.save_answer(redis, job.job_id, stored)
        return await run.deliver(thread_answer(stored.text, cut_short=stored.cut_short))

    def failure_message(self, job: JobBase, reason: str) -> SlackMessage:
        return SlackMessage(text=f"echo failed: {reason} (ref {job.reference})")

    def retrying_message(self, job: JobBase, delay: float) -> SlackMessage:
        return waiting_status(delay)

    def queued_message(self, job: JobBase, ahead: int) -> SlackMessage:
        return queued_status(ahead)


KINDS: Mapping[str, JobKind] = {"thread": EchoKind(), "notice": NOTICE, "prompts": PROMPTS}


async def run_thread_question(
    settings: Settings, job: ThreadQuestion, *, before: Callable[[ArqRedis], Awaitable[None]] | None = None
) -> str:
    """Run the thread kind's steps for ``job`` once in this process, as the runner would (under
    its lease, with the worker's Claude, rate limiter and Slack delivery), after ``before``;
    returns the via or raises what the steps raised."""
    client = open_redis(settings)
    claude = Claude(settings)
    deps = WorkerDeps(
        settings=settings,
        redis=client,
        claude=claude,
        slack=SlackDelivery(settings),
        limiter=RateLimiter.for_settings(client, settings),
        events=JobEvents(),
    )
    try:
        if before is not None:
            await before(client)
        async with lease(client, job.job_id) as held:
            return await THREAD.perform(Run(job, deps, held, Timings()))
    finally:
        await claude.close()
        await client.aclose()


async def stop_thread_question(
    settings: Settings,
    job: ThreadQuestion,
    ready: Callable[[], object],
    *,
    before: Callable[[ArqRedis], Awaitable[None]] | None = None,
) -> float:
    """Run ``job`` as :func:`run_thread_question` does and, once ``ready`` returns (it blocks, in
    a thread, until the moment to stop), ask it to stop as the Stop button does; asserts the run
    ends raising StopRequested. Returns the seconds from the stop asked to the run's end."""
    running = asyncio.create_task(run_thread_question(settings, job, before=before))
    await asyncio.to_thread(ready)
    client = open_redis(settings)
    try:
        await stops.request_stop(client, job.job_id)
    finally:
        await client.aclose()
    asked = time.monotonic()
    with pytest.raises(StopRequested):
        await running
    return time.monotonic() - asked
