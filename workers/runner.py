"""The job runner: what every job needs, whatever its kind.

It parses the payload (the contract's union, app/contract/jobs.py), looks the kind's steps up by
``kind`` (:mod:`workers.kinds`) and runs them under the lease with stall recovery
(:mod:`workers.lease`), failure counting per phase (:mod:`workers.job_state`), the
transient/permanent decision and delay table (:mod:`workers.retry`), the age guard on Redis's
clock (:mod:`workers.age`), back-pressure and rate-limiter waits, retention records, lifecycle
events (``job.started/deferred/retrying/completed/failed/stopped/stalled``) and the failure
message to the user through the job's reply target. "Finished is final": a job whose final message
went out posts nothing more, not even a failure message (an interrupted streamed answer already
shows its note). Stop (app/contract/stops.py): a job whose stop was requested before it ran ends
without running its steps, and a kind that saw the stop mid-run raises StopRequested; either way it
ends Stopped (not failed, not retried, no failure message). Jobs of a group (``in_order``, a
thread's questions) run one at a time, in order (:mod:`workers.in_order`): a job waits, uncounted,
while an earlier one is alive, and each job that ends hands over to the next at once. Every run
ends in one :data:`workers.outcomes.Outcome`, which :func:`run_job` turns into arq's terms.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import structlog
from arq import Retry
from redis.exceptions import RedisError

from app.contract import stops, trace
from app.contract.jobs import RUN_JOB, InOrder, JobBase, parse_job
from app.contract.keys import QUEUE_KEY
from app.contract.messages import SlackMessage
from app.contract.targets import Thread
from workers import age, in_order, job_state, progress, rejected, retention
from workers.errors import (
    BackPressure,
    DeliveryFailed,
    InvalidPayload,
    JobError,
    PermanentError,
    SlackBusy,
    StopRequested,
    TransientError,
)
from workers.kinds import JobKind, LeaseLost, Run, Timings, WorkerDeps, record_delivery, trace_undelivered
from workers.lease import WORKER_ID, Lease, lease
from workers.outcomes import (
    Abandoned,
    AlreadyDone,
    Completed,
    Deferred,
    Failed,
    JobFailed,
    JobFailure,
    Outcome,
    Stopped,
)
from workers.ratelimit import SlotTooFar, spread
from workers.retry import MAX_STALLS, retry_delay, should_retry, too_old_to_wait, waited_too_long

log = structlog.get_logger(__name__)

TOO_OLD_REASON = "the question waited too long in the queue. Please ask again."
CRASHED_REASON = "answering it crashed the assistant twice, so it was given up. Please try rephrasing."
TOO_OLD_WAITING_REASON = "the questions before it took too long. Please ask again."
#: Detail of the failure that ends a job Anthropic's rate limit kept waiting too long; the user
#: gets TransientError's "Claude is busy" message.
BACKPRESSURE_TOO_LONG = "waited out anthropic's rate limit past AI_BACKPRESSURE_MAX_WAIT_SECONDS"


async def run_job(ctx: dict[str, Any], *args: Any, **kwargs: Any) -> str:
    """arq's entry for every job kind. It takes whatever arguments the stored job holds, so a
    job of the wrong shape fails as a reported job (workers/rejected.py), not as a TypeError in
    arq. Returns how the final message was delivered."""
    deps: WorkerDeps = ctx["deps"]
    job = await _parse_or_reject(ctx, deps, args, kwargs)
    kind = deps.kinds[job.kind]
    with structlog.contextvars.bound_contextvars(
        job_id=job.job_id,
        team=job.asker.team_id,
        user=job.asker.user_id,
        reference=job.reference,
        run=ctx["job_try"],
    ):
        outcome = await _run_guarded(kind, job, deps, ctx["score"], ctx["job_try"])
    return to_arq(outcome)


async def _parse_or_reject(
    ctx: dict[str, Any], deps: WorkerDeps, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> JobBase:
    if len(args) == 1 and not kwargs:
        try:
            return parse_job(args[0], {name: kind.model for name, kind in deps.kinds.items()})
        except ValueError:  # pydantic's ValidationError, UnknownVersion, UnknownKind among them
            pass
    envelope = {"f": RUN_JOB, "a": list(args), "k": kwargs}
    rejection = rejected.examine(envelope, ctx["job_id"], deps.kinds)
    assert rejection is not None  # a well-formed job returned above
    await rejected.report(deps, ctx["job_id"], rejection, attempts=ctx["job_try"])
    raise InvalidPayload(rejection.problem)


def to_arq(outcome: Outcome) -> str:
    """The one place an outcome becomes arq's: a result, a Retry, or a failed job."""
    match outcome:
        case Completed(via=via):
            return via
        case AlreadyDone():
            return "already-delivered"
        case Abandoned():
            return "abandoned"
        case Stopped():
            return "stopped"
        case Deferred(delay=delay):
            raise Retry(defer=delay)
        case Failed(failure=failure):
            raise JobFailed(failure.cause)


