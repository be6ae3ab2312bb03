"""The contract between the web and worker processes: one versioned job payload, sent as JSON.

The web process builds an :class:`AskJob` from a slash command; the worker validates the same
model before doing anything. arq's default pickle serializer is replaced by JSON on both sides,
so nobody who can write to Redis can run code on a worker.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

#: arq function name of the job that answers a question.
ANSWER_JOB = "answer_question"

#: Bump when AskJob changes shape; workers reject versions they do not know.
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


def reference_for(key: str) -> str:
    """An 8-character reference a user can quote, derived from a job id or trigger id."""
    return hashlib.sha256(key.encode()).hexdigest()[:8].upper()


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
