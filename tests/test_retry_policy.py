"""The retry table of workers/retry.py: which failures are tried again, and after how long."""

from __future__ import annotations

import pytest

from app.contract.settings import Settings
from tests.support.deployment import settings_from
from workers.errors import BackPressure, DeliveryFailed, PermanentError, TransientError
from workers.retry import retry_delay, should_retry


def _settings(**overrides: str) -> Settings:
    return settings_from(
        {
            "SLACK_SIGNING_SECRET": "fake-secret",
            "SLACK_BOT_TOKEN": "xoxb-fake",
            "ANTHROPIC_API_KEY": "fake-key",
            "JOB_MAX_RETRIES": "3",
            "JOB_RETRY_BASE_SECONDS": "2",
            "JOB_RETRY_JITTER": "0",
            "AI_TIMEOUT_SECONDS": "30",
            "JOB_TIMEOUT_SECONDS": "60",
            **overrides,
        }
    )


@pytest.mark.parametrize(
    ("error", "failures", "retried"),
    [
        (TransientError("500"), 1, True),
        (TransientError("500"), 3, True),
        (TransientError("500"), 4, False),
        (BackPressure("429"), 1, True),
        (DeliveryFailed("slack 503"), 3, True),
        (DeliveryFailed("slack 503"), 4, False),
        (PermanentError("401"), 1, False),
        (ValueError("a bug"), 1, False),
    ],
    ids=[
        "transient, first failure",
        "transient, last retry",
        "transient, retries used up",
        "back-pressure",
        "delivery, last retry",
        "delivery, retries used up",
        "permanent",
        "anything else",
    ],
)
def test_only_transient_failures_are_retried_and_only_job_max_retries_times(
    error: BaseException, failures: int, retried: bool
) -> None:
    assert should_retry(error, failures, _settings()) is retried


@pytest.mark.parametrize(
    ("failures", "retry_after", "delay"),
    [
        (1, None, 2.0),
        (2, None, 4.0),
        (3, None, 8.0),
        (1, 30.0, 30.0),
        (3, 1.0, 8.0),
        (1, 0.0, 2.0),
        (6, None, 60.0),
        (1, 600.0, 60.0),
    ],
    ids=[
        "first retry: the base",
        "second: doubled",
        "third: doubled again",
        "a longer retry-after wins",
        "a shorter retry-after does not",
        "retry-after zero",
        "capped at the job timeout",
        "retry-after capped at the job timeout",
    ],
)
def test_retry_delay_doubles_from_the_base_honours_a_longer_retry_after_and_is_capped(
    failures: int, retry_after: float | None, delay: float
) -> None:
    assert retry_delay(TransientError("500", retry_after=retry_after), failures, _settings()) == delay


@pytest.mark.parametrize("failures", [1, 2, 3])
def test_jitter_only_ever_adds_up_to_its_share_of_the_backoff(failures: int) -> None:
    settings = _settings(JOB_RETRY_JITTER="0.5")
    backoff = 2.0 * 2 ** (failures - 1)

    delays = [retry_delay(TransientError("500"), failures, settings) for _ in range(200)]

    assert all(backoff <= delay <= backoff * 1.5 for delay in delays)