async def _run_guarded(kind: JobKind, job: JobBase, deps: WorkerDeps, score: int, run: int) -> Outcome:
    started = time.perf_counter()
    # One per run, filled in as the run gets along: the trace's and the retention record's.
    timings = Timings()
    opening = trace.RunStarted.of(job, run=run, worker=WORKER_ID)
    outcome = await _run_or_defer(kind, job, deps, score, timings, opening)
    ending = _run_ended(outcome, run, timings, round((time.perf_counter() - started) * 1000, 1))
    await trace.append(deps.redis, job.job_id, ending, deps.settings.trace_ttl_seconds)
    group = job.in_order
    if group is not None and isinstance(outcome, Completed | Failed | AlreadyDone | Stopped):
        # Not for Abandoned (another run has the job) nor Deferred (it is still to run).
        try:
            following = await in_order.let_next_run(deps.redis, group, job.job_id)
        except RedisError as error:
            # The next job still runs: it finds this one's arq job gone once arq records it
            # finished, at its next look.
            log.warning("job.turn_not_handed_over", error=type(error).__name__, detail=str(error))
        else:
            if following is not None:
                log.info("job.turn_handed_over", next_job_id=following)
    return outcome


def _run_ended(outcome: Outcome, run: int, timings: Timings, duration_ms: float) -> trace.RunEnded:
    """The trace's entry for a run that ended in ``outcome``."""
    fields: dict[str, Any] = {}
    match outcome:
        case Completed(via=via):
            fields = {"outcome": "completed", "via": via}
        case AlreadyDone():
            fields = {"outcome": "already-delivered"}
        case Abandoned(reason=reason):
            fields = {"outcome": "abandoned", "reason": reason}
        case Stopped():
            fields = {"outcome": "stopped"}
        case Deferred(delay=delay, reason=reason, retrying=retrying):
            fields = {
                "outcome": "retrying" if retrying else "deferred",
                "delay_s": round(delay, 3),
                "reason": reason or None,
            }
        case Failed(failure=failure):
            fields = {"outcome": "failed", "reason": failure.cause, "request_id": failure.request_id}
    attempted = timings.queued_ms is not None or isinstance(outcome, Failed)
    return trace.RunEnded(
        run=run,
        attempt=timings.attempt if attempted else None,
        duration_ms=duration_ms,
        queued_ms=timings.queued_ms,
        ai_ms=timings.ai_ms,
        delivery_ms=timings.delivery_ms,
        **fields,
    )


async def _run_or_defer(
    kind: JobKind, job: JobBase, deps: WorkerDeps, score: int, timings: Timings, opening: trace.RunStarted
) -> Outcome:
    try:
        return await _run_with_lease(kind, job, deps, score, timings, opening)
    except RedisError as error:
        # Redis failed outside the retry policy (which itself needs Redis): try the whole job
        # again shortly, uncounted, rather than let arq fail it without telling anyone.
        log.warning("job.redis_unavailable", error=type(error).__name__, detail=str(error))
        defer = deps.settings.job_retry_base_seconds
        if too_old_to_wait(await _enqueued_at_if_redis_allows(deps, job), defer):
            return await _fail_too_old_despite_redis(kind, job, deps, timings)
        return Deferred(defer, reason=f"redis unavailable: {type(error).__name__}")


