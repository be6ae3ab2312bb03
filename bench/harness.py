"""Shared pieces of the benchmarks: the deployment they run against, the signed Slack requests
they send it (:class:`Sender`) and the statistics they print.

Everything listens on 127.0.0.1: a private redis-server, the fake Slack and Anthropic servers from
the test support package (tests/support), and the web process as a real uvicorn subprocess (the
Procfile's web command, bound to loopback). Nothing here talks to any other host.
"""

from __future__ import annotations

import http.client
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from app.ops.chat import Clock, Person, dm_event  # noqa: E402
from tests.support.deployment import SIGNING_SECRET, loopback_env  # noqa: E402
from tests.support.fakes.anthropic import FakeAnthropic  # noqa: E402
from tests.support.fakes.slack import FakeSlack  # noqa: E402
from tests.support.logs import log_events  # noqa: E402
from tests.support.measures import max_in_window  # noqa: E402
from tests.support.processes import WebProcess  # noqa: E402
from tests.support.redis import RedisServer  # noqa: E402
from tests.support.slack_requests import signature_headers  # noqa: E402

__all__ = [
    "ROOT",
    "FakeAnthropic",
    "FakeSlack",
    "RedisServer",
    "Sender",
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


#: Under the 5 s after which the web process closes an idle keep-alive connection (README, HTTP limits).
IDLE_SECONDS = 4.0


class Sender:
    """Signed Slack requests to the web process over one keep-alive connection, each ack timed; a
    failed ack is recorded in ``errors`` (the bench goes on)."""

    def __init__(self, port: int, errors: list[str]) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.clock = Clock()
        self.errors = errors
        self.last_used = 0.0

    def close(self) -> None:
        self.conn.close()

    def post(self, body: bytes, headers: dict[str, str], what: str) -> float | None:
        """POST to the web process's one Slack endpoint (events and commands alike) and read the
        ack; its time in ms, or None (an error recorded) when it failed."""
        if time.monotonic() - self.last_used > IDLE_SECONDS:
            self.conn.close()  # the web process closes idle keep-alive connections: open a new one
        started = time.perf_counter()
        try:
            self.conn.request("POST", "/slack/events", body=body, headers=headers)
            response = self.conn.getresponse()
            ack = response.read()
        except (OSError, http.client.HTTPException) as error:
            self.conn.close()
            self.errors.append(f"{what}: ack failed: {type(error).__name__}: {error}")
            return None
        if response.status != 200:
            self.errors.append(f"{what}: ack status {response.status}: {ack[:200]!r}")
            return None
        self.last_used = time.monotonic()
        return (time.perf_counter() - started) * 1000

    def dm(self, person: Person, text: str, what: str) -> tuple[str, float | None]:
        """A top-level DM from ``person`` in their DM channel (as ``asklane chat`` sends it):
        (its ts, which is its thread's, ack ms)."""
        ts = self.clock.ts()
        body = json.dumps(dm_event(person, text, ts)).encode()
        headers = signature_headers(body, secret=SIGNING_SECRET) | {"Content-Type": "application/json"}
        return ts, self.post(body, headers, what)

    def command(self, form: dict[str, str], what: str) -> float | None:
        """A slash command's form, as Slack posts it: its ack ms."""
        body = urlencode(form).encode()
        return self.post(body, signature_headers(body), what)


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
