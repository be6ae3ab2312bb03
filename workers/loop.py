"""Our arq Worker: woken by enqueues instead of polling, resilient to Redis outages, and sure to
exit before Heroku's SIGKILL.

arq's worker sleeps ``poll_delay`` (0.5 s) between looks at the queue, so a new job waits 250 ms
on average and a retry deferred to a precise moment starts up to 500 ms late. Here the loop
instead waits, after each look, for the first of:

* a wake-up token that every enqueue pushes (``BLPOP`` on :data:`app.contract.keys.WAKE_KEY`, held by
  one long-lived listener per worker);
* the moment the next deferred job is due (a retry, a rate-limit deferral), on an asyncio timer;
* a running job finishing (it may have just deferred itself);
* IDLE_WAIT_SECONDS, so jobs whose dead worker's lease expired are still picked up promptly.

A job that defers itself (a retry, a rate-limit wait) pushes a token too, once arq has re-queued
it: the worker that ran it may be busy when it comes due, and an idle worker woken now sets its
timer for it.

While the AI limiter has no slot soon, only jobs that would call the AI wait for it: a job whose
answer or failure is already stored (a delivery retry, a failure notice) starts at once.

A Redis error in the loop is logged once per outage and retried; arq's own loop would die of it.

The arq internals this relies on are listed, with the reason for each, in workers/arq_reach.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import Awaitable
from typing import Any, cast

import arq.worker
import structlog
from redis.exceptions import RedisError

from app.contract.keys import WAKE_KEY, job_key, worker_health_key
from app.contract.queue import is_interactive, note_if_rescored, promote_due_interactive, wake_workers
from workers import job_state, rejected
from workers.lease import WORKER_ID

log = structlog.get_logger(__name__)

#: Longest wait between looks at the queue when nothing wakes the worker.
IDLE_WAIT_SECONDS = 1.0

#: After SIGTERM, the process exits this long after the grace period even if closing hangs
#: (Redis unreachable, say); Heroku's SIGKILL comes at 30 s.
EXIT_MARGIN_SECONDS = 4.0

OUTAGE_BACKOFF_SECONDS = 0.5

#: The wake listener's BLPOP returns after this long with no token, so it sees a stop request.
BLPOP_SECONDS = 1

#: Each worker reports its health (for ``asklane status``) this often; the report expires after
#: three missed ones.
HEALTH_EVERY_SECONDS = 5.0


class AsklaneWorker(arq.worker.Worker):
    """arq's Worker with an event-driven wait between polls. Job handling is arq's own."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Our wait replaces arq's sleep between polls.
        kwargs["poll_delay"] = 0
        super().__init__(*args, **kwargs)
        self._grace_seconds = float(kwargs.get("job_completion_wait", 0))
        self._redis_down = False
        self._stopping = False
        self._closing = False
        self._woken = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None
        self._health_reported_at = 0.0

    async def _poll_iteration(self) -> None:
        # A stop (arq cancels the loop's task on SIGINT, and tests cancel it) that landed inside a
        # Redis command can be swallowed by redis-py (redis/redis-py#2028): the task still counts
        # the request, so honour it here rather than poll on forever.
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise asyncio.CancelledError
        # Read before arq's own poll: a job due between this reading and arq's is then seen as
        # "upcoming" below and polled again at once, rather than missed until the idle timeout.
        polled_at_ms = time.time() * 1000
        self._woken.clear()
        try:
            await promote_due_interactive(self.pool, polled_at_ms)
            await super()._poll_iteration()
            await self._wait_for_work(polled_at_ms)
        except (RedisError, OSError) as error:
            if not self._redis_down:
                self._redis_down = True
                log.error("redis.unavailable", error=type(error).__name__, detail=str(error))
            await asyncio.sleep(OUTAGE_BACKOFF_SECONDS)
            return
        if self._redis_down:
            self._redis_down = False
            log.info("redis.reconnected")

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """Start due jobs; while the AI limiter has no slot soon, only those that need no AI."""
        if job_ids and self._held_for() > 0:
            # A job started now that would call the AI could only defer itself again; one whose
            # answer or failure is stored only posts to Slack, which the AI limit does not govern.
            needs_ai = await job_state.awaiting_ai(self.pool, [job_id.decode() for job_id in job_ids])
            waiting = [job_id for job_id, ai in zip(job_ids, needs_ai, strict=True) if ai]
            uses_ai = await self._of_ai_kinds(waiting)
            job_ids = [job_id for job_id, ai in zip(job_ids, needs_ai, strict=True) if not ai]
            job_ids += [job_id for job_id, ai in zip(waiting, uses_ai, strict=True) if not ai]
        try:
            await super().start_jobs(job_ids)
        except (RedisError, OSError):
            # arq takes a slot (sem.acquire, job_counter += 1) before each job's WATCH/MULTI and
            # does not give it back when Redis fails there; the error ends its loop, so exactly
            # one slot was lost.
            self.job_counter -= 1
            self.sem.release()
            raise

    async def _of_ai_kinds(self, job_ids: list[bytes]) -> list[bool]:
        """For each job, whether its kind's steps call the AI (a payload that names no kind is the
        previous release's ask job; one no kind here can run is started, to be reported)."""
        if not job_ids:
            return []
        kinds = self.ctx.get("kinds") or {}
        async with self.pool.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.get(job_key(job_id.decode()))
            payloads = await pipe.execute()
        result = []
        for raw in payloads:
            try:
                args = json.loads(raw)["a"] if raw else None
                kind = args[0].get("kind", "ask") if isinstance(args, list) and args else None
            except (ValueError, KeyError, TypeError, AttributeError):
                kind = None
            result.append(isinstance(kind, str) and kind in kinds and bool(kinds[kind].uses_ai))
        return result

    async def run_job(self, job_id: str, score: int) -> None:
        """Run the job as arq does; if it deferred itself, keep its lane and wake an idle worker
        to time it."""
        retried = self.jobs_retried
        await super().run_job(job_id, score)
        if self.jobs_retried > retried:
            now_ms = time.time() * 1000
            if is_interactive(score, now_ms):
                # arq re-scored it to "now + delay", among the background jobs; recorded by that
                # moment, it is put back in its lane by the first poll after it.
                try:
                    await note_if_rescored(self.pool, job_id, now_ms)
                except (RedisError, OSError) as error:
                    log.warning("queue.lane_unrecorded", job_id=job_id, error=type(error).__name__)
            with contextlib.suppress(RedisError, OSError):
                await wake_workers(self.pool, 1)

    async def finish_failed_job(self, job_id: str, result_data: bytes | None) -> None:
        """arq fails some jobs itself, before any of our code runs and with no hook: a payload it
        cannot decode, an unknown function, an expired job, one out of tries. Report each like
        any failed job (workers/rejected.py)."""
        raw: bytes | None = None
        with contextlib.suppress(RedisError, OSError):
            raw = await self.pool.get(job_key(job_id))
        await super().finish_failed_job(job_id, result_data)
        deps = self.ctx.get("deps")
        if deps is None:  # start-up never finished: nothing to report with
            return
        try:
            cause = _failure_cause(result_data)
            await rejected.report(deps, job_id, rejected.given_up(raw, job_id, cause, deps.kinds))
        except Exception:
            log.exception("job.failure_unreported", job_id=job_id)

    async def record_health(self) -> None:
        """arq's shared health-check key, plus this worker's own report for ``asklane status``."""
        await super().record_health()
        now = time.time()
        if now - self._health_reported_at < HEALTH_EVERY_SECONDS:
            return
        self._health_reported_at = now
        health = {
            "worker": WORKER_ID,
            "reported_at": now,
            "running": sum(not task.done() for task in self.tasks.values()),
            "completed": self.jobs_complete,
            "failed": self.jobs_failed,
            "retried": self.jobs_retried,
        }
        await self.pool.set(
            worker_health_key(WORKER_ID), json.dumps(health), px=int(3 * HEALTH_EVERY_SECONDS * 1000)
        )

    def _has_free_slot(self) -> bool:
        return self.allow_pick_jobs and self.job_counter < self.max_jobs

    def _held_for(self) -> float:
        # The answer job's limiter (workers/ratelimit.py) records when its next slot is near.
        deps = self.ctx.get("deps")
        limiter = getattr(deps, "limiter", None)
        return max(0.0, float(getattr(limiter, "no_slot_until", 0.0)) - time.monotonic())

    async def _wait_for_work(self, polled_at_ms: float) -> None:
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen_for_wake_ups())
        running = [task for task in self.tasks.values() if not task.done()]
        if not self._has_free_slot():
            # Nothing can start until a running job ends (or, when stopping, at all).
            await self._first_of(running, IDLE_WAIT_SECONDS, wake_ups=False)
            return
        upcoming = await cast(
            Awaitable[list[tuple[bytes, float]]],
            self.pool.zrangebyscore(
                self.queue_name, min=f"({polled_at_ms}", max="+inf", start=0, num=1, withscores=True
            ),
        )
        wait = IDLE_WAIT_SECONDS
        if upcoming:
            wait = min(max((upcoming[0][1] - time.time() * 1000) / 1000, 0.0), wait)
        held = self._held_for()
        if held > 0:
            # Due jobs that need the AI were left queued (start_jobs): look again once it has a
            # slot. A job that needs none still starts on its wake-up or at its due time.
            wait = min(held, wait)
        # `arq --burst` (and the tests) stop once the queue is empty: do not linger.
        await self._first_of(running, wait, wake_ups=bool(upcoming) or not self.burst)

    async def _first_of(self, running: list[asyncio.Task[Any]], seconds: float, *, wake_ups: bool) -> None:
        """Wait for a running job to end (it may have deferred itself), a wake-up, or the timeout.

        The timeout is an asyncio timer, precise to the millisecond, so a job deferred to a moment
        starts at that moment.
        """
        if seconds <= 0:
            return
        waits: list[asyncio.Future[Any]] = list(running)
        woken = asyncio.ensure_future(self._woken.wait()) if wake_ups else None
        if woken is not None:
            waits.append(woken)
        if waits:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        else:
            await asyncio.sleep(seconds)
        if woken is not None:
            woken.cancel()

    async def _listen_for_wake_ups(self) -> None:
        """Hold one BLPOP on the wake list for the worker's life, turning tokens into an event.

        A long-lived listener, rather than a BLPOP per wait, is never cancelled mid-command (which
        would cost a reconnect) and leaves timing to asyncio: Redis ends blocking commands only on
        its 100 ms timer tick. A worker with no free slot leaves tokens to workers that have one,
        and gives back a token that arrived after it filled up.
        """
        while not self._closing:
            if not self._has_free_slot():
                # arq frees a job's slot in a done-callback added when the job started, so it has
                # run by the time a wait that began later returns. Bounded: a slot can also be
                # freed with no job ending (a job skipped at start).
                await asyncio.sleep(0)  # callbacks of a job that just ended run first
                running = [task for task in self.tasks.values() if not task.done()]
                if running:
                    await asyncio.wait(
                        running, timeout=IDLE_WAIT_SECONDS, return_when=asyncio.FIRST_COMPLETED
                    )
                elif not self._has_free_slot():
                    await asyncio.sleep(IDLE_WAIT_SECONDS)
                continue
            try:
                token = await cast(Awaitable[Any], self.pool.blpop([WAKE_KEY], timeout=BLPOP_SECONDS))
                if token and not self._has_free_slot():
                    await wake_workers(self.pool, 1)
                    continue
            except (RedisError, OSError):
                await asyncio.sleep(OUTAGE_BACKOFF_SECONDS)
                continue
            if token:
                self._woken.set()

    async def close(self) -> None:
        """Stop the wake-up listener, then close as arq does."""
        self._closing = True
        redis = self.ctx.get("redis")  # set by arq once connected
        if redis is not None:
            with contextlib.suppress(RedisError, OSError):
                await redis.delete(worker_health_key(WORKER_ID))
        if self._listener is not None:
            # A cancellation that lands in a blocking Redis command can be swallowed by redis-py
            # (redis/redis-py#2028); the listener then stops at its next turn, on the flag.
            self._listener.cancel()
            await asyncio.wait([self._listener], timeout=BLPOP_SECONDS + 1)
        await super().close()

    def handle_sig_wait_for_completion(self, signum: signal.Signals) -> None:
        """SIGTERM: stop picking, let running jobs finish within the grace period, then exit.

        Heroku may send SIGTERM more than once; only the first counts.
        """
        if self._stopping:
            return
        self._stopping = True
        log.info("worker.stopping", signal=signal.Signals(signum).name, running=len(self.tasks))
        self.loop.call_later(self._grace_seconds + EXIT_MARGIN_SECONDS, self._force_exit)
        super().handle_sig_wait_for_completion(signum)

    def _force_exit(self) -> None:
        log.error("worker.forced_exit", after_s=self._grace_seconds + EXIT_MARGIN_SECONDS)
        os._exit(1)


def _failure_cause(result_data: bytes | None) -> str:
    """The exception arq stored as the failed job's result, as one line."""
    try:
        result = json.loads(result_data or b"")["r"]
        return f"{result['error']}: {result['message']}"
    except (ValueError, KeyError, TypeError):
        return "failed by arq"