async def _run_with_lease(
    kind: JobKind, job: JobBase, deps: WorkerDeps, score: int, timings: Timings, opening: trace.RunStarted
) -> Outcome:
    """Run the job under its lease, noting a stalled predecessor; skip it if already delivered."""
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
        # Independent, awaited together: every job pays them on its way to the AI call. The
        # run's first trace entry writes the reference index too (never raises).
        delivered, stopped, _ = await asyncio.gather(
            job_state.was_delivered(deps.redis, job.job_id),
            stops.stop_requested(deps.redis, job.job_id),
            trace.append(
                deps.redis, job.job_id, opening, deps.settings.trace_ttl_seconds, reference=job.reference
            ),
        )
        if delivered:
            log.info("job.already_delivered")
            return AlreadyDone()
        if stopped:
            # Stopped while queued (or waiting its turn, or between retries): it never reaches
            # the AI.
            return await _stop(job, deps, timings, ran=False)
        if predecessor is not None:
            if await job_state.record_failure(deps.redis, job.job_id, "stalled") > MAX_STALLS:
                # A job that kills its worker every time would otherwise be re-run until it is too old.
                crashed = PermanentError(
                    f"worker died {MAX_STALLS + 1} times running it", reason=CRASHED_REASON
                )
                return await _give_up(kind, job, deps, JobFailure.of(crashed), timings)
        try:
            failure = await job_state.load_failure(deps.redis, job.job_id)
        except job_state.UnreadableRecord as error:
            # The job did fail, for a reason this version cannot read (a rolling deploy, damage):
            # tell the user in general terms rather than fail the job silently.
            log.error("job.failure_record_unreadable", detail=str(error))
            failure = JobFailure(
                error="UnreadableRecord", detail=str(error), reason=JobError.default_reason, permanent=True
            )
        if failure is not None:
            # The job has failed already; only the message telling the user is left to send.
            timings.attempt = max(await job_state.failure_count(deps.redis, job.job_id), 1)
            return await _give_up(kind, job, deps, failure, timings)
        group = job.in_order
        if group is not None:
            waiting = await _wait_for_turn(kind, job, deps, group, timings)
            if waiting is not None:
                return waiting
        return await _run(kind, job, deps, score, held, timings)


async def _wait_for_turn(
    kind: JobKind, job: JobBase, deps: WorkerDeps, group: InOrder, timings: Timings
) -> Outcome | None:
    """Defer the job while an earlier job of its group is alive (None: its turn has come).

    Waiting is not a failure and uses no retry; it is bounded by the job's age all the same, so
    the user hears in time rather than never.
    """
    before = await in_order.ahead(deps.redis, group, job.job_id)
    if before.count == 0:
        return None
    enqueued_at = await age.enqueued_at(deps.redis, job)
    if too_old_to_wait(enqueued_at, in_order.WAIT_SECONDS):
        too_old = PermanentError(
            "waited for earlier jobs of its group past MAX_JOB_AGE_SECONDS", reason=TOO_OLD_WAITING_REASON
        )
        return await _give_up(kind, job, deps, JobFailure.of(too_old), timings)
    await deps.events.emit(
        "job.waiting_turn",
        job_id=job.job_id,
        ahead=before.count,
        waiting_for=before.first,
        delay_s=in_order.WAIT_SECONDS,
    )
    # No status of its own: a thread shows one, and the question before this one is showing it.
    return Deferred(in_order.WAIT_SECONDS, reason=f"waiting for its turn behind {before.first}")


