"""With SLACK_APP_TOKEN set, commands arrive over Socket Mode and are handled as over HTTP."""

from __future__ import annotations

import pytest
import redis
from starlette.testclient import TestClient

from app.web.main import create_app
from tests.support.deployment import settings_from
from tests.support.fakes.slack import FakeSlack
from tests.support.jobs import drain, queued_job_ids
from tests.support.slack_requests import SlashCommands
from tests.support.waiting import wait_until

APP_TOKEN = "xapp-1-A0APP-fake-app-token-for-tests"


def test_a_command_over_socket_mode_is_acked_queued_and_answered(
    env: dict[str, str], commands: SlashCommands, fake_slack: FakeSlack, redis_client: redis.Redis
) -> None:
    settings = settings_from({**env, "SLACK_APP_TOKEN": APP_TOKEN})

    with TestClient(create_app(settings)):
        wait_until(lambda: fake_slack.socket is not None, timeout=10)
        envelope_id = fake_slack.send_slash_command(commands.form("what is a p99?"))
        [ack] = wait_until(lambda: [a for a in fake_slack.socket_acks if a.get("envelope_id") == envelope_id])
    drain(settings)

    assert "Working on it" in ack["payload"]["text"]
    assert ack["payload"]["response_type"] == "ephemeral"
    assert queued_job_ids(redis_client) == []
    assert [post["text"] for post in fake_slack.delivered()] == ["Answer to: what is a p99?"]


def test_without_an_app_token_no_socket_is_opened(web: TestClient, fake_slack: FakeSlack) -> None:
    assert web.get("/healthz").status_code == 200

    assert fake_slack.received("/api/apps.connections.open") == []


def test_a_bot_token_in_place_of_the_app_token_is_refused_at_start_up(env: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="xapp"):
        settings_from({**env, "SLACK_APP_TOKEN": "xoxb-not-an-app-token"})
