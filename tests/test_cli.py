"""The `asklane` operator command, against real Redis, real jobs and a real worker."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from starlette.testclient import TestClient

from app.cli import main
from app.queue import enqueue_ask, open_redis
from app.settings import Settings
from tests.conftest import SlashCommands, WorkerProcess, drain, queued_job_ids, wait_until
from tests.fakes.anthropic import MESSAGES, FakeAnthropic, error
from tests.fakes.slack import FakeSlack
from workers.retention import FAILED_KEY


def _run(capsys: pytest.CaptureFixture[str], settings: Settings, *argv: str) -> Any:
    capsys.readouterr()  # the workers' and web's log lines so far
    assert main([*argv, "--json"], settings) == 0
    return json.loads(capsys.readouterr().out)


def _fail_one_job(web: TestClient, commands: SlashCommands, settings: Settings, fake: FakeAnthropic) -> str:
    fake.script(MESSAGES, error(400, "invalid_request_error"))
    commands.send(web, "a question Claude refuses")
    drain(settings)
    with redis.Redis.from_url(settings.redis_url) as client:
        return str(json.loads(client.lindex(FAILED_KEY, 0) or b"{}")["job_id"])


def test_status_counts_queued_jobs_by_priority(
    web: TestClient, commands: SlashCommands, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    for n in range(2):
        commands.send(web, f"interactive {n}")

    async def queue_background() -> None:
        client = open_redis(settings)
        await enqueue_ask(client, commands.job("a later summary"), "background")
        await client.aclose()

    asyncio.run(queue_background())

    status = _run(capsys, settings, "status")

    assert status["queue"] == {"interactive": 2, "background": 1, "scheduled": 0}
    assert status["running"] == [] and status["paused_for_s"] == 0


def test_status_shows_each_live_worker_and_arqs_health_check(
    settings: Settings, start_worker: Callable[..., WorkerProcess], capsys: pytest.CaptureFixture[str]
) -> None:
    start_worker()
    wait_until(lambda: _run(capsys, settings, "status")["workers"], timeout=10)

    status = _run(capsys, settings, "status")

    [worker] = status["workers"]
    assert worker["running"] == 0 and worker["completed"] == 0
    assert "j_complete=" in status["arq_health"]


def test_jobs_failed_lists_the_failure_with_its_cause_and_reference(
    web: TestClient,
    commands: SlashCommands,
    settings: Settings,
    fake_anthropic: FakeAnthropic,
    capsys: pytest.CaptureFixture[str],
) -> None:
    job_id = _fail_one_job(web, commands, settings, fake_anthropic)

    [record] = _run(capsys, settings, "jobs", "failed")

    assert record["job_id"] == job_id
    assert record["error"].startswith("PermanentError") and record["reference"]
    assert main(["jobs", "failed"], settings) == 0
    table = capsys.readouterr().out
    assert job_id in table and "PermanentError" in table


def test_retry_queues_a_failed_job_again_and_it_is_answered(
    web: TestClient,
    commands: SlashCommands,
    settings: Settings,
    fake_anthropic: FakeAnthropic,
    fake_slack: FakeSlack,
    redis_client: redis.Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    job_id = _fail_one_job(web, commands, settings, fake_anthropic)

    [retried] = _run(capsys, settings, "retry", job_id)
    drain(settings)

    assert retried["failed_job_id"] == job_id and retried["job_id"] != job_id
    assert fake_slack.delivered()[-1]["text"] == "Answer to: a question Claude refuses"
    assert redis_client.llen(FAILED_KEY) == 0


def test_retry_all_failed_and_purge_empty_the_failed_list(
    web: TestClient,
    commands: SlashCommands,
    settings: Settings,
    fake_anthropic: FakeAnthropic,
    redis_client: redis.Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for _ in range(2):
        _fail_one_job(web, commands, settings, fake_anthropic)

    assert len(_run(capsys, settings, "retry", "--all-failed")) == 2
    assert len(queued_job_ids(redis_client)) == 2
    drain(settings)
    _fail_one_job(web, commands, settings, fake_anthropic)
    assert _run(capsys, settings, "purge", "--failed") == {"purged": 1}
    assert redis_client.llen(FAILED_KEY) == 0


def test_retrying_an_unknown_job_exits_non_zero(settings: Settings) -> None:
    assert main(["retry", "ask-unknown"], settings) == 1


def test_the_installed_command_reads_its_settings_from_the_environment(
    env: dict[str, str], tmp_path: Path
) -> None:
    asklane = Path(sys.executable).parent / "asklane"
    done = subprocess.run(
        [str(asklane), "status"],
        env={**os.environ, **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("queued      0 interactive, 0 background")
