"""Redis connection settings and the enqueue helper used on the slash-command path."""

from __future__ import annotations

import asyncio

from arq.connections import ArqRedis, RedisSettings
from redis.exceptions import RedisError

from app.job import ANSWER_JOB, AskJob, deserialize, serialize
from app.settings import Settings

#: Every Redis call on the ack path is bounded by this; Slack gives the whole request 3 s.
ENQUEUE_TIMEOUT_SECONDS = 1.0

#: How long a finished job's result (and so its id) is kept; Slack re-deliveries within this
#: window map to the same job id and are refused by arq instead of answered twice.
DEDUPE_WINDOW_SECONDS = 3600


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


async def enqueue_ask(redis: ArqRedis, job: AskJob) -> bool:
    """Queue the job once. Returns False when a job with the same id exists (a duplicate delivery).

    Raises QueueUnavailable when Redis does not answer within ENQUEUE_TIMEOUT_SECONDS.
    """
    try:
        async with asyncio.timeout(ENQUEUE_TIMEOUT_SECONDS):
            queued = await redis.enqueue_job(ANSWER_JOB, job.model_dump(mode="json"), _job_id=job.job_id)
    except (RedisError, OSError, TimeoutError) as error:
        raise QueueUnavailable(type(error).__name__) from error
    return queued is not None


async def redis_answers(redis: ArqRedis) -> bool:
    """True when Redis answers PING within ENQUEUE_TIMEOUT_SECONDS."""
    try:
        async with asyncio.timeout(ENQUEUE_TIMEOUT_SECONDS):
            return bool(await redis.ping())
    except (RedisError, OSError, TimeoutError):
        return False
