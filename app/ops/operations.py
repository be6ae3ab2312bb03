"""What the people on call can see and do: queue depth, running jobs, the limiter's state and
worker health; retrying failed jobs and purging the failed list (recent jobs: workers/retention.py).

Plain async functions over Redis, used by the ``asklane`` command (app/ops/cli.py).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, cast

from arq.connections import ArqRedis

from app.contract.jobs import parse_job
from app.contract.keys import (
    FAILED_KEY,
    HEALTH_CHECK_KEY_SUFFIX,
    IN_PROGRESS_KEY_PREFIX,
    QUEUE_KEY,
    RATE_PAUSE_KEY,
    RATE_WINDOW_KEY,
    WORKER_HEALTH_PREFIX,
)
from app.contract.queue import QueueDepth, enqueue_ask, queue_depth
from workers import retention
from workers.ratelimit import tokens_booked


@dataclass(frozen=True)
class WorkerHealth:
    """One live worker process, as it last reported itself."""

    worker: str
    reported_at: float
    running: int
    completed: int
    failed: int
    retried: int


@dataclass(frozen=True)
class Status:
    """The queue and the workers, now."""

    queue: QueueDepth
    running: list[str]
    ai_calls_last_second: int
    paused_for_s: float
    workers: list[WorkerHealth] = field(default_factory=list)
    #: arq's own health-check line, written by whichever worker reported last.
    arq_health: str | None = None
    #: Input and output tokens booked in the last minute by the token limits (0 when they are off):
    #: reservations of calls in flight, what finished calls used.
    ai_input_tokens_last_minute: int = 0
    ai_output_tokens_last_minute: int = 0


async def status(redis: ArqRedis) -> Status:
    """Queue depth by priority, running jobs, limiter and pause state, live workers."""
    running = sorted(
        key.decode().removeprefix(IN_PROGRESS_KEY_PREFIX) for key in await _keys(redis, "running")
    )
    seconds, micros = await redis.time()
    now_us = seconds * 1_000_000 + micros
    paused_until = int(await redis.get(RATE_PAUSE_KEY) or 0)
    workers = []
    for key in await _keys(redis, "workers"):
        raw = await redis.get(key)
        if raw:  # it may have expired since the scan
            workers.append(WorkerHealth(**json.loads(raw)))
    input_tokens, output_tokens = await tokens_booked(redis)
    return Status(
        queue=await queue_depth(redis),
        running=running,
        ai_calls_last_second=await redis.zcount(RATE_WINDOW_KEY, now_us - 1_000_000, now_us),
        paused_for_s=max(paused_until - now_us, 0) / 1_000_000,
        workers=sorted(workers, key=lambda health: health.worker),
        arq_health=(await redis.get(QUEUE_KEY + HEALTH_CHECK_KEY_SUFFIX) or b"").decode() or None,
        ai_input_tokens_last_minute=input_tokens,
        ai_output_tokens_last_minute=output_tokens,
    )


@dataclass(frozen=True)
class Retried:
    """A failed job queued again under a new id."""

    failed_job_id: str
    job_id: str
    reference: str


async def retry(redis: ArqRedis, job_id: str | None = None) -> list[Retried]:
    """Queue failed jobs again: the one with ``job_id``, or every failed job when it is None.

    Each gets a new job id (arq keeps the failed one's result, which blocks its id) and leaves the
    failed list. Records without a valid payload (an invalid job) are left where they are.
    """
    raw_records = await cast(Awaitable[list[bytes]], redis.lrange(FAILED_KEY, 0, -1))
    retried = []
    for raw in raw_records:
        record = retention.JobRecord.model_validate_json(raw)
        if job_id is not None and record.job_id != job_id:
            continue
        try:
            original = parse_job(record.payload)
        except ValueError:
            continue
        # Taken off the list first: of two operators retrying at once, only one queues it.
        if not await cast(Awaitable[int], redis.lrem(FAILED_KEY, 1, raw.decode())):
            continue
        again = original.model_copy(
            update={
                "dedupe_key": f"{original.dedupe_key}:retry:{uuid.uuid4().hex[:8]}",
                "enqueued_at": datetime.now(UTC),
            }
        )
        await enqueue_ask(redis, again)
        retried.append(Retried(record.job_id, again.job_id, again.reference))
        if job_id is not None:
            break
    return retried


async def purge_failed(redis: ArqRedis) -> int:
    """Empty the failed-jobs list; returns how many records it held."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.llen(FAILED_KEY)
        pipe.delete(FAILED_KEY)
        count, _ = await pipe.execute()
    return int(count)


async def _keys(redis: ArqRedis, kind: Literal["running", "workers"]) -> list[bytes]:
    prefix = IN_PROGRESS_KEY_PREFIX if kind == "running" else WORKER_HEALTH_PREFIX
    return [key async for key in redis.scan_iter(match=prefix + "*", count=1000)]
