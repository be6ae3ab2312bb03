"""A short in-progress lease, renewed while a job runs, so a killed worker's job is re-run fast.

arq marks a running job with an in-progress key that lives for the job timeout plus 10 s and is
never renewed: a job whose worker was SIGKILLed waits that long before another worker may run it.
The lease shortens that key to LEASE_SECONDS when the job starts and renews it every
RENEW_EVERY_SECONDS while the job runs; the real job timeout is unchanged. Beside it, a run
marker records the last heartbeat: a run that finds its predecessor's marker knows that
predecessor died mid-job (``job.stalled``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from collections.abc import AsyncIterator

import structlog
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix

log = structlog.get_logger(__name__)

LEASE_SECONDS = 10.0
RENEW_EVERY_SECONDS = 3.0
#: The run marker must outlive a lease so the next run can still see it.
MARKER_SECONDS = 120

#: Which worker holds a job, for the job.stalled event.
WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"


def _marker_key(job_id: str) -> str:
    return f"asklane:running:{job_id}"


async def _renew(redis: ArqRedis, job_id: str) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        pipe.pexpire(in_progress_key_prefix + job_id, int(LEASE_SECONDS * 1000))
        pipe.set(
            _marker_key(job_id),
            json.dumps({"worker": WORKER_ID, "heartbeat": time.time()}),
            ex=MARKER_SECONDS,
        )
        await pipe.execute()


async def _keep_renewing(redis: ArqRedis, job_id: str) -> None:
    while True:
        await asyncio.sleep(RENEW_EVERY_SECONDS)
        try:
            await _renew(redis, job_id)
        except Exception as error:  # a missed renewal is retried; the lease has slack for two
            log.warning("lease.renew_failed", error=type(error).__name__)


@contextlib.asynccontextmanager
async def lease(redis: ArqRedis, job_id: str) -> AsyncIterator[dict[str, object] | None]:
    """Hold the job's lease while the block runs.

    Yields the dead predecessor's marker (``worker``, ``heartbeat`` as a Unix time) when this run
    recovers a job whose worker died, else None.
    """
    previous = await redis.get(_marker_key(job_id))
    await _renew(redis, job_id)
    renewer = asyncio.create_task(_keep_renewing(redis, job_id))
    try:
        yield json.loads(previous) if previous else None
    finally:
        renewer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewer
        await redis.delete(_marker_key(job_id))
