"""The answer job: ask Claude under the global rate limit, post the answer, apply the retry policy."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn

import structlog
from arq import Retry
from arq.connections import ArqRedis
from arq.constants import default_queue_name
from redis.exceptions import RedisError

from app import messages
from app.events import JobEvents
from app.job import AskJob
from app.settings import Settings
from workers import age, progress, retention, store
from workers.ai import Claude
from workers.delivery import SlackDelivery
from workers.errors import (
    BackPressure,
    DeliveryFailed,
    JobError,
    PermanentError,
    TransientError,
)
from workers.formatting import answer_message
from workers.lease import Lease, lease
from workers.ratelimit import RateLimiter, SlotTooFar, spread
from workers.retry import MAX_STALLS, retry_delay, should_retry, too_old_to_wait, waited_too_long

log = structlog.get_logger(__name__)

TOO_OLD_REASON = "the question waited too long in the queue. Please ask again."
CRASHED_REASON = "answering it crashed the assistant twice, so it was given up. Please try rephrasing."
#: Detail of the failure that ends a job Anthropic's rate limit kept waiting too long; the user
#: gets TransientError's "Claude is busy" message.
BACKPRESSURE_TOO_LONG = "waited out anthropic's rate limit past AI_BACKPRESSURE_MAX_WAIT_SECONDS"


@dataclass(frozen=True)
class WorkerDeps:
    """What a job needs, built once per worker process at start-up."""

    settings: Settings
    redis: ArqRedis
    claude: Claude
    slack: SlackDelivery
    limiter: RateLimiter
    events: JobEvents


@dataclass
class Timings:
    """What one run measured, for job.completed and the retention record."""

    attempt: int = 1
    queued_ms: int | None = None
    ai_ms: float | None = None
    delivery_ms: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None


class LeaseLost(Exception):
    """This run's lease lapsed and another run has the job: stop without calling or posting."""


class JobFailed(Exception):
    """Raised after the user has been told, so arq records the job as failed with its cause."""


async def answer_question(ctx: dict[str, Any], job: AskJob) -> str:
    """Answer one AskJob (validated by arq's entry, workers/worker.py). Returns how the answer
    was delivered."""
    deps: WorkerDeps = ctx["deps"]
    run: int = ctx["job_try"]
    with structlog.contextvars.bound_contextvars(
        job_id=job.job_id, team=job.team_id, user=job.user_id, reference=job.reference, run=run
    ):
        try:
            return await _run_with_lease(job, deps, ctx["score"])
        except RedisError as error:
            # Redis failed outside the retry policy (which itself needs Redis): try the whole job
            # again shortly, uncounted, rather than let arq fail it without telling anyone.
            log.warning("job.redis_unavailable", error=type(error).__name__, detail=str(error))
            defer = deps.settings.job_retry_base_seconds
            if too_old_to_wait(await _enqueued_at_if_redis_allows(deps, job), defer):
                return await _fail_too_old_despite_redis(job, deps)
            raise Retry(defer=defer) from error


async def _run_with_lease(job: AskJob, deps: WorkerDeps, score: int) -> str:
    """Run the job under its lease, noting a stalled predecessor; skip it if already answered."""
    async with lease(deps.redis, job.job_id) as held:
        predecessor = held.predecessor
        if predecessor is not None:
            # Before the delivered check: a worker that died after posting still died mid-job,
            # and the operator should hear of it.
            await deps.events.emit(
                "job.stalled",
                level="warning",
                job_id=job.job_id,
                dead_worker=predecessor.get("worker"),
                recovered_after_s=round(time.time() - float(str(predecessor.get("heartbeat"))), 3),
            )
        if await store.was_delivered(deps.redis, job.job_id):
            log.info("job.already_delivered")
            return "already-delivered"
        if predecessor is not None:
            if await store.record_failure(deps.redis, job.job_id, "stalled") > MAX_STALLS:
                # A job that kills its worker every time would otherwise be re-run until it is too old.
                crashed = PermanentError(
                    f"worker died {MAX_STALLS + 1} times running it", reason=CRASHED_REASON
                )
                await _fail(job, deps, crashed, Timings())
        try:
            failure = await store.load_failure(deps.redis, job.job_id)
        except store.UnreadableRecord as error:
            # The job did fail, for a reason this version cannot read (a rolling deploy, damage):
            # tell the user in general terms rather than fail the job silently.
            log.error("job.failure_record_unreadable", detail=str(error))
            failure = store.FailureNotice(
                error="UnreadableRecord", detail=str(error), reason=JobError.default_reason, permanent=True
            )
        if failure is not None:
            # The job has failed already; only the message telling the user is left to send.
            attempts = await store.failure_count(deps.redis, job.job_id)
            await _give_up(job, deps, failure, Timings(attempt=max(attempts, 1)))
        return await _run(job, deps, score, held)


