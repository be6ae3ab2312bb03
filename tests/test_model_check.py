"""A mistyped ANTHROPIC_MODEL is reported when the worker starts, not first found by users."""

from __future__ import annotations

from collections.abc import Callable

from starlette.testclient import TestClient

from tests.support.fakes.slack import FakeSlack
from tests.support.processes import WorkerProcess
from tests.support.slack_requests import SlashCommands
from tests.support.waiting import wait_until


def test_a_worker_started_with_an_unknown_model_logs_one_error_naming_it(
    start_worker: Callable[..., WorkerProcess],
) -> None:
    worker = start_worker(ANTHROPIC_MODEL="claude-haiku-5-6")

    [event] = worker.events("worker.model_not_found")
    assert event["level"] == "error"
    assert event["model"] == "claude-haiku-5-6"
    assert worker.events("worker.ai_ready") == []


def test_a_question_to_a_worker_with_an_unknown_model_says_an_admin_must_fix_it(
    start_worker: Callable[..., WorkerProcess],
    web: TestClient,
    commands: SlashCommands,
    fake_slack: FakeSlack,
) -> None:
    start_worker(ANTHROPIC_MODEL="claude-haiku-5-6")

    commands.send(web, "what is a p99?")

    [text] = wait_until(lambda: [post["text"] for post in fake_slack.delivered()])
    assert "claude-haiku-5-6" in text
    assert "an admin needs to fix ANTHROPIC_MODEL" in text
    assert "(ref " in text


def test_a_worker_started_with_a_known_model_reports_it_ready(
    start_worker: Callable[..., WorkerProcess],
) -> None:
    worker = start_worker()

    [event] = worker.events("worker.ai_ready")
    assert event["model"] == "claude-haiku-5-5"
    assert worker.events("worker.model_not_found") == []
