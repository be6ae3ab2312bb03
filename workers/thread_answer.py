"""The thread question's steps: answer with the conversation so far, remember the exchange, post
the answer in the thread. Everything around them (lease, retries, give-up, one question at a time
per thread, events) is the runner's (:mod:`workers.runner`)."""

from __future__ import annotations

import structlog

from app.contract import messages
from app.contract.jobs import JobBase, ThreadQuestion
from app.contract.messages import SlackMessage
from workers import job_state, memory, prompt
from workers.formatting import thread_answer
from workers.kinds import LeaseLost, Run

log = structlog.get_logger(__name__)

#: The thread's status while the question is answered (Slack shows it after the app's name).
THINKING = "is thinking…"


class ThreadKind:
    """A mention or a DM: answer in its thread, with the thread's conversation as context."""

    model: type[JobBase] = ThreadQuestion
    uses_ai = True

    async def perform(self, run: Run) -> str:
        job = _question(run.job)
        deps = run.deps
        # Best effort and never raises: for a thread, the status Slack shows under it.
        await deps.slack.update_notice(deps.redis, job, SlackMessage(text=THINKING))
        stored = await job_state.load_answer(deps.redis, job.job_id)
        if stored is None:
            if run.lease.lost:
                raise LeaseLost()
            history = await memory.load(deps.redis, job.conversation_key)
            request = prompt.build(
                deps.settings.ai_system_prompt,
                memory.turns(history),
                prompt.Turn("user", job.text, job.asker.user_id),
                deps.settings.ai_context_tokens,
            )
            log.info(
                "prompt.built",
                exchanges=len(history),
                turns_left_out=request.turns_left_out,
                estimated_tokens=request.estimated_tokens,
            )
            answer = await run.ask_claude(request)
            generated = job_state.StoredAnswer(text=answer.text, cut_short=answer.cut_short)
            # Kept with the exchange in one step, before it is posted: a re-run reuses it and
            # never remembers the exchange twice.
            stored = await memory.save_answer(deps.redis, job, generated, memory.Limits.of(deps.settings))
        else:
            log.info("job.answer_reused")
        # Another run may have taken the job over while this one waited on Claude: one answer only.
        return await run.deliver(thread_answer(stored.text, cut_short=stored.cut_short))

    def failure_message(self, job: JobBase, reason: str) -> SlackMessage:
        # Posted in the thread by delivery.
        return messages.failed(reason, job.reference)

    def retrying_message(self, job: JobBase, delay: float) -> SlackMessage:
        # Shown as the thread's status, after the app's name.
        return SlackMessage(text=f"is retrying in {max(1, round(delay))} s…")

    def queued_message(self, job: JobBase, ahead: int) -> SlackMessage:
        if ahead == 0:
            return SlackMessage(text="is queued, next in line…")
        if ahead == 1:
            return SlackMessage(text="is waiting for the question before…")
        return SlackMessage(text=f"is waiting for the {ahead} questions before…")


def _question(job: JobBase) -> ThreadQuestion:
    assert isinstance(job, ThreadQuestion)  # the runner picks this kind by the payload's kind
    return job


#: The kind registration of questions asked in threads (mentions and DMs).
THREAD = ThreadKind()
