"""Fair use: how many questions a person and a workspace may ask per minute and per day.

Counted in Redis on the web side by the enqueue script itself, so a question over quota never
reaches a worker or costs an AI call, and the charge and the enqueue are one atomic step. Each
limit is a window that opens with the first question after the previous one closed; the user is
told when it closes. A limit of 0 is no limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from arq.connections import ArqRedis

from app.contract.jobs import JobBase
from app.contract.keys import quota_key
from app.contract.queue import Counter, Priority, Refused, enqueue_counted
from app.contract.settings import Settings

Scope = Literal["user", "team"]


@dataclass(frozen=True)
class Limit:
    """At most ``allowed`` questions per ``seconds`` for each user or each workspace."""

    scope: Scope
    period: str
    seconds: int
    allowed: int


@dataclass(frozen=True)
class OverQuota:
    """The limit a question ran into, and when the user may ask again."""

    limit: Limit
    retry_after: float


def limits_from(settings: Settings) -> tuple[Limit, ...]:
    """The configured limits, leaving out those set to 0."""
    configured = (
        Limit("user", "minute", 60, settings.quota_user_per_minute),
        Limit("user", "day", 86_400, settings.quota_user_per_day),
        Limit("team", "minute", 60, settings.quota_team_per_minute),
        Limit("team", "day", 86_400, settings.quota_team_per_day),
    )
    return tuple(limit for limit in configured if limit.allowed > 0)


def _key(limit: Limit, team_id: str, user_id: str) -> str:
    return quota_key(limit.scope, limit.period, team_id, user_id)


async def enqueue_within(
    redis: ArqRedis, limits: tuple[Limit, ...], job: JobBase, priority: Priority = "interactive"
) -> bool | OverQuota:
    """Charge the job's question to every limit and queue it, in one atomic step.

    Returns True when queued, False for a duplicate delivery of a job already queued or answered
    (charged nothing, however many deliveries arrive at once), or the limit the question is over
    (nothing charged, nothing queued). Raises QueueUnavailable when Redis does not answer in time.
    """
    counters = [
        Counter(_key(limit, job.asker.team_id, job.asker.user_id), limit.allowed, limit.seconds * 1000)
        for limit in limits
    ]
    result = await enqueue_counted(redis, job, priority, counters)
    if isinstance(result, Refused):
        return OverQuota(limits[result.index], retry_after=result.retry_after_ms / 1000)
    return result
