"""Retry policy for every job kind, in one place (applied by :mod:`workers.runner`).

| failure          | what happens                                                            |
|------------------|-------------------------------------------------------------------------|
| TransientError   | retry after JOB_RETRY_BASE_SECONDS * 2**(failures-1), plus up to        |
|                  | JOB_RETRY_JITTER of it, or the upstream's retry-after when longer;      |
|                  | capped at JOB_TIMEOUT_SECONDS; at most JOB_MAX_RETRIES retries, and     |
|                  | never past MAX_JOB_AGE_SECONDS; then fail                               |
| throttled (529)  | as above, and every worker holds its AI calls for the retry-after       |
|                  | (the shared pause in :mod:`workers.ratelimit`, at most the job timeout) |
| BackPressure     | wait, not a failure: every worker holds its AI calls for the            |
| (rate-limit 429) | retry-after (capped as above) and the job is deferred until then, no    |
|                  | retry used; fail once the wait would pass AI_BACKPRESSURE_MAX_WAIT_     |
|                  | SECONDS since its first refusal, or MAX_JOB_AGE_SECONDS                 |
| SlotTooFar       | wait for the rate limiter: deferred, not counted as a failure; fail     |
|                  | when the wait would pass MAX_JOB_AGE_SECONDS or (for a job refused      |
|                  | before) AI_BACKPRESSURE_MAX_WAIT_SECONDS                                |
| SlackBusy        | wait for Slack's posting limits (a channel's next moment, a workspace   |
|                  | paused by a 429): deferred until then, not counted; fail as SlotTooFar  |
| Redis error      | whole job again in JOB_RETRY_BASE_SECONDS, uncounted; fail when that    |
| outside policy   | would pass MAX_JOB_AGE_SECONDS                                          |
| PermanentError   | fail now                                                                |
| worker died      | re-run by another worker (job.stalled); after MAX_STALLS re-runs, fail  |
| failure message  | retried alone, as a TransientError, when Slack does not take it         |
| not delivered    |                                                                         |
| anything else    | a bug: fail now                                                         |

"fail" means the user gets an error message with a reference id and the job is recorded as
failed with its real cause. Every deferral checks the job's age (measured from its Redis-clock
enqueue stamp, :mod:`workers.age`), so none lets a job end silently inside arq. Failures are
counted by the job itself in Redis, not by arq's ``job_try``, which also counts rate-limit
deferrals and SIGTERM re-queues.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from app.contract.settings import Settings
from workers.errors import TransientError

#: Slack's response_url lives 30 minutes; an answer later than this could not reach the user the
#: way they asked, so a job that would still be retrying by then gives up and says so.
MAX_JOB_AGE_SECONDS = 25 * 60

#: Re-runs after the job's worker died mid-job (job.stalled); one more crash fails the job, as
#: BullMQ's maxStalledCount does.
MAX_STALLS = 1

#: arq's own try limit, only a backstop: the policy above decides when a job has failed, and
#: arq's "max retries exceeded" would fail a job silently.
ARQ_MAX_TRIES = 10_000


def should_retry(error: BaseException, failures: int, settings: Settings) -> bool:
    """True when the failure is transient and retries remain. ``failures`` counts this one."""
    return isinstance(error, TransientError) and failures <= settings.job_max_retries


def retry_delay(error: TransientError, failures: int, settings: Settings) -> float:
    """Seconds to wait before the next attempt, after ``failures`` failed attempts."""
    backoff = settings.job_retry_base_seconds * 2.0 ** (failures - 1)
    backoff += backoff * random.uniform(0.0, settings.job_retry_jitter)
    delay = max(backoff, error.retry_after or 0.0)
    # A retry-after longer than a whole job's run means the answer would arrive too late to matter.
    return min(delay, settings.job_timeout_seconds)


def too_old_to_wait(enqueued_at: datetime, delay: float) -> bool:
    """True when running again after ``delay`` would pass MAX_JOB_AGE_SECONDS.

    ``enqueued_at`` is the job's queueing moment on this worker's clock (:mod:`workers.age`).
    """
    deadline = enqueued_at + timedelta(seconds=MAX_JOB_AGE_SECONDS)
    return datetime.now(UTC) + timedelta(seconds=delay) > deadline


def waited_too_long(refused_for: float | None, delay: float, settings: Settings) -> bool:
    """True when a job refused for back-pressure ``refused_for`` seconds ago would, after waiting
    ``delay`` more, have waited past AI_BACKPRESSURE_MAX_WAIT_SECONDS. Never refused: False."""
    return refused_for is not None and refused_for + delay > settings.ai_backpressure_max_wait_seconds
