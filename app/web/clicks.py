"""What a click on an answer's button becomes on the web side: a typed job, or a stop request.

Slack sends each click as a ``block_actions`` interactivity request: a signed form whose
``payload`` field is JSON (``type``, ``team``, ``user``, ``channel``, ``container``,
``trigger_id``, ``response_url``, ``actions: [{action_id, value, action_ts}]``). The gate checks the
signature first (app/web/gate.py); this module reads the payload (:func:`read_click`, pure and
table-tested), checks the answer's record (app/contract/answers.py) and queues, within Slack's 3 s.
Nobody sees a ``block_actions`` ack, so what the clicker must hear (not your answer, too old)
is queued as a private note.

Who may click what:

* Stop (the value is the streaming answer's job id): anyone in the conversation, as with Slack's
  own Stop; it only ends the answer.
* Feedback: anyone who sees the answer; one job per click (its trigger_id).
* Regenerate on a thread answer: anyone in the thread (everyone there sees the answer); a new
  question of the thread, charged to the clicker's quota like any question.
* Share, Regenerate and Dismiss on an ``/ask`` answer: the asker only (only they see it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypeGuard

import structlog
from arq.connections import ArqRedis
from pydantic import ValidationError
from redis.exceptions import RedisError
from structlog.stdlib import BoundLogger

from app.contract import actions, answers, messages, stops
from app.contract.answers import AnswerRecord
from app.contract.events import JobEvents
from app.contract.jobs import (
    Asker,
    AskQuestion,
    DismissAnswer,
    Feedback,
    JobBase,
    ShareAnswer,
    ThreadNotice,
    question_from_message,
    team_scoped,
)
from app.contract.queue import QueueUnavailable, enqueue_ask
from app.contract.targets import Ephemeral, PrivateNote
from app.web import budget, quota

log = structlog.get_logger(__name__)

Outcome = Literal[
    "queued",  # the click's job queued
    "duplicate",  # a second click on Share or Dismiss, or a re-delivery
    "stopped",  # a stop requested
    "refused",  # a notice queued: not the asker's, or the answer's record expired
    "over_quota",  # Regenerate over a fair-use limit: a notice queued
    "over_budget",  # Regenerate by someone over an AI budget: a notice queued
    "ignored",  # an action that is not asklane's
    "malformed",  # the payload cannot be read: 400
    "unavailable",  # Redis did not answer: a non-2xx, so Slack shows the clicker an error
    "crashed",
]

#: Slack shows the clicker an error for a non-2xx ack of an interactivity request (and does not
#: retry it): the honest answer when the click could not be queued.
UNAVAILABLE = 503


@dataclass(frozen=True)
class ClickAck:
    """The HTTP status to ack the click with (its body is never shown), and what became of it."""

    status: int
    outcome: Outcome


@dataclass(frozen=True)
class Click:
    """One button press, as the payload says."""

    team_id: str
    enterprise_id: str | None
    user_id: str
    channel_id: str
    response_url: str
    trigger_id: str
    action_id: str
    value: str
    action_ts: str


class Unreadable(ValueError):
    """The payload is not a block_actions request asklane can read."""


def read_click(payload: Mapping[str, Any]) -> Click:
    """The click in a ``block_actions`` payload (its first action). Raises Unreadable."""
    if payload.get("type") != "block_actions":
        raise Unreadable(f"type {str(payload.get('type'))[:40]!r}")
    team, user, channel, container = (
        _mapping(payload.get("team")),
        _mapping(payload.get("user")),
        _mapping(payload.get("channel")),
        _mapping(payload.get("container")),
    )
    found = payload.get("actions")
    if not isinstance(found, list) or not found or not isinstance(found[0], Mapping):
        raise Unreadable("no actions")
    action = found[0]
    team_id = team.get("id") or user.get("team_id")
    enterprise = _mapping(payload.get("enterprise")).get("id")
    fields = {
        "team_id": team_id,
        "user_id": user.get("id"),
        "channel_id": channel.get("id") or container.get("channel_id"),
        "response_url": payload.get("response_url"),
        "trigger_id": payload.get("trigger_id"),
        "action_id": action.get("action_id"),
        "value": action.get("value"),
        "action_ts": action.get("action_ts"),
    }
    missing = sorted(name for name, value in fields.items() if not _is_text(value))
    if missing:
        raise Unreadable("missing " + ", ".join(missing))
    return Click(enterprise_id=enterprise if _is_text(enterprise) else None, **fields)  # type: ignore[arg-type]


def parse_payload(form_payload: object) -> Mapping[str, Any]:
    """Bolt hands the form's ``payload`` over parsed; a raw string is parsed here. Raises
    Unreadable."""
    if isinstance(form_payload, str):
        try:
            form_payload = json.loads(form_payload)
        except ValueError:
            raise Unreadable("payload is not JSON") from None
    if not isinstance(form_payload, Mapping):
        raise Unreadable("payload is not an object")
    return form_payload


async def handle_click(
    payload: Mapping[str, Any],
    redis: ArqRedis,
    events: JobEvents,
    limits: tuple[quota.Limit, ...] = (),
    budgets: tuple[budget.Budget, ...] = (),
) -> ClickAck:
    """Turn one click into its job (or stop request) and say how to ack it."""
    try:
        click = read_click(payload)
    except Unreadable as error:
        log.warning("click.malformed", detail=str(error))
        return ClickAck(400, "malformed")
    bound = log.bind(team=click.team_id, user=click.user_id, action=click.action_id)
    if click.action_id not in actions.ACTIONS:
        bound.info("click.ignored")
        return ClickAck(200, "ignored")
    now = datetime.now(UTC)
    try:
        return await _act(click, redis, events, (limits, budgets), bound, now)
    except ValidationError as error:
        bound.warning("click.malformed", fields=[e["loc"] for e in error.errors()])
        return ClickAck(400, "malformed")
    except (QueueUnavailable, RedisError, OSError, TimeoutError) as error:
        bound.error("click.queue_unavailable", error=str(error) or type(error).__name__, status=UNAVAILABLE)
        return ClickAck(UNAVAILABLE, "unavailable")


#: What a regenerated question is queued within: the fair-use limits and the AI budgets.
Gates = tuple[tuple[quota.Limit, ...], tuple[budget.Budget, ...]]


async def _act(
    click: Click,
    redis: ArqRedis,
    events: JobEvents,
    gates: Gates,
    bound: BoundLogger,
    now: datetime,
) -> ClickAck:
    if click.action_id == actions.STOP:
        # Bounded like an enqueue: Slack gives the whole request 3 s.
        first = await stops.request_stop(redis, click.value)
        bound.info("click.stop_requested", job_id=click.value, first=first)
        return ClickAck(200, "stopped")
    if click.action_id == actions.FEEDBACK:
        return await _feedback(click, redis, events, bound, now)
    record = await answers.load(redis, click.value)
    action = _verb(click.action_id)
    if record is None:
        bound.info("click.refused", reason="expired", answer_job_id=click.value)
        return await _refuse(click, messages.answer_expired(action), redis, events, bound, now)
    if record.kind == "thread":
        if click.action_id == actions.REGENERATE:
            return await _regenerate_in_thread(click, record, redis, events, gates, bound, now)
        bound.info("click.refused", reason="thread_answer", answer_job_id=click.value)
        return await _refuse(click, messages.not_for_thread_answers(action), redis, events, bound, now)
    if record.asker.user_id != click.user_id or record.asker.team_id != click.team_id:
        bound.info("click.refused", reason="not_the_asker", answer_job_id=click.value)
        return await _refuse(click, messages.not_your_answer(action), redis, events, bound, now)
    if click.action_id == actions.REGENERATE:
        return await _regenerate_ask(click, record, redis, events, gates, bound, now)
    if click.action_id == actions.SHARE:
        share = ShareAnswer(
            asker=record.asker,
            reply_to=_private_note(click),
            # The answer's, not the click's: a double click shares once.
            dedupe_key=team_scoped(click.team_id, f"share:{record.job_id}"),
            enqueued_at=now,
            answer_job_id=record.job_id,
            channel_id=record.channel_id,
        )
        return await _queued(share, await enqueue_ask(redis, share), events, bound)
    dismiss = DismissAnswer(
        asker=record.asker,
        reply_to=_ephemeral(click),
        dedupe_key=team_scoped(click.team_id, f"dismiss:{record.job_id}"),
        enqueued_at=now,
        answer_job_id=record.job_id,
    )
    return await _queued(dismiss, await enqueue_ask(redis, dismiss), events, bound)


async def _feedback(
    click: Click, redis: ArqRedis, events: JobEvents, bound: BoundLogger, now: datetime
) -> ClickAck:
    value, _, answer_job_id = click.value.partition(":")
    if value not in (actions.FEEDBACK_GOOD, actions.FEEDBACK_BAD) or not answer_job_id:
        bound.warning("click.malformed", detail="feedback value", value=click.value[:80])
        return ClickAck(400, "malformed")
    feedback = Feedback(
        asker=_clicker(click),
        reply_to=_private_note(click),
        dedupe_key=team_scoped(click.team_id, f"feedback:{click.trigger_id}"),
        enqueued_at=now,
        answer_job_id=answer_job_id,
        value=value,  # checked above
    )
    return await _queued(feedback, await enqueue_ask(redis, feedback), events, bound)


async def _regenerate_ask(
    click: Click,
    record: AnswerRecord,
    redis: ArqRedis,
    events: JobEvents,
    gates: Gates,
    bound: BoundLogger,
    now: datetime,
) -> ClickAck:
    # To the click's response_url: the new answer replaces the one clicked.
    question = AskQuestion(
        asker=record.asker,
        reply_to=_ephemeral(click),
        dedupe_key=team_scoped(click.team_id, f"regenerate:{click.trigger_id}"),
        enqueued_at=now,
        command="/ask",
        text=record.question,
    )
    return await _charged(click, question, redis, events, gates, bound, now)


async def _regenerate_in_thread(
    click: Click,
    record: AnswerRecord,
    redis: ArqRedis,
    events: JobEvents,
    gates: Gates,
    bound: BoundLogger,
    now: datetime,
) -> ClickAck:
    # The click's action_ts stands for the message: it orders the question after those already
    # asked in the thread, and is unique to the click.
    question = question_from_message(
        team_id=click.team_id,
        enterprise_id=click.enterprise_id,
        user_id=click.user_id,
        channel_id=record.channel_id,
        message_ts=click.action_ts,
        thread_ts=record.thread_ts,
        text=record.question,
        source="regenerate",
        enqueued_at=now,
    )
    return await _charged(click, question, redis, events, gates, bound, now)


async def _charged(
    click: Click,
    job: JobBase,
    redis: ArqRedis,
    events: JobEvents,
    gates: Gates,
    bound: BoundLogger,
    now: datetime,
) -> ClickAck:
    """Queue a regenerated question within the AI budgets, charged to the fair-use limits, like
    any question."""
    limits, budgets = gates
    over = await budget.over_budget(redis, budgets, job.asker, now)
    if over is not None:
        bound.info("click.over_budget", reference=job.reference, **over.log_fields())
        refused = await _refuse(click, over.message(job.reference), redis, events, bound, now)
        return ClickAck(refused.status, "over_budget")
    result = await quota.enqueue_within(redis, limits, job)
    if isinstance(result, quota.OverQuota):
        limit = result.limit
        bound.info("click.over_quota", scope=limit.scope, period=limit.period, allowed=limit.allowed)
        text = messages.over_quota(limit.scope, limit.allowed, limit.period, result.retry_after)
        refused = await _refuse(click, text, redis, events, bound, now)
        return ClickAck(refused.status, "over_quota")
    return await _queued(job, result, events, bound)


async def _refuse(
    click: Click,
    message: messages.SlackMessage,
    redis: ArqRedis,
    events: JobEvents,
    bound: BoundLogger,
    now: datetime,
) -> ClickAck:
    """Tell the clicker privately why nothing happened (the ack of a click is not shown)."""
    notice = ThreadNotice(
        asker=_clicker(click),
        reply_to=_private_note(click),
        dedupe_key=team_scoped(click.team_id, f"click:{click.trigger_id}"),
        enqueued_at=now,
        text=message.text,
    )
    queued = await _queued(notice, await enqueue_ask(redis, notice), events, bound)
    return ClickAck(queued.status, "refused")


async def _queued(job: JobBase, queued: bool, events: JobEvents, bound: BoundLogger) -> ClickAck:
    bound = bound.bind(job_id=job.job_id, kind=job.kind)
    if not queued:
        bound.info("click.duplicate")
        return ClickAck(200, "duplicate")
    bound.info("click.queued")
    await events.emit(
        "job.enqueued",
        job_id=job.job_id,
        team=job.asker.team_id,
        user=job.asker.user_id,
        reference=job.reference,
    )
    return ClickAck(200, "queued")


def _clicker(click: Click) -> Asker:
    return Asker(team_id=click.team_id, enterprise_id=click.enterprise_id, user_id=click.user_id)


def _private_note(click: Click) -> PrivateNote:
    """Beside the clicked message, only for the clicker."""
    return PrivateNote(response_url=click.response_url, channel_id=click.channel_id, user_id=click.user_id)


def _ephemeral(click: Click) -> Ephemeral:
    """The clicked ephemeral message itself, through the click's response_url (replaced or removed)."""
    return Ephemeral(response_url=click.response_url, channel_id=click.channel_id, user_id=click.user_id)


def _verb(action_id: str) -> str:
    return action_id.removeprefix("asklane_")


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _is_text(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and value != ""
