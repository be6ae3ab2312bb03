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
import uuid
from collections.abc import AsyncIterator

import structlog
from arq.connections import ArqRedis

from app.contract import scripts
from app.contract.keys import in_progress_key, running_key

log = structlog.get_logger(__name__)

LEASE_SECONDS = 10.0
RENEW_EVERY_SECONDS = 3.0
#: The run marker must outlive a lease so the next run can still see it.
MARKER_SECONDS = 120

#: Which worker holds a job, for the job.stalled event.
WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"


class Lease:
    """This run's hold on a job."""

    def __init__(self, redis: ArqRedis, job_id: str, predecessor: dict[str, object] | None) -> None:
        self._redis = redis
        self._job_id = job_id
        self._token = uuid.uuid4().hex
        #: The dead predecessor's marker (``worker``, ``heartbeat`` as a Unix time) when this run
        #: recovers a job whose worker died, else None.
        self.predecessor = predecessor
        #: True once another run has taken the job over; this one must then not call or post.
        self.lost = False
        #: True once the job's run is over; renewing stops.
        self.released = False

    async def renew(self) -> None:
        """Extend the lease, or learn that it was lost."""
        marker = json.dumps({"worker": WORKER_ID, "heartbeat": time.time(), "token": self._token})
        held = await scripts.lease_renew(
            self._redis,
            keys=[in_progress_key(self._job_id), running_key(self._job_id)],
            args=[self._token, marker, int(LEASE_SECONDS * 1000), MARKER_SECONDS],
        )
        if not held and not self.lost:
            self.lost = True
            log.error("lease.lost", job_id=self._job_id)

    async def keep_renewing(self) -> None:
        """Renew every RENEW_EVERY_SECONDS until released (or lost)."""
        while not self.lost and not self.released:
            await asyncio.sleep(RENEW_EVERY_SECONDS)
            if self.released:
                return
            try:
                await self.renew()
            except Exception as error:  # a missed renewal is retried; the lease has slack for two
                log.warning("lease.renew_failed", error=type(error).__name__)

    async def release(self) -> None:
        """Drop the run marker, if it is still ours: one compare-and-delete."""
        await scripts.lease_release(self._redis, keys=[running_key(self._job_id)], args=[self._token])


@contextlib.asynccontextmanager
async def lease(redis: ArqRedis, job_id: str) -> AsyncIterator[Lease]:
    """Hold the job's lease while the block runs; the Lease tells of a dead predecessor."""
    # A predecessor's marker is taken over, not checked: it left it when its worker died.
    previous = await redis.getdel(running_key(job_id))
    held = Lease(redis, job_id, json.loads(previous) if previous else None)
    await held.renew()
    renewer = asyncio.create_task(held.keep_renewing())
    try:
        yield held
    finally:
        # A flag as well as cancellation: redis-py can swallow a cancellation that lands inside a
        # command (redis/redis-py#2028), and the job must not wait on its renewer forever.
        held.released = True
        renewer.cancel()
        await asyncio.wait([renewer], timeout=RENEW_EVERY_SECONDS + 1)
        await held.release()