async def _run(job: AskJob, deps: WorkerDeps, score: int, held: Lease) -> str:
    settings = deps.settings
    enqueued_at = await age.enqueued_at(deps.redis, job)
    # Attempts that did work: earlier failed ones and this one (arq's try count also counts
    # rate-limit deferrals and shutdown re-queues).
    timings = Timings(
        queued_ms=_ms_since(enqueued_at), attempt=await store.failure_count(deps.redis, job.job_id) + 1
    )
    await deps.events.emit(
        "job.started", job_id=job.job_id, attempt=timings.attempt, queued_ms=timings.queued_ms
    )
    try:
        if too_old_to_wait(enqueued_at, 0):
            raise PermanentError("job older than MAX_JOB_AGE_SECONDS", reason=TOO_OLD_REASON)
        # Our own deadline sits inside arq's, so a timeout is a transient failure we handle
        # rather than arq failing the job silently.
        async with asyncio.timeout(settings.job_timeout_seconds):
            via = await _answer_and_deliver(job, deps, timings, held)
    except LeaseLost:
        log.warning("job.abandoned", reason="another run has this job")
        return "abandoned"
    except SlotTooFar as wait:
        # Waiting for the rate limiter is not a failure: no retry is used up. It is bounded all
        # the same, so the user hears in time rather than never.
        defer = wait.defer
        if too_old_to_wait(enqueued_at, defer):
            too_old = PermanentError("rate-limit wait would pass MAX_JOB_AGE_SECONDS", reason=TOO_OLD_REASON)
            await _fail(job, deps, too_old, timings)
        if waited_too_long(await deps.limiter.refused_for(job.job_id, refused_now=False), defer, settings):
            await _fail(job, deps, TransientError(BACKPRESSURE_TOO_LONG), timings)
        await deps.events.emit("job.deferred", job_id=job.job_id, delay_s=round(defer, 3))
        if _ms_since(enqueued_at) >= settings.progress_after_seconds * 1000:
            ahead = await deps.redis.zcount(default_queue_name, "-inf", f"({score}")
            await progress.tell_queued(deps.redis, deps.slack, job, ahead)
        raise Retry(defer=defer) from None
    except TimeoutError as error:
        failure: Exception = TransientError("job timed out")
        failure.__cause__ = error
    except RedisError as error:
        failure = TransientError(f"redis {type(error).__name__}")
        failure.__cause__ = error
    except JobError as error:
        failure = error
    except Exception as error:
        log.exception("job.crashed")
        failure = error
    else:
        await deps.events.emit(
            "job.completed",
            job_id=job.job_id,
            via=via,
            total_ms=_ms_since(enqueued_at),
            queued_ms=timings.queued_ms,
            ai_ms=timings.ai_ms,
            delivery_ms=timings.delivery_ms,
            input_tokens=timings.input_tokens,
            output_tokens=timings.output_tokens,
        )
        await _retain(deps, job.job_id, job, job.model_dump(mode="json"), "completed", timings, via=via)
        return via

    if isinstance(failure, BackPressure):
        await _wait_out_back_pressure(job, deps, failure, enqueued_at, timings)
    if isinstance(failure, TransientError):
        if failure.throttled:
            await deps.limiter.pause(failure.retry_after or settings.job_retry_base_seconds, str(failure))
        phase: store.Phase = "delivery" if isinstance(failure, DeliveryFailed) else "ai"
        failures = await store.record_failure(deps.redis, job.job_id, phase)
        if should_retry(failure, failures, settings):
            delay = retry_delay(failure, failures, settings)
            if not too_old_to_wait(enqueued_at, delay):
                await _retrying(deps, job, failures, delay, str(failure), phase)
                raise Retry(defer=await _tell_user_we_retry(job, deps, delay)) from failure
    await _fail(job, deps, failure, timings)


