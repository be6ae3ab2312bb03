"""The global AI-call limiter and the shared pause, both kept atomically in Redis.

Every worker process books the moment of its next AI call here. One Lua script, on Redis's own
clock (``TIME``), keeps a sliding-window log of booked start times:

* a booking is never earlier than the newest booking, nor than the pause (set when Anthropic
  answers 429/529 with retry-after), nor than ``W`` after the N-th newest booking, where
  ``W`` is one second plus 20 ms of margin for network jitter;
* so in every sliding window of one second at most ``JOBS_PER_SECOND`` calls are booked, across
  all workers, and no fixed-window boundary lets 2N through.

A job whose booking would be near sleeps until it and then calls the AI with no other await in
between. When the next free moment is far off, nothing is booked: the job is deferred until
about then without being charged an attempt (see :class:`SlotTooFar`), so waiting neither holds a
concurrency slot for long nor polls Redis.

No pause is stored longer than the limiter's ``max_pause`` (the job timeout): a retry-after of a
day would otherwise stop every worker for a day. When the limit is still in force after it, the
next call meets another 429 and pauses again, so the fleet probes about once per ``max_pause``.
Each job's own wait is bounded apart from the pause, by its maximum age and, once it has been
refused itself, by AI_BACKPRESSURE_MAX_WAIT_SECONDS (:meth:`RateLimiter.refused_for`).
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid

import structlog
from arq.connections import ArqRedis

from app.contract import scripts
from app.contract.keys import RATE_PAUSE_KEY, RATE_WINDOW_KEY, refused_since_key

log = structlog.get_logger(__name__)


#: The longest pause stored when the limiter is not told otherwise (the default job timeout).
MAX_PAUSE_SECONDS = 60.0

#: A job's refused-since mark outlives any job (they give up at 25 minutes).
REFUSED_SINCE_TTL_MS = 3600 * 1000

#: The window, in microseconds: one second plus 20 ms for the jitter between a grant and the
#: request reaching Anthropic (a process's first request opens its connection). It costs 2% of
#: the rate: at most 97.9% of JOBS_PER_SECOND is granted.
WINDOW_US = 1_020_000

#: A job ready to call later than this after its booked moment books again rather than call late.
LATE_TOLERANCE_SECONDS = 0.010

#: Late bookings in a row after which the job is deferred instead: on a CPU so busy that every
#: booking comes too late, rebooking would only use up the slots other workers could call in.
MAX_LATE_BOOKINGS = 3

#: Bookings nearer than this are slept out inside the job; farther ones defer the job instead.
MAX_INLINE_WAIT_SECONDS = 1.0


class SlotTooFar(Exception):
    """No AI slot within MAX_INLINE_WAIT_SECONDS; defer the job by ``wait`` without charging it."""

    def __init__(self, wait: float) -> None:
        super().__init__(f"next AI slot in {wait:.3f}s")
        self.wait = wait

    @property
    def defer(self) -> float:
        """How long to defer the job: the wait, spread over the inline window.

        Jobs deferred together would otherwise all come back at the same free moment, one would
        get it, and the rest would be deferred again and again.
        """
        return spread(self.wait)


def spread(wait: float) -> float:
    """``wait`` plus a random share of the inline window, so jobs waiting together part."""
    return wait + random.uniform(0.0, MAX_INLINE_WAIT_SECONDS)


class RateLimiter:
    """Books AI-call start times for every worker sharing the Redis."""

    def __init__(self, redis: ArqRedis, per_second: float, *, max_pause: float = MAX_PAUSE_SECONDS) -> None:
        self._redis = redis
        self.max_pause = max_pause
        # The log counts whole calls: a rate of 2.5 allows 2 per second; below 1 it allows one call
        # per 1/rate seconds.
        self._limit = max(1, int(per_second))
        self._window_us = WINDOW_US if per_second >= 1 else int(WINDOW_US / per_second)
        #: Monotonic time before which a newly started job would only be deferred again.
        self.no_slot_until = 0.0

    async def wait_for_slot(self) -> None:
        """Return at the booked moment of an AI call, or raise SlotTooFar.

        The caller must start its AI request right after this returns, with no other await.
        """
        late = 0
        unused = ""
        while True:
            # Redis reads its clock somewhere between sending and the reply: the booked moment is
            # no earlier than ``sent + wait`` and no later than the reply's arrival plus ``wait``.
            sent = time.monotonic()
            booked, wait_us = await scripts.rate_book(
                self._redis,
                keys=[RATE_WINDOW_KEY, RATE_PAUSE_KEY],
                args=[
                    self._limit,
                    self._window_us,
                    int(MAX_INLINE_WAIT_SECONDS * 1_000_000),
                    member := uuid.uuid4().hex,
                    unused,
                    1000,  # microseconds
                ],
            )
            wait = int(wait_us) / 1_000_000
            if not booked:
                # Tell this process's worker loop to leave the backlog alone until a slot is near,
                # instead of starting job after job that can only defer itself.
                self.no_slot_until = time.monotonic() + max(0.0, wait - MAX_INLINE_WAIT_SECONDS / 2)
                raise SlotTooFar(wait)
            if wait > 0:
                # Counted from the reply, so the call is never early.
                await asyncio.sleep(wait)
                # A pause may have begun while we slept (another worker met a 429): the booking
                # stands only if none is in force now.
                if int(await scripts.rate_paused_for(self._redis, keys=[RATE_PAUSE_KEY])):
                    unused = member
                    continue
            # Counted from the send, so lateness is never underestimated.
            lateness = time.monotonic() - (sent + wait)
            if lateness <= LATE_TOLERANCE_SECONDS:
                return  # the grant; the call follows it
            # Ready late (a busy CPU or event loop): a request sent now could share a second with
            # a call booked one window after ours. Book afresh, giving the missed slot back.
            log.info("ai.slot_missed", late_ms=round(lateness * 1000, 1))
            unused = member
            late += 1
            if late >= MAX_LATE_BOOKINGS:
                await self._redis.zrem(RATE_WINDOW_KEY, unused)
                raise SlotTooFar(0.0)

    async def pause(self, seconds: float, reason: str) -> float:
        """Hold every worker's new AI calls for ``seconds``, at most ``max_pause``; returns the
        pause asked for after the cap. Logs once per pause, not per job."""
        capped = min(seconds, self.max_pause)
        if capped <= 0:
            return 0.0
        if await scripts.rate_pause(self._redis, keys=[RATE_PAUSE_KEY], args=[int(capped * 1_000_000)]):
            log.warning("ai.paused", seconds=round(capped, 3), asked_s=round(seconds, 3), reason=reason)
        return capped

    async def refused_for(self, job_id: str, *, refused_now: bool) -> float | None:
        """Seconds since Anthropic first refused this job for the rate limit, None if never.

        ``refused_now`` marks a refusal that just happened (the first one starts the count).
        """
        millis = int(
            await scripts.rate_refused_for(
                self._redis,
                keys=[refused_since_key(job_id)],
                args=["1" if refused_now else "0", REFUSED_SINCE_TTL_MS],
            )
        )
        return None if millis < 0 else millis / 1000
