"""Two kinds that call no AI: a notice posted in a thread, and suggested prompts in the app's DM.

* ``notice`` (:class:`NoticeKind`): what the web process could not say in an Events API ack (over
  quota, too long, nothing asked), posted once in the message's thread through :meth:`Run.deliver`.
* ``prompts`` (:class:`PromptsKind`): SUGGESTED_PROMPTS offered when a user opens the Messages tab
  (``assistant.threads.setSuggestedPrompts`` in their DM with the app). Setting them again is
  harmless, but a job that set them is marked delivered all the same, so a re-run does nothing.

Everything around them (lease, retries, give-up, the failure message: in the thread for a notice,
top-level in the DM for prompts) is the runner's (:mod:`workers.runner`).
"""

from __future__ import annotations

from app.contract import messages
from app.contract.jobs import JobBase, SuggestPrompts, ThreadNotice
from app.contract.messages import SlackMessage
from workers.kinds import LeaseLost, Run, record_delivery

#: The thread's status while its question runs (Slack shows it after the app's name):
#: ``SlackDelivery.update_notice(redis, job, THINKING_STATUS)``.
THINKING_STATUS = SlackMessage(text="is thinking…")


def waiting_status(delay: float) -> SlackMessage:
    """A thread's status while its job waits for a retry (Slack shows it after the app's name)."""
    return SlackMessage(text=f"is retrying in {max(1, round(delay))} s…")


def queued_status(ahead: int) -> SlackMessage:
    """A thread's status while its job waits behind ``ahead`` others."""
    if ahead == 0:
        return SlackMessage(text="is next in line…")
    return SlackMessage(text=f"is busy: {ahead} ahead of you…")


class NoticeKind:
    """``notice``: post the notice's text in its thread, once."""

    model: type[JobBase] = ThreadNotice
    uses_ai = False

    async def perform(self, run: Run) -> str:
        job = run.job
        assert isinstance(job, ThreadNotice)  # the runner picks this kind by the payload's kind
        section = {"type": "section", "text": {"type": "mrkdwn", "text": job.text}}
        return await run.deliver(SlackMessage(text=job.text, blocks=[section], plain=job.text))

    def failure_message(self, job: JobBase, reason: str) -> SlackMessage:
        return messages.failed(reason, job.reference)

    def retrying_message(self, job: JobBase, delay: float) -> SlackMessage:
        return waiting_status(delay)

    def queued_message(self, job: JobBase, ahead: int) -> SlackMessage:
        return queued_status(ahead)


class PromptsKind:
    """``prompts``: offer SUGGESTED_PROMPTS in the user's DM with the app."""

    model: type[JobBase] = SuggestPrompts
    uses_ai = False

    async def perform(self, run: Run) -> str:
        if run.lease.lost:
            raise LeaseLost()
        offered = run.deps.settings.suggested_prompts
        if not offered:
            return "no-prompts"  # SUGGESTED_PROMPTS=[]: nothing to offer
        via = await run.deps.slack.suggest_prompts(run.job, offered)
        await record_delivery(run.deps, run.job, via)
        return via

    def failure_message(self, job: JobBase, reason: str) -> SlackMessage | None:
        # The user only opened a tab: an error post for prompts they did not ask for, at every
        # open, would be noise. The failure is logged and recorded.
        return None

    def retrying_message(self, job: JobBase, delay: float) -> SlackMessage:
        return waiting_status(delay)

    def queued_message(self, job: JobBase, ahead: int) -> SlackMessage:
        return queued_status(ahead)


#: The kind registrations (workers/process.py).
NOTICE = NoticeKind()
PROMPTS = PromptsKind()
