"""Real worker processes under signals, as Heroku sends them: to the whole process group."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from starlette.testclient import TestClient

from app.web.main import create_app
from tests.support.deployment import ROOT, settings_from
from tests.support.fakes.anthropic import MESSAGES, FakeAnthropic, message
from tests.support.fakes.server import Reply
from tests.support.fakes.slack import FakeSlack
from tests.support.processes import WorkerProcess, free_port, is_alive
from tests.support.redis import RedisServer
from tests.support.slack_requests import SlashCommands
from tests.support.waiting import wait_until

ANSWER = "Answer to: what is a p99?"


def test_a_worker_process_answers_a_command_end_to_end(
    web: TestClient,
    commands: SlashCommands,
    start_worker: Callable[..., WorkerProcess],
    fake_slack: FakeSlack,
) -> None:
    start_worker()

    commands.send(web, "what is a p99?")

    wait_until(fake_slack.delivered)
    assert [post["text"] for post in fake_slack.delivered()] == [ANSWER]


def test_sigterm_lets_the_job_in_flight_finish_and_post_then_exits(
    web: TestClient,
    commands: SlashCommands,
    start_worker: Callable[..., WorkerProcess],
    fake_anthropic: FakeAnthropic,
    fake_slack: FakeSlack,
) -> None:
    worker = start_worker(SHUTDOWN_GRACE_SECONDS="3")
    fake_anthropic.script(MESSAGES, Reply(json=message(ANSWER), delay=1.0))
    commands.send(web, "what is a p99?")
    fake_anthropic.wait_for(MESSAGES)

    signalled = time.monotonic()
    worker.signal_group(signal.SIGTERM)
    worker.signal_group(signal.SIGTERM)  # Heroku may send it more than once
    code = worker.wait(timeout=3 + 5)
    exited_after = time.monotonic() - signalled

    assert code == 0
    assert exited_after < 3 + 5
    assert [post["text"] for post in fake_slack.delivered()] == [ANSWER]


def test_sigterm_requeues_a_job_that_outlives_the_grace_period_for_another_worker(
    web: TestClient,
    commands: SlashCommands,
    start_worker: Callable[..., WorkerProcess],
    fake_anthropic: FakeAnthropic,
    fake_slack: FakeSlack,
) -> None:
    slow = {"SHUTDOWN_GRACE_SECONDS": "1", "AI_TIMEOUT_SECONDS": "8", "JOB_TIMEOUT_SECONDS": "10"}
    first = start_worker(**slow)
    fake_anthropic.script(MESSAGES, Reply(json=message("too slow"), delay=4.0))
    commands.send(web, "what is a p99?")
    fake_anthropic.wait_for(MESSAGES)

    signalled = time.monotonic()
    first.signal_group(signal.SIGTERM)
    first.wait(timeout=1 + 5)
    assert time.monotonic() - signalled < 1 + 5
    assert fake_slack.delivered() == []

    start_worker(**slow)
    # The re-queued job may wait long enough for a progress update first; one answer, still.
    wait_until(fake_slack.answers)
    assert fake_slack.answers() == [ANSWER]


def test_worker_survives_a_redis_restart_and_answers_afterwards(
    env: dict[str, str],
    commands: SlashCommands,
    start_worker: Callable[..., WorkerProcess],
    fake_slack: FakeSlack,
    start_redis: Callable[..., RedisServer],
) -> None:
    own_redis = start_redis()
    worker = start_worker(REDIS_URL=own_redis.url)
    own_redis.stop()
    worker.wait_for_log("redis.unavailable")
    time.sleep(1.0)
    assert worker.process.poll() is None

    own_redis.start()
    worker.wait_for_log("redis.reconnected")
    with TestClient(create_app(settings_from({**env, "REDIS_URL": own_redis.url}))) as web:
        commands.send(web, "what is a p99?")
    wait_until(fake_slack.delivered)
    assert [post["text"] for post in fake_slack.delivered()] == [ANSWER]


def test_procfile_web_line_serves_slack_on_port_and_stops_on_sigterm(
    env: dict[str, str], commands: SlashCommands, tmp_path: Path
) -> None:
    web_line = next(line for line in (ROOT / "Procfile").read_text().splitlines() if line.startswith("web:"))
    port = free_port()
    log = (tmp_path / "web.log").open("wb")
    bin_dir = str(Path(sys.executable).parent)
    process = subprocess.Popen(
        ["/bin/sh", "-c", "exec " + web_line.removeprefix("web:").strip()],
        cwd=tmp_path,
        env={**os.environ, **env, "PORT": str(port), "PATH": f"{bin_dir}:{os.environ['PATH']}"},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            wait_until(lambda: is_alive(f"http://127.0.0.1:{port}"))
            response = commands.send(client, "what is a p99?")
            assert response.status_code == 200
            assert "Working on it" in response.text

        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()
