"""rediss:// against a self-signed certificate, as Heroku Redis serves it."""

from __future__ import annotations

from collections.abc import Callable

from starlette.testclient import TestClient

from app.web.main import create_app
from tests.support.deployment import settings_from
from tests.support.fakes.slack import FakeSlack
from tests.support.jobs import drain
from tests.support.redis import RedisServer
from tests.support.slack_requests import SlashCommands


def test_rediss_with_verification_off_carries_a_command_end_to_end(
    env: dict[str, str],
    start_redis: Callable[..., RedisServer],
    commands: SlashCommands,
    fake_slack: FakeSlack,
) -> None:
    tls_redis = start_redis(tls=True)
    settings = settings_from({**env, "REDIS_URL": tls_redis.url, "REDIS_TLS_VERIFY": "false"})

    with TestClient(create_app(settings)) as web:
        assert web.get("/readyz").status_code == 200
        commands.send(web, "what is a p99?")
    drain(settings)

    assert [post["text"] for post in fake_slack.delivered()] == ["Answer to: what is a p99?"]


def test_rediss_with_verification_on_refuses_a_self_signed_certificate(
    env: dict[str, str], start_redis: Callable[..., RedisServer]
) -> None:
    tls_redis = start_redis(tls=True)
    settings = settings_from({**env, "REDIS_URL": tls_redis.url, "REDIS_TLS_VERIFY": "true"})

    with TestClient(create_app(settings)) as web:
        assert web.get("/readyz").status_code == 503
