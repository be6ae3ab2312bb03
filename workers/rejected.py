"""Jobs that cannot be run at all: a payload that is not JSON, an unknown function, arguments of
the wrong shape, or a job arq itself gave up on (expired, out of tries).

arq fails some of these before any of our code runs, with no hook; others reach the answer job
with arguments it cannot take. Each ends the same way as any failed job: a ``job.failed`` event
(which the metrics count), a record in the failed-jobs list (``asklane jobs failed``) and, when
the payload still names the asker, a message to them with the job's reference, best effort.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog
from pydantic import ValidationError

from app.contract import messages
from app.contract.job import ANSWER_JOB, reference_for
from app.contract.jobs import KINDS, RUN_JOB, Asker, AskQuestion, JobBase, parse_job
from app.contract.messages import SlackMessage
from app.contract.targets import Ephemeral
from workers import retention
from workers.errors import JobError

if TYPE_CHECKING:
    from workers.kinds import JobKind, WorkerDeps

log = structlog.get_logger(__name__)

#: Characters of an unreadable payload kept in its failed-job record.
PAYLOAD_PREVIEW_CHARS = 2000

_CONTACT_FIELDS = ("team_id", "enterprise_id", "channel_id", "user_id", "response_url", "trigger_id")


@dataclass(frozen=True)
class Rejection:
    """Why a job cannot run, and what of it could be read."""

    #: One line for operators: what is wrong with the job.
    problem: str
    #: The payload as stored (arq's job envelope), or a preview of its text when not JSON.
    payload: Any
    #: The asker, when the payload still names one.
    contact: JobBase | None
    #: True when the payload itself is at fault (the user is told it could not be read).
    unreadable: bool


def given_up(
    raw: bytes | None, job_id: str, cause: str, kinds: Mapping[str, JobKind] | None = None
) -> Rejection:
    """A job arq failed itself with ``cause``, as stored (``raw``, None once gone); a job of one
    of ``kinds`` (the worker's) is well-formed."""
    if raw is None:
        return Rejection(cause, None, None, unreadable=False)
    try:
        envelope = json.loads(raw)
    except ValueError:
        preview = raw[:PAYLOAD_PREVIEW_CHARS].decode(errors="replace")
        return Rejection("payload is not JSON", preview, None, unreadable=True)
    rejection = examine(envelope, job_id, kinds)
    if rejection is not None:
        return rejection
    # A well-formed job arq gave up on (out of tries, say): the asker is told it failed, and its
    # record holds the job's payload, as any failed job's does, so `asklane retry` can queue it again.
    return Rejection(cause, envelope["a"][0], _contact(envelope, job_id), unreadable=False)


def examine(envelope: object, job_id: str, kinds: Mapping[str, JobKind] | None = None) -> Rejection | None:
    """What is wrong with arq's job ``envelope`` (decoded); None when it is a well-formed job of
    one of ``kinds`` (the product's when None)."""
    contact = _contact(envelope, job_id)
    if not isinstance(envelope, dict) or not isinstance(envelope.get("f"), str):
        return Rejection("payload is not an arq job", envelope, contact, unreadable=True)
    function, args, kwargs = envelope["f"], envelope.get("a"), envelope.get("k")
    if function not in (RUN_JOB, ANSWER_JOB):
        problem = f"unknown function {function[:80]!r}"
    elif not isinstance(args, list):
        problem = f"args are {type(args).__name__}, not a list"
    elif kwargs:
        problem = "keyword args given"
    elif len(args) != 1:
        problem = f"{len(args)} args given, expected 1"
    else:
        models = KINDS if kinds is None else {name: kind.model for name, kind in kinds.items()}
        try:
            parse_job(args[0], models)
        except ValidationError as error:
            fields = sorted({".".join(map(str, e["loc"])) for e in error.errors()})
            problem = f"arg is not a job: fields {fields}"
        except ValueError as error:  # an unknown (newer) version or kind, or not an object
            problem = str(error)
        else:
            return None
    return Rejection(problem, envelope, contact, unreadable=True)


async def report(deps: WorkerDeps, job_id: str, rejection: Rejection, attempts: int = 1) -> None:
    """Log ``job.failed``, keep the failed-job record and tell the asker if known; never raises."""
    reference = reference_for(job_id)
    try:
        await deps.events.emit(
            "job.failed",
            level="error",
            job_id=job_id,
            reference=reference,
            error="InvalidPayload" if rejection.unreadable else "JobExecutionFailed",
            detail=rejection.problem,
            permanent=True,
        )
        limit = deps.settings.retain_failed_jobs
        if limit > 0:
            record = retention.JobRecord(
                job_id=job_id,
                reference=reference,
                state="failed",
                payload=rejection.payload,
                attempts=attempts,
                enqueued_at=None,
                finished_at=datetime.now(UTC),
                error=rejection.problem,
            )
            await retention.keep(deps.redis, record, limit)
    except Exception as error:
        log.error("job.failure_unrecorded", job_id=job_id, error=type(error).__name__, detail=str(error))
    if rejection.contact is not None:
        await _tell(deps, rejection, reference)


async def _tell(deps: WorkerDeps, rejection: Rejection, reference: str) -> None:
    assert rejection.contact is not None
    message: SlackMessage = (
        messages.malformed_request(reference)
        if rejection.unreadable
        else messages.failed(JobError.default_reason, reference)
    )
    try:
        # The delivery code checks the response_url against SLACK_RESPONSE_URL_PREFIXES.
        await deps.slack.send(deps.redis, rejection.contact, message)
    except Exception as error:
        log.error("job.failure_undelivered", error=type(error).__name__, detail=str(error))


def _contact(envelope: object, job_id: str) -> JobBase | None:
    """The asker named anywhere in the payload: a response_url, or a channel and a user (at the
    top of a v1 payload, in the reply target of a later one)."""
    candidates: list[object] = []
    if isinstance(envelope, dict):
        args, kwargs = envelope.get("a"), envelope.get("k")
        candidates += args if isinstance(args, list) else [args]
        candidates += [kwargs, *kwargs.values()] if isinstance(kwargs, dict) else []
    for candidate in candidates:
        if not isinstance(candidate, dict):
            continue
        target, asker = candidate.get("reply_to"), candidate.get("asker")
        found = {
            **{name: candidate.get(name) for name in _CONTACT_FIELDS},
            **(asker if isinstance(asker, dict) else {}),
            **(target if isinstance(target, dict) else {}),
        }
        fields = {name: found.get(name) for name in _CONTACT_FIELDS}
        if not all(isinstance(value, str) or value is None for value in fields.values()):
            continue
        if not (fields["response_url"] or (fields["channel_id"] and fields["user_id"])):
            continue
        key = candidate.get("dedupe_key")
        # Not validated: only the fields delivery reads are needed, and some may be missing.
        return AskQuestion.model_construct(
            asker=Asker.model_construct(
                team_id=fields["team_id"] or "",
                enterprise_id=fields["enterprise_id"],
                user_id=fields["user_id"] or "",
            ),
            reply_to=Ephemeral.model_construct(
                response_url=fields["response_url"] or "",
                channel_id=fields["channel_id"] or "",
                user_id=fields["user_id"] or "",
            ),
            dedupe_key=key if isinstance(key, str) and key else fields["trigger_id"] or job_id,
            command="/ask",
            text="",
            enqueued_at=datetime.now(UTC),
        )
    return None
