"""Our arq Worker: woken by enqueues instead of polling, resilient to Redis outages, and sure to
exit before Heroku's SIGKILL.

arq's worker sleeps ``poll_delay`` (0.5 s) between looks at the queue, so a new job waits 250 ms
on average and a retry deferred to a precise moment starts up to 500 ms late. Here the loop
instead waits, after each look, for the first of:

* a wake-up token that every enqueue pushes (``BLPOP`` on :data:`app.queue.WAKE_KEY`);
* the moment the next deferred job is due (a retry, a rate-limit deferral);
* a running job finishing, when every slot was busy;
* IDLE_WAIT_SECONDS, so jobs whose dead worker's lease expired are still picked up promptly.

A Redis error in the loop is logged once per outage and retried; arq's own loop would die of it.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import time
from collections.abc import Awaitable
from typing import Any, cast

import arq.worker
import structlog
from redis.exceptions import RedisError

from app.queue import WAKE_KEY

log = structlog.get_logger(__name__)

#: Longest wait between looks at the queue when nothing wakes the worker.
IDLE_WAIT_SECONDS = 1.0

#: After SIGTERM, the process exits this long after the grace period even if closing hangs
#: (Redis unreachable, say); Heroku's SIGKILL comes at 30 s.
EXIT_MARGIN_SECONDS = 4.0

OUTAGE_BACKOFF_SECONDS = 0.5


class AsklaneWorker(arq.worker.Worker):
    """arq's Worker with an event-driven wait between polls. Job handling is arq's own."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Our wait replaces arq's sleep between polls.
        kwargs["poll_delay"] = 0
        super().__init__(*args, **kwargs)
        self._redis_down = False
        self._stopping = False

    async def _poll_iteration(self) -> None:
        try:
            await super()._poll_iteration()
            await self._wait_for_work()
        except (RedisError, OSError) as error:
            if not self._redis_down:
                self._redis_down = True
                log.error("redis.unavailable", error=type(error).__name__, detail=str(error))
            await asyncio.sleep(OUTAGE_BACKOFF_SECONDS)
            return
        if self._redis_down:
            self._redis_down = False
            log.info("redis.reconnected")

    async def _wait_for_work(self) -> None:
        running = [task for task in self.tasks.values() if not task.done()]
        if not self.allow_pick_jobs or self.job_counter >= self.max_jobs:
            # Nothing can start until a running job ends (or, when stopping, at all).
            if running:
                await asyncio.wait(running, timeout=IDLE_WAIT_SECONDS, return_when=asyncio.FIRST_COMPLETED)
            else:
                await asyncio.sleep(IDLE_WAIT_SECONDS if not self.allow_pick_jobs else 0.01)
            return
        timeout = IDLE_WAIT_SECONDS
        now_ms = time.time() * 1000
        upcoming = await cast(
            Awaitable[list[tuple[bytes, float]]],
            self.pool.zrangebyscore(
                self.queue_name, min=f"({now_ms}", max="+inf", start=0, num=1, withscores=True
            ),
        )
        if upcoming:
            timeout = min(timeout, max((upcoming[0][1] - now_ms) / 1000, 0.001))
        elif self.burst:
            # `arq --burst` (and the tests) stop once the queue is empty: do not linger.
            if running:
                await asyncio.wait(running, timeout=IDLE_WAIT_SECONDS, return_when=asyncio.FIRST_COMPLETED)
            return
        # A wake token means a job was just queued; the next poll picks it up.
        # redis-py types the timeout as int; Redis 6+ takes fractions of a second.
        await cast(Awaitable[Any], self.pool.blpop([WAKE_KEY], timeout=cast(int, timeout)))

    def handle_sig_wait_for_completion(self, signum: signal.Signals) -> None:
        """SIGTERM: stop picking, let running jobs finish within the grace period, then exit.

        Heroku may send SIGTERM more than once; only the first counts.
        """
        if self._stopping:
            return
        self._stopping = True
        log.info("worker.stopping", signal=signal.Signals(signum).name, running=len(self.tasks))
        self.loop.call_later(self._job_completion_wait + EXIT_MARGIN_SECONDS, self._force_exit)
        super().handle_sig_wait_for_completion(signum)

    def _force_exit(self) -> None:
        log.error("worker.forced_exit", after_s=self._job_completion_wait + EXIT_MARGIN_SECONDS)
        os._exit(1)


# arq's CLI picks the settings it passes by inspecting Worker's signature; keep arq's.
AsklaneWorker.__signature__ = inspect.signature(arq.worker.Worker)  # type: ignore[attr-defined]


def install() -> None:
    """Make arq's CLI build an AsklaneWorker.

    arq 0.28's ``arq`` command constructs ``arq.worker.Worker`` by that module-level name and has
    no setting for the class, so ``arq workers.WorkerSettings`` reaches ours through it.
    """
    arq.worker.Worker = AsklaneWorker  # type: ignore[misc]
