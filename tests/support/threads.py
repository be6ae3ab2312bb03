"""Jobs answered in threads and DMs, for the delivery tests: queue them as the web would, and a
stand-in for the thread kind (:class:`EchoKind`) whose answer is the question itself, so a test
chooses the answer's length and shape without an AI call."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TypeVar

from app.contract.jobs import (
    JobBase,
    SuggestPrompts,
    ThreadNotice,
    ThreadQuestion,
    notice_for_message,
    prompts_for,
    question_from_message,
)
from app.contract.messages import SlackMessage
from workers import job_state
from workers.errors import PermanentError
from workers.formatting import thread_answer
from workers.kinds import JobKind, Run
from workers.notice import NOTICE, PROMPTS, THINKING_STATUS, queued_status, waiting_status

TEAM = "T0TEAM"
USER = "U0ASKER"
CHANNEL = "C0CHANNEL"
DM = "D0DM"
#: An echoed question starting with this fails permanently, with FAIL_REASON.
FAIL = "!fail"
FAIL_REASON = "the test asked to fail."
THINKING = THINKING_STATUS.text

T = TypeVar("T")

_ts = iter(range(1, 1_000_000))


def next_ts() -> str:
    """A fresh message ts, ordered as Slack's are."""
    return f"1700000000.{next(_ts):06d}"


def question(
    text: str,
    *,
    channel: str = CHANNEL,
    thread_ts: str | None = None,
    message_ts: str | None = None,
    user_id: str = USER,
) -> ThreadQuestion:
    """A mention asked in ``channel`` (a new thread unless ``thread_ts``), as the web queues it."""
    return question_from_message(
        team_id=TEAM,
        enterprise_id=None,
        user_id=user_id,
        channel_id=channel,
        message_ts=message_ts or next_ts(),
        thread_ts=thread_ts,
        text=text,
        source="mention",
        enqueued_at=datetime.now(UTC),
    )


def notice(text: str, *, channel: str = CHANNEL, thread_ts: str | None = None) -> ThreadNotice:
    return notice_for_message(
        team_id=TEAM,
        enterprise_id=None,
        user_id=USER,
        channel_id=channel,
        message_ts=next_ts(),
        thread_ts=thread_ts,
        text=text,
        enqueued_at=datetime.now(UTC),
    )


def prompts(*, channel: str = DM) -> SuggestPrompts:
    return prompts_for(
        team_id=TEAM,
        enterprise_id=None,
        user_id=USER,
        channel_id=channel,
        event_id=f"Ev{next_ts()}",
        enqueued_at=datetime.now(UTC),
    )


class EchoKind:
    """Stands in for the thread kind: sets the thread's status, stores the "answer" (the
    question's text) before posting it, and posts it through :meth:`Run.deliver` in parts."""

    model: type[JobBase] = ThreadQuestion
    uses_ai = True

    async def perform(self, run: Run) -> str:
        job = run.job
        assert isinstance(job, ThreadQuestion)
        redis = run.deps.redis
        await run.deps.slack.update_notice(redis, job, THINKING_STATUS)
        if job.text.startswith(FAIL):
            raise PermanentError("echo refused", reason=FAIL_REASON)
        stored = await job_state.load_answer(redis, job.job_id)
        if stored is None:
            stored = job_state.StoredAnswer(text=job.text, cut_short=False)
            await job_state.save_answer(redis, job.job_id, stored)
        return await run.deliver(thread_answer(stored.text, cut_short=stored.cut_short))

    def failure_message(self, job: JobBase, reason: str) -> SlackMessage:
        return SlackMessage(text=f"echo failed: {reason} (ref {job.reference})")

    def retrying_message(self, job: JobBase, delay: float) -> SlackMessage:
        return waiting_status(delay)

    def queued_message(self, job: JobBase, ahead: int) -> SlackMessage:
        return queued_status(ahead)


KINDS: Mapping[str, JobKind] = {"thread": EchoKind(), "notice": NOTICE, "prompts": PROMPTS}