async def _wait_out_back_pressure(
    job: AskJob, deps: WorkerDeps, refusal: BackPressure, enqueued_at: datetime, timings: Timings
) -> NoReturn:
    """Anthropic refused the call for the organisation's rate limit: hold every worker's calls
    for its retry-after and defer this job until then, using none of its retries; fail it once
    the wait would pass AI_BACKPRESSURE_MAX_WAIT_SECONDS since its first refusal, or its age."""
    settings = deps.settings
    paused = await deps.limiter.pause(refusal.retry_after or settings.job_retry_base_seconds, str(refusal))
    refused_for = await deps.limiter.refused_for(job.job_id, refused_now=True)
    defer = spread(paused)
    if waited_too_long(refused_for, defer, settings) or too_old_to_wait(enqueued_at, defer):
        await _fail(job, deps, TransientError(BACKPRESSURE_TOO_LONG), timings)
    await deps.events.emit(
        "job.deferred", job_id=job.job_id, delay_s=round(defer, 3), reason=str(refusal), waited_s=refused_for
    )
    if refused_for == 0 and _ms_since(enqueued_at) / 1000 + defer >= settings.progress_after_seconds:
        # Once per job: "Claude is busy, retrying in N s", as for a retry.
        defer = await _tell_user_we_retry(job, deps, defer, force=True)
    raise Retry(defer=defer) from refusal


async def _fail(job: AskJob, deps: WorkerDeps, failure: Exception, timings: Timings) -> NoReturn:
    """End the job with ``failure``: see :func:`_give_up`."""
    notice = store.FailureNotice(
        error=type(failure).__name__,
        detail=str(failure),
        reason=failure.reason if isinstance(failure, JobError) else JobError.default_reason,
        permanent=not isinstance(failure, TransientError),
    )
    await _give_up(job, deps, notice, timings)


async def _give_up(job: AskJob, deps: WorkerDeps, failure: store.FailureNotice, timings: Timings) -> NoReturn:
    """Tell the user, keep the failed-job record, and fail the job in arq with its cause.

    When Slack does not take the message, the job is retried for the message alone, with the
    delivery backoff: a failure must reach the user as surely as an answer.
    """
    # Kept before the first post, so a run cut off while telling the user (SIGTERM, a crash)
    # is re-run to tell them, not to ask Claude again.
    await store.save_failure(deps.redis, job.job_id, failure)
    try:
        via = await deps.slack.send(deps.redis, job, messages.failed(failure.reason, job.reference))
    except DeliveryFailed as error:
        failures = await store.record_failure(deps.redis, job.job_id, "notice")
        if should_retry(error, failures, deps.settings):
            delay = retry_delay(error, failures, deps.settings)
            await _retrying(deps, job, failures, delay, f"failure message: {error}", "notice")
            raise Retry(defer=delay) from error
        log.error("job.failure_undelivered", error=type(error).__name__, detail=str(error))
    except Exception as error:
        log.error("job.failure_undelivered", error=type(error).__name__, detail=str(error))
    else:
        await _record_delivery(deps, job, via)
    await deps.events.emit(
        "job.failed",
        level="error",
        job_id=job.job_id,
        error=failure.error,
        detail=failure.detail,
        permanent=failure.permanent,
    )
    cause = f"{failure.error}: {failure.detail}"
    await _retain(deps, job.job_id, job, job.model_dump(mode="json"), "failed", timings, error=cause)
    raise JobFailed(cause)


async def _retrying(
    deps: WorkerDeps, job: AskJob, attempt: int, delay: float, reason: str, phase: store.Phase
) -> None:
    await deps.events.emit(
        "job.retrying",
        level="warning",
        job_id=job.job_id,
        attempt=attempt,
        delay_s=round(delay, 3),
        reason=reason,
        phase=phase,
    )


async def _tell_user_we_retry(job: AskJob, deps: WorkerDeps, delay: float, *, force: bool = False) -> float:
    """Post "retrying in N s" for a long wait (or any, ``force``); returns the delay left after
    posting it."""
    if delay < deps.settings.progress_after_seconds and not force:
        return delay
    started = time.monotonic()
    await progress.post_update(deps.redis, deps.slack, job, messages.retrying(job.text, delay))
    # The post took some of the wait; the retry still starts when promised.
    return max(delay - (time.monotonic() - started), 0.0)


