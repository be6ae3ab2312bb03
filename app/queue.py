"""Redis connection settings and the enqueue helper used on the slash-command path."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

from arq.connections import ArqRedis, RedisSettings
from arq.constants import default_queue_name, expires_extra_ms, job_key_prefix, result_key_prefix
from arq.jobs import serialize_job
from redis.exceptions import RedisError

from app.job import AskJob, deserialize, serialize
from app.jobs import RUN_JOB, JobBase, upgrade
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

#: Interactive jobs that arq re-scored out of their lane, by the moment they come due. arq
#: re-scores a retried or deferred job to "now + delay", which drops it among the background jobs;
#: the worker that ran it records it here (:data:`NOTE_RESCORED_INTERACTIVE`), and workers move
#: it back into its lane once due (:data:`PROMOTE_DUE_INTERACTIVE`). Each entry leaves when it
#: comes due, so the set holds only jobs waiting out a retry delay, never the backlog.
RESCORED_INTERACTIVE_KEY = "asklane:queue:interactive-rescored"

#: Where releases before RESCORED_INTERACTIVE_KEY kept every queued interactive id, with no
#: expiry. Workers now give it one (a day, as arq gives its jobs), so a deploy leaves nothing.
LEGACY_INTERACTIVE_KEY = "asklane:queue:interactive"

#: Most re-scored jobs one promotion moves; any left over are moved at the next poll.
PROMOTE_BATCH = 100

# KEYS: queue, re-scored interactive jobs.  ARGV: job id, offset ms, the worker's now ms.
# Records the job if it now sits in the background lane (arq re-scored it), at its new score.
NOTE_RESCORED_INTERACTIVE = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) > tonumber(ARGV[3]) - tonumber(ARGV[2]) / 2 then
  redis.call('ZADD', KEYS[2], score, ARGV[1])
  return 1
end
return 0
"""

# KEYS: queue, re-scored interactive jobs.  ARGV: offset ms, the worker's now ms, batch size.
# Moves the re-scored jobs now due back ahead of the background lane. Reads only the entries due
# now, so its cost does not grow with the backlog. An entry whose job was re-scored again, later,
# waits for that moment; one whose job has left the queue is dropped.
PROMOTE_DUE_INTERACTIVE = """
local offset = tonumber(ARGV[1])
local now = tonumber(ARGV[2])
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(due) do
  local score = redis.call('ZSCORE', KEYS[1], id)
  if score and tonumber(score) > now then
    redis.call('ZADD', KEYS[2], score, id)
  else
    redis.call('ZREM', KEYS[2], id)
    if score and tonumber(score) > now - offset / 2 then
      redis.call('ZADD', KEYS[1], 'XX', string.format('%.3f', tonumber(score) - offset), id)
    end
  end
end
return #due
"""