async def _run(
    kind: JobKind, job: JobBase, deps: WorkerDeps, score: int, held: Lease, timings: Timings
) -> Outcome:
    settings = deps.settings
    # Independent reads, awaited together: this is the path to the AI call.
    enqueued_at, failures = await asyncio.gather(
        age.enqueued_at(deps.redis, job), job_state.failure_count(deps.redis, job.job_id)
    )
    # Attempts that did work: earlier failed ones and this one (arq's try count also counts
    # rate-limit deferrals and shutdown re-queues).
    timings.queued_ms, timings.attempt = _ms_since(enqueued_at), failures + 1
    await deps.events.emit(
        "job.started", job_id=job.job_id, attempt=timings.attempt, queued_ms=timings.queued_ms
    )
    try:
        if too_old_to_wait(enqueued_at, 0):
            raise PermanentError("job older than MAX_JOB_AGE_SECONDS", reason=TOO_OLD_REASON)
        # Our own deadline sits inside arq's, so a timeout is a transient failure we handle
        # rather than arq failing the job silently.
        async with asyncio.timeout(settings.job_timeout_seconds):
            via = await kind.perform(Run(job, deps, held, timings))
    except LeaseLost:
        log.warning("job.abandoned", reason="another run has this job")
        return Abandoned("another run has this job")
    except StopRequested:
        return await _stop(job, deps, timings, ran=True)
    except SlotTooFar as wait:
        why = "the AI rate limiter's next free slot"
        return await _wait_for_slot(kind, job, deps, wait.defer, enqueued_at, timings, score, why)
    except SlackBusy as busy:
        # Slack's posting limits, like the AI's: a wait, not a failure.
        defer = busy.retry_after or settings.job_retry_base_seconds
        why = f"slack's posting limits: {busy}"
        return await _wait_for_slot(kind, job, deps, defer, enqueued_at, timings, score, why)
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
            cache_creation_input_tokens=timings.cache_creation_input_tokens,
            cache_read_input_tokens=timings.cache_read_input_tokens,
            model=timings.model,
            kind=job.kind,
        )
        await _retain(deps, job, "completed", timings, via=via)
        return Completed(via)

    if isinstance(failure, BackPressure):
        return await _wait_out_back_pressure(kind, job, deps, failure, enqueued_at, timings)
    if isinstance(failure, TransientError):
        if failure.throttled:
            await deps.limiter.pause(failure.retry_after or settings.job_retry_base_seconds, str(failure))
        phase: job_state.Phase = "delivery" if isinstance(failure, DeliveryFailed) else "ai"
        failures = await job_state.record_failure(deps.redis, job.job_id, phase)
        if should_retry(failure, failures, settings):
            delay = retry_delay(failure, failures, settings)
            if not too_old_to_wait(enqueued_at, delay):
                await _retrying(deps, job, failures, delay, str(failure), phase)
                why = f"{phase} failure {failures}: {type(failure).__name__}: {failure}"
                return Deferred(await _tell_user_we_retry(kind, job, deps, delay), reason=why, retrying=True)
    return await _give_up(kind, job, deps, JobFailure.of(failure), timings)


async def _wait_for_slot(
    kind: JobKind,
    job: JobBase,
    deps: WorkerDeps,
    defer: float,
    enqueued_at: datetime,
    timings: Timings,
    score: int,
    why: str,
) -> Outcome:
    """The next slot (the AI rate limiter's, or Slack's posting moment) is too far off: defer,
    uncharged. Waiting is not a failure and uses no retry; it is bounded all the same, so the
    user hears in time rather than never."""
    settings = deps.settings
    if too_old_to_wait(enqueued_at, defer):
        too_old = PermanentError("rate-limit wait would pass MAX_JOB_AGE_SECONDS", reason=TOO_OLD_REASON)
        return await _give_up(kind, job, deps, JobFailure.of(too_old), timings)
    if waited_too_long(await deps.limiter.refused_for(job.job_id, refused_now=False), defer, settings):
        return await _give_up(kind, job, deps, JobFailure.of(TransientError(BACKPRESSURE_TOO_LONG)), timings)
    await deps.events.emit("job.deferred", job_id=job.job_id, delay_s=round(defer, 3))
    if _ms_since(enqueued_at) >= settings.progress_after_seconds * 1000:
        ahead = await deps.redis.zcount(QUEUE_KEY, "-inf", f"({score}")
        await progress.tell_queued(deps.redis, deps.slack, job, kind.queued_message(job, ahead))
    return Deferred(defer, reason=why)


