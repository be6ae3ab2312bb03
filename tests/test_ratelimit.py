"""The limiter itself, against a real Redis."""

from __future__ import annotations

import asyncio
import time

import pytest

from app.contract.keys import RATE_WINDOW_KEY
from app.contract.queue import open_redis
from app.contract.settings import Settings
from workers.ratelimit import RateLimiter, SlotTooFar


def test_a_call_booked_before_a_pause_waits_out_the_pause(settings: Settings) -> None:
    async def run() -> None:
        redis = open_redis(settings, timeout=5)
        # One call per 2 s: wide margins either side of the 1 s inline-wait limit.
        limiter = RateLimiter(redis, per_second=0.5)
        await limiter.wait_for_slot()  # takes the only slot of these 2 s
        with pytest.raises(SlotTooFar):
            await limiter.wait_for_slot()  # the next is about 2 s away: deferred
        await asyncio.sleep(1.3)
        # Now the next slot is under a second away: this call books it and sleeps inline...
        booked = asyncio.create_task(limiter.wait_for_slot())
        await asyncio.sleep(0.1)
        # ...and meanwhile another worker meets a 429 with retry-after 2 s.
        paused_at = time.monotonic()
        await limiter.pause(2.0, "429 from Anthropic")
        try:
            await booked
        except SlotTooFar:
            pass  # deferred past the pause: also never called during it
        else:
            assert time.monotonic() - paused_at >= 2.0 - 0.02
        await redis.aclose()

    asyncio.run(run())


def test_a_slot_the_worker_is_too_busy_to_use_in_time_is_not_used(settings: Settings) -> None:
    async def run() -> None:
        redis = open_redis(settings, timeout=5)
        limiter = RateLimiter(redis, per_second=1000)
        busy = True

        async def hog_the_event_loop() -> None:
            # What other jobs' work does to a worker on a saturated CPU: every reply from Redis
            # is read 30 ms after it came.
            while busy:
                time.sleep(0.03)  # noqa: ASYNC251 - blocking on purpose
                await asyncio.sleep(0)

        hog = asyncio.create_task(hog_the_event_loop())
        await asyncio.sleep(0)
        try:
            with pytest.raises(SlotTooFar):
                await limiter.wait_for_slot()
        finally:
            busy = False
            await hog
        # No call was made at the missed slots: they are given back for other workers.
        assert await redis.zcard(RATE_WINDOW_KEY) == 0
        await limiter.wait_for_slot()  # with the loop free again, the next booking is used
        assert await redis.zcard(RATE_WINDOW_KEY) == 1
        await redis.aclose()

    asyncio.run(run())
