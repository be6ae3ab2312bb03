"""Fair use: how many questions a person and a workspace may ask per minute and per day.

Counted in Redis on the web side, before a job exists, so a question over quota never reaches a
worker or costs an AI call. Each limit is a window that opens with the first question after the
previous one closed; the user is told when it closes. A limit of 0 is no limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from arq.connections import ArqRedis
from arq.constants import job_key_prefix, result_key_prefix

from app.job import AskJob
from app.queue import run_script
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


# KEYS: the job's arq job and result keys, then one counter per limit.
# ARGV: allowed and window ms for each counter, in order.
# A job already queued or answered (a duplicate delivery) is charged nothing: -1. Otherwise every
# counter is charged only when none is used up (0); else nothing is, and the used-up limit whose
# window closes last is returned as {its index (1-based), ms until then}.
_CHARGE = """
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then return -1 end
local worst, worst_ttl = 0, -1
for i = 3, #KEYS do
  local n = i - 2
  if tonumber(redis.call('GET', KEYS[i]) or '0') >= tonumber(ARGV[2 * n - 1]) then
    local ttl = redis.call('PTTL', KEYS[i])
    if ttl < 0 then
      redis.call('PEXPIRE', KEYS[i], ARGV[2 * n])
      ttl = tonumber(ARGV[2 * n])
    end
    if ttl > worst_ttl then worst, worst_ttl = n, ttl end
  end
end
if worst > 0 then return {worst, worst_ttl} end
for i = 3, #KEYS do
  if redis.call('INCR', KEYS[i]) == 1 then redis.call('PEXPIRE', KEYS[i], ARGV[2 * (i - 2)]) end
end
return 0
"""


def _key(limit: Limit, team_id: str, user_id: str) -> str:
    owner = f"{team_id}:{user_id}" if limit.scope == "user" else team_id
    return f"asklane:quota:{limit.scope}:{limit.period}:{owner}"


async def charge(redis: ArqRedis, limits: tuple[Limit, ...], job: AskJob) -> OverQuota | None:
    """Count the job's question against every limit, or return the limit it is over (counting
    nothing). A duplicate delivery of a job already queued is not counted again.

    Raises QueueUnavailable when Redis does not answer in time.
    """
    if not limits:
        return None
    keys = [job_key_prefix + job.job_id, result_key_prefix + job.job_id]
    keys += [_key(limit, job.team_id, job.user_id) for limit in limits]
    args: list[Any] = []
    for limit in limits:
        args += [limit.allowed, limit.seconds * 1000]
    result = await run_script(redis, _CHARGE, keys, args)
    if not isinstance(result, list):
        return None
    index, ttl_ms = result
    return OverQuota(limits[int(index) - 1], retry_after=max(int(ttl_ms), 0) / 1000)