async def _wait_out_back_pressure(
    kind: JobKind,
    job: JobBase,
    deps: WorkerDeps,
    refusal: BackPressure,
    enqueued_at: datetime,
    timings: Timings,
) -> Outcome:
    """Anthropic refused the call for the organisation's rate limit: hold every worker's calls
    for its retry-after and defer this job until then, using none of its retries; fail it once
    the wait would pass AI_BACKPRESSURE_MAX_WAIT_SECONDS since its first refusal, or its age."""
    settings = deps.settings
    paused = await deps.limiter.pause(refusal.retry_after or settings.job_retry_base_seconds, str(refusal))
    refused_for = await deps.limiter.refused_for(job.job_id, refused_now=True)
    defer = spread(paused)
    if waited_too_long(refused_for, defer, settings) or too_old_to_wait(enqueued_at, defer):
        return await _give_up(kind, job, deps, JobFailure.of(TransientError(BACKPRESSURE_TOO_LONG)), timings)
    await deps.events.emit(
        "job.deferred", job_id=job.job_id, delay_s=round(defer, 3), reason=str(refusal), waited_s=refused_for
    )
    if refused_for == 0 and _ms_since(enqueued_at) / 1000 + defer >= settings.progress_after_seconds:
        # Once per job: "Claude is busy, retrying in N s", as for a retry.
        defer = await _tell_user_we_retry(kind, job, deps, defer, force=True)
    return Deferred(defer, reason=f"anthropic's rate limit: {refusal}")


async def _give_up(
    kind: JobKind, job: JobBase, deps: WorkerDeps, failure: JobFailure, timings: Timings
) -> Outcome:
    """Tell the user through the job's reply target, keep the failed-job record, end the job.

    When Slack does not take the message, the job is retried for the message alone, with the
    delivery backoff: a failure must reach the user as surely as an answer.
    """
    if await job_state.was_delivered(deps.redis, job.job_id):
        # Finished is final: the user has the job's final message (an interrupted streamed answer
        # ends with its own note); an error post now would be a second, contradicting message.
        log.info("job.failure_not_posted", reason="final message already delivered")
        return await _failed(job, deps, failure, timings)
    message = kind.failure_message(job, failure.reason)
    if message is None:
        log.info("job.failure_not_posted", reason="nobody asked for this job's work")
        return await _failed(job, deps, failure, timings)
    # Kept before the first post, so a run cut off while telling the user (SIGTERM, a crash)
    # is re-run to tell them, not to do the work again.
    await job_state.save_failure(deps.redis, job.job_id, failure)
    started = time.perf_counter()
    try:
        via = await deps.slack.send(deps.redis, job, message)
    except DeliveryFailed as error:
        await trace_undelivered(deps, job, "failure", error, started)
        failures = await job_state.record_failure(deps.redis, job.job_id, "notice")
        if should_retry(error, failures, deps.settings):
            delay = retry_delay(error, failures, deps.settings)
            await _retrying(deps, job, failures, delay, f"failure message: {error}", "notice")
            why = f"failure message undelivered ({failures}): {error}; the job failed: {failure.cause}"
            return Deferred(delay, reason=why, retrying=True)
        log.error("job.failure_undelivered", error=type(error).__name__, detail=str(error))
    except Exception as error:
        await trace_undelivered(deps, job, "failure", error, started)
        log.error("job.failure_undelivered", error=type(error).__name__, detail=str(error))
    else:
        duration_ms = round((time.perf_counter() - started) * 1000, 1)
        await record_delivery(deps, job, via, message="failure", duration_ms=duration_ms)
    return await _failed(job, deps, failure, timings)


async def _failed(job: JobBase, deps: WorkerDeps, failure: JobFailure, timings: Timings) -> Outcome:
    await deps.events.emit(
        "job.failed",
        level="error",
        job_id=job.job_id,
        error=failure.error,
        detail=failure.detail,
        permanent=failure.permanent,
    )
    await _retain(deps, job, "failed", timings, error=failure.cause)
    return Failed(failure)


