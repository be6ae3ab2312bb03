"""What a job kind supplies to the runner, and what its steps get from it.

A kind is its payload model (a member of the contract's union, app/contract/jobs.py), its steps and its
messages; the runner (:mod:`workers.runner`) does everything every job needs around them: the
lease, failure counting, retries and give-up, the age guard, back-pressure waits, retention,
events and the failure message. Worker registration passes the kinds explicitly
(``worker_settings(settings, kinds=...)``), and the runner looks a job's steps up by ``kind``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import structlog
from arq.connections import ArqRedis
from redis.exceptions import RedisError

from app.contract import keys, prices, trace
from app.contract.events import JobEvents
from app.contract.jobs import JobBase
from app.contract.messages import SlackMessage
from app.contract.settings import Settings
from app.contract.usage import CallOutcome, CallRecord, CallUsage
from workers import job_state, spend
from workers.errors import JobError, SlackBusy, StopRequested
from workers.lease import Lease
from workers.ratelimit import Booking, Reservation

if TYPE_CHECKING:
    from workers.ai import Answer, AnswerStream, Claude
    from workers.delivery import SlackDelivery
    from workers.prompt import Prompt
    from workers.ratelimit import RateLimiter

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class WorkerDeps:
    """What a job needs, built once per worker process at start-up."""

    settings: Settings
    redis: ArqRedis
    claude: Claude
    slack: SlackDelivery
    limiter: RateLimiter
    events: JobEvents
    #: The job kinds this worker runs, by ``kind``.
    kinds: Mapping[str, JobKind] = field(default_factory=dict)


@dataclass
class Timings:
    """What one run measured, for job.completed and the retention record."""

    attempt: int = 1
    queued_ms: int | None = None
    ai_ms: float | None = None
    delivery_ms: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    #: Prompt-caching tokens of the AI call (written to / read from Anthropic's cache).
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    #: The model that answered.
    model: str | None = None


class LeaseLost(Exception):
    """This run's lease lapsed and another run has the job: stop without calling or posting."""


