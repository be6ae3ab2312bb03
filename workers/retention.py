"""The recent completed and failed jobs, kept in Redis for inspection.

Two capped lists, newest first; each push and its trim run in one MULTI, so a list never holds
more than its cap (RETAIN_COMPLETED_JOBS, RETAIN_FAILED_JOBS).
"""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import datetime
from typing import Any, Literal, cast

from arq.connections import ArqRedis
from pydantic import BaseModel

from app.contract.keys import COMPLETED_KEY, FAILED_KEY

State = Literal["completed", "failed"]


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


def _key(state: State) -> str:
    return COMPLETED_KEY if state == "completed" else FAILED_KEY


async def keep(redis: ArqRedis, record: JobRecord, limit: int) -> None:
    """Push the record and trim its list to ``limit`` entries, atomically."""
    key = _key(record.state)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.lpush(key, record.model_dump_json())
        pipe.ltrim(key, 0, limit - 1)
        await pipe.execute()


async def recent(redis: ArqRedis, state: State, count: int = 100) -> list[JobRecord]:
    """The newest ``count`` records of ``state``, newest first."""
    raw = await cast(Awaitable[list[bytes]], redis.lrange(_key(state), 0, count - 1))
    return [JobRecord.model_validate_json(item) for item in raw]
