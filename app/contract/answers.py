"""An answer's record: what its buttons need once its job has gone.

Written by the worker when it delivers an answer (``/ask`` or a thread's), read by the web process
when someone clicks one of the answer's buttons: only the asker may Share, Regenerate or Dismiss an
``/ask`` answer, Regenerate asks the recorded question again, Share posts the recorded answer. A
record lives ANSWER_RECORD_TTL_SECONDS; a click after that is told politely that the answer is too
old to act on.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from redis.asyncio import Redis

from app.contract import keys
from app.contract.jobs import Asker


class AnswerRecord(BaseModel):
    """Who asked what, where, and what was answered."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    job_id: str = Field(min_length=1)
    kind: Literal["ask", "thread"]
    asker: Asker
    channel_id: str = Field(min_length=1)
    #: The thread the answer is in (a thread answer); None for an ephemeral ``/ask`` answer.
    thread_ts: str | None = None
    question: str
    answer: str
    cut_short: bool = False
    answered_at: datetime


async def save(redis: Redis, record: AnswerRecord, ttl_seconds: float) -> None:
    """Keep the record for ``ttl_seconds`` (ANSWER_RECORD_TTL_SECONDS)."""
    await redis.set(keys.answer_record_key(record.job_id), record.model_dump_json(), ex=int(ttl_seconds))


async def load(redis: Redis, job_id: str) -> AnswerRecord | None:
    """The record of the answer ``job_id``, or None when it expired (or never was, or cannot be
    read: a click on it is told the answer is too old to act on)."""
    raw = await redis.get(keys.answer_record_key(job_id))
    if raw is None:
        return None
    try:
        return AnswerRecord.model_validate_json(raw)
    except ValidationError:
        return None
