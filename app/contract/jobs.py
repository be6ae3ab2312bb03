"""The contract both processes share: a versioned, discriminated union of job kinds.

Every job says who asked (:class:`Asker`), where the reply goes (a reply target,
:mod:`app.contract.targets`) and its **dedupe key**, from which its job id is derived: two deliveries of
one request map to one job, and the key is scoped by team, so two workspaces never collide.
A kind adds only what is its own:

* ``ask`` (:class:`AskQuestion`): a ``/ask`` command, answered ephemerally.
* ``thread`` (:class:`ThreadQuestion`): a mention in a channel or a message in the app's DM,
  answered in its thread with the conversation so far. Its dedupe key is team + channel + message
  ts, so Slack's re-deliveries and the ``app_mention`` / ``message`` twin of one message are one job;
  within a thread, questions run one at a time in the order asked (:attr:`JobBase.in_order`).
* ``notice`` (:class:`ThreadNotice`): a short message the web process could not show in its ack
  (an Events API ack is not shown to anyone): over quota, too long, no question.
* ``prompts`` (:class:`SuggestPrompts`): suggested prompts for a user who opened the Messages tab.
* Clicks on an answer's buttons (app/contract/actions.py): ``feedback`` (:class:`Feedback`),
  ``share`` (:class:`ShareAnswer`), ``dismiss`` (:class:`DismissAnswer`); Regenerate queues the
  answered kind again (an ``ask`` to the click's response_url, or a ``thread`` question whose
  source is ``regenerate``). Each names the answer it acts on by its job id; the answer's record
  (app/contract/answers.py) says who asked what.
 Payloads are JSON
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
from typing import Annotated, Literal, NamedTuple, Union

from pydantic import BaseModel, ConfigDict, Field

from app.contract import keys
from app.contract.job import AskJob, reference_for
from app.contract.targets import DirectMessage, Ephemeral, PrivateNote, ReplyTarget, Thread

#: arq function name every job kind is queued under (v1 jobs were queued as ``answer_question``).
RUN_JOB = "run_job"

#: Bump when the envelope changes shape; a worker fails versions it does not know yet.
CONTRACT_VERSION: Literal[2] = 2


class UnknownVersion(ValueError):
    """The payload is of a contract version newer than this release reads."""


class UnknownKind(ValueError):
    """The payload names a job kind this worker has no steps for."""


class InOrder(NamedTuple):
    """Jobs sharing ``key`` run one at a time, lowest ``position`` first (the runner's rule)."""

    key: str
    position: float


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

    @property
    def in_order(self) -> InOrder | None:
        """The group this job must run in order with, if any: it waits while an earlier job of
        the group is unfinished (written at enqueue, cleared when each job ends)."""
        return None


class AskQuestion(JobBase):
    """One ``/ask`` command: answer the question, ephemerally, to the asker."""

    kind: Literal["ask"] = "ask"
    command: str
    text: str = Field(min_length=1)


class ThreadQuestion(JobBase):
    """A question asked in a thread: a mention of the app in a channel, or a message in its DM.
    Answered in the thread (``reply_to``), with the conversation stored so far."""

    kind: Literal["thread"] = "thread"
    reply_to: Thread
    source: Literal["mention", "dm", "regenerate"]
    #: The question as the user wrote it, the app's own mention removed.
    text: str = Field(min_length=1)
    #: The ts of the user's message: its place in the thread.
    message_ts: str = Field(min_length=1)

    @property
    def conversation_key(self) -> str:
        """Where the thread's turns are kept (app/contract/keys.py)."""
        return keys.conversation_key(self.asker.team_id, self.reply_to.channel_id, self.reply_to.thread_ts)

    @property
    def in_order(self) -> InOrder:
        # Slack's ts is seconds.microseconds, so it orders the thread's messages as Slack does.
        thread = self.reply_to
        return InOrder(
            keys.thread_order_key(self.asker.team_id, thread.channel_id, thread.thread_ts),
            float(self.message_ts),
        )


class ThreadNotice(JobBase):
    """A short message for a request that was not queued as a question: in a thread for a
    message (over quota, too long, nothing asked; its dedupe key is the message's, as the
    question's), or privately to whoever clicked a button (not your answer, record expired)."""

    kind: Literal["notice"] = "notice"
    reply_to: Annotated[Union[Thread, PrivateNote], Field(discriminator="type")]  # noqa: UP007
    #: Slack mrkdwn, built by app/contract/messages.py.
    text: str = Field(min_length=1)


class SuggestPrompts(JobBase):
    """Offer suggested prompts to a user who opened the app's Messages tab."""

    kind: Literal["prompts"] = "prompts"
    reply_to: DirectMessage


class Feedback(JobBase):
    """A thumbs up or down on an answer: recorded against the answered job, thanked privately
    (``reply_to``). One job per click (its trigger_id)."""

    kind: Literal["feedback"] = "feedback"
    reply_to: PrivateNote
    answer_job_id: str = Field(min_length=1)
    value: Literal["good", "bad"]


class ShareAnswer(JobBase):
    """Post an ephemeral ``/ask`` answer in its channel, as the app, attributed to the asker.
    Its dedupe key is the answer's, so a double click shares once. ``reply_to`` (the clicker)
    hears when the app cannot post there."""

    kind: Literal["share"] = "share"
    reply_to: PrivateNote
    answer_job_id: str = Field(min_length=1)
    channel_id: str = Field(min_length=1)


class DismissAnswer(JobBase):
    """Remove an ephemeral ``/ask`` answer (``delete_original`` through the click's response_url,
    ``reply_to``). Its dedupe key is the answer's: a double click dismisses once."""

    kind: Literal["dismiss"] = "dismiss"
    reply_to: Ephemeral
    answer_job_id: str = Field(min_length=1)


#: Every job kind the product queues, picked by ``kind``.
Job = Annotated[
    Union[AskQuestion, ThreadQuestion, ThreadNotice, SuggestPrompts, Feedback, ShareAnswer, DismissAnswer],  # noqa: UP007
    Field(discriminator="kind"),
]

#: The kinds this release can read, by ``kind`` (the union above, as parse_job looks it up).
KINDS: Mapping[str, type[JobBase]] = {
    "ask": AskQuestion,
    "thread": ThreadQuestion,
    "notice": ThreadNotice,
    "prompts": SuggestPrompts,
    "feedback": Feedback,
    "share": ShareAnswer,
    "dismiss": DismissAnswer,
}


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


def message_key(team_id: str, channel_id: str, message_ts: str) -> str:
    """The dedupe key of a Slack message: every delivery of one message (re-deliveries, the
    ``app_mention`` / ``message`` twin) has the same one."""
    return team_scoped(team_id, f"{channel_id}:{message_ts}")


def question_from_message(
    *,
    team_id: str,
    enterprise_id: str | None,
    user_id: str,
    channel_id: str,
    message_ts: str,
    thread_ts: str | None,
    text: str,
    source: Literal["mention", "dm", "regenerate"],
    enqueued_at: datetime,
) -> ThreadQuestion:
    """The job a mention or DM queues; a top-level message starts its own thread. Raises
    pydantic's ValidationError for a malformed event."""
    return ThreadQuestion.model_validate(
        {
            "asker": {"team_id": team_id, "enterprise_id": enterprise_id, "user_id": user_id},
            "reply_to": {"type": "thread", "channel_id": channel_id, "thread_ts": thread_ts or message_ts},
            "dedupe_key": message_key(team_id, channel_id, message_ts),
            "source": source,
            "text": text,
            "message_ts": message_ts,
            "enqueued_at": enqueued_at,
        }
    )


def notice_for_message(
    *,
    team_id: str,
    enterprise_id: str | None,
    user_id: str,
    channel_id: str,
    message_ts: str,
    thread_ts: str | None,
    text: str,
    enqueued_at: datetime,
) -> ThreadNotice:
    """The notice answering a message in its thread instead of a question (same dedupe key, so
    every delivery of the message still makes one notice)."""
    return ThreadNotice.model_validate(
        {
            "asker": {"team_id": team_id, "enterprise_id": enterprise_id, "user_id": user_id},
            "reply_to": {"type": "thread", "channel_id": channel_id, "thread_ts": thread_ts or message_ts},
            "dedupe_key": message_key(team_id, channel_id, message_ts),
            "text": text,
            "enqueued_at": enqueued_at,
        }
    )


def prompts_for(
    *,
    team_id: str,
    enterprise_id: str | None,
    user_id: str,
    channel_id: str,
    event_id: str,
    enqueued_at: datetime,
) -> SuggestPrompts:
    """The job offering suggested prompts when a user opens the Messages tab; one per event
    (re-deliveries share its event_id)."""
    return SuggestPrompts.model_validate(
        {
            "asker": {"team_id": team_id, "enterprise_id": enterprise_id, "user_id": user_id},
            "reply_to": {"type": "direct_message", "channel_id": channel_id, "user_id": user_id},
            "dedupe_key": team_scoped(team_id, event_id),
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
