"""Interim updates to the user's "Working on it" notice (or a thread's status) while a question waits.

A question waiting PROGRESS_AFTER_SECONDS or more is told why: "queued behind N other
questions" (found by a sweep of the queue that one worker at a time runs) or "Claude is busy,
retrying in 8 s" (posted by the job as it defers itself). A job gets at most
MAX_INTERIM_UPDATES, counted in Redis, and each takes a response_url use only when the answer and
a retry of its post still have theirs (workers/delivery.py, ResponseUrlBudget). For a question
answered in a thread the update is the thread's status (``assistant.threads.setStatus``, no post):
the sweep uses each kind's own ``queued_message`` for every kind that calls the AI. A status spends
no budget, and Slack clears it about two minutes after it was set, so a thread job still waiting
is shown again, at most every STATUS_REFRESH_SECONDS, for as long as it waits.

A notice is never posted for a job that has been answered or has failed: the check is made
immediately before each post, because a job can stay in arq's queue after its final message went
out (arq could not record it finished: a Redis error, a failover, a worker killed at that moment).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Mapping
from typing import TYPE_CHECKING, Any, cast

import structlog
from arq.connections import ArqRedis
from arq.jobs import DeserializationError, deserialize_job

from app.contract import keys, messages
from app.contract.job import deserialize
from app.contract.jobs import AskQuestion, JobBase, parse_job
from app.contract.messages import SlackMessage
from app.contract.queue import PRIORITY_OFFSET_MS
from app.contract.targets import DirectMessage, Thread
from workers import job_state
from workers.delivery import SlackDelivery

if TYPE_CHECKING:
    from workers.kinds import JobKind

log = structlog.get_logger(__name__)

MAX_INTERIM_UPDATES = 2

#: Slack clears a thread's status about two minutes after it was set; a thread job that still
#: waits has it set again, at most this often.
STATUS_REFRESH_SECONDS = 90

#: How often the queue is swept, and how far down it is looked at.
SWEEP_EVERY_SECONDS = 1.0
SWEEP_DEPTH = 200


async def _claim(redis: ArqRedis, job: JobBase) -> bool:
    if isinstance(job.reply_to, Thread):
        shown = await redis.set(keys.status_shown_key(job.job_id), 1, nx=True, ex=STATUS_REFRESH_SECONDS)
        return bool(shown)
    job_id = job.job_id
    async with redis.pipeline(transaction=True) as pipe:
        pipe.incr(keys.progress_count_key(job_id))
        pipe.expire(keys.progress_count_key(job_id), job_state.STATE_TTL_SECONDS)
        count, _ = await pipe.execute()
    return int(count) <= MAX_INTERIM_UPDATES


async def post_update(redis: ArqRedis, slack: SlackDelivery, job: JobBase, message: SlackMessage) -> bool:
    """Post an interim update if this job still has one to spend and is not finished. True when posted."""
    if await job_state.is_finished(redis, job.job_id):
        # The user has the answer or the error: a notice now would replace it.
        log.info("job.progress_skipped", job_id=job.job_id, reason="finished")
        return False
    if not await _claim(redis, job):
        return False
    posted = await slack.update_notice(redis, job, message)
    log.info("job.progress", job_id=job.job_id, posted=posted, text=message.text)
    return posted


async def tell_queued(redis: ArqRedis, slack: SlackDelivery, job: JobBase, message: SlackMessage) -> None:
    """Tell the user their job is queued (``message``, the kind's): once per job, or in a thread
    whenever its status may have lapsed."""
    if isinstance(job.reply_to, Thread):
        await post_update(redis, slack, job, message)
    elif await redis.set(keys.progress_queued_key(job.job_id), 1, nx=True, ex=job_state.STATE_TTL_SECONDS):
        await post_update(redis, slack, job, message)


async def sweep_once(
    redis: ArqRedis,
    slack: SlackDelivery,
    wait_after: float,
    every: float = SWEEP_EVERY_SECONDS,
    kinds: Mapping[str, JobKind] | None = None,
) -> None:
    """Tell every question waiting ``wait_after`` seconds or more, not yet told, where it stands.

    ``kinds``: the worker's kinds, whose ``queued_message`` is used for jobs of kinds that call
    the AI (a kind that does not is quick to run once started); without them, /ask's only.
    """
    # One worker sweeps per period, however many there are.
    # The lock ends a little before the next sweep is due, so the worker that holds it can
    # always sweep again on time.
    if not await redis.set(keys.PROGRESS_SWEEP_LOCK_KEY, 1, nx=True, px=max(int(every * 900), 1)):
        return
    now_ms = time.time() * 1000
    head = await cast(
        Awaitable[list[tuple[bytes, float]]],
        redis.zrangebyscore(keys.QUEUE_KEY, "-inf", now_ms, start=0, num=SWEEP_DEPTH, withscores=True),
    )
    ahead = 0
    for member, score in head:
        job_id = member.decode()
        if await redis.exists(keys.in_progress_key(job_id)):
            continue
        waited = (now_ms - _enqueued_ms(score, now_ms)) / 1000
        told = await redis.exists(keys.progress_queued_key(job_id), keys.status_shown_key(job_id))
        if waited >= wait_after and not told:
            job = await _load(redis, job_id)
            notice = _queued_notice(job, ahead, kinds)
            if job is not None and notice is not None:
                await tell_queued(redis, slack, job, notice)
            elif job is None and await redis.set(
                keys.progress_queued_key(job_id), 1, nx=True, ex=job_state.STATE_TTL_SECONDS
            ):
                # Unreadable (the run side fails it and says so); looked at once, not every sweep.
                log.warning("progress.job_unreadable", job_id=job_id)
        ahead += 1


def _queued_notice(
    job: JobBase | None, ahead: int, kinds: Mapping[str, JobKind] | None
) -> SlackMessage | None:
    """What a queued job is told, or None when it says nothing while queued."""
    if job is None or isinstance(job.reply_to, DirectMessage):
        return None
    if kinds is None:
        return messages.queued(job.text, ahead) if isinstance(job, AskQuestion) else None
    kind = kinds.get(job.kind)
    return kind.queued_message(job, ahead) if kind is not None and kind.uses_ai else None


async def sweep_forever(
    redis: ArqRedis,
    slack: SlackDelivery,
    wait_after: float,
    stopping: asyncio.Event,
    every: float = SWEEP_EVERY_SECONDS,
    kinds: Mapping[str, JobKind] | None = None,
) -> None:
    """Run :func:`sweep_once` every ``every`` seconds until ``stopping`` is set.

    A failing sweep is logged once per kind of error (``progress.sweep_failed``), not once per
    sweep, and its end once (``progress.sweep_recovered``): a Redis outage would otherwise log
    every second.
    """
    failing: dict[str, int] = {}
    # A flag as well as cancellation: redis-py can swallow a cancellation that lands inside a
    # command (redis/redis-py#2028), which would leave this loop running forever.
    while not stopping.is_set():
        try:
            await sweep_once(redis, slack, wait_after, every, kinds)
        except Exception as error:
            kind = type(error).__name__
            if kind not in failing:
                log.error("progress.sweep_failed", error=kind, detail=str(error)[:200])
            failing[kind] = failing.get(kind, 0) + 1
        else:
            if failing:
                log.info("progress.sweep_recovered", failed_sweeps=failing)
                failing = {}
        await asyncio.sleep(every)


def _enqueued_ms(score: float, now_ms: float) -> float:
    # Interactive jobs are scored PRIORITY_OFFSET_MS early (app/contract/queue.py); undo that.
    offset = PRIORITY_OFFSET_MS["interactive"]
    return score + offset if score < now_ms - offset / 2 else score


async def _load(redis: ArqRedis, job_id: str) -> JobBase | None:
    raw = await redis.get(keys.job_key(job_id))
    if raw is None:
        return None
    try:
        definition: Any = deserialize_job(raw, deserializer=deserialize)
        return parse_job(definition.args[0])
    except (ValueError, LookupError, TypeError, DeserializationError):
        # args that are an object, not a list, or whose first item is not a job this release reads.
        return None
