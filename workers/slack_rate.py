"""Slack's posting limits, honoured by every worker together (state in Redis, Redis's clock).

* About one message per second per channel for ``chat.postMessage``: each post books its
  channel's next free moment (:data:`app.contract.scripts.SLACK_POST_SLOT`) and waits for it, so
  workers posting to one channel space their posts instead of meeting Slack's 429.
* A 429 from any ``chat.*`` method pauses every post to that workspace until its Retry-After
  (:func:`pause`); a booking never lands inside a pause, and a post whose booked moment was
  overtaken by a pause set meanwhile waits it out too.

A wait longer than the caller can afford (``max_wait``: part of a job's run) is not waited inside
the job: :class:`~workers.errors.SlackBusy` carries it as ``retry_after``, so the runner defers
the job until about then, spending none of its retries, and the post is tried again.
"""

from __future__ import annotations

import asyncio

import structlog
from redis.asyncio import Redis

from app.contract import keys, scripts
from workers.errors import SlackBusy

log = structlog.get_logger(__name__)

#: Seconds between two posts to one channel, from all workers (Slack: about one per second).
POST_SPACING_SECONDS = 1.0


async def wait_turn(
    redis: Redis, team_id: str, channel_id: str, *, max_wait: float, spacing: float = POST_SPACING_SECONDS
) -> float:
    """Book the channel's next posting moment and sleep until it; returns the seconds waited.

    Raises SlackBusy (``retry_after``: the wait) when the moment is more than ``max_wait`` away.
    """
    booked, wait_ms = await scripts.slack_post_slot(
        redis,
        keys=[keys.slack_post_slot_key(team_id, channel_id), keys.slack_pause_key(team_id)],
        args=[int(spacing * 1000), int(max_wait * 1000)],
    )
    wait = int(wait_ms) / 1000
    if not int(booked):
        raise SlackBusy(f"slack posting limit: next post in {channel_id} in {wait:g} s", retry_after=wait)
    if wait > 0:
        log.debug("slack.post_waited", channel=channel_id, wait_s=wait)
        await asyncio.sleep(wait)
    # A 429 may have paused the workspace while this post waited for its moment.
    return wait + await honour_pause(redis, team_id, max_wait=max(max_wait - wait, 0.0))


async def honour_pause(redis: Redis, team_id: str, *, max_wait: float) -> float:
    """Sleep out the workspace's pause, if any; returns the seconds waited.

    Raises SlackBusy (``retry_after``: the pause left) when it is longer than ``max_wait``.
    """
    left = await paused_for(redis, team_id)
    if left <= 0:
        return 0.0
    if left > max_wait:
        raise SlackBusy(f"slack paused this workspace for {left:g} s", retry_after=left)
    await asyncio.sleep(left)
    return left


async def paused_for(redis: Redis, team_id: str) -> float:
    """Seconds left of the workspace's pause, 0 when none."""
    return int(await scripts.slack_paused_for(redis, keys=[keys.slack_pause_key(team_id)])) / 1000


async def pause(redis: Redis, team_id: str, seconds: float, *, max_pause: float, call: str) -> None:
    """Hold every worker's posts to the workspace for ``seconds`` (Slack's Retry-After), at most
    ``max_pause``: a Retry-After of a day would otherwise stop the workspace's answers for a day."""
    held = min(max(seconds, 0.0), max_pause)
    if held <= 0:
        return
    in_force = int(
        await scripts.slack_pause(redis, keys=[keys.slack_pause_key(team_id)], args=[int(held * 1000)])
    )
    log.warning("slack.paused", team=team_id, call=call, retry_after_s=seconds, paused_s=in_force / 1000)
