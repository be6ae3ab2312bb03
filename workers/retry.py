"""Retry policy for the answer job, in one place.

| failure          | what happens                                                           |
|------------------|------------------------------------------------------------------------|
| TransientError   | retry after JOB_RETRY_BASE_SECONDS * 2**(attempt-1), or the upstream's |
|                  | retry-after when longer, capped at JOB_TIMEOUT_SECONDS; at most        |
|                  | JOB_MAX_RETRIES retries, then fail                                     |
| PermanentError   | fail now                                                               |
| anything else    | a bug: fail now                                                        |

"fail" means the user gets an error message with a reference id and the job is recorded as
failed with its real cause.
"""

from __future__ import annotations

from app.settings import Settings
from workers.errors import TransientError

#: arq counts a SIGTERM re-queue as a try too. These spare tries keep arq from failing a job
#: silently ("max retries exceeded", no hook) after shutdowns; the job itself decides when
#: transient failures are exhausted.
SPARE_TRIES_FOR_SHUTDOWNS = 3


def should_retry(error: BaseException, attempt: int, settings: Settings) -> bool:
    """True when the failure is transient and retries remain. ``attempt`` starts at 1."""
    return isinstance(error, TransientError) and attempt <= settings.job_max_retries


def retry_delay(error: TransientError, attempt: int, settings: Settings) -> float:
    """Seconds to wait before the next attempt."""
    backoff = settings.job_retry_base_seconds * 2.0 ** (attempt - 1)
    delay = max(backoff, error.retry_after or 0.0)
    # A retry-after longer than a whole job's run means the answer would arrive too late to matter.
    return min(delay, settings.job_timeout_seconds)


def arq_max_tries(settings: Settings) -> int:
    """The ``max_tries`` given to arq for the answer job."""
    return settings.job_max_retries + 1 + SPARE_TRIES_FOR_SHUTDOWNS
