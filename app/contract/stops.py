"""Stop: the web process asks, whichever worker runs (or will run) the job obeys.

Pressing Stop (the button on a streaming answer, or Slack's own Stop, ``agent_session_stopped``)
sets the job's stop key. The worker streaming the answer checks it between batches, closes the
Anthropic stream at once (no more tokens billed) and ends the message with a "stopped" note; a job
still queued is ended before it runs. Either way the job is recorded as stopped: not failed, not
retried.
"""

from __future__ import annotations

from redis.asyncio import Redis

from app.contract import keys

#: How long a stop request is kept: longer than any job may wait (MAX_JOB_AGE_SECONDS, 25 min).
STOP_TTL_SECONDS = 3600


async def request_stop(redis: Redis, job_id: str) -> bool:
    """Ask for the job to stop; False when it had been asked already."""
    return bool(await redis.set(keys.stop_key(job_id), b"1", ex=STOP_TTL_SECONDS, nx=True))


async def stop_requested(redis: Redis, job_id: str) -> bool:
    """True once someone pressed Stop for the job."""
    return bool(await redis.exists(keys.stop_key(job_id)))
