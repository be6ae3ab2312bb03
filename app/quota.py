"""Fair use: how many questions a person and a workspace may ask per minute and per day.

Counted in Redis on the web side, before a job exists, so a question over quota never reaches a
worker or costs an AI call. Each limit is a window that opens with the first question after the
previous one closed; the user is told when it closes. A limit of 0 is no limit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Literal, cast

from arq.connections import ArqRedis
from redis.exceptions import RedisError

from app.queue import ENQUEUE_TIMEOUT_SECONDS, QueueUnavailable
from app.settings import Settings

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


# KEYS: one counter per limit.  ARGV: allowed and window ms for each key, in order.
# Charges every counter only when none is used up, so a refused question costs nothing.
# Returns 0, or {index of the used-up limit (1-based), ms until its window closes}.
_CHARGE = """
for i, key in ipairs(KEYS) do
  if tonumber(redis.call('GET', key) or '0') >= tonumber(ARGV[2 * i - 1]) then
    local ttl = redis.call('PTTL', key)
    if ttl < 0 then
      redis.call('PEXPIRE', key, ARGV[2 * i])
      ttl = tonumber(ARGV[2 * i])
    end
    return {i, ttl}
  end
end
for i, key in ipairs(KEYS) do
  if redis.call('INCR', key) == 1 then redis.call('PEXPIRE', key, ARGV[2 * i]) end
end
return 0
"""

# KEYS: the counters charged for a question that turned out to be a duplicate delivery.
_REFUND = """
for _, key in ipairs(KEYS) do
  if tonumber(redis.call('GET', key) or '0') > 0 then redis.call('DECR', key) end
end
return 0
"""


def _key(limit: Limit, team_id: str, user_id: str) -> str:
    owner = f"{team_id}:{user_id}" if limit.scope == "user" else team_id
    return f"asklane:quota:{limit.scope}:{limit.period}:{owner}"


async def charge(redis: ArqRedis, limits: tuple[Limit, ...], team_id: str, user_id: str) -> OverQuota | None:
    """Count one question against every limit, or return the limit it is over (counting nothing).

    Raises QueueUnavailable when Redis does not answer in time.
    """
    if not limits:
        return None
    keys = [_key(limit, team_id, user_id) for limit in limits]
    args: list[Any] = []
    for limit in limits:
        args += [limit.allowed, limit.seconds * 1000]
    result = await _eval(redis, _CHARGE, keys, args)
    if not result:
        return None
    index, ttl_ms = result
    return OverQuota(limits[int(index) - 1], retry_after=max(int(ttl_ms), 0) / 1000)


async def refund(redis: ArqRedis, limits: tuple[Limit, ...], team_id: str, user_id: str) -> None:
    """Give back a charge for a question that was not queued after all (a duplicate delivery)."""
    if limits:
        await _eval(redis, _REFUND, [_key(limit, team_id, user_id) for limit in limits], [])


async def _eval(redis: ArqRedis, script: str, keys: list[str], args: list[Any]) -> Any:
    try:
        async with asyncio.timeout(ENQUEUE_TIMEOUT_SECONDS):
            return await cast(Awaitable[Any], redis.eval(script, len(keys), *keys, *args))
    except (RedisError, OSError, TimeoutError) as error:
        raise QueueUnavailable(type(error).__name__) from error