@dataclass
class Run:
    """One run of one job, as its kind's steps see it."""

    job: JobBase
    deps: WorkerDeps
    lease: Lease
    timings: Timings
    #: The rate limiter's booking of the AI call under way, settled when it ends.
    booking: Booking | None = None

    async def ask_claude(self, request: Prompt) -> Answer:
        """Ask Claude under the global rate limit, and note what the call took (``ai.completed``,
        the run's timings, :meth:`_finish_call`). Raises LeaseLost when another run has the job,
        and the failure types of workers/errors.py."""
        if self.lease.lost:
            raise LeaseLost()
        deps = self.deps
        self.booking = await deps.limiter.wait_for_slot(
            Reservation(request.estimated_tokens, deps.settings.ai_max_tokens)
        )
        # Nothing else may be awaited between the granted slot and the request.
        call = _CallClock()
        try:
            answer = await deps.claude.ask(request)
        except BaseException as error:
            # Anthropic bills a refusal or an empty answer; a refused request used nothing.
            await self._finish_call(call.failed(self, error, usage=getattr(error, "usage", None)))
            raise
        self._note_answer(answer)
        await self._finish_call(call.answered(self, answer))
        await self._slow_down(answer)
        return answer

    @asynccontextmanager
    async def stream_claude(self, request: Prompt) -> AsyncIterator[AnswerStream]:
        """:meth:`ask_claude` as a stream (:meth:`workers.ai.Claude.stream`): the call is counted by
        the global rate limit at its start, and noted (``ai.completed``, the run's timings) once the
        whole answer is in; every call, whatever its end, reaches :meth:`_finish_call`. Leaving the
        block closes the stream. Raises LeaseLost when another run has the job, and the failure
        types of workers/errors.py."""
        if self.lease.lost:
            raise LeaseLost()
        deps = self.deps
        self.booking = await deps.limiter.wait_for_slot(
            Reservation(request.estimated_tokens, deps.settings.ai_max_tokens)
        )
        # Nothing else may be awaited between the granted slot and the request.
        call = _CallClock()
        stream: AnswerStream | None = None
        raised: BaseException | None = None
        try:
            async with deps.claude.stream(request) as stream:
                yield stream
        except BaseException as error:
            raised = error
            raise
        finally:
            await self._stream_ended(call, stream, raised)

    async def _stream_ended(
        self, call: _CallClock, stream: AnswerStream | None, raised: BaseException | None
    ) -> None:
        """Record a streamed call however it ended: a whole answer (whatever the caller's steps
        did after it); a failure, raised out of the block or met and handled inside it (an
        interrupted answer); else the block was left early (a Stop)."""
        if stream is not None and stream.answer is not None:
            self._note_answer(stream.answer)
            await self._finish_call(call.answered(self, stream.answer))
            await self._slow_down(stream.answer)
            return
        usage = stream.usage_so_far() if stream is not None else None
        request_id = stream.request_id if stream is not None else None
        failure = raised or (stream.failure if stream is not None else None)
        if failure is None:
            await self._finish_call(call.stopped(self, usage, request_id))
        else:
            await self._finish_call(call.failed(self, failure, usage=usage, request_id=request_id))

    async def _finish_call(self, record: CallRecord) -> None:
        """Every AI call ends here exactly once, answered, stopped or failed: its cost, the
        person's and workspace's totals and budgets, the job's trace."""
        cost = spend.price(record, prices.price_table(self.deps.settings.ai_prices))
        booking, self.booking = self.booking, None
        # A request id or usage means Anthropic answered (even with an error) and counted what
        # the usage says, or nothing; neither means no answer came at all.
        answered = record.usage is not None or record.request_id is not None
        # Independent, and each swallows its own Redis errors: awaited together, since the
        # answer's delivery waits for them.
        deps = self.deps
        await asyncio.gather(
            deps.limiter.settle(booking, record.usage, answered=answered),
            spend.charge_call(deps.redis, deps.settings, self.job, record, cost),
            trace.append(
                deps.redis, record.job_id, trace.AiCall(call=record), deps.settings.trace_ttl_seconds
            ),
        )

    def _note_answer(self, answer: Answer) -> None:
        usage = answer.usage
        log.info(
            "ai.completed",
            model=usage.model,
            latency_ms=answer.latency_ms,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_creation_input_tokens=usage.cache_creation_input_tokens,
            cache_read_input_tokens=usage.cache_read_input_tokens,
            stop_reason=answer.stop_reason,
            request_id=answer.request_id,
        )
        timings = self.timings
        timings.ai_ms = answer.latency_ms
        timings.input_tokens, timings.output_tokens = usage.input_tokens, usage.output_tokens
        timings.cache_creation_input_tokens = usage.cache_creation_input_tokens
        timings.cache_read_input_tokens = usage.cache_read_input_tokens
        timings.model = usage.model
        if self.booking is not None:
            self.booking.reported = answer.rate_limits

    async def _slow_down(self, answer: Answer) -> None:
        """Pause every worker when the answer's headers say a limit is used up. Best effort: the
        call is answered, charged and traced, and a Redis error here must not make it fail (and
        be asked, and paid for, again)."""
        if not answer.slow_down_for:
            return
        try:
            await self.deps.limiter.pause(answer.slow_down_for, "anthropic rate limit used up")
        except RedisError as error:
            log.warning("ai.pause_failed", error=type(error).__name__, detail=str(error))

    async def deliver(self, message: SlackMessage | Sequence[SlackMessage]) -> str:
        """Post the job's final message (or every part of a long one, in order) to its reply
        target, once; returns the path used.

        Each part is marked in Redis right after Slack accepts it, and the job once the last
        one is: a re-run posts only the parts not yet marked, and nothing once the job is.
        Raises LeaseLost when another run has taken the job over or an earlier run posted it
        (one final message only), and the failure types of workers/errors.py.
        """
        parts = [message] if isinstance(message, SlackMessage) else list(message)
        redis = self.deps.redis
        if self.lease.lost or await job_state.was_delivered(redis, self.job.job_id):
            raise LeaseLost()
        posted = await _parts_delivered(redis, self.job.job_id, len(parts))
        started = time.perf_counter()
        via = ""
        try:
            for index, part in enumerate(parts):
                if posted[index]:
                    continue
                # Checked before every part: a run that lost its lease while posting stops at once.
                if self.lease.lost:
                    raise LeaseLost()
                via = await self.deps.slack.send(redis, self.job, part)
                if len(parts) > 1:
                    await _record_part(self.deps, self.job, index, via)
        except JobError as error:
            await trace_undelivered(self.deps, self.job, "final", error, started)
            raise
        self.timings.delivery_ms = round((time.perf_counter() - started) * 1000, 1)
        await record_delivery(
            self.deps, self.job, via or "parts-already-posted", duration_ms=self.timings.delivery_ms
        )
        return via or "parts-already-posted"


async def _parts_delivered(redis: ArqRedis, job_id: str, count: int) -> list[bool]:
    """For each part of a message, whether an earlier run posted it (a single message has no
    part marks: the job's delivered marker covers it)."""
    if count <= 1:
        return [False] * count
    marks = await redis.mget([keys.part_delivered_key(job_id, index) for index in range(count)])
    return [mark is not None for mark in marks]


