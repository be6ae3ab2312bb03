"""Slack's posting limits, honoured by every worker together: posts to one channel are spaced,
and a 429 holds every worker's posts to the workspace until its Retry-After has passed."""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise
from typing import Any

import pytest
import redis
from arq.connections import ArqRedis

from app.contract import keys
from app.contract.settings import Settings
from tests.support.fakes.slack import POST_MESSAGE, FakeSlack, ratelimited
from tests.support.jobs import drain, enqueue, in_redis, recording
from tests.support.processes import WorkerProcess
from tests.support.threads import TEAM, notice
from tests.support.waiting import wait_until
from workers import slack_rate
from workers.errors import DeliveryFailed

RETRY_AFTER = 2.0
POST = "chat.postMessage"


def test_a_429_holds_every_workers_posts_to_the_workspace_until_retry_after(
    start_worker: Callable[..., WorkerProcess],
    settings: Settings,
    fake_slack: FakeSlack,
    redis_client: redis.Redis,
) -> None:
    fake_slack.script(POST_MESSAGE, ratelimited(RETRY_AFTER))
    # One job at a time each: the queued posts are shared between the two workers.
    workers = [start_worker(WORKER_CONCURRENCY="1"), start_worker(WORKER_CONCURRENCY="1")]
    enqueue(settings, notice("first", channel="C01"))
    [refused] = fake_slack.wait_for(POST_MESSAGE)
    wait_until(lambda: redis_client.exists(keys.slack_pause_key(TEAM)))

    others = [notice(f"other {n}", channel=f"C1{n}") for n in range(4)]
    enqueue(settings, *others)
    wait_until(lambda: len(fake_slack.posts()) == 5, timeout=30)

    later = fake_slack.received(POST_MESSAGE)[1:]
    assert min(request.at for request in later) >= refused.at + RETRY_AFTER
    assert sorted(post["text"] for post in fake_slack.posts()) == sorted(
        ["first", *(job.text for job in others)]
    )
    assert all(worker.events("job.completed") for worker in workers), "both workers posted"


def test_posts_to_one_channel_are_spaced_across_workers(
    start_worker: Callable[..., WorkerProcess], settings: Settings, fake_slack: FakeSlack
) -> None:
    start_worker()
    start_worker()

    enqueue(settings, *(notice(f"notice {n}", channel="C0BUSY") for n in range(3)))
    wait_until(lambda: len(fake_slack.posts("C0BUSY")) == 3, timeout=30)

    times = sorted(fake_slack.post_times("C0BUSY"))
    # One per second, booked on Redis's clock; the fake's clock sees network jitter on top.
    assert all(later - earlier >= 0.9 for earlier, later in pairwise(times))


def test_posts_to_different_channels_are_not_spaced(settings: Settings, redis_client: redis.Redis) -> None:
    async def book(client: ArqRedis) -> list[float]:
        return [await slack_rate.wait_turn(client, TEAM, f"C{n}", max_wait=5) for n in range(3)]

    assert in_redis(settings, book) == [0.0, 0.0, 0.0]


def test_a_posting_moment_beyond_the_longest_wait_defers_with_retry_after(
    settings: Settings, redis_client: redis.Redis
) -> None:
    async def book_twice(client: ArqRedis) -> None:
        await slack_rate.wait_turn(client, TEAM, "C0", max_wait=0.5)
        await slack_rate.wait_turn(client, TEAM, "C0", max_wait=0.5)

    with pytest.raises(DeliveryFailed) as refused:
        in_redis(settings, book_twice)

    assert refused.value.retry_after is not None
    assert 0.5 < refused.value.retry_after <= slack_rate.POST_SPACING_SECONDS


def test_a_shorter_retry_after_never_shortens_a_pause(settings: Settings, redis_client: redis.Redis) -> None:
    async def pause_twice(client: ArqRedis) -> float:
        await slack_rate.pause(client, TEAM, 5, max_pause=60, call="chat.postMessage")
        await slack_rate.pause(client, TEAM, 1, max_pause=60, call="chat.postMessage")
        return await slack_rate.paused_for(client, TEAM)

    assert in_redis(settings, pause_twice) > 4


def test_a_pause_is_capped_so_a_day_long_retry_after_does_not_stop_a_workspace(
    settings: Settings, redis_client: redis.Redis
) -> None:
    async def pause(client: ArqRedis) -> float:
        await slack_rate.pause(client, TEAM, 86_400, max_pause=6, call="chat.postMessage")
        return await slack_rate.paused_for(client, TEAM)

    assert 0 < in_redis(settings, pause) <= 6


def test_a_pause_longer_than_the_wait_allowed_defers_with_what_is_left(
    settings: Settings, redis_client: redis.Redis
) -> None:
    async def paused_post(client: ArqRedis) -> None:
        await slack_rate.pause(client, TEAM, 5, max_pause=60, call="chat.postMessage")
        await slack_rate.wait_turn(client, TEAM, "C0", max_wait=1)

    with pytest.raises(DeliveryFailed) as refused:
        in_redis(settings, paused_post)

    assert refused.value.retry_after is not None
    assert 4 < refused.value.retry_after <= 5


def test_a_job_held_back_by_slacks_posting_limits_waits_without_spending_a_retry(
    settings: Settings, fake_slack: FakeSlack
) -> None:
    held = notice("held back by a pause")
    # Longer than a job may wait inside its run (JOB_TIMEOUT_SECONDS / 3 = 2 s here).
    in_redis(settings, lambda client: slack_rate.pause(client, TEAM, 3, max_pause=60, call=POST))
    enqueue(settings, held)
    seen: list[str] = []

    async def note(event: str, fields: dict[str, Any]) -> None:
        seen.append(event)

    [events] = recording(note)
    drain(settings, events=events)

    assert [post["text"] for post in fake_slack.posts()] == ["held back by a pause"]
    assert "job.deferred" in seen
    assert "job.retrying" not in seen