# KEYS: job, result, queue, last score of the level, wake list, enqueued-at, then one fair-use
# counter per limit.  ARGV: serialized job, job id, priority offset ms, job expiry ms, wake tokens
# kept, now ms, then the allowed count and window ms of each counter, in order.
#
# One atomic step for the whole ack: a job already queued or answered (a duplicate delivery) is
# neither charged nor queued again: 0. Otherwise every counter is charged and the job queued (1)
# only when no counter is used up; else nothing is, and the used-up counter whose window closes
# last is returned as {its index (1-based), ms until then}. Two deliveries of one command at the
# same moment are therefore charged once. The job itself is arq's own enqueue, plus a score that
# is strictly increasing within a level, a wake token, and the moment it was queued on Redis's
# clock (ENQUEUED_AT_PREFIX), expiring with the job key.
_ENQUEUE = """
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then return 0 end
local first = 7
local worst, worst_ttl = 0, -1
for i = first, #KEYS do
  local n = i - first + 1
  if tonumber(redis.call('GET', KEYS[i]) or '0') >= tonumber(ARGV[5 + 2 * n]) then
    local ttl = redis.call('PTTL', KEYS[i])
    if ttl < 0 then
      redis.call('PEXPIRE', KEYS[i], ARGV[6 + 2 * n])
      ttl = tonumber(ARGV[6 + 2 * n])
    end
    if ttl > worst_ttl then worst, worst_ttl = n, ttl end
  end
end
if worst > 0 then return {worst, worst_ttl} end
for i = first, #KEYS do
  if redis.call('INCR', KEYS[i]) == 1 then redis.call('PEXPIRE', KEYS[i], ARGV[6 + 2 * (i - first + 1)]) end
end
local score = tonumber(ARGV[6]) - tonumber(ARGV[3])
local last = tonumber(redis.call('GET', KEYS[4]) or '0')
-- A web host whose clock ran ahead must not hold later jobs back: keep order only within 1 s.
if score <= last then score = math.min(last + 0.001, score + 1000) end
local text = string.format('%.3f', score)
redis.call('SET', KEYS[4], text, 'PX', 86400000)
redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[4]))
redis.call('ZADD', KEYS[3], text, ARGV[2])
local time = redis.call('TIME')
local queued_at = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('SET', KEYS[6], string.format('%d', queued_at), 'PX', tonumber(ARGV[4]))
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


@dataclass(frozen=True)
class Counter:
    """A fair-use counter the enqueue charges: at most ``allowed`` per window of ``window_ms``."""

    key: str
    allowed: int
    window_ms: int


@dataclass(frozen=True)
class Refused:
    """The job was not queued: ``counters[index]`` is used up until ``retry_after_ms`` from now."""

    index: int
    retry_after_ms: int


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


async def enqueue_ask(redis: ArqRedis, job: JobBase | AskJob, priority: Priority = "interactive") -> bool:
    """Queue the job once, charging no fair-use counter. Returns False when a job with the same id
    exists (a duplicate delivery). A v1 AskJob is queued as this release's job, under its own id.

    Raises QueueUnavailable when Redis does not answer within ENQUEUE_TIMEOUT_SECONDS.
    """
    return await enqueue_counted(redis, job, priority, ()) is True


async def enqueue_counted(
    redis: ArqRedis, job: JobBase | AskJob, priority: Priority, counters: Sequence[Counter]
) -> bool | Refused:
    """Charge ``counters`` and queue the job, as one atomic step (see :data:`_ENQUEUE`).

    Returns True when queued, False for a duplicate delivery (nothing charged), or Refused when a
    counter is used up (nothing charged, nothing queued). Raises QueueUnavailable when Redis does
    not answer within ENQUEUE_TIMEOUT_SECONDS.
    """
    if isinstance(job, AskJob):
        job = upgrade(job)
    now_ms = time.time() * 1000
    body = serialize_job(RUN_JOB, (job.model_dump(mode="json"),), {}, None, int(now_ms), serializer=serialize)
    keys = [
        job_key_prefix + job.job_id,
        result_key_prefix + job.job_id,
        default_queue_name,
        f"{_LAST_SCORE_KEY}:{priority}",
        WAKE_KEY,
        ENQUEUED_AT_PREFIX + job.job_id,
        *(counter.key for counter in counters),
    ]
    args: list[Any] = [
        body,
        job.job_id,
        PRIORITY_OFFSET_MS[priority],
        expires_extra_ms,
        WAKE_TOKENS,
        f"{now_ms:.3f}",
    ]
    for counter in counters:
        args += [counter.allowed, counter.window_ms]
    result = await run_script(redis, _ENQUEUE, keys, args)
    if isinstance(result, list):
        index, ttl_ms = result
        return Refused(int(index) - 1, max(int(ttl_ms), 0))
    return bool(result)


async def promote_due_interactive(redis: ArqRedis, now_ms: float) -> int:
    """Move re-scored interactive jobs now due back into their lane; returns how many were due.

    Run by every worker poll, so its Redis time must not grow with the backlog: it reads only
    the re-scored jobs due now, at most PROMOTE_BATCH of them.
    """
    promote = redis.register_script(PROMOTE_DUE_INTERACTIVE)
    keys = [default_queue_name, RESCORED_INTERACTIVE_KEY]
    return int(await promote(keys=keys, args=[PRIORITY_OFFSET_MS["interactive"], now_ms, PROMOTE_BATCH]))


async def note_if_rescored(redis: ArqRedis, job_id: str, now_ms: float) -> bool:
    """After an interactive job deferred itself: record it if arq re-scored it out of its lane."""
    note = redis.register_script(NOTE_RESCORED_INTERACTIVE)
    keys = [default_queue_name, RESCORED_INTERACTIVE_KEY]
    return bool(await note(keys=keys, args=[job_id, PRIORITY_OFFSET_MS["interactive"], now_ms]))


def is_interactive(score: float, now_ms: float) -> bool:
    """True for a queue score in the interactive lane (PRIORITY_OFFSET_MS early: past the midpoint)."""
    return score < now_ms - PRIORITY_OFFSET_MS["interactive"] / 2


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
