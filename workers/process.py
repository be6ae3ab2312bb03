"""arq worker configuration: `arq workers.WorkerSettings` reads :func:`worker_settings`."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Mapping
from typing import Any

import structlog
from arq.connections import RedisSettings
from arq.constants import expires_extra_ms
from arq.jobs import DeserializationError
from arq.worker import func
from redis.asyncio.retry import Retry as RedisRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.contract import metrics
from app.contract.events import ALL, JobEvents
from app.contract.job import ANSWER_JOB, deserialize_job, serialize
from app.contract.jobs import RUN_JOB
from app.contract.keys import LEGACY_INTERACTIVE_KEY
from app.contract.logs import configure_logging
from app.contract.queue import DEDUPE_WINDOW_SECONDS, redis_settings, wake_workers
from app.contract.settings import Settings
from workers import progress
from workers.ai import Claude
from workers.answer import ASK
from workers.buttons import DISMISS, FEEDBACK, SHARE
from workers.delivery import SLACK_TIMEOUT_SECONDS, SlackDelivery
from workers.errors import InvalidPayload
from workers.kinds import JobKind, WorkerDeps
from workers.notice import NOTICE, PROMPTS
from workers.outcomes import JobFailed
from workers.ratelimit import RateLimiter
from workers.retry import ARQ_MAX_TRIES
from workers.runner import run_job
from workers.thread_answer import THREAD

log = structlog.get_logger(__name__)

REDIS_SOCKET_TIMEOUT_SECONDS = 5.0

#: arq's own deadline for a job sits this far beyond ours, so ours fires first and the failure
#: notice after it (a response_url post, then maybe chat.postEphemeral) still has time to go out.
ARQ_TIMEOUT_MARGIN_SECONDS = 2 * SLACK_TIMEOUT_SECONDS + 5.0


def worker_redis_settings(settings: Settings) -> RedisSettings:
    """REDIS_URL settings with reconnection suited to a long-running worker."""
    conf = redis_settings(settings)
    conf.conn_timeout = 5
    conf.conn_retries = 1_000_000  # start-up waits for Redis instead of crashing
    conf.conn_retry_delay = 1
    # Ride out a blip (a failover, a restart) inside each command; a longer outage surfaces as an
    # error that the worker loop logs and retries (workers/loop.py).
    conf.retry_on_error = [RedisConnectionError, RedisTimeoutError, ConnectionError, OSError]
    conf.retry = RedisRetry(ExponentialBackoff(cap=1.0, base=0.05), retries=4)
    return conf


class _DropReportedFailures(logging.Filter):
    """arq logs every failed job with a traceback; ours were already reported as a job.failed
    event carrying job_id, team and user (an undecodable job by workers/rejected.py), so arq's
    copy is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, (JobFailed, InvalidPayload, DeserializationError))


async def startup(ctx: dict[str, Any]) -> None:
    """Runs once per worker process, after arq has connected to Redis."""
    settings: Settings = ctx["settings"]
    # arq's CLI applies its own logging config after importing the settings; take it back.
    configure_logging(settings)
    logging.getLogger("arq.worker").addFilter(_DropReportedFailures())
    # arq cannot pass a read timeout; without one a hung Redis blocks the worker silently. Waits
    # on Redis (BLPOP in the worker loop) stay well under it.
    ctx["redis"].connection_pool.connection_kwargs["socket_timeout"] = REDIS_SOCKET_TIMEOUT_SECONDS
    ctx["deps"] = WorkerDeps(
        settings=settings,
        redis=ctx["redis"],
        claude=Claude(settings),
        slack=SlackDelivery(settings),
        limiter=RateLimiter.for_settings(ctx["redis"], settings),
        events=ctx["events"],
        kinds=ctx["kinds"],
    )
    with contextlib.suppress(RedisError, OSError):
        await ctx["redis"].pexpire(LEGACY_INTERACTIVE_KEY, expires_extra_ms, nx=True)
    # Job events also feed the metrics that GET /metrics on the web process serves.
    ctx["events"].subscribe(ALL, metrics.Recorder(ctx["redis"]))
    await ctx["deps"].claude.warm_up()
    ctx["stopping"] = asyncio.Event()
    ctx["progress_sweep"] = asyncio.create_task(
        progress.sweep_forever(
            ctx["redis"],
            ctx["deps"].slack,
            settings.progress_after_seconds,
            ctx["stopping"],
            kinds=ctx["kinds"],
        )
    )
    # Everything imported so far lives as long as the process: keep it out of the collector, so a
    # full collection cannot stall the loop between a rate-limit grant and its request.
    gc.collect()
    gc.freeze()
    log.info("worker.started", concurrency=settings.worker_concurrency, model=settings.anthropic_model)


async def shutdown(ctx: dict[str, Any]) -> None:
    """Runs once when the worker stops."""
    sweep: asyncio.Task[None] | None = ctx.get("progress_sweep")
    if sweep is not None:
        ctx["stopping"].set()
        sweep.cancel()
        await asyncio.wait([sweep], timeout=progress.SWEEP_EVERY_SECONDS + 1)
    deps: WorkerDeps | None = ctx.get("deps")
    if deps is not None:
        await deps.claude.close()
    await metrics.flush()
    # Jobs cut off by the grace period are back in the queue by now; let idle workers take them
    # at once rather than at their next look.
    with contextlib.suppress(RedisError, OSError):
        await wake_workers(ctx["redis"], ctx["settings"].worker_concurrency)
    log.info("worker.stopped")


#: The job kinds a worker runs unless told otherwise, by ``kind`` (app/contract/jobs.py).
KINDS: Mapping[str, JobKind] = {
    "ask": ASK,
    "thread": THREAD,
    "notice": NOTICE,
    "prompts": PROMPTS,
    "feedback": FEEDBACK,
    "share": SHARE,
    "dismiss": DISMISS,
}


def worker_settings(
    settings: Settings, events: JobEvents | None = None, kinds: Mapping[str, JobKind] | None = None
) -> dict[str, Any]:
    """Keyword arguments for ``arq.Worker``, from our settings.

    ``events`` lets the caller subscribe hooks to the job lifecycle events before the worker runs;
    ``kinds`` are the job kinds it runs (:data:`KINDS` when None).
    """
    timeout = settings.job_timeout_seconds + ARQ_TIMEOUT_MARGIN_SECONDS
    return {
        # Every kind is queued as RUN_JOB; ANSWER_JOB is the previous release's name for /ask,
        # run by the same entry (its v1 payload is upgraded, app/contract/jobs.py).
        "functions": [
            func(run_job, name=name, max_tries=ARQ_MAX_TRIES, timeout=timeout)
            for name in (RUN_JOB, ANSWER_JOB)
        ],
        "redis_settings": worker_redis_settings(settings),
        "job_serializer": serialize,
        # Strict about arq's envelope: see app.contract.job.deserialize_job.
        "job_deserializer": deserialize_job,
        "max_jobs": settings.worker_concurrency,
        "keep_result": DEDUPE_WINDOW_SECONDS,
        # arq's own health-check key (shared by all workers), kept fresh for `asklane status`.
        "health_check_interval": 10,
        # On SIGTERM: stop picking jobs, give running ones this long, then re-queue the rest.
        "job_completion_wait": settings.shutdown_grace_seconds,
        "on_startup": startup,
        "on_shutdown": shutdown,
        "ctx": {"settings": settings, "events": events or JobEvents(), "kinds": dict(kinds or KINDS)},
    }
