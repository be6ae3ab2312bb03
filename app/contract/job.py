"""The job payload of the previous release (:class:`AskJob`, contract v1), and the JSON serializer.

Today's contract is the union of job kinds in :mod:`app.contract.jobs`; a worker still reads an AskJob
queued by the release before it (a rolling deploy) and upgrades it (:func:`app.contract.jobs.upgrade`).
arq's default pickle serializer is replaced by JSON on both sides, so nobody who can write to
Redis can run code on a worker.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

#: arq function name the previous release queued AskJob under (app.contract.jobs.RUN_JOB now).
ANSWER_JOB = "answer_question"

#: AskJob's contract version.
SCHEMA_VERSION: Literal[1] = 1


class AskJob(BaseModel):
    """One `/ask` invocation, everything a worker needs to answer it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1] = SCHEMA_VERSION
    team_id: str = Field(min_length=1)
    enterprise_id: str | None = None
    channel_id: str = Field(min_length=1)
    user_id: str = Field(min_length=1)
    command: str
    text: str = Field(min_length=1)
    response_url: str = Field(min_length=1)
    trigger_id: str = Field(min_length=1)
    enqueued_at: datetime

    @property
    def job_id(self) -> str:
        """arq job id; derived from trigger_id so a re-delivered command maps to the same job."""
        return job_id_for(self.trigger_id)

    @property
    def reference(self) -> str:
        """Short id shown to the user and logged beside the job id, for support requests."""
        return reference_for(self.job_id)


def job_id_for(trigger_id: str) -> str:
    """Stable, key-safe job id for a Slack trigger_id."""
    return "ask-" + hashlib.sha256(trigger_id.encode()).hexdigest()[:32]


def reference_for(job_id: str) -> str:
    """An 8-character reference a user can quote, derived from the job id."""
    return hashlib.sha256(job_id.encode()).hexdigest()[:8].upper()


def _encode(value: object) -> Any:
    # arq stores a failed job's exception as its result; keep what an operator needs from it.
    if isinstance(value, BaseException):
        return {"error": type(value).__name__, "message": str(value)}
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    raise TypeError(f"cannot serialise {type(value).__name__}")


def serialize(value: Any) -> bytes:
    """arq ``job_serializer``: JSON, never pickle."""
    return json.dumps(value, default=_encode, separators=(",", ":")).encode()


def deserialize(raw: bytes) -> Any:
    """arq ``job_deserializer``."""
    return json.loads(raw)


def deserialize_job(raw: bytes) -> Any:
    """The workers' arq ``job_deserializer``: JSON whose envelope arq can call a function with.

    A function name that is not a string, args that are not a list or keyword args that are not
    an object would make arq raise outside its own error handling, or splat an object into
    positional args; refused here, they take arq's "cannot deserialize" path, which the worker
    reports (workers/rejected.py).
    """
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    if not isinstance(value.get("f"), str):
        raise ValueError("function name is not a string")
    if not isinstance(value.get("a"), list):
        raise ValueError("args are not a list")
    if not isinstance(value.get("k"), dict):
        raise ValueError("keyword args are not an object")
    if not isinstance(value.get("t"), int | None) or not isinstance(value.get("et"), int | float):
        raise ValueError("try count or enqueue time is not a number")
    return value
