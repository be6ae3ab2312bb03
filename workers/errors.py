"""The two kinds of failure a job can meet, decided at the edge (the Anthropic and Slack clients).

A job kind's steps raise these; the runner's retry policy only looks at these types (see
:mod:`workers.retry`) and turns them into one outcome (:mod:`workers.outcomes`).
"""

from __future__ import annotations

from app.contract.usage import CallUsage


class JobError(Exception):
    """Base class. ``reason`` is the short sentence shown to the user if this ends the job."""

    default_reason = "something went wrong on our side."

    #: Anthropic's ``request-id`` of the failed call, when Anthropic answered (set by
    #: workers/ai.py's classification): what its support asks for, shown by ``asklane jobs show``.
    request_id: str | None = None
    #: What the failed call used, when Anthropic answered and billed it (a refusal, an empty
    #: answer): charged like any call.
    usage: CallUsage | None = None

    def __init__(self, detail: str, *, reason: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.reason = reason or self.default_reason


class TransientError(JobError):
    """Worth trying again: rate limits, overload, 5xx, timeouts, dropped connections."""

    default_reason = "Claude is busy or unreachable right now. Please try again in a few minutes."

    def __init__(
        self,
        detail: str,
        *,
        retry_after: float | None = None,
        throttled: bool = False,
        reason: str | None = None,
    ) -> None:
        super().__init__(detail, reason=reason)
        #: Seconds the other side asked us to wait, when it said.
        self.retry_after = retry_after
        #: The provider is throttling everyone (429/529), not just failing this call: every
        #: worker should hold its AI calls, not only this job.
        self.throttled = throttled


class BackPressure(TransientError):
    """The provider asks everyone to slow down (a rate-limit 429): the question did not fail, it
    must wait. Waiting uses none of its retries; it is bounded by the job's maximum age and
    AI_BACKPRESSURE_MAX_WAIT_SECONDS instead (see :mod:`workers.retry`)."""

    def __init__(self, detail: str, *, retry_after: float | None = None) -> None:
        super().__init__(detail, retry_after=retry_after, throttled=True)


class DeliveryFailed(TransientError):
    """Slack did not take the message (rate limited, 5xx, unreachable). Counted apart from AI
    failures: a generated answer gets its own retries to reach the user."""

    default_reason = "I had an answer, but Slack would not accept it. Please try again."


class SlackBusy(DeliveryFailed):
    """Slack's posting limits (a channel's next posting moment, a workspace paused after a 429)
    leave no room in this run: the message did not fail, it must wait. Waiting uses none of the
    job's retries (the runner defers it, as for the AI rate limiter), bounded by its age. Where it
    is not waited out (the failure message) it counts as the delivery failure it subclasses."""


class PermanentError(JobError):
    """Trying again cannot help: bad request, auth, refusal, a channel we cannot post to."""


class InvalidPayload(PermanentError):
    """The job in Redis does not match the contract (app/contract/jobs.py): unknown version or kind,
    or malformed."""


class StopRequested(Exception):
    """Someone pressed Stop for this job (app/contract/stops.py): it ends as stopped, not failed and
    not retried. Raised by a kind's steps when they see the stop request (the AI stream already
    closed, the message already ended with its note), and by the runner for a job stopped before it
    ran."""
