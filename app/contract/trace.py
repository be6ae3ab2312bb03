"""A job's trace: what happened to it, run by run, for ``asklane jobs show`` (app/ops/job_trace.py).

Workers append entries as a job runs: each run's start and end, with the end's outcome and why
(workers/runner.py); every AI call, with its :class:`~app.contract.usage.CallRecord`
(workers/kinds.py ``Run._finish_call``); every delivery of the job's final message or of its
failure message, with the path it took and how it went (``Run.deliver``, ``record_delivery``, the
runner's give-up). A trace is a Redis list (keys.trace_key), oldest entry first, capped at the
newest TRACE_MAX_ENTRIES and expiring TRACE_TTL_SECONDS after its last entry. Each run's start
also writes the reference → job id index (keys.trace_reference_key), so the reference a user was
shown finds the job.

A trace write is best effort: a failed one is logged (``trace.unrecorded``) and never fails the
job, which has its own work to finish.
"""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Annotated, Literal, Union, cast

import structlog
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from redis.asyncio import Redis

from app.contract import keys
from app.contract.jobs import AskQuestion, JobBase, ThreadQuestion
from app.contract.targets import DirectMessage, Ephemeral, PrivateNote, Thread
from app.contract.usage import CallRecord

log = structlog.get_logger(__name__)

#: Entries kept per job, the newest: enough for every run of a job that waited out rate limits
#: for its whole allowed age, with its calls and deliveries.
TRACE_MAX_ENTRIES = 200

#: How a run ended: its final message went out (``completed``); it is to run again later, waiting
#: (``deferred``: a rate limit, Slack's posting limits, its thread's earlier question, Redis) or
#: after a failure (``retrying``); it gave up (``failed``: the user was told, or could not be);
#: someone pressed Stop (``stopped``); another run had it (``abandoned``); an earlier run had
#: already delivered it (``already-delivered``).
RunOutcome = Literal[
    "completed", "deferred", "retrying", "failed", "stopped", "abandoned", "already-delivered"
]


class _Entry(BaseModel):
    model_config = ConfigDict(frozen=True)

    #: When the entry was written, on the writing worker's clock.
    at: datetime = Field(default_factory=lambda: datetime.now(UTC))


class RunStarted(_Entry):
    """A worker picked the job up: who asked, where the reply goes, and which run this is."""

    event: Literal["run.started"] = "run.started"
    #: arq's count of the job's runs, this one included (deferrals and re-runs count too).
    run: int
    worker: str
    kind: str
    team_id: str
    user_id: str
    #: The reply target, without its response_url (a capability to post to the user).
    reply_to: str
    #: Characters of the question, for the kinds that carry one.
    question_chars: int | None = None

    @classmethod
    def of(cls, job: JobBase, *, run: int, worker: str) -> RunStarted:
        question = question_of(job)
        return cls(
            run=run,
            worker=worker,
            kind=job.kind,
            team_id=job.asker.team_id,
            user_id=job.asker.user_id,
            reply_to=describe_target(job),
            question_chars=None if question is None else len(question),
        )


class RunEnded(_Entry):
    """How a run ended, with what it measured."""

    event: Literal["run.ended"] = "run.ended"
    run: int
    outcome: RunOutcome
    #: The attempt (failed attempts before it + 1) when the run got as far as counting them.
    attempt: int | None = None
    duration_ms: float
    queued_ms: int | None = None
    ai_ms: float | None = None
    delivery_ms: float | None = None
    via: str | None = None
    #: Why it was deferred, retried or abandoned; the failure that ended it.
    reason: str | None = None
    #: When it runs again (deferred, retrying).
    delay_s: float | None = None
    #: Anthropic's request-id of the failure that ended it, when an AI call failed.
    request_id: str | None = None


class AiCall(_Entry):
    """One AI call, however it ended: tokens, cost, stop reason, Anthropic's request-id."""

    event: Literal["ai.call"] = "ai.call"
    call: CallRecord


#: Which message a delivery carried: the job's own final one (an answer, a streamed answer ended
#: or interrupted or stopped, a notice) or the message telling the user it failed.
MessageRole = Literal["final", "failure"]


class Delivery(_Entry):
    """One attempt to deliver the job's final or failure message: the path and how it went."""

    event: Literal["delivery"] = "delivery"
    message: MessageRole
    #: ``waiting``: Slack's posting limits left no room in this run (not a failure).
    outcome: Literal["delivered", "failed", "waiting"]
    #: The path it took (response_url, chat.postEphemeral, chat.postMessage, stream, …).
    via: str | None = None
    error: str | None = None
    duration_ms: float | None = None


TraceEntry = Annotated[Union[RunStarted, RunEnded, AiCall, Delivery], Field(discriminator="event")]  # noqa: UP007

_ENTRY: TypeAdapter[TraceEntry] = TypeAdapter(TraceEntry)


def question_of(job: JobBase) -> str | None:
    """The question a job answers, for the kinds that carry one (a button's job does not)."""
    return job.text if isinstance(job, AskQuestion | ThreadQuestion) else None


def describe_target(job: JobBase) -> str:
    """Where the job's reply goes, in one line, without the response_url."""
    target = job.reply_to
    if isinstance(target, Thread):
        return f"thread {target.channel_id} {target.thread_ts}"
    if isinstance(target, Ephemeral | PrivateNote):
        return f"{target.type} to {target.user_id} in {target.channel_id} (response_url)"
    if isinstance(target, DirectMessage):
        return f"direct_message to {target.user_id} in {target.channel_id}"
    return str(getattr(target, "type", "unknown"))


async def append(
    redis: Redis, job_id: str, entry: TraceEntry, ttl_seconds: float, *, reference: str | None = None
) -> bool:
    """Add ``entry`` to the job's trace, trimmed to TRACE_MAX_ENTRIES, its expiry renewed; with
    ``reference``, (re)write the reference's index entry too. One round trip, atomic. False (and
    ``trace.unrecorded`` logged) when it could not be written: never raises."""
    ttl_ms = max(int(ttl_seconds * 1000), 1)
    key = keys.trace_key(job_id)
    try:
        async with redis.pipeline(transaction=True) as pipe:
            pipe.rpush(key, _ENTRY.dump_json(entry))
            pipe.ltrim(key, -TRACE_MAX_ENTRIES, -1)
            pipe.pexpire(key, ttl_ms)
            if reference is not None:
                pipe.set(keys.trace_reference_key(reference), job_id, px=ttl_ms)
            await pipe.execute()
    except Exception as error:
        log.warning(
            "trace.unrecorded",
            job_id=job_id,
            entry=entry.event,
            error=type(error).__name__,
            detail=str(error),
        )
        return False
    return True


async def read(redis: Redis, job_id: str) -> list[TraceEntry]:
    """The job's trace, oldest first; entries this version cannot read (another release's) are
    left out."""
    entries = []
    for raw in await cast(Awaitable[list[bytes]], redis.lrange(keys.trace_key(job_id), 0, -1)):
        try:
            entries.append(_ENTRY.validate_json(raw))
        except ValidationError:
            continue
    return entries


async def job_id_for_reference(redis: Redis, reference: str) -> str | None:
    """The job id indexed under ``reference`` by a run of the job, if its trace is still kept."""
    raw = await redis.get(keys.trace_reference_key(reference))
    return raw.decode() if isinstance(raw, bytes) else raw
