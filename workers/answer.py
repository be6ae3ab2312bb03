"""The answer job: ask Claude, post the answer, and apply the retry policy."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from arq import Retry
from arq.connections import ArqRedis
from pydantic import ValidationError

from app import messages
from app.job import AskJob
from app.settings import Settings
from workers import store
from workers.ai import Claude
from workers.delivery import SlackDelivery
from workers.errors import InvalidPayload, JobError, PermanentError, TransientError
from workers.formatting import answer_message
from workers.retry import retry_delay, should_retry

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class WorkerDeps:
    """What a job needs, built once per worker process at start-up."""

    settings: Settings
    redis: ArqRedis
    claude: Claude
    slack: SlackDelivery


class JobFailed(Exception):
    """Raised after the user has been told, so arq records the job as failed with its cause."""


async def answer_question(ctx: dict[str, Any], payload: object) -> str:
    """arq job: answer one AskJob. Returns how the answer was delivered."""
    deps: WorkerDeps = ctx["deps"]
    attempt: int = ctx["job_try"]
    try:
        job = AskJob.model_validate(payload)
    except ValidationError as error:
        # No trustworthy response_url or user to tell; fail once, visibly to operators.
        fields = sorted({".".join(map(str, e["loc"])) for e in error.errors()})
        log.error("job.invalid_payload", job_id=ctx["job_id"], fields=fields)
        raise InvalidPayload(f"payload does not match AskJob: {fields}") from None

    with structlog.contextvars.bound_contextvars(
        job_id=job.job_id, team=job.team_id, user=job.user_id, reference=job.reference, attempt=attempt
    ):
        if await store.was_delivered(deps.redis, job.job_id):
            log.info("job.already_delivered")
            return "already-delivered"
        log.info("job.started", queued_ms=_ms_since(job.enqueued_at))
        try:
            # Our own deadline sits inside arq's, so a timeout is a transient failure we handle
            # rather than arq failing the job silently.
            async with asyncio.timeout(deps.settings.job_timeout_seconds):
                return await _answer_and_deliver(job, deps)
        except TimeoutError as error:
            failure: Exception = TransientError("job timed out")
            failure.__cause__ = error
        except JobError as error:
            failure = error
        except Exception as error:
            log.exception("job.crashed")
            failure = error

        if should_retry(failure, attempt, deps.settings):
            assert isinstance(failure, TransientError)
            delay = retry_delay(failure, attempt, deps.settings)
            log.warning("job.retrying", delay_s=round(delay, 3), reason=str(failure))
            raise Retry(defer=delay) from failure
        await _tell_user_it_failed(job, deps, failure)
        raise JobFailed(f"{type(failure).__name__}: {failure}") from failure


async def _answer_and_deliver(job: AskJob, deps: WorkerDeps) -> str:
    stored = await store.load_answer(deps.redis, job.job_id)
    if stored is None:
        answer = await deps.claude.ask(job.text)
        log.info(
            "ai.completed",
            model=answer.model,
            latency_ms=answer.latency_ms,
            input_tokens=answer.input_tokens,
            output_tokens=answer.output_tokens,
            stop_reason=answer.stop_reason,
            request_id=answer.request_id,
        )
        stored = store.StoredAnswer(text=answer.text, cut_short=answer.cut_short)
        await store.save_answer(deps.redis, job.job_id, stored)
    else:
        log.info("job.answer_reused")
    via = await deps.slack.send(job, answer_message(stored.text, cut_short=stored.cut_short))
    await store.mark_delivered(deps.redis, job.job_id, via)
    log.info("job.completed", via=via, total_ms=_ms_since(job.enqueued_at))
    return via


async def _tell_user_it_failed(job: AskJob, deps: WorkerDeps, failure: Exception) -> None:
    reason = failure.reason if isinstance(failure, JobError) else JobError.default_reason
    log.error(
        "job.failed",
        error=type(failure).__name__,
        detail=str(failure),
        permanent=isinstance(failure, PermanentError),
    )
    try:
        via = await deps.slack.send(job, messages.failed(reason, job.reference))
        await store.mark_delivered(deps.redis, job.job_id, via)
    except Exception as error:
        log.error("job.failure_undelivered", error=type(error).__name__, detail=str(error))


def _ms_since(moment: datetime) -> int:
    return int((datetime.now(UTC) - moment).total_seconds() * 1000)
