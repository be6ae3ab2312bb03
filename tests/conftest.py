"""Pytest fixtures: a real redis-server, fake Slack and Anthropic servers, the real web app and
real arq workers. The helpers behind them live in :mod:`tests.support`, which bench/ uses too."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from starlette.testclient import TestClient

from app.contract.settings import Settings
from app.web.main import create_app
from tests.support.deployment import loopback_env, settings_from
from tests.support.fakes.anthropic import FakeAnthropic
from tests.support.fakes.slack import FakeSlack
from tests.support.processes import WebProcess, WorkerProcess
from tests.support.redis import RedisServer
from tests.support.slack_requests import SlashCommands

# --- Redis -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """The Redis every test shares; :func:`start_redis` gives a test one of its own."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server: RedisServer) -> redis.Redis:
    """A sync client on an empty database."""
    client = redis_server.client()
    client.flushall()
    return client


@pytest.fixture
def start_redis(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Start a Redis of this test's own, which it may stop, kill and restart; all are stopped
    after the test.

    ``appendonly``: AOF on, so stored jobs survive a kill. ``tls``: rediss:// with a self-signed
    certificate. ``full``: filled to its maxmemory with noeviction, so it answers PING and reads
    and refuses every write.
    """
    started: list[RedisServer] = []

    def start(*, appendonly: bool = False, tls: bool = False, full: bool = False) -> RedisServer:
        workdir = tmp_path / f"redis-{len(started)}"
        workdir.mkdir()
        server = RedisServer(workdir, appendonly=appendonly, tls=tls)
        started.append(server)
        server.start()
        if full:
            server.fill()
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def full_redis(start_redis: Callable[..., RedisServer]) -> RedisServer:
    """A Redis of this test's own that answers PING and reads and refuses every write."""
    return start_redis(full=True)


# --- Fake Slack and Anthropic ------------------------------------------------------------------


@pytest.fixture(scope="session")
def _anthropic_server() -> Iterator[FakeAnthropic]:
    server = FakeAnthropic().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def _slack_server() -> Iterator[FakeSlack]:
    server = FakeSlack().start()
    yield server
    server.stop()


@pytest.fixture
def fake_anthropic(_anthropic_server: FakeAnthropic) -> FakeAnthropic:
    _anthropic_server.reset()
    return _anthropic_server


@pytest.fixture
def fake_slack(_slack_server: FakeSlack) -> FakeSlack:
    _slack_server.reset()
    return _slack_server


# --- Settings ----------------------------------------------------------------------------------


@pytest.fixture
def env(
    redis_client: redis.Redis, redis_server: RedisServer, fake_anthropic: FakeAnthropic, fake_slack: FakeSlack
) -> dict[str, str]:
    """The environment of a test deployment: every URL points at loopback; short timings."""
    return {
        **loopback_env(redis_server.url, fake_slack, fake_anthropic),
        "AI_TIMEOUT_SECONDS": "2",
        "JOB_TIMEOUT_SECONDS": "6",
        "JOB_RETRY_BASE_SECONDS": "0.2",
        "JOB_RETRY_JITTER": "0",
        "SHUTDOWN_GRACE_SECONDS": "3",
        "LOG_FORMAT": "json",
    }


@pytest.fixture
def settings(env: dict[str, str]) -> Settings:
    return settings_from(env)


# --- Slack commands, the web app and workers ---------------------------------------------------


@pytest.fixture
def commands(fake_slack: FakeSlack) -> SlashCommands:
    return SlashCommands(fake_slack)


@pytest.fixture
def web(settings: Settings) -> Iterator[TestClient]:
    """The real ASGI app, lifespan included."""
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture
def start_web(env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., WebProcess]]:
    """Start web processes (``port=`` to restart one where it was); all are stopped after the test."""
    started: list[WebProcess] = []

    def start(port: int | None = None, **overrides: str) -> WebProcess:
        web = WebProcess({**env, **overrides}, tmp_path / "web.log", port)
        started.append(web)
        web.wait_listening()
        return web

    yield start
    for web in started:
        web.stop()


@pytest.fixture
def start_worker(env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(**overrides: str) -> WorkerProcess:
        worker = WorkerProcess({**env, **overrides}, tmp_path / f"worker-{len(started)}.log")
        started.append(worker)
        worker.wait_for_log("worker.started", timeout=45)  # imports and warm-up, on a busy machine
        return worker

    yield start
    for worker in started:
        worker.stop()
