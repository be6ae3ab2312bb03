"""Redis connection settings and the enqueue helper used on the slash-command path."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Literal, cast

from arq.connections import ArqRedis, RedisSettings
from arq.constants import default_queue_name, expires_extra_ms, job_key_prefix, result_key_prefix
from arq.jobs import serialize_job
from redis.exceptions import RedisError

from app.job import ANSWER_JOB, AskJob, deserialize, serialize
from app.settings import Settings

#: Every Redis call on the ack path is bounded by this; Slack gives the whole request 3 s.
ENQUEUE_TIMEOUT_SECONDS = 1.0

#: How long a finished job's result (and so its id) is kept; Slack re-deliveries within this
#: window map to the same job id and are refused by arq instead of answered twice. Slack
#: re-delivers within seconds, and a command's response_url dies after 30 minutes; a longer
#: window would only cost memory: arq's result key holds the whole payload, about 1 KB a job.
DEDUPE_WINDOW_SECONDS = 30 * 60


#: Idle workers block on this list; every enqueue pushes a token (see workers/arq_worker.py).
WAKE_KEY = "asklane:wake"
#: Tokens kept at most: enough to wake every idle worker of a large deployment, never unbounded.
WAKE_TOKENS = 64

Priority = Literal["interactive", "background"]

#: Priorities share arq's one queue, ordered by score (milliseconds). An interactive job is
#: scored as if queued this long earlier, so it starts before any background job. Within a level
#: a per-level "last score" (below) keeps scores strictly increasing in the order jobs reach
#: Redis, so jobs queued in the same millisecond, from any web process, start in that order.
#:
#: Scores are on the hosts' clocks, as arq's own are: arq decides "due" and re-scores retries with
#: the worker's clock, so a score from another clock (Redis's) would make a job late by the skew.
#: The rate limiter, where a few milliseconds across workers matter, uses Redis's clock instead.
PRIORITY_OFFSET_MS: dict[Priority, int] = {"interactive": 10**12, "background": 0}
_LAST_SCORE_KEY = "asklane:queue:last-score"

#: Ids of queued interactive jobs. arq re-scores a retried or deferred job to "now + delay",
#: which drops it out of the interactive lane; workers put it back when it comes due
#: (:data:`PROMOTE_DUE_INTERACTIVE`).
INTERACTIVE_KEY = "asklane:queue:interactive"

# KEYS: queue, interactive ids.  ARGV: offset ms, the worker's now in ms.  Moves interactive
# jobs that are due but scored in the background lane back ahead of it; forgets ids no longer
# queued.
PROMOTE_DUE_INTERACTIVE = """
local offset = tonumber(ARGV[1])
local now = tonumber(ARGV[2])
for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local score = redis.call('ZSCORE', KEYS[1], id)
  if not score then
    redis.call('SREM', KEYS[2], id)
  else
    score = tonumber(score)
    if score > now - offset / 2 and score <= now then
      redis.call('ZADD', KEYS[1], 'XX', string.format('%.3f', score - offset), id)
    end
  end
