"""How a job run ends, in one vocabulary.

A job kind's steps report trouble by raising the failure types of :mod:`workers.errors`
(decided at the edge: transient or permanent, a delivery or an AI failure, back-pressure), or
:class:`workers.kinds.LeaseLost`. The runner (:mod:`workers.runner`) turns every run into one
:data:`Outcome`, and its arq entry turns that into arq's terms in one place (a return value,
``Retry`` or :class:`JobFailed`).

:class:`JobFailure` is the one model of "why a job failed": built from the error that ended it,
stored in Redis until the user has been told (:mod:`workers.job_state`), and read back by a re-run.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from workers.errors import JobError, TransientError


class JobFailure(BaseModel):
    """Why a job failed; kept in Redis until the user has been told."""

    error: str
    detail: str
    #: The sentence the user is shown.
    reason: str
    permanent: bool
    #: Anthropic's request-id, when the failure was an AI call Anthropic answered.
    request_id: str | None = None

    @classmethod
    def of(cls, error: BaseException) -> JobFailure:
        """The failure an error ends a job with (an error that is not a JobError is a bug)."""
        return cls(
            error=type(error).__name__,
            detail=str(error),
            reason=error.reason if isinstance(error, JobError) else JobError.default_reason,
            permanent=not isinstance(error, TransientError),
            request_id=error.request_id if isinstance(error, JobError) else None,
        )

    @property
    def cause(self) -> str:
        """One line for operators: the failed-job record's error and arq's stored result."""
        return f"{self.error}: {self.detail}"


@dataclass(frozen=True)
class Completed:
    """The job's final message reached the user ``via`` a path of its reply target."""

    via: str


@dataclass(frozen=True)
class AlreadyDone:
    """An earlier run delivered the final message; this one posts nothing."""


@dataclass(frozen=True)
class Abandoned:
    """Another run has the job (this one's lease lapsed): stop without calling or posting."""

    reason: str


@dataclass(frozen=True)
class Deferred:
    """Run the job again in ``delay`` seconds (a retry, a rate-limit or back-pressure wait)."""

    delay: float
    #: Why, for the job's trace: what it waits for, or the failure it retries after.
    reason: str = ""
    #: True for a retry after a failure (counted), False for a wait (uncounted).
    retrying: bool = False


@dataclass(frozen=True)
class Stopped:
    """Someone pressed Stop (app/contract/stops.py): the job ended on purpose, neither failed nor
    retried, and the user gets no failure message (the stopped message already says so, or the
    question never ran)."""


@dataclass(frozen=True)
class Failed:
    """The job is over: the user was told (or could not be), and the record kept."""

    failure: JobFailure


Outcome = Completed | AlreadyDone | Abandoned | Deferred | Stopped | Failed


class JobFailed(Exception):
    """arq's view of a Failed outcome: raised so arq records the job failed with its cause."""
