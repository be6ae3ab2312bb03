"""What happens to an Events API event on the web side: classify, validate, check quota, enqueue.

Kept free of Bolt so it can be tested with a plain dict and a real Redis. Nobody sees an event's
ack, so whatever the user must hear (no question, too long, over quota) is queued as a notice the
worker posts in the thread; the ack only tells Slack whether to deliver the event again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import structlog
from arq.connections import ArqRedis
from pydantic import ValidationError
from redis.exceptions import RedisError
from structlog.stdlib import BoundLogger

from app.contract import keys, messages, stops
from app.contract.events import JobEvents
from app.contract.jobs import JobBase, ThreadNotice, notice_for_message, prompts_for, question_from_message
from app.contract.queue import QueueUnavailable, enqueue_ask
from app.web import budget, quota
from app.web.ask import MAX_QUESTION_CHARS
from app.web.events import Ignored, Message, Prompts, Question, StopThread, classify

log = structlog.get_logger(__name__)

Outcome = Literal[
    "queued",  # a question queued
    "duplicate",  # a re-delivery, or the twin of a message already queued
    "prompts",  # suggested prompts queued
    "stopped",  # Slack's Stop: the thread's running question asked to stop
    "nothing_to_stop",  # Slack's Stop in a thread with no question running or queued
    "usage",  # a notice queued: nothing was asked
    "too_long",  # a notice queued: the question is over MAX_QUESTION_CHARS
    "over_quota",  # a notice queued: the asker is over a fair-use limit
    "over_budget",  # a notice queued: the asker or their workspace has spent its AI budget
    "ignored",
    "malformed",
    "unavailable",  # Redis did not take the job: Slack is asked to deliver the event again
    "crashed",  # a bug (logged with its traceback): Slack is asked to deliver the event again
]


@dataclass(frozen=True)
class EventAck:
    """The HTTP status to answer Slack with, and what became of the event (for metrics)."""

    status: int
    outcome: Outcome


#: Non-2xx, so that Slack delivers the event again (about 1 and 5 minutes later); the dedupe key
#: makes a re-delivery of something already queued a no-op.
RETRY_LATER = 503


async def handle_event(
    body: Mapping[str, Any],
    redis: ArqRedis,
    events: JobEvents,
    limits: tuple[quota.Limit, ...] = (),
    *,
    app_id: str | None = None,
    retry_num: str | None = None,
    budgets: tuple[budget.Budget, ...] = (),
) -> EventAck:
    """Decide what one Events API request asks for and queue its job. ``retry_num`` is Slack's
    X-Slack-Retry-Num, present on re-deliveries."""
    decision = classify(body, app_id)
    event = body.get("event")
    bound = log.bind(
        event_id=body.get("event_id"),
        type=event.get("type") if isinstance(event, Mapping) else None,
        team=body.get("team_id"),
        retry_num=retry_num,
    )
    if isinstance(decision, Ignored):
        bound.debug("event.ignored", reason=decision.reason)
        return EventAck(200, "ignored")
    now = datetime.now(UTC)
    try:
        if isinstance(decision, Prompts):
            job: JobBase = prompts_for(
                team_id=decision.team_id,
                enterprise_id=decision.enterprise_id,
                user_id=decision.user_id,
                channel_id=decision.channel_id,
                event_id=decision.event_id,
                enqueued_at=now,
            )
            return await _enqueue(job, redis, events, bound.bind(user=decision.user_id), "prompts")
        if isinstance(decision, StopThread):
            return await _stop_thread(decision, redis, bound)
        return await _ask(decision, redis, events, limits, budgets, bound, now)
    except ValidationError as error:
        bound.warning("event.malformed", fields=[e["loc"] for e in error.errors()])
        return EventAck(200, "malformed")
    except (QueueUnavailable, RedisError, OSError, TimeoutError) as error:
        bound.error("event.queue_unavailable", error=str(error) or type(error).__name__, status=RETRY_LATER)
        return EventAck(RETRY_LATER, "unavailable")


async def _stop_thread(stop: StopThread, redis: ArqRedis, bound: BoundLogger) -> EventAck:
    """Ask the thread's running question to stop: the head of its in-order set is the one
    running (or the next to run); later questions of the thread were not stopped and still run."""
    order = keys.thread_order_key(stop.team_id, stop.channel_id, stop.thread_ts)
    head = await redis.zrange(order, 0, 0)
    if not head:
        bound.info("event.nothing_to_stop", channel=stop.channel_id, thread_ts=stop.thread_ts)
        return EventAck(200, "nothing_to_stop")
    job_id = head[0].decode() if isinstance(head[0], bytes) else str(head[0])
    first = await stops.request_stop(redis, job_id)
    bound.info("event.stop_requested", job_id=job_id, first=first)
    return EventAck(200, "stopped")


async def _ask(
    question: Question,
    redis: ArqRedis,
    events: JobEvents,
    limits: tuple[quota.Limit, ...],
    budgets: tuple[budget.Budget, ...],
    bound: BoundLogger,
    now: datetime,
) -> EventAck:
    message = question.message
    bound = bound.bind(user=message.user_id, source=question.source)
    if not question.text:
        notice = _notice(message, messages.event_usage(question.source).text, now)
        return await _enqueue(notice, redis, events, bound, "usage")
    if len(question.text) > MAX_QUESTION_CHARS:
        bound.info("event.too_long", length=len(question.text), limit=MAX_QUESTION_CHARS)
        text = messages.event_too_long(len(question.text), MAX_QUESTION_CHARS).text
        return await _enqueue(_notice(message, text, now), redis, events, bound, "too_long")

    job = question_from_message(
        team_id=message.team_id,
        enterprise_id=message.enterprise_id,
        user_id=message.user_id,
        channel_id=message.channel_id,
        message_ts=message.ts,
        thread_ts=message.thread_ts,
        text=question.text,
        source=question.source,
        enqueued_at=now,
    )
    bound = bound.bind(job_id=job.job_id, reference=job.reference)
    over = await budget.over_budget(redis, budgets, job.asker, now)
    if over is not None:
        bound.info("event.over_budget", **over.log_fields())
        text = over.message(job.reference).text
        return await _enqueue(_notice(message, text, now), redis, events, bound, "over_budget")
    # One script charges the quota, queues the job and joins its thread's order, as for /ask.
    result = await quota.enqueue_within(redis, limits, job)
    if isinstance(result, quota.OverQuota):
        limit = result.limit
        bound.info(
            "event.over_quota",
            scope=limit.scope,
            period=limit.period,
            allowed=limit.allowed,
            retry_after_s=round(result.retry_after, 1),
        )
        text = messages.over_quota(limit.scope, limit.allowed, limit.period, result.retry_after).text
        return await _enqueue(_notice(message, text, now), redis, events, bound, "over_quota")
    return await _queued(job, result, events, bound, "queued")


def _notice(message: Message, text: str, now: datetime) -> ThreadNotice:
    """What the user is told in the message's thread instead of an answer."""
    return notice_for_message(
        team_id=message.team_id,
        enterprise_id=message.enterprise_id,
        user_id=message.user_id,
        channel_id=message.channel_id,
        message_ts=message.ts,
        thread_ts=message.thread_ts,
        text=text,
        enqueued_at=now,
    )


async def _enqueue(
    job: JobBase, redis: ArqRedis, events: JobEvents, bound: BoundLogger, outcome: Outcome
) -> EventAck:
    """Queue a job that no quota is charged for (a notice, suggested prompts)."""
    return await _queued(job, await enqueue_ask(redis, job), events, bound.bind(job_id=job.job_id), outcome)


async def _queued(
    job: JobBase, queued: bool, events: JobEvents, bound: BoundLogger, outcome: Outcome
) -> EventAck:
    if not queued:
        bound.info("event.duplicate", kind=job.kind)
        return EventAck(200, "duplicate")
    bound.info("event.queued", kind=job.kind, outcome=outcome)
    await events.emit(
        "job.enqueued",
        job_id=job.job_id,
        team=job.asker.team_id,
        user=job.asker.user_id,
        reference=job.reference,
    )
    return EventAck(200, outcome)
