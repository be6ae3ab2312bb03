"""Shared pieces of the benchmarks: the deployment they run against and the statistics they print.

Everything listens on 127.0.0.1: a private redis-server, the fake Slack and Anthropic servers from
the test suite, and the web process as a real uvicorn subprocess (the Procfile's web command, bound
to loopback). Nothing here talks to any other host.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.conftest import ANTHROPIC_KEY, BOT_TOKEN, SIGNING_SECRET, RedisServer, free_port  # noqa: E402
from tests.fakes.anthropic import FakeAnthropic  # noqa: E402
from tests.fakes.slack import FakeSlack  # noqa: E402

#: The virtualenv's bin directory; the benchmarks are run with its python.
VENV_BIN = Path(sys.executable).parent

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
    }


class WebProcess:
    """The web dyno: ``uvicorn app.main:create_app --factory`` as its own process group."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [
                str(VENV_BIN / "uvicorn"),
                "app.main:create_app",
                "--factory",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--no-access-log",
            ],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_healthy(self, timeout: float = 20.0) -> None:
        """Block until GET /healthz answers 200 (uvicorn is up and Redis answers PING)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            try:
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                pass
            finally:
                conn.close()
            time.sleep(0.05)
        raise RuntimeError(f"web process did not become healthy; its log:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self._log.close()


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile: a value that was actually observed, never an interpolation."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def max_in_window(times: Sequence[float], window: float = 1.0) -> int:
    """Most events in any half-open window ``[t, t + window)``; the worst one starts at an event."""
    ordered = sorted(times)
    best, first = 0, 0
    for last, at in enumerate(ordered):
        while at - ordered[first] >= window:
            first += 1
        best = max(best, last - first + 1)
    return best


def log_events(log: str, event: str) -> list[dict[str, Any]]:
    """The JSON log lines (LOG_FORMAT=json) whose ``event`` is ``event``, in order.

    Lines that are not JSON (a traceback, arq's own start-up output) are skipped.
    """
    found = []
    for line in log.splitlines():
        if f'"{event}"' not in line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == event:
            found.append(record)
    return found
