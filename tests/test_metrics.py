"""GET /metrics: Prometheus text of what every process recorded in Redis, and the queue now."""

from __future__ import annotations

import time

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from app.contract.settings import Settings
from app.web.main import create_app
from tests.support.deployment import settings_from
from tests.support.fakes.anthropic import MESSAGES, FakeAnthropic, error
from tests.support.jobs import drain
from tests.support.processes import free_port
from tests.support.redis import RedisServer
from tests.support.slack_requests import SlashCommands, signature_headers
from tests.support.waiting import wait_until


def _samples(web: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = web.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_queue_depth_is_read_at_scrape_time(web: TestClient, commands: SlashCommands) -> None:
    for n in range(3):
        commands.send(web, f"question {n}")

    samples = _samples(web)

    assert samples["asklane_queue_depth", (("kind", "interactive"),)] == 3
    assert samples["asklane_queue_depth", (("kind", "background"),)] == 0


def test_every_command_outcome_and_refused_request_is_counted(
    web: TestClient, commands: SlashCommands
) -> None:
    commands.send(web, "a real question")
    commands.send(web, "help")
    body = commands.body("forged")
    web.post("/slack/events", content=body, headers=signature_headers(body, secret="wrong-secret"))

    def counted() -> bool:
        samples = _samples(web)
        return (
            samples.get(("asklane_commands_total", (("outcome", "queued"),))) == 1
            and samples.get(("asklane_commands_total", (("outcome", "usage"),))) == 1
            and samples.get(("asklane_requests_refused_total", (("status", "401"),))) == 1
        )

    wait_until(counted, timeout=5)


def test_workers_job_events_reach_the_web_processs_metrics(
    web: TestClient, commands: SlashCommands, settings: Settings, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script(MESSAGES, error(500, "api_error"))
    commands.send(web, "a question that is retried once")

    drain(settings)
    samples = _samples(web)

    assert samples["asklane_jobs_started_total", ()] == 2
    assert samples["asklane_jobs_finished_total", (("state", "completed"),)] == 1
    assert samples["asklane_job_retries_total", (("phase", "ai"),)] == 1
    assert samples["asklane_ai_tokens_total", (("kind", "output"),)] == 34
    assert samples["asklane_ai_latency_seconds_count", ()] == 1
    assert samples["asklane_output_tokens_bucket", (("le", "64.0"),)] == 1
    assert samples["asklane_output_tokens_bucket", (("le", "16.0"),)] == 0
    # The fake counts the system prompt and the question, a few dozen tokens.
    assert samples["asklane_input_tokens_bucket", (("le", "16.0"),)] == 0
    assert samples["asklane_input_tokens_bucket", (("le", "64.0"),)] == 1
    assert samples["asklane_queue_depth", (("kind", "interactive"),)] == 0


def test_metrics_are_503_when_redis_is_unreachable(env: dict[str, str]) -> None:
    settings = settings_from({**env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})

    with TestClient(create_app(settings)) as web:
        started = time.monotonic()
        response = web.get("/metrics")
        elapsed = time.monotonic() - started

    assert response.status_code == 503
    # Within its 1 s Redis budget, not after redis-py's 5 s socket timeout.
    assert elapsed < 2.0


def test_with_a_metrics_token_a_scrape_needs_it(env: dict[str, str]) -> None:
    settings = settings_from({**env, "METRICS_TOKEN": "fake-metrics-token"})

    with TestClient(create_app(settings)) as web:
        anonymous = web.get("/metrics")
        wrong = web.get("/metrics", headers={"Authorization": "Bearer guess"})
        right = web.get("/metrics", headers={"Authorization": "Bearer fake-metrics-token"})

    assert (anonymous.status_code, wrong.status_code, right.status_code) == (401, 401, 200)


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        ("Bearer fake-metrics-token", 200),
        ("bearer fake-metrics-token", 200),
        ("BEARER fake-metrics-token", 200),
        ("Bearer   fake-metrics-token", 200),
        ("fake-metrics-token", 401),
        ("Bearerfake-metrics-token", 401),
        ("Basic fake-metrics-token", 401),
        ("Bearer", 401),
        ("Bearer ", 401),
        ("Bearer guess", 401),
        ("Bearer fake-metrics-token extra", 401),
    ],
)
def test_the_metrics_token_follows_the_bearer_scheme(
    env: dict[str, str], authorization: str, status: int
) -> None:
    settings = settings_from({**env, "METRICS_TOKEN": "fake-metrics-token"})

    with TestClient(create_app(settings)) as web:
        response = web.get("/metrics", headers={"Authorization": authorization})

    assert response.status_code == status


def test_metrics_say_whether_redis_accepts_writes(env: dict[str, str], full_redis: RedisServer) -> None:
    with TestClient(create_app(settings_from(env))) as healthy:
        writable = _samples(healthy)[("asklane_redis_accepts_writes", ())]
    with TestClient(create_app(settings_from({**env, "REDIS_URL": full_redis.url}))) as full:
        refusing = _samples(full)[("asklane_redis_accepts_writes", ())]

    # Still 200 with the counters: they are what an operator reads while Redis is full.
    assert (writable, refusing) == (1, 0)
