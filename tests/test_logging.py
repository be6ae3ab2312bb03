"""Operators read structured events; users' questions and secrets stay out of the logs."""

from __future__ import annotations

import logging
import re
import signal
from collections.abc import Callable

import pytest
import structlog
from starlette.testclient import TestClient

from app.contract.logs import configure_logging
from tests.support.deployment import ANTHROPIC_KEY, BOT_TOKEN, SIGNING_SECRET, settings_from
from tests.support.fakes.anthropic import MESSAGES, FakeAnthropic, error
from tests.support.fakes.server import Reply
from tests.support.fakes.slack import RESPONSE, FakeSlack
from tests.support.processes import WorkerProcess
from tests.support.slack_requests import SlashCommands
from tests.support.waiting import wait_until

QUESTION = "which-unique-question-text-42?"


def _run_one_job(
    web: TestClient,
    commands: SlashCommands,
    start_worker: Callable[..., WorkerProcess],
    fake_slack: FakeSlack,
) -> WorkerProcess:
    worker = start_worker()
    commands.send(web, QUESTION)
    wait_until(fake_slack.delivered)
    worker.signal_group(signal.SIGTERM)
    worker.wait(timeout=10)
    return worker


def test_every_job_event_carries_job_id_team_and_user(
    web: TestClient,
    commands: SlashCommands,
    start_worker: Callable[..., WorkerProcess],
    fake_anthropic: FakeAnthropic,
    fake_slack: FakeSlack,
) -> None:
    fake_anthropic.script(MESSAGES, error(500, "api_error"))

    worker = _run_one_job(web, commands, start_worker, fake_slack)

    job_events = [e for e in worker.events() if e["event"].startswith(("job.", "ai."))]
    assert {e["event"] for e in job_events} >= {
        "job.started",
        "job.retrying",
        "ai.completed",
        "job.completed",
    }
    for event in job_events:
        assert event["job_id"].startswith("ask-")
        assert event["team"] == "T0TEAM"
        assert event["user"] == "U0ASKER"


def test_ai_latency_and_token_usage_are_logged_per_job(
    web: TestClient,
    commands: SlashCommands,
    start_worker: Callable[..., WorkerProcess],
    fake_slack: FakeSlack,
    fake_anthropic: FakeAnthropic,
) -> None:
    worker = _run_one_job(web, commands, start_worker, fake_slack)

    [completed] = worker.events("ai.completed")
    assert completed["latency_ms"] >= 0
    assert completed["input_tokens"] == fake_anthropic.token_log[-1].input_tokens > 0
    assert completed["output_tokens"] == 34


def test_questions_and_secrets_are_not_logged_at_info(
    web: TestClient,
    commands: SlashCommands,
    start_worker: Callable[..., WorkerProcess],
    fake_slack: FakeSlack,
) -> None:
    worker = _run_one_job(web, commands, start_worker, fake_slack)

    log = worker.log()
    for secret in (QUESTION, BOT_TOKEN, ANTHROPIC_KEY, SIGNING_SECRET):
        assert secret not in log


def test_secrets_are_redacted_wherever_they_appear_in_a_log_line(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    settings = settings_from({**env, "REDIS_URL": "redis://default:hunter2-redis-password@127.0.0.1:1/0"})
    configure_logging(settings)
    log = structlog.get_logger("tests.redaction")
    leaks = {
        "bot": BOT_TOKEN,
        "user": "xoxp-1234-5678-abcdef",
        "rotating": "xoxe.xoxp-1-abcdef",
        "app": "xapp-1-A0APP-1234-abcdef",
        "anthropic": "sk-ant-api03-abcdef_ghij-klm",
        "ours": ANTHROPIC_KEY,
        "signing": SIGNING_SECRET,
        "url": "rediss://user:s3cret-pass@redis.example.com:6379",
        "configured": "hunter2-redis-password",
    }
    try:
        raise RuntimeError(f"upstream said: {leaks['bot']} and {leaks['url']}")
    except RuntimeError:
        log.exception("test.leak", nested={"deep": [leaks["app"], {"key": leaks["anthropic"]}]}, **leaks)
    logging.getLogger("some.library").warning("token=%s", leaks["user"])

    out = capsys.readouterr().out
    assert "test.leak" in out and "some.library" in out
    for secret in [*leaks.values(), "s3cret-pass"]:
        assert secret not in out
    assert "[redacted]" in out


def test_a_full_run_at_debug_level_logs_no_secret(
    web: TestClient,
    commands: SlashCommands,
    start_worker: Callable[..., WorkerProcess],
    fake_anthropic: FakeAnthropic,
    fake_slack: FakeSlack,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake_anthropic.script(MESSAGES, error(500, "api_error"))
    # A refusal whose body echoes credentials: the worker logs the start of a refusal's body.
    fake_slack.script(RESPONSE, Reply(status=404, json={"e": "expired", "t": BOT_TOKEN, "k": ANTHROPIC_KEY}))
    worker = start_worker(LOG_LEVEL="DEBUG")
    commands.send(web, "first question")
    commands.send(web, "second question")
    wait_until(lambda: len(fake_slack.answers()) == 2)
    worker.signal_group(signal.SIGTERM)
    worker.wait(timeout=10)

    logs = worker.log() + capsys.readouterr().out
    assert '"debug"' in logs
    # The refusal echoing the credentials was logged, with them redacted.
    [refused] = [line for line in logs.splitlines() if "delivery.response_url_refused" in line]
    assert "[redacted]" in refused
    for secret in (BOT_TOKEN, ANTHROPIC_KEY, SIGNING_SECRET):
        assert secret not in logs
    assert not re.search(r"xox[a-z]-|xapp-|sk-ant-", logs)
