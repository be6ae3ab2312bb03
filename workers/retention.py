"""The recent completed and failed jobs, kept in Redis for inspection.

Two capped lists, newest first; each push and its trim run in one MULTI, so a list never holds
more than its cap (RETAIN_COMPLETED_JOBS, RETAIN_FAILED_JOBS). A stopped job (someone pressed
Stop) is no failure: its record, state "stopped", goes in the completed list. Feedback on an
answer (thumbs up or down) is added to its job's record while the record is still kept.
"""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import datetime
from typing import Any, Literal, cast

from arq.connections import ArqRedis
from pydantic import BaseModel, Field, ValidationError
from redis.exceptions import WatchError

from app.contract.keys import COMPLETED_KEY, FAILED_KEY

State = Literal["completed", "failed", "stopped"]

#: Times :func:`add_feedback` re-reads the list when another worker changed it meanwhile.
FEEDBACK_ATTEMPTS = 5


class JobRecord(BaseModel):
    """What an operator needs to know about a finished job."""

    job_id: str
    reference: str | None
    state: State
    payload: Any
    attempts: int
    enqueued_at: datetime | None
    finished_at: datetime
    queued_ms: int | None = None
    ai_ms: float | None = None
    delivery_ms: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    via: str | None = None
    error: str | None = None
    #: Feedback on the answer, by the user who gave it ("good" or "bad"; the latest click counts).
    feedback: dict[str, str] = Field(default_factory=dict)


def _key(state: State) -> str:
    return FAILED_KEY if state == "failed" else COMPLETED_KEY


async def keep(redis: ArqRedis, record: JobRecord, limit: int) -> None:
    """Push the record and trim its list to ``limit`` entries, atomically."""
    key = _key(record.state)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.lpush(key, record.model_dump_json())
        pipe.ltrim(key, 0, limit - 1)
        await pipe.execute()


async def recent(redis: ArqRedis, state: State, count: int = 100) -> list[JobRecord]:
    """The newest ``count`` records of ``state``'s list, newest first (the completed list holds the
    stopped jobs too, each with its own state)."""
    raw = await cast(Awaitable[list[bytes]], redis.lrange(_key(state), 0, count - 1))
    return [JobRecord.model_validate_json(item) for item in raw]


async def find(
    redis: ArqRedis, *, job_id: str | None = None, reference: str | None = None
) -> JobRecord | None:
    """The kept record of the job with ``job_id`` or ``reference`` (the completed list first), or
    None when neither list holds it."""
    needle = (job_id or reference or "").encode()
    for key in (COMPLETED_KEY, FAILED_KEY):
        for raw in await cast(Awaitable[list[bytes]], redis.lrange(key, 0, -1)):
            if needle not in raw:
                continue
            try:
                record = JobRecord.model_validate_json(raw)
            except ValidationError:
                continue
            if record.job_id == job_id or (reference is not None and record.reference == reference):
                return record
    return None


async def add_feedback(redis: ArqRedis, job_id: str, user_id: str, value: str) -> bool:
    """Note ``user_id``'s feedback on the record of ``job_id``; False when no record of it is kept
    (retention off, or trimmed away): the feedback is still logged and counted by the caller."""
    for key in (COMPLETED_KEY, FAILED_KEY):
        for _ in range(FEEDBACK_ATTEMPTS):
            try:
                async with redis.pipeline(transaction=True) as pipe:
                    # Another worker may push (shifting indexes) or trim meanwhile: WATCH makes the
                    # LSET fail rather than overwrite the wrong record.
                    await pipe.watch(key)
                    raw = await cast(Awaitable[list[bytes]], pipe.lrange(key, 0, -1))
                    found = _find(raw, job_id)
                    if found is None:
                        break
                    index, record = found
                    record.feedback[user_id] = value
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.lset(key, index, record.model_dump_json())
                    await pipe.execute()
                    return True
            except WatchError:
                continue
    return False


def _find(raw: list[bytes], job_id: str) -> tuple[int, JobRecord] | None:
    needle = job_id.encode()
    for index, item in enumerate(raw):
        if needle not in item:
            continue
        try:
            record = JobRecord.model_validate_json(item)
        except ValidationError:
            continue
        if record.job_id == job_id:
            return index, record
    return None
