"""The jobs the buttons on an answer queue (app/contract/actions.py); none calls the AI.

* ``feedback`` (:class:`FeedbackKind`): a thumbs up or down, recorded against the answered job
  (its retention record when still kept, a ``feedback.recorded`` event, the ``asklane_feedback``
  metric by value) and thanked privately.
* ``share`` (:class:`ShareKind`): the ``/ask`` answer posted in its channel as the app, attributed
  to the asker, once (its dedupe key is the answer's, and the post is marked delivered). When the
  app cannot post there, the clicker is told why and how to fix it (``/invite @asklane``).
* ``dismiss`` (:class:`DismissKind`): the ephemeral ``/ask`` answer removed (``delete_original``
  through the click's response_url), once.

Regenerate queues the answered kind again (the web process builds that job), so it has no kind
here. Everything around the steps (lease, retries, give-up) is the runner's.
"""

from __future__ import annotations

from app.contract import answers, messages
from app.contract.jobs import DismissAnswer, Feedback, JobBase, ShareAnswer
from app.contract.messages import SlackMessage
from workers import retention
from workers.delivery import NOT_A_MEMBER
from workers.errors import PermanentError
from workers.formatting import shared_answer
from workers.kinds import LeaseLost, Run, record_delivery
from workers.notice import queued_status, waiting_status


class _ButtonKind:
    """What the button kinds share: no AI, short failure messages naming the action."""

    model: type[JobBase]
    uses_ai = False
    action = ""

    def failure_message(self, job: JobBase, reason: str) -> SlackMessage:
        return messages.action_failed(self.action, reason, job.reference)

    def retrying_message(self, job: JobBase, delay: float) -> SlackMessage:
        return waiting_status(delay)

    def queued_message(self, job: JobBase, ahead: int) -> SlackMessage:
        return queued_status(ahead)


class FeedbackKind(_ButtonKind):
    """``feedback``: record the value against the answered job, thank the clicker."""

    model: type[JobBase] = Feedback
    action = "feedback"

    async def perform(self, run: Run) -> str:
        job = run.job
        assert isinstance(job, Feedback)  # the runner picks this kind by the payload's kind
        deps = run.deps
        recorded = await retention.add_feedback(deps.redis, job.answer_job_id, job.asker.user_id, job.value)
        await deps.events.emit(
            "feedback.recorded",
            job_id=job.job_id,
            answer_job_id=job.answer_job_id,
            value=job.value,
            on_record=recorded,
        )
        return await run.deliver(messages.feedback_thanks(job.value))


class ShareKind(_ButtonKind):
    """``share``: post the recorded ``/ask`` answer in its channel, attributed to the asker."""

    model: type[JobBase] = ShareAnswer
    action = "share"

    async def perform(self, run: Run) -> str:
        job = run.job
        assert isinstance(job, ShareAnswer)  # the runner picks this kind by the payload's kind
        deps = run.deps
        record = await answers.load(deps.redis, job.answer_job_id)
        if record is None:
            # The web process checked it; it expired since (the job waited that long).
            raise PermanentError("answer record expired", reason=messages.answer_expired("share").text)
        if run.lease.lost:
            raise LeaseLost()
        message = shared_answer(
            record.asker.user_id, record.question, record.answer, cut_short=record.cut_short
        )
        try:
            via = await deps.slack.post_in_channel(deps.redis, job, job.channel_id, message)
        except PermanentError as error:
            if error.reason == NOT_A_MEMBER:
                raise PermanentError(error.detail, reason=messages.SHARE_NOT_A_MEMBER) from error
            raise
        # Marked at once: a re-run (retry, SIGTERM re-queue) finds it shared and posts nothing.
        await record_delivery(deps, job, via)
        return via


class DismissKind(_ButtonKind):
    """``dismiss``: remove the ephemeral ``/ask`` answer through the click's response_url."""

    model: type[JobBase] = DismissAnswer
    action = "dismiss"

    async def perform(self, run: Run) -> str:
        job = run.job
        assert isinstance(job, DismissAnswer)  # the runner picks this kind by the payload's kind
        if run.lease.lost:
            raise LeaseLost()
        via = await run.deps.slack.delete_original(run.deps.redis, job)
        await record_delivery(run.deps, job, via)
        return via


#: The kind registrations (workers/process.py).
FEEDBACK = FeedbackKind()
SHARE = ShareKind()
DISMISS = DismissKind()
