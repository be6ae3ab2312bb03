"""When a job was queued, on a clock the web and worker hosts agree on.

The payload's ``enqueued_at`` is the web host's clock, which may be minutes off the worker's:
26 minutes behind would fail every job as too old at once; 30 minutes ahead would record
negative waits and let a job outlive its response_url. The enqueue script also stamps the job
on Redis's clock (:func:`app.contract.keys.enqueued_at_key`), so the worker measures the job's age
as Redis's TIME minus that stamp, in one round trip at job start, and turns it into a moment on
its own clock for the rest of the run. A job queued by a release without the stamp falls back to
the payload's ``enqueued_at``, never later than the worker's now.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from arq.connections import ArqRedis

from app.contract.jobs import JobBase
from app.contract.keys import enqueued_at_key


async def enqueued_at(redis: ArqRedis, job: JobBase) -> datetime:
    """The moment ``job`` was queued, on this worker's clock. Raises RedisError."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.time()
        pipe.get(enqueued_at_key(job.job_id))
        (seconds, micros), stamp = await pipe.execute()
    now = datetime.now(UTC)
    if stamp is None:
        return from_payload(job, now)
    waited_ms = max(int(seconds) * 1000 + int(micros) // 1000 - int(stamp), 0)
    return now - timedelta(milliseconds=waited_ms)


def from_payload(job: JobBase, now: datetime | None = None) -> datetime:
    """The payload's ``enqueued_at``, clamped to the worker's clock: never in the future."""
    return min(job.enqueued_at, now or datetime.now(UTC))
