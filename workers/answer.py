"""The ask job's steps: ask Claude under the global rate limit (reusing a stored answer), then
post the answer with its Share / Regenerate / Dismiss buttons, keeping the answer's record
(app/contract/answers.py) that the buttons act on. Everything around them (lease, retries,
give-up, events) is the runner's (:mod:`workers.runner`)."""

from __future__ import annotations

from datetime import UTC, datetime

import structlog

from app.contract import answers, messages
from app.contract.jobs import AskQuestion, JobBase
from app.contract.messages import SlackMessage
from app.contract.targets import Ephemeral
from workers import job_state
from workers.formatting import ask_answer_message
from workers.kinds import Run
from workers.prompt import single_question

log = structlog.get_logger(__name__)


class AskKind:
    """``/ask``: answer the question ephemerally to the asker."""

    model: type[JobBase] = AskQuestion
    uses_ai = True

    async def perform(self, run: Run) -> str:
        job = _ask(run.job)
        deps = run.deps
        stored = await job_state.load_answer(deps.redis, job.job_id)
        if stored is None:
            answer = await run.ask_claude(single_question(deps.settings.ai_system_prompt, job.text))
            stored = job_state.StoredAnswer(text=answer.text, cut_short=answer.cut_short)
            await job_state.save_answer(deps.redis, job.job_id, stored)
        else:
            log.info("job.answer_reused")
        # Kept just before the answer is posted, so its buttons never outlive their record (a
        # crash between the two leaves a record with no message, which nobody can click).
        await answers.save(deps.redis, _record(job, stored), deps.settings.answer_record_ttl_seconds)
        # Another run may have taken the job over while this one waited on Claude: one answer only.
        return await run.deliver(ask_answer_message(stored.text, job.job_id, cut_short=stored.cut_short))

    def failure_message(self, job: JobBase, reason: str) -> SlackMessage:
        return messages.failed(reason, job.reference)

    def retrying_message(self, job: JobBase, delay: float) -> SlackMessage:
        return messages.retrying(_ask(job).text, delay)

    def queued_message(self, job: JobBase, ahead: int) -> SlackMessage:
        return messages.queued(_ask(job).text, ahead)


def _record(job: AskQuestion, stored: job_state.StoredAnswer) -> answers.AnswerRecord:
    channel_id = job.reply_to.channel_id if isinstance(job.reply_to, Ephemeral) else ""
    return answers.AnswerRecord(
        job_id=job.job_id,
        kind="ask",
        asker=job.asker,
        channel_id=channel_id or "unknown",
        question=job.text,
        answer=stored.text,
        cut_short=stored.cut_short,
        answered_at=datetime.now(UTC),
    )


def _ask(job: JobBase) -> AskQuestion:
    assert isinstance(job, AskQuestion)  # the runner picks this kind by the payload's kind
    return job


#: The kind registration of ``/ask``.
ASK = AskKind()