end
return 0
"""

# KEYS: job, result, queue, last score of the level, wake list, interactive job ids.
# ARGV: serialized job, job id, priority offset ms, job expiry ms, wake tokens kept, now ms.
# arq's own enqueue, plus a score that is strictly increasing within a level and a wake token.
_ENQUEUE = """
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then return 0 end
local score = tonumber(ARGV[6]) - tonumber(ARGV[3])
local last = tonumber(redis.call('GET', KEYS[4]) or '0')
-- A web host whose clock ran ahead must not hold later jobs back: keep order only within 1 s.
if score <= last then score = math.min(last + 0.001, score + 1000) end
local text = string.format('%.3f', score)
redis.call('SET', KEYS[4], text, 'PX', 86400000)
redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[4]))
redis.call('ZADD', KEYS[3], text, ARGV[2])
if tonumber(ARGV[3]) > 0 then redis.call('SADD', KEYS[6], ARGV[2]) end
redis.call('LPUSH', KEYS[5], '1')
redis.call('LTRIM', KEYS[5], 0, tonumber(ARGV[5]) - 1)
return 1
"""


#: Per-job key holding the moment the job was queued, in milliseconds on Redis's clock (TIME),
#: written by the enqueue script and expiring with the job. Web and worker hosts' clocks may
#: disagree by minutes; Redis's clock is the one both can trust for a job's age. Absent for jobs
#: queued by a release before this key existed: workers then fall back to the payload's
#: ``enqueued_at``, clamped to their own clock.
ENQUEUED_AT_PREFIX = "asklane:enqueued-at:"


class QueueUnavailable(Exception):
    """Redis did not take the job in time: refused, timed out or errored."""


def redis_settings(settings: Settings) -> RedisSettings:
    """arq RedisSettings for REDIS_URL, honouring REDIS_TLS_VERIFY for self-signed certificates."""
    result = RedisSettings.from_dsn(settings.redis_url)
    if result.ssl and not settings.redis_tls_verify:
        # Heroku Redis presents a self-signed certificate; from_dsn ignores ssl_cert_reqs in the URL.
        result.ssl_cert_reqs = "none"
        result.ssl_check_hostname = False
    elif result.ssl:
        # arq leaves hostname checking off by default, which would accept any CA-signed certificate.
        result.ssl_check_hostname = True
    return result


def open_redis(settings: Settings, *, timeout: float = ENQUEUE_TIMEOUT_SECONDS) -> ArqRedis:
    """A lazily-connecting client for the web process: no start-up ping, short socket timeouts.

    Unlike arq's ``create_pool`` it does not retry at start-up, so the web process comes up (and
    answers "temporarily unavailable") while Redis is down.
    """
    conf = redis_settings(settings)
    assert isinstance(conf.host, str)  # sentinel lists are not supported here
    return ArqRedis(
        host=conf.host,
        port=conf.port,
        unix_socket_path=conf.unix_socket_path,
        db=conf.database,
        username=conf.username,
        password=conf.password,
        ssl=conf.ssl,
        ssl_cert_reqs=conf.ssl_cert_reqs,
        ssl_check_hostname=conf.ssl_check_hostname,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        job_serializer=serialize,
        job_deserializer=deserialize,
    )


async def enqueue_ask(redis: ArqRedis, job: AskJob, priority: Priority = "interactive") -> bool:
    """Queue the job once. Returns False when a job with the same id exists (a duplicate delivery).

    Raises QueueUnavailable when Redis does not answer within ENQUEUE_TIMEOUT_SECONDS.
    """
    now_ms = time.time() * 1000
    body = serialize_job(
        ANSWER_JOB, (job.model_dump(mode="json"),), {}, None, int(now_ms), serializer=serialize
    )
    keys = [
        job_key_prefix + job.job_id,
        result_key_prefix + job.job_id,
        default_queue_name,
        f"{_LAST_SCORE_KEY}:{priority}",
        WAKE_KEY,
        INTERACTIVE_KEY,
    ]
    args = [body, job.job_id, PRIORITY_OFFSET_MS[priority], expires_extra_ms, WAKE_TOKENS, f"{now_ms:.3f}"]
    return bool(await run_script(redis, _ENQUEUE, keys, args))


async def run_script(redis: ArqRedis, script: str, keys: list[Any], args: list[Any]) -> Any:
    """Run a Lua script for the web's ack path.

    Raises QueueUnavailable when Redis does not answer within ENQUEUE_TIMEOUT_SECONDS.
    """
    try:
        async with asyncio.timeout(ENQUEUE_TIMEOUT_SECONDS):
            return await cast(Awaitable[Any], redis.eval(script, len(keys), *keys, *args))
    except (RedisError, OSError, TimeoutError) as error:
        raise QueueUnavailable(type(error).__name__) from error


@dataclass(frozen=True)
class QueueDepth:
    """Jobs waiting now: due ones by priority, and deferred ones (retries, rate-limit waits)."""

    interactive: int
    background: int
    scheduled: int


async def queue_depth(redis: ArqRedis) -> QueueDepth:
    """Count the queue by lane. Running jobs stay in arq's queue too, and are counted as due."""
    now_ms = time.time() * 1000
    # Interactive jobs are scored PRIORITY_OFFSET_MS early: below the midpoint between the lanes.
    lane = now_ms - PRIORITY_OFFSET_MS["interactive"] / 2
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zcount(default_queue_name, "-inf", lane)
        pipe.zcount(default_queue_name, f"({lane}", now_ms)
        pipe.zcount(default_queue_name, f"({now_ms}", "+inf")
        interactive, background, scheduled = await pipe.execute()
    return QueueDepth(int(interactive), int(background), int(scheduled))


async def wake_workers(redis: ArqRedis, count: int) -> None:
    """Push ``count`` wake-up tokens, so idle workers look at the queue now."""
    if count > 0:
        async with redis.pipeline(transaction=True) as pipe:
            pipe.lpush(WAKE_KEY, *["1"] * count)
            pipe.ltrim(WAKE_KEY, 0, WAKE_TOKENS - 1)
            await pipe.execute()


async def redis_answers(redis: ArqRedis) -> bool:
    """True when Redis answers PING within ENQUEUE_TIMEOUT_SECONDS."""
    try:
        async with asyncio.timeout(ENQUEUE_TIMEOUT_SECONDS):
            return bool(await redis.ping())
    except (RedisError, OSError, TimeoutError):
        return False


#: Written by the readiness probe; expires at once, so it never outlives a probe.
READY_KEY = "asklane:ready-probe"


async def redis_accepts_writes(redis: ArqRedis) -> bool:
    """True when Redis takes a small write within ENQUEUE_TIMEOUT_SECONDS.

    What readiness means: a command sent now would be queued. Redis answers PING while it refuses
    every write (maxmemory reached with noeviction, a replica left read-only by a failover).
    """
    try:
        async with asyncio.timeout(ENQUEUE_TIMEOUT_SECONDS):
            return bool(await redis.set(READY_KEY, b"1", px=int(ENQUEUE_TIMEOUT_SECONDS * 1000)))
    except (RedisError, OSError, TimeoutError):
        return False
