"""Slack's posting limits, honoured by every worker together (state in Redis, Redis's clock).

* About one message per second per channel for ``chat.postMessage``: each post books its
  channel's next free moment (:data:`app.contract.scripts.SLACK_POST_SLOT`) and waits for it, so
  workers posting to one channel space their posts instead of meeting Slack's 429.
* A 429 from any ``chat.*`` method pauses every post to that workspace until its Retry-After
  (:func:`pause`); a booking never lands inside a pause, and a post whose booked moment was
  overtaken by a pause set meanwhile waits it out too.

* Every other Web API call asklane makes often is limited by its method's tier (Slack's limits
  are per method, per workspace, per app): ``chat.appendStream`` Tier 4 (100 a minute),
  ``chat.startStream`` and ``chat.stopStream`` Tier 2 (20), ``chat.update`` and ``chat.delete``
  Tier 3 (50). :func:`book_method` books the earliest moment in the method's sliding window,
  shared by every worker in Redis (the AI limiter's script, :data:`app.contract.scripts.RATE_BOOK`,
  in milliseconds), never inside a pause; :func:`method_turn` books and sleeps until it. A stream
  writer books ahead and keeps batching text until its moment comes (workers/streaming.py).

A wait longer than the caller can afford (``max_wait``: part of a job's run) is not waited inside
the job: :class:`~workers.errors.SlackBusy` carries it as ``retry_after``, so the runner defers
the job until about then, spending none of its retries, and the post is tried again.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

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


#: Slack's tiers, in calls per minute per method per workspace (its documented floors).
TIER_PER_MINUTE: Mapping[str, int] = {"tier2": 20, "tier3": 50, "tier4": 100}

#: The tier of each method booked through :func:`book_method`.
METHOD_TIERS: Mapping[str, str] = {
    "chat.startStream": "tier2",
    "chat.stopStream": "tier2",
    "chat.appendStream": "tier4",
    "chat.update": "tier3",
    "chat.delete": "tier3",
}


@dataclass(frozen=True)
class MethodLimits:
    """Calls allowed per method in a sliding window: Slack's tiers by default; tests and benches
    shrink the window to see it work in seconds."""

    per_window: Mapping[str, int] = field(default_factory=lambda: dict(TIER_PER_MINUTE))
    window_seconds: float = 60.0
    #: Added to the window when booking: a call reaches Slack some time after its moment, and
    #: calls booked a window apart must not arrive less than a window apart.
    margin_seconds: float = 0.5

    def tier(self, method: str) -> str:
        return METHOD_TIERS[method]

    def allowed(self, method: str) -> int:
        return self.per_window[self.tier(method)]


SLACK_TIERS = MethodLimits()


async def book_method(
    redis: Redis, team_id: str, method: str, *, max_wait: float, limits: MethodLimits = SLACK_TIERS
) -> float:
    """Book the earliest moment ``method`` may be called in the workspace, for every worker;
    returns the seconds until it (the caller waits, or keeps working and calls then).

    Raises SlackBusy (``retry_after``: the wait) when that moment is more than ``max_wait`` away;
    nothing is booked then.
    """
    tier = limits.tier(method)
    booked, wait_ms = await scripts.rate_book(
        redis,
        # One bucket per method: a tier's limit applies to each of its methods apart.
        keys=[keys.slack_method_bucket_key(team_id, f"{tier}:{method}"), keys.slack_pause_key(team_id)],
        args=[
            limits.allowed(method),
            int((limits.window_seconds + limits.margin_seconds) * 1000),
            int(max_wait * 1000),
            uuid.uuid4().hex,
            "",  # no earlier booking to give back: every booking is used
            1,  # milliseconds, as the workspace's Slack pause is kept
        ],
    )
    wait = int(wait_ms) / 1000
    if not int(booked):
        raise SlackBusy(f"slack {tier} limit: next {method} in {wait:g} s", retry_after=wait)
    return wait


async def method_turn(
    redis: Redis, team_id: str, method: str, *, max_wait: float, limits: MethodLimits = SLACK_TIERS
) -> float:
    """:func:`book_method`, then sleep until the moment booked (and out of any pause set
    meanwhile); returns the seconds waited. Raises SlackBusy as it does."""
    wait = await book_method(redis, team_id, method, max_wait=max_wait, limits=limits)
    if wait > 0:
        log.debug("slack.method_waited", method=method, wait_s=wait)
        await asyncio.sleep(wait)
    return wait + await honour_pause(redis, team_id, max_wait=max(max_wait - wait, 0.0))
