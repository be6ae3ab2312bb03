"""Slack's per-method tiers, honoured by every worker together (workers/slack_rate.py
``book_method``): chat.appendStream Tier 4, chat.startStream and chat.stopStream Tier 2,
chat.update Tier 3, per workspace, in a sliding window shared in Redis."""

from __future__ import annotations

import asyncio

import pytest
import redis
from arq.connections import ArqRedis

from app.contract.queue import open_redis
from app.contract.settings import Settings
from tests.support.fakes.slack import FakeSlack
from tests.support.jobs import in_redis
from tests.support.stream_writer import stream, words
from tests.support.threads import CHANNEL, TEAM, question
from workers import slack_rate
from workers.delivery import SlackDelivery
from workers.errors import SlackBusy
from workers.streaming import FLUSH_CHARS

#: Tier 2 shrunk to 4 calls a second, so a test sees the window turn.
SMALL = slack_rate.MethodLimits(
    per_window={"tier2": 4, "tier3": 6, "tier4": 8}, window_seconds=1.0, margin_seconds=0.2
)


def test_two_workers_booking_one_method_share_its_tier(settings: Settings, redis_client: redis.Redis) -> None:
    async def worker(client: ArqRedis) -> list[float]:
        return [
            await slack_rate.book_method(client, TEAM, "chat.startStream", max_wait=5, limits=SMALL)
            for _ in range(4)
        ]

    async def two_workers() -> list[float]:
        clients = [open_redis(settings), open_redis(settings)]
        try:
            first, second = await asyncio.gather(*(worker(client) for client in clients))
        finally:
            for client in clients:
                await client.aclose()
        return sorted(first + second)

    waits = asyncio.run(two_workers())

    # Four calls now (Tier 2 here: 4 a second), the other four once the first have left the window.
    assert waits[:4] == [0.0] * 4
    assert all(1.0 < wait <= 1.2 for wait in waits[4:])


def test_each_method_of_a_tier_has_a_limit_of_its_own(settings: Settings, redis_client: redis.Redis) -> None:
    async def book(client: ArqRedis) -> list[float]:
        return [
            await slack_rate.book_method(client, TEAM, method, max_wait=5, limits=SMALL)
            for method in ("chat.startStream", "chat.stopStream")
            for _ in range(4)
        ]

    assert in_redis(settings, book) == [0.0] * 8


def test_workspaces_have_limits_of_their_own(settings: Settings, redis_client: redis.Redis) -> None:
    async def book(client: ArqRedis) -> list[float]:
        return [
            await slack_rate.book_method(client, team, "chat.startStream", max_wait=5, limits=SMALL)
            for team in ("T01", "T02")
            for _ in range(4)
        ]

    assert in_redis(settings, book) == [0.0] * 8


def test_a_pause_after_a_429_holds_every_method(settings: Settings, redis_client: redis.Redis) -> None:
    async def paused_booking(client: ArqRedis) -> float:
        await slack_rate.pause(client, TEAM, 2, max_pause=60, call="chat.appendStream")
        return await slack_rate.book_method(client, TEAM, "chat.update", max_wait=5, limits=SMALL)

    assert 1.5 < in_redis(settings, paused_booking) <= 2


def test_a_moment_beyond_the_longest_wait_is_not_booked(
    settings: Settings, redis_client: redis.Redis
) -> None:
    async def book_past_the_limit(client: ArqRedis) -> None:
        for _ in range(5):
            await slack_rate.book_method(client, TEAM, "chat.startStream", max_wait=0.5, limits=SMALL)

    with pytest.raises(SlackBusy) as busy:
        in_redis(settings, book_past_the_limit)

    assert busy.value.retry_after is not None
    assert 0.5 < busy.value.retry_after <= 1.2


def test_the_default_limits_are_slacks_tiers() -> None:
    assert {method: slack_rate.SLACK_TIERS.allowed(method) for method in slack_rate.METHOD_TIERS} == {
        "chat.startStream": 20,
        "chat.stopStream": 20,
        "chat.appendStream": 100,
        "chat.update": 50,
        "chat.delete": 50,
    }
    assert slack_rate.SLACK_TIERS.window_seconds == 60


def test_many_streams_from_two_workers_in_one_workspace_meet_no_429(
    settings: Settings, fake_slack: FakeSlack, redis_client: redis.Redis
) -> None:
    # Slack's limits as the fake enforces them, a little above the floors asklane keeps to.
    fake_slack.limit_methods(
        {"chat.startStream": 5, "chat.stopStream": 5, "chat.appendStream": 10}, window=1.0
    )
    jobs = [question(f"stream {n}", channel=f"C0{n}") for n in range(8)]
    answers = {job.job_id: words(150) for job in jobs}

    async def run() -> None:
        workers = [SlackDelivery(settings, limits=SMALL), SlackDelivery(settings, limits=SMALL)]
        clients = [open_redis(settings), open_redis(settings)]
        try:
            await asyncio.gather(
                *(
                    stream(workers[n % 2], clients[n % 2], job, answers[job.job_id], gap=0.002)
                    for n, job in enumerate(jobs)
                )
            )
        finally:
            for client in clients:
                await client.aclose()

    asyncio.run(run())

    assert fake_slack.ratelimited_count() == 0
    # Waiting for room, the batches grew past the size that would otherwise have sent them.
    streamed = sum(len("".join(answer)) for answer in answers.values())
    assert fake_slack.calls("chat.appendStream") < streamed // FLUSH_CHARS
    for n, job in enumerate(jobs):
        target = job.reply_to
        assert fake_slack.thread_texts(f"C0{n}", getattr(target, "thread_ts", "")) == [
            "".join(answers[job.job_id])
        ]
    assert CHANNEL not in {message.channel for message in fake_slack.messages.values()}
