"""Redis connection settings and the enqueue helper used on the slash-command path."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from arq.connections import ArqRedis, RedisSettings
from arq.constants import expires_extra_ms
from arq.jobs import serialize_job
from redis.exceptions import RedisError

from app.contract import keys, scripts
from app.contract.job import AskJob, deserialize, serialize
from app.contract.jobs import RUN_JOB, JobBase, upgrade
from app.contract.settings import Settings

#: Every Redis call on the ack path is bounded by this; Slack gives the whole request 3 s.
ENQUEUE_TIMEOUT_SECONDS = 1.0

#: How long a finished job's result (and so its id) is kept; Slack re-deliveries within this
#: window map to the same job id and are refused by arq instead of answered twice. Slack
#: re-delivers within seconds, and a command's response_url dies after 30 minutes; a longer
#: window would only cost memory: arq's result key holds the whole payload, about 1 KB a job.
DEDUPE_WINDOW_SECONDS = 30 * 60


#: How long a thread's in-order set (keys.thread_order_key) outlives the last question queued into
#: it. Its members leave as their jobs end; the expiry only clears a set whose jobs were lost. At
#: least as long as arq keeps a queued job (a day after it is due, arq.constants.expires_extra_ms),
#: with a day's margin for retries: a set that expired under a waiting job would let a later
#: question of its thread overtake it.
THREAD_ORDER_TTL_SECONDS = 2 * 86_400

#: Wake tokens (keys.WAKE_KEY) kept at most: enough to wake every idle worker, never unbounded.
WAKE_TOKENS = 64

Priority = Literal["interactive", "background"]

#: Priorities share arq's one queue, ordered by score (milliseconds). An interactive job is
#: scored as if queued this long earlier, so it starts before any background job. Within a level
#: a per-level "last score" (keys.last_score_key) keeps scores strictly increasing in the order jobs reach
#: Redis, so jobs queued in the same millisecond, from any web process, start in that order.
#:
#: Scores are on the hosts' clocks, as arq's own are: arq decides "due" and re-scores retries with
#: the worker's clock, so a score from another clock (Redis's) would make a job late by the skew.
#: The rate limiter, where a few milliseconds across workers matter, uses Redis's clock instead.
PRIORITY_OFFSET_MS: dict[Priority, int] = {"interactive": 10**12, "background": 0}

#: Interactive jobs that arq re-scored out of their lane are kept by due moment in
#: keys.RESCORED_INTERACTIVE_KEY: arq re-scores a retried or deferred job to "now + delay", which
#: drops it among the background jobs; the worker that ran it records it there
#: (scripts.NOTE_RESCORED_INTERACTIVE), and workers move it back into its lane once due
#: (scripts.PROMOTE_DUE_INTERACTIVE). Each entry leaves when it comes due, so the set holds only
#: jobs waiting out a retry delay, never the backlog.

#: Most re-scored jobs one promotion moves; any left over are moved at the next poll.
PROMOTE_BATCH = 100


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
    """Charge ``counters`` and queue the job, as one atomic step (see :data:`app.contract.scripts.ENQUEUE`);
    a job with an ``in_order`` group joins its sorted set in the same step, only when queued.

    Returns True when queued, False for a duplicate delivery (nothing charged), or Refused when a
    counter is used up (nothing charged, nothing queued). Raises QueueUnavailable when Redis does
    not answer within ENQUEUE_TIMEOUT_SECONDS.
    """
    if isinstance(job, AskJob):
        job = upgrade(job)
    now_ms = time.time() * 1000
    in_order = job.in_order
    body = serialize_job(RUN_JOB, (job.model_dump(mode="json"),), {}, None, int(now_ms), serializer=serialize)
    script_keys = [
        keys.job_key(job.job_id),
        keys.result_key(job.job_id),
        keys.QUEUE_KEY,
        keys.last_score_key(priority),
        keys.WAKE_KEY,
        keys.enqueued_at_key(job.job_id),
        *(counter.key for counter in counters),
        *([in_order.key] if in_order is not None else []),
    ]
    args: list[Any] = [
        body,
        job.job_id,
        PRIORITY_OFFSET_MS[priority],
        expires_extra_ms,
        WAKE_TOKENS,
        f"{now_ms:.3f}",
        repr(in_order.position) if in_order is not None else "",
        THREAD_ORDER_TTL_SECONDS * 1000,
    ]
    for counter in counters:
        args += [counter.allowed, counter.window_ms]
    result = await run_script(redis, scripts.enqueue, script_keys, args)
    if isinstance(result, list):
        index, ttl_ms = result
        return Refused(int(index) - 1, max(int(ttl_ms), 0))
    return bool(result)


async def promote_due_interactive(redis: ArqRedis, now_ms: float) -> int:
    """Move re-scored interactive jobs now due back into their lane; returns how many were due.

    Run by every worker poll, so its Redis time must not grow with the backlog: it reads only
    the re-scored jobs due now, at most PROMOTE_BATCH of them.
    """
    lanes = [keys.QUEUE_KEY, keys.RESCORED_INTERACTIVE_KEY]
    offset = PRIORITY_OFFSET_MS["interactive"]
    return int(await scripts.promote_due_interactive(redis, lanes, [offset, now_ms, PROMOTE_BATCH]))


async def note_if_rescored(redis: ArqRedis, job_id: str, now_ms: float) -> bool:
    """After an interactive job deferred itself: record it if arq re-scored it out of its lane."""
    lanes = [keys.QUEUE_KEY, keys.RESCORED_INTERACTIVE_KEY]
    offset = PRIORITY_OFFSET_MS["interactive"]
    return bool(await scripts.note_rescored_interactive(redis, lanes, [job_id, offset, now_ms]))


def is_interactive(score: float, now_ms: float) -> bool:
    """True for a queue score in the interactive lane (PRIORITY_OFFSET_MS early: past the midpoint)."""
    return score < now_ms - PRIORITY_OFFSET_MS["interactive"] / 2


async def run_script(redis: ArqRedis, script: scripts.Script, script_keys: list[Any], args: list[Any]) -> Any:
    """Run a Lua script for the web's ack path, by SHA (loading it once if Redis lacks it).

    Raises QueueUnavailable when Redis does not answer within ENQUEUE_TIMEOUT_SECONDS.
    """
    try:
        async with asyncio.timeout(ENQUEUE_TIMEOUT_SECONDS):
            return await script(redis, script_keys, args)
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
        pipe.zcount(keys.QUEUE_KEY, "-inf", lane)
        pipe.zcount(keys.QUEUE_KEY, f"({lane}", now_ms)
        pipe.zcount(keys.QUEUE_KEY, f"({now_ms}", "+inf")
        interactive, background, scheduled = await pipe.execute()
    return QueueDepth(int(interactive), int(background), int(scheduled))


async def wake_workers(redis: ArqRedis, count: int) -> None:
    """Push ``count`` wake-up tokens, so idle workers look at the queue now."""
    if count > 0:
        async with redis.pipeline(transaction=True) as pipe:
            pipe.lpush(keys.WAKE_KEY, *["1"] * count)
            pipe.ltrim(keys.WAKE_KEY, 0, WAKE_TOKENS - 1)
            await pipe.execute()


async def redis_accepts_writes(redis: ArqRedis) -> bool:
    """True when Redis takes a small write within ENQUEUE_TIMEOUT_SECONDS.

    What readiness means: a command sent now would be queued. Redis answers PING while it refuses
    every write (maxmemory reached with noeviction, a replica left read-only by a failover).
    """
    try:
        async with asyncio.timeout(ENQUEUE_TIMEOUT_SECONDS):
            return bool(await redis.set(keys.READY_KEY, b"1", px=int(ENQUEUE_TIMEOUT_SECONDS * 1000)))
    except (RedisError, OSError, TimeoutError):
        return False
