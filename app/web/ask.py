"""What happens to a `/ask` command on the web side: validate, check quota, enqueue, choose the ack.

Kept free of Bolt so it can be tested with a plain dict and a real Redis.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import structlog
from arq.connections import ArqRedis
from pydantic import ValidationError

from app.contract import messages
from app.contract.events import JobEvents
from app.contract.jobs import ask_from_command, command_reference
from app.contract.messages import SlackMessage
from app.contract.queue import QueueUnavailable
from app.web import budget, quota

#: Longest question accepted. Slack itself allows a few thousand characters in a slash command;
#: this keeps a prompt (and the echo in the notice) within sane bounds.
MAX_QUESTION_CHARS = 4000

HELP_WORDS = frozenset({"help", "?", "-h", "--help"})

# C0/C1 control characters other than tab and newline carry no meaning in a question.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")

log = structlog.get_logger(__name__)


def clean_question(text: str) -> str:
    """Strip control characters and surrounding whitespace from the command text."""
    return _CONTROL.sub("", text).strip()


Outcome = Literal[
    "queued", "duplicate", "usage", "too_long", "malformed", "over_quota", "over_budget", "unavailable"
]


@dataclass(frozen=True)
class Ack:
    """The message to ack a command with, and what became of the command (for metrics)."""

    message: SlackMessage
    outcome: Outcome


async def handle_ask(
    command: Mapping[str, Any],
    redis: ArqRedis,
    events: JobEvents,
    limits: tuple[quota.Limit, ...] = (),
    budgets: tuple[budget.Budget, ...] = (),
) -> Ack:
    """Validate one slash command, queue its job within the fair-use ``limits`` and the AI
    ``budgets``, and return the message to ack with."""
    name = str(command.get("command") or "/ask")
    question = clean_question(str(command.get("text") or ""))
    trigger_id = str(command.get("trigger_id") or "")
    bound = log.bind(team=command.get("team_id"), user=command.get("user_id"), command=name)

    if not question or question.lower() in HELP_WORDS:
        bound.info("command.usage")
        return Ack(messages.usage(name), "usage")
    if len(question) > MAX_QUESTION_CHARS:
        bound.info("command.too_long", length=len(question), limit=MAX_QUESTION_CHARS)
        return Ack(messages.too_long(name, len(question), MAX_QUESTION_CHARS), "too_long")

    try:
        job = ask_from_command(
            team_id=command.get("team_id", ""),
            enterprise_id=command.get("enterprise_id") or None,
            channel_id=command.get("channel_id", ""),
            user_id=command.get("user_id", ""),
            command=name,
            text=question,
            response_url=command.get("response_url", ""),
            trigger_id=trigger_id,
            enqueued_at=datetime.now(UTC),
        )
    except ValidationError as error:
        reference = command_reference(str(command.get("team_id") or ""), trigger_id or question)
        bound.warning("command.malformed", reference=reference, fields=[e["loc"] for e in error.errors()])
        return Ack(messages.malformed_request(reference), "malformed")

    bound = bound.bind(job_id=job.job_id, reference=job.reference)
    try:
        # Each bounded by ENQUEUE_TIMEOUT_SECONDS: one read for the budgets (none when unset), one
        # script for quota and queue, well inside Slack's 3 s.
        over = await budget.over_budget(redis, budgets, job.asker, datetime.now(UTC))
        if over is not None:
            bound.info("command.over_budget", **over.log_fields())
            return Ack(over.message(job.reference), "over_budget")
        result = await quota.enqueue_within(redis, limits, job)
    except QueueUnavailable as error:
        bound.error("command.queue_unavailable", error=str(error) or type(error).__name__)
        return Ack(messages.unavailable(job.reference), "unavailable")
    if isinstance(result, quota.OverQuota):
        bound.info(
            "command.over_quota",
            scope=result.limit.scope,
            period=result.limit.period,
            allowed=result.limit.allowed,
            retry_after_s=round(result.retry_after, 1),
        )
        message = messages.over_quota(
            result.limit.scope, result.limit.allowed, result.limit.period, result.retry_after
        )
        return Ack(message, "over_quota")
    queued = result
    if queued:
        await events.emit(
            "job.enqueued",
            job_id=job.job_id,
            team=job.asker.team_id,
            user=job.asker.user_id,
            reference=job.reference,
            length=len(question),
        )
    else:
        bound.info("command.duplicate", length=len(question))
    return Ack(messages.working_on_it(question), "queued" if queued else "duplicate")
