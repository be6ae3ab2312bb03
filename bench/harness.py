"""Shared pieces of the benchmarks: the deployment they run against and the statistics they print.

Everything listens on 127.0.0.1: a private redis-server, the fake Slack and Anthropic servers from
the test support package (tests/support), and the web process as a real uvicorn subprocess (the
Procfile's web command, bound to loopback). Nothing here talks to any other host.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.deployment import loopback_env  # noqa: E402
from tests.support.fakes.anthropic import FakeAnthropic  # noqa: E402
from tests.support.fakes.slack import FakeSlack  # noqa: E402
from tests.support.logs import log_events  # noqa: E402
from tests.support.measures import max_in_window  # noqa: E402
from tests.support.processes import WebProcess  # noqa: E402
from tests.support.redis import RedisServer  # noqa: E402

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
        **loopback_env(redis.url, slack, anthropic),
        # Per-request INFO logging is not what is being measured.
        "LOG_LEVEL": "WARNING",
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


def median(values: Sequence[float]) -> float:
    """The median, or NaN for no values (a run that measured nothing prints as such)."""
    return statistics.median(values) if values else math.nan


def wait_for(condition: Callable[[], bool], timeout: float, interval: float = 0.01) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` passes; whether it held. A bench records a
    miss as an error and goes on, where a test's wait_until would raise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()