async def _answer_and_deliver(job: AskJob, deps: WorkerDeps, timings: Timings, held: Lease) -> str:
    stored = await store.load_answer(deps.redis, job.job_id)
    if stored is None:
        if held.lost:
            raise LeaseLost()
        await deps.limiter.wait_for_slot()
        # Nothing else may be awaited between the granted slot and the request.
        answer = await deps.claude.ask(job.text)
        log.info(
            "ai.completed",
            model=answer.model,
            latency_ms=answer.latency_ms,
            input_tokens=answer.input_tokens,
            output_tokens=answer.output_tokens,
            stop_reason=answer.stop_reason,
            request_id=answer.request_id,
        )
        timings.ai_ms = answer.latency_ms
        timings.input_tokens, timings.output_tokens = answer.input_tokens, answer.output_tokens
        if answer.slow_down_for:
            await deps.limiter.pause(answer.slow_down_for, "anthropic rate limit used up")
        stored = store.StoredAnswer(text=answer.text, cut_short=answer.cut_short)
        await store.save_answer(deps.redis, job.job_id, stored)
    else:
        log.info("job.answer_reused")
    # Another run may have taken the job over while this one waited on Claude: one answer only.
    if held.lost or await store.was_delivered(deps.redis, job.job_id):
        raise LeaseLost()
    started = time.perf_counter()
    via = await deps.slack.send(deps.redis, job, answer_message(stored.text, cut_short=stored.cut_short))
    timings.delivery_ms = round((time.perf_counter() - started) * 1000, 1)
    await _record_delivery(deps, job, via)
    return via


async def _record_delivery(deps: WorkerDeps, job: AskJob, via: str) -> None:
    # The user has their message now: a bookkeeping error must not turn into an error post
    # that replaces it. The cost is a possible second post if this job runs again.
    try:
        await store.mark_delivered(deps.redis, job.job_id, via)
    except Exception as error:
        log.error("job.delivery_unrecorded", via=via, error=type(error).__name__, detail=str(error))


async def _retain(
    deps: WorkerDeps,
    job_id: str,
    job: AskJob | None,
    payload: object,
    state: retention.State,
    timings: Timings,
    *,
    via: str | None = None,
    error: str | None = None,
) -> None:
    limit = deps.settings.retain_completed_jobs if state == "completed" else deps.settings.retain_failed_jobs
    record = retention.JobRecord(
        job_id=job_id,
        reference=job.reference if job else None,
        state=state,
        payload=payload,
        attempts=timings.attempt,
        enqueued_at=job.enqueued_at if job else None,
        finished_at=datetime.now(UTC),
        queued_ms=timings.queued_ms,
        ai_ms=timings.ai_ms,
        delivery_ms=timings.delivery_ms,
        input_tokens=timings.input_tokens,
        output_tokens=timings.output_tokens,
        via=via,
        error=error,
    )
    if limit > 0:
        await retention.keep(deps.redis, record, limit)


async def _enqueued_at_if_redis_allows(deps: WorkerDeps, job: AskJob) -> datetime:
    """The job's Redis-clock enqueue moment, or the payload's (clamped) while Redis fails."""
    try:
        return await age.enqueued_at(deps.redis, job)
    except RedisError:
        return age.from_payload(job)


async def _fail_too_old_despite_redis(job: AskJob, deps: WorkerDeps) -> str:
    """End a job that Redis errors kept deferring until it is too old: tell the user, unless
    the answer already reached them."""
    too_old = PermanentError(
        "redis errors kept the job waiting past MAX_JOB_AGE_SECONDS", reason=TOO_OLD_REASON
    )
    try:
        if await store.was_delivered(deps.redis, job.job_id):
            return "already-delivered"
        await _fail(job, deps, too_old, Timings())
    except RedisError as error:
        # Still failing: whether the answer went out cannot be known, and an error post would
        # replace it. Try again later: the first run with Redis back tells the user (or finds the
        # answer delivered), as every run of a job this old does.
        log.warning("job.too_old_redis_unavailable", error=type(error).__name__, detail=str(error))
        raise Retry(defer=deps.settings.job_retry_base_seconds) from error


def _ms_since(moment: datetime) -> int:
    return int((datetime.now(UTC) - moment).total_seconds() * 1000)
