"""Shared pieces of the benchmarks: the deployment they run against and the statistics they print.

Everything listens on 127.0.0.1: a private redis-server, the fake Slack and Anthropic servers from
the test suite, and the web process as a real uvicorn subprocess (the Procfile's web command, bound
to loopback). Nothing here talks to any other host.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.conftest import (  # noqa: E402
    ANTHROPIC_KEY,
    BOT_TOKEN,
    SIGNING_SECRET,
    RedisServer,
    WebProcess,
    log_events,
    max_in_window,
)
from tests.fakes.anthropic import FakeAnthropic  # noqa: E402
from tests.fakes.slack import FakeSlack  # noqa: E402

__all__ = [
    "ROOT",
    "FakeAnthropic",
    "FakeSlack",
    "RedisServer",
    "WebProcess",
    "deployment_env",
    "log_events",
    "max_in_window",
    "percentile",
    "start_loopback",
]


def deployment_env(redis: RedisServer, slack: FakeSlack, anthropic: FakeAnthropic) -> dict[str, str]:
    """Settings of a loopback deployment, as the processes read them from the environment."""
    return {
        "REDIS_URL": redis.url,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_API_URL": slack.api_url,
        "SLACK_RESPONSE_URL_PREFIXES": slack.response_prefix,
        "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
        "ANTHROPIC_BASE_URL": anthropic.url,
        # Per-request INFO logging is not what is being measured.
        "LOG_LEVEL": "WARNING",
        # Nor are the fair-use limits: one bench user asks thousands of questions.
        "QUOTA_USER_PER_MINUTE": "0",
        "QUOTA_USER_PER_DAY": "0",
        "QUOTA_TEAM_PER_MINUTE": "0",
        "QUOTA_TEAM_PER_DAY": "0",
    }


def start_loopback(running: ExitStack, workdir: Path) -> tuple[RedisServer, FakeSlack, FakeAnthropic]:
    """A private redis-server and the fake Slack and Anthropic servers, each stopped with
    ``running`` (in reverse order, and only if it was started)."""
    redis = RedisServer(workdir)
    redis.start()
    running.callback(redis.stop)
    slack = FakeSlack().start()
    running.callback(slack.stop)
    anthropic = FakeAnthropic().start()
    running.callback(anthropic.stop)
    return redis, slack, anthropic


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile: a value that was actually observed, never an interpolation."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]