async def _record_part(deps: WorkerDeps, job: JobBase, index: int, via: str) -> None:
    """Mark part ``index`` posted: the one Redis round trip between Slack's ok and the mark is
    the window in which a crash would post this part again."""
    # As for the whole message: a bookkeeping error must not stop the remaining parts.
    try:
        await deps.redis.set(keys.part_delivered_key(job.job_id, index), via, ex=job_state.STATE_TTL_SECONDS)
    except Exception as error:
        log.error(
            "job.delivery_unrecorded", part=index, via=via, error=type(error).__name__, detail=str(error)
        )


async def record_delivery(
    deps: WorkerDeps,
    job: JobBase,
    via: str,
    *,
    message: trace.MessageRole = "final",
    duration_ms: float | None = None,
) -> None:
    """Mark the job's final message (or, ``message="failure"``, its failure message) delivered,
    and note the path it took in the job's trace."""
    # The user has their message now: a bookkeeping error must not turn into an error post
    # that replaces it. The cost is a possible second post if this job runs again.
    try:
        await job_state.mark_delivered(deps.redis, job.job_id, via)
    except Exception as error:
        log.error("job.delivery_unrecorded", via=via, error=type(error).__name__, detail=str(error))
    delivered = trace.Delivery(message=message, outcome="delivered", via=via, duration_ms=duration_ms)
    await trace.append(deps.redis, job.job_id, delivered, deps.settings.trace_ttl_seconds)


async def trace_undelivered(
    deps: WorkerDeps, job: JobBase, message: trace.MessageRole, error: Exception, started: float | None = None
) -> None:
    """Note in the job's trace that Slack did not take its final or failure message (``waiting``
    when Slack's posting limits left no room: not a failure); ``started``: when posting began."""
    entry = trace.Delivery(
        message=message,
        outcome="waiting" if isinstance(error, SlackBusy) else "failed",
        error=f"{type(error).__name__}: {error}",
        duration_ms=None if started is None else round((time.perf_counter() - started) * 1000, 1),
    )
    await trace.append(deps.redis, job.job_id, entry, deps.settings.trace_ttl_seconds)


class _CallClock:
    """Times one AI call from its request, and makes its :class:`CallRecord` however it ends."""

    def __init__(self) -> None:
        self.started_at = datetime.now(UTC)
        self._started = time.perf_counter()

    def _record(self, run: Run, outcome: CallOutcome, **fields: Any) -> CallRecord:
        return CallRecord(
            job_id=run.job.job_id,
            attempt=run.timings.attempt,
            started_at=self.started_at,
            duration_ms=round((time.perf_counter() - self._started) * 1000, 1),
            outcome=outcome,
            **fields,
        )

    def answered(self, run: Run, answer: Answer) -> CallRecord:
        return self._record(
            run, "answered", usage=answer.usage, stop_reason=answer.stop_reason, request_id=answer.request_id
        )

    def stopped(self, run: Run, usage: CallUsage | None, request_id: str | None) -> CallRecord:
        return self._record(run, "stopped", usage=usage, stop_reason="stopped", request_id=request_id)

    def failed(
        self, run: Run, error: BaseException, *, usage: CallUsage | None, request_id: str | None = None
    ) -> CallRecord:
        if isinstance(error, StopRequested):
            return self.stopped(run, usage, request_id)
        return self._record(
            run,
            "failed",
            usage=usage,
            request_id=request_id or getattr(error, "request_id", None),
            error=f"{type(error).__name__}: {error}",
        )


class JobKind(Protocol):
    """A kind of job: its payload model, its steps and its messages."""

    #: The contract model of this kind's payload (its ``kind`` field names it).
    model: type[JobBase]

    #: Whether its steps call the AI: while the AI limiter has no slot, workers start only the
    #: jobs of kinds that do not (and those whose AI work is already done).
    uses_ai: bool

    async def perform(self, run: Run) -> str:
        """Do the job and deliver its final message (:meth:`Run.deliver`); returns the path used."""
        ...

    def failure_message(self, job: JobBase, reason: str) -> SlackMessage | None:
        """What the user is told when the job fails (``reason``: the failure's sentence); None for
        work nobody asked for (suggested prompts), whose failure is logged and recorded only."""
        ...

    def retrying_message(self, job: JobBase, delay: float) -> SlackMessage:
        """The interim notice for a job that will try again in ``delay`` seconds."""
        ...

    def queued_message(self, job: JobBase, ahead: int) -> SlackMessage:
        """The interim notice for a job waiting behind ``ahead`` others."""
        ...