async def _stop(job: JobBase, deps: WorkerDeps, timings: Timings, *, ran: bool) -> Outcome:
    """End a job someone stopped: recorded stopped, never retried, no failure message. ``ran``:
    its steps had started (they ended the message with its note); else it never ran."""
    if not ran and isinstance(job.reply_to, Thread):
        # Best effort (never raises): the thread's "is thinking…" status would linger otherwise.
        await deps.slack.update_notice(deps.redis, job, SlackMessage(text=""))
    await deps.events.emit("job.stopped", job_id=job.job_id, kind=job.kind, ran=ran)
    await _retain(deps, job, "stopped", timings, via="stopped")
    return Stopped()


async def _retrying(
    deps: WorkerDeps, job: JobBase, attempt: int, delay: float, reason: str, phase: job_state.Phase
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


async def _tell_user_we_retry(
    kind: JobKind, job: JobBase, deps: WorkerDeps, delay: float, *, force: bool = False
) -> float:
    """Post "retrying in N s" for a long wait (or any, ``force``); returns the delay left after
    posting it."""
    if delay < deps.settings.progress_after_seconds and not force:
        return delay
    started = time.monotonic()
    await progress.post_update(deps.redis, deps.slack, job, kind.retrying_message(job, delay))
    # The post took some of the wait; the retry still starts when promised.
    return max(delay - (time.monotonic() - started), 0.0)


async def _retain(
    deps: WorkerDeps,
    job: JobBase,
    state: retention.State,
    timings: Timings,
    *,
    via: str | None = None,
    error: str | None = None,
) -> None:
    # A stopped job is no failure: it is kept with the completed ones.
    limit = deps.settings.retain_failed_jobs if state == "failed" else deps.settings.retain_completed_jobs
    if limit <= 0:
        return
    record = retention.JobRecord(
        job_id=job.job_id,
        reference=job.reference,
        state=state,
        payload=job.model_dump(mode="json"),
        attempts=timings.attempt,
        enqueued_at=job.enqueued_at,
        finished_at=datetime.now(UTC),
        queued_ms=timings.queued_ms,
        ai_ms=timings.ai_ms,
        delivery_ms=timings.delivery_ms,
        input_tokens=timings.input_tokens,
        output_tokens=timings.output_tokens,
        cache_creation_input_tokens=timings.cache_creation_input_tokens,
        cache_read_input_tokens=timings.cache_read_input_tokens,
        via=via,
        error=error,
    )
    await retention.keep(deps.redis, record, limit)


async def _enqueued_at_if_redis_allows(deps: WorkerDeps, job: JobBase) -> datetime:
    """The job's Redis-clock enqueue moment, or the payload's (clamped) while Redis fails."""
    try:
        return await age.enqueued_at(deps.redis, job)
    except RedisError:
        return age.from_payload(job)


async def _fail_too_old_despite_redis(
    kind: JobKind, job: JobBase, deps: WorkerDeps, timings: Timings
) -> Outcome:
    """End a job that Redis errors kept deferring until it is too old: tell the user, unless
    the final message already reached them."""
    too_old = PermanentError(
        "redis errors kept the job waiting past MAX_JOB_AGE_SECONDS", reason=TOO_OLD_REASON
    )
    try:
        if await job_state.was_delivered(deps.redis, job.job_id):
            return AlreadyDone()
        return await _give_up(kind, job, deps, JobFailure.of(too_old), timings)
    except RedisError as error:
        # Still failing: whether the message went out cannot be known, and an error post would
        # replace it. Try again later: the first run with Redis back tells the user (or finds the
        # answer delivered), as every run of a job this old does.
        log.warning("job.too_old_redis_unavailable", error=type(error).__name__, detail=str(error))
        return Deferred(
            deps.settings.job_retry_base_seconds, reason=f"redis unavailable: {type(error).__name__}"
        )


def _ms_since(moment: datetime) -> int:
    return int((datetime.now(UTC) - moment).total_seconds() * 1000)
