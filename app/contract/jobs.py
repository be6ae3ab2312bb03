"""The contract both processes share: a versioned, discriminated union of job kinds.

Every job says who asked (:class:`Asker`), where the reply goes (a reply target,
:mod:`app.contract.targets`) and its **dedupe key**, from which its job id is derived: two deliveries of
one request map to one job, and the key is scoped by team, so two workspaces never collide.
A kind adds only what is its own (``/ask``: the command and the question). Payloads are JSON
(app/contract/job.py's serializer) under one arq function, :data:`RUN_JOB`; the worker picks the kind's
steps by ``kind``.

Rolling deploys: old and new releases share the queue for a while. :func:`parse_job` reads the
payload of the previous release (``AskJob`` v1, app/contract/job.py, queued as ``answer_question``)
and upgrades it, keeping the job id it was queued under. A payload of a version newer than this
release knows raises :class:`UnknownVersion`: the worker fails it once and tells the asker it
could not be read (README, "The contract").
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from app.contract.job import AskJob, reference_for
from app.contract.targets import Ephemeral, ReplyTarget

#: arq function name every job kind is queued under (v1 jobs were queued as ``answer_question``).
RUN_JOB = "run_job"

#: Bump when the envelope changes shape; a worker fails versions it does not know yet.
CONTRACT_VERSION: Literal[2] = 2


class UnknownVersion(ValueError):
    """The payload is of a contract version newer than this release reads."""


class UnknownKind(ValueError):
    """The payload names a job kind this worker has no steps for."""


class Asker(BaseModel):
    """Who asked."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    team_id: str = Field(min_length=1)
    enterprise_id: str | None = None
    user_id: str = Field(min_length=1)


class JobBase(BaseModel):
    """What every job kind carries. A kind subclasses it with ``kind: Literal[...]``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: str
    version: Literal[2] = CONTRACT_VERSION
    asker: Asker
    reply_to: ReplyTarget
    #: One request, one job: the id is derived from it (see :func:`job_id_for`).
    dedupe_key: str = Field(min_length=1)
    enqueued_at: datetime

    @property
    def job_id(self) -> str:
        """arq job id, derived from the dedupe key: a re-delivered request maps to the same job."""
        return job_id_for(self.kind, self.dedupe_key)

    @property
    def reference(self) -> str:
        """Short id shown to the user and logged beside the job id, for support requests."""
        return reference_for(self.job_id)


class AskQuestion(JobBase):
    """One ``/ask`` command: answer the question, ephemerally, to the asker."""

    kind: Literal["ask"] = "ask"
    command: str
    text: str = Field(min_length=1)


#: Every job kind the product queues, picked by ``kind``. A union of one for now.
Job = Annotated[Union[AskQuestion], Field(discriminator="kind")]  # noqa: UP007

#: The kinds this release can read, by ``kind`` (the union above, as parse_job looks it up).
KINDS: Mapping[str, type[JobBase]] = {"ask": AskQuestion}


def job_id_for(kind: str, dedupe_key: str) -> str:
    """Stable, key-safe job id for a dedupe key."""
    return f"{kind}-" + hashlib.sha256(dedupe_key.encode()).hexdigest()[:32]


def team_scoped(team_id: str, key: str) -> str:
    """A dedupe key scoped by team: a key unique in one workspace cannot collide with another's."""
    return f"{team_id}:{key}"


def command_reference(team_id: str, trigger_id: str) -> str:
    """The reference of a slash command's job, also where no job was queued (a crash, a malformed
    command, Redis down): one command shows one reference on every path."""
    return reference_for(job_id_for("ask", team_scoped(team_id, trigger_id)))


def ask_from_command(
    *,
    team_id: str,
    enterprise_id: str | None,
    channel_id: str,
    user_id: str,
    command: str,
    text: str,
    response_url: str,
    trigger_id: str,
    enqueued_at: datetime,
) -> AskQuestion:
    """The job a slash command queues. Raises pydantic's ValidationError for a malformed command."""
    return AskQuestion.model_validate(
        {
            "asker": {"team_id": team_id, "enterprise_id": enterprise_id, "user_id": user_id},
            "reply_to": {
                "type": "ephemeral",
                "response_url": response_url,
                "channel_id": channel_id,
                "user_id": user_id,
            },
            "dedupe_key": team_scoped(team_id, trigger_id) if trigger_id else "",
            "command": command,
            "text": text,
            "enqueued_at": enqueued_at,
        }
    )


def upgrade(job: AskJob) -> AskQuestion:
    """A v1 AskJob as this release's job. Its dedupe key is the bare trigger_id, as the previous
    release derived the job id from it: the job keeps the id (and reference) it was queued under."""
    return AskQuestion(
        asker=Asker(team_id=job.team_id, enterprise_id=job.enterprise_id, user_id=job.user_id),
        reply_to=Ephemeral(response_url=job.response_url, channel_id=job.channel_id, user_id=job.user_id),
        dedupe_key=job.trigger_id,
        command=job.command,
        text=job.text,
        enqueued_at=job.enqueued_at,
    )


def parse_job(payload: object, kinds: Mapping[str, type[JobBase]] = KINDS) -> JobBase:
    """The job in a stored payload: this release's shape, or v1 upgraded.

    Raises UnknownVersion for a newer contract, UnknownKind for a kind not in ``kinds``, and
    ValueError (pydantic's ValidationError among them) for anything else that is not a job.
    """
    if not isinstance(payload, dict):
        raise ValueError(f"payload is {type(payload).__name__}, not an object")
    version = payload.get("version")
    if isinstance(version, int) and not isinstance(version, bool) and version > CONTRACT_VERSION:
        raise UnknownVersion(f"contract version {version}, this release reads up to {CONTRACT_VERSION}")
    if "kind" not in payload:
        return upgrade(AskJob.model_validate(payload))
    kind = payload["kind"]
    model = kinds.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise UnknownKind(f"unknown job kind {str(kind)[:80]!r}")
    return model.model_validate(payload)
