"""Shared fixtures: a real redis-server, fake Slack and Anthropic servers, signed requests,
and ways to run the real web app and real arq workers against them."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import io
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import redis
from arq.worker import Worker
from starlette.testclient import TestClient

from app.events import JobEvents
from app.job import AskJob
from app.main import create_app
from app.queue import ENQUEUED_AT_PREFIX, enqueue_ask, open_redis
from app.settings import Settings
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.slack import FakeSlack
from workers.arq_worker import AsklaneWorker
from workers.worker import worker_settings

ROOT = Path(__file__).resolve().parent.parent
SIGNING_SECRET = "fake-signing-secret-for-tests"
BOT_TOKEN = "xoxb-fake-bot-token-for-tests"
ANTHROPIC_KEY = "fake-anthropic-key-for-tests"
DRAIN_TIMEOUT_SECONDS = 90


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- Redis -------------------------------------------------------------------------------------


class RedisServer:
    """A real redis-server on a free loopback port, started and stopped by the tests."""

    def __init__(self, workdir: Path, *, tls: bool = False, appendonly: bool = False) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.tls = tls
        #: AOF persistence on, as a production Redis has it: stored jobs survive a restart.
        self.appendonly = appendonly
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def _listen_args(self) -> list[str]:
        if not self.tls:
            return ["--port", str(self.port)]
        # A self-signed certificate, as Heroku Redis presents.
        cert, key = self.workdir / "cert.pem", self.workdir / "key.pem"
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                str(key),
                "-out",
                str(cert),
                "-days",
                "1",
                "-subj",
                "/CN=self-signed-redis",
            ],
            check=True,
            capture_output=True,
        )
        return [
            "--port",
            "0",
            "--tls-port",
            str(self.port),
            "--tls-cert-file",
            str(cert),
            "--tls-key-file",
            str(key),
            "--tls-auth-clients",
            "no",
        ]

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (apt-get install -y redis-server)")
        self.process = subprocess.Popen(
            [
                binary,
                *self._listen_args(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes" if self.appendonly else "no",
                # With the default everysec, a write acked just before a SIGKILL can be lost.
                "--appendfsync",
                "always" if self.appendonly else "everysec",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = self.client()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def kill(self) -> None:
        """SIGKILL, as a crashed or OOM-killed Redis dies."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_connect_timeout=0.2, ssl=self.tls, ssl_cert_reqs="none")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
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
def full_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own, filled to its maxmemory with noeviction: it answers PING and
    reads, and refuses every write ("OOM command not allowed")."""
    server = RedisServer(tmp_path)
    server.start()
    client = server.client()
    for n in range(200):
        client.set(f"filler:{n}", b"x" * 10_000)
    # Below what is used, as after a burst of writes: a write just under the limit would still
    # pass and make the probe's answer depend on its size.
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", int(client.info("memory")["used_memory"]) - 1024 * 1024)
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        client.set("probe", b"1")
    yield server
    server.stop()


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
        "REDIS_URL": redis_server.url,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_API_URL": fake_slack.api_url,
        "SLACK_RESPONSE_URL_PREFIXES": fake_slack.response_prefix,
        "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
        "ANTHROPIC_BASE_URL": fake_anthropic.url,
        "AI_TIMEOUT_SECONDS": "2",
        "JOB_TIMEOUT_SECONDS": "6",
        "JOB_RETRY_BASE_SECONDS": "0.2",
        "JOB_RETRY_JITTER": "0",
        "SHUTDOWN_GRACE_SECONDS": "3",
        # Tests send many questions as one user; tests/test_quota.py turns the limits on.
        "QUOTA_USER_PER_MINUTE": "0",
        "QUOTA_USER_PER_DAY": "0",
        "QUOTA_TEAM_PER_MINUTE": "0",
        "QUOTA_TEAM_PER_DAY": "0",
        "LOG_FORMAT": "json",
    }


def settings_from(env: dict[str, str]) -> Settings:
    return Settings(_env_file=None, **{key.lower(): value for key, value in env.items()})


@pytest.fixture
def settings(env: dict[str, str]) -> Settings:
    return settings_from(env)


# --- Signed slash commands and the web app -----------------------------------------------------


def signature_headers(
    body: bytes, *, secret: str = SIGNING_SECRET, timestamp: int | None = None
) -> dict[str, str]:
    """Headers Slack would send with ``body``: v0 HMAC-SHA256 over ``v0:{timestamp}:{body}``."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(secret.encode(), f"v0:{ts}:".encode() + body, hashlib.sha256).hexdigest()
    return {
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": f"v0={digest}",
        "Content-Type": "application/x-www-form-urlencoded",
    }


class SlashCommands:
    """Builds slash-command form bodies as Slack sends them, addressed to the fake Slack."""

    def __init__(self, fake_slack: FakeSlack) -> None:
        self.fake_slack = fake_slack

    def form(self, text: str, **fields: str) -> dict[str, str]:
        hook = uuid.uuid4().hex
        form = {
            "token": "deprecated-verification-token",
            "team_id": "T0TEAM",
            "team_domain": "example",
            "channel_id": "C0CHANNEL",
            "channel_name": "general",
            "user_id": "U0ASKER",
            "user_name": "asker",
            "command": "/ask",
            "text": text,
            "api_app_id": "A0APP",
            "response_url": f"{self.fake_slack.response_prefix}{hook}",
            "trigger_id": f"{time.time_ns()}.{uuid.uuid4().int % 10**9}.{uuid.uuid4().hex}",
        }
        form.update(fields)
        return form

    def job(self, text: str, *, enqueued_at: datetime | None = None) -> AskJob:
        """The AskJob the web process would queue for this command."""
        form = self.form(text)
        return AskJob(
            team_id=form["team_id"],
            channel_id=form["channel_id"],
            user_id=form["user_id"],
            command="/ask",
            text=text,
            response_url=form["response_url"],
            trigger_id=form["trigger_id"],
            enqueued_at=enqueued_at or datetime.now(UTC),
        )

    def body(self, text: str, **fields: str) -> bytes:
        return urlencode(self.form(text, **fields)).encode()

    def send(
        self,
        client: TestClient | httpx.Client,
        text: str = "",
        *,
        form: dict[str, str] | None = None,
        **fields: str,
    ) -> httpx.Response:
        body = urlencode(form).encode() if form is not None else self.body(text, **fields)
        return client.post("/slack/events", content=body, headers=signature_headers(body))


@pytest.fixture
def commands(fake_slack: FakeSlack) -> SlashCommands:
    return SlashCommands(fake_slack)


@pytest.fixture
def web(settings: Settings) -> Iterator[TestClient]:
    """The real ASGI app, lifespan included."""
    with TestClient(create_app(settings)) as client:
        yield client


def ack_text(response: httpx.Response) -> str:
    """All the text a user sees in an ack body."""
    body = response.json()
    parts = [body.get("text", "")]
    for block in body.get("blocks", []):
        if "text" in block:
            parts.append(block["text"]["text"])
        for element in block.get("elements", []):
            parts.append(element.get("text", ""))
    return "\n".join(parts)


def enqueue_stamped(settings: Settings, client: redis.Redis, job: AskJob, *, redis_age: float | None) -> None:
    """Queue ``job`` as the web would, stamped ``redis_age`` seconds ago on Redis's clock (no
    stamp at all when None, as a release before the stamp queued it)."""

    async def enqueue() -> None:
        arq_redis = open_redis(settings)
        assert await enqueue_ask(arq_redis, job)
        await arq_redis.aclose()

    asyncio.run(enqueue())
    key = ENQUEUED_AT_PREFIX + job.job_id
    if redis_age is None:
        client.delete(key)
    else:
        seconds, micros = client.time()
        client.set(key, int(seconds * 1000 + micros // 1000 - redis_age * 1000), px=3_600_000)


# --- Workers -----------------------------------------------------------------------------------


def drain(settings: Settings, *, events: JobEvents | None = None) -> Worker:
    """Run a real worker in this process until the queue (retries included) is empty.

    Bounded, so a worker that never drains fails the test instead of hanging the whole run, and
    the failure shows where every task of the loop was waiting.
    """

    async def run() -> Worker:
        worker = AsklaneWorker(**worker_settings(settings, events), burst=True, handle_signals=False)
        try:
            await asyncio.wait_for(worker.async_run(), DRAIN_TIMEOUT_SECONDS)
        except TimeoutError:
            pytest.fail(f"worker did not drain in {DRAIN_TIMEOUT_SECONDS} s; tasks:\n{task_stacks()}")
        finally:
            await asyncio.wait_for(worker.close(), 10)
        return worker

    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(run())
    finally:
        # asyncio.run would wait unboundedly for leftover tasks to take their cancellation.
        leftovers = [task for task in asyncio.all_tasks(loop) if not task.done()]
        for task in leftovers:
            task.cancel()
        if leftovers:
            _, stuck = loop.run_until_complete(asyncio.wait(leftovers, timeout=10))
            assert not stuck, f"tasks ignored cancellation:\n{task_stacks(loop)}"
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def task_stacks(loop: asyncio.AbstractEventLoop | None = None) -> str:
    out = io.StringIO()
    for task in asyncio.all_tasks(loop):
        task.print_stack(file=out)
    return out.getvalue()


def log_events(log: str, name: str | None = None) -> list[dict[str, Any]]:
    """The JSON log lines (LOG_FORMAT=json) in ``log``, those whose event is ``name`` if given.

    Lines that are not JSON (a traceback, arq's own start-up output) are skipped.
    """
    found = []
    for line in log.splitlines():
        if name is not None and f'"{name}"' not in line:
            continue  # cheap: most lines of a long benchmark log are other events
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and (name is None or record.get("event") == name):
            found.append(record)
    return found


class WorkerProcess:
    """``arq workers.WorkerSettings`` as its own process group, as Heroku runs it."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        arq = Path(sys.executable).parent / "arq"
        self.process = subprocess.Popen(
            [str(arq), "workers.WorkerSettings"],
            # Outside the checkout, so a developer's .env cannot change what the test runs.
            cwd=log_path.parent,
            env={**os.environ, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def signal_group(self, signum: signal.Signals) -> None:
        os.killpg(self.process.pid, signum)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The worker's structured log lines so far, those named ``name`` if given."""
        return log_events(self.log(), name)

    def wait_for_log(self, text: str, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not in worker log:\n{self.log()[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self._log.close()


def procfile_command(process: str, port: int) -> list[str]:
    """The Procfile's command for ``process`` as it runs here: this venv's python, ``port`` for
    ``$PORT``, bound to loopback instead of every interface. Read, not copied, so tests and
    benches run exactly what Heroku runs."""
    lines = (ROOT / "Procfile").read_text().splitlines()
    [line] = [line for line in lines if line.startswith(f"{process}:")]
    replacements = {"python": sys.executable, "$PORT": str(port), "0.0.0.0": "127.0.0.1"}
    return [replacements.get(word, word) for word in shlex.split(line.split(":", 1)[1])]


class WebProcess:
    """The web dyno: the Procfile's ``web`` command, bound to loopback."""

    def __init__(
        self, env: dict[str, str], log_path: Path, port: int | None = None, command: list[str] | None = None
    ) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            command or procfile_command("web", self.port),
            # Outside the checkout, so a developer's .env cannot change what runs.
            cwd=log_path.parent,
            env={**os.environ, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_listening(self, timeout: float = 20.0) -> None:
        """Block until uvicorn answers GET /healthz (liveness: Redis may be down)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            if is_alive(self.url):
                return
            time.sleep(0.05)
        raise RuntimeError(f"web process is not listening; its log:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM, as Heroku stops a dyno; SIGKILL if it does not exit in 10 s."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self._log.close()


def rss_bytes(pid: int) -> int:
    """Resident memory of process ``pid`` now (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def flood_headers(port: int, total: int, chunk: int = 256 * 1024) -> int:
    """Send one request whose headers go on for ``total`` bytes, as fast as the server takes them,
    with no signature. Returns the bytes sent before the server closed the connection (all of
    them when it never did)."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        try:
            sock.sendall(b"POST /slack/events HTTP/1.1\r\nHost: asklane\r\nX-Flood: ")
            block = b"a" * chunk
            while sent < total:
                sock.sendall(block)
                sent += chunk
        except OSError:  # reset or broken pipe: the server closed it
            pass
    return sent


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


def queued_job_ids(client: redis.Redis) -> list[str]:
    """Ids of the jobs waiting in arq's default queue."""
    return [member.decode() for member in client.zrange("arq:queue", 0, -1)]


def is_alive(base_url: str) -> bool:
    """True when a web process at ``base_url`` answers its liveness check."""
    try:
        return httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def max_in_window(times: Sequence[float], window: float = 1.0) -> int:
    """Most events in any half-open window ``[t, t + window)``; the worst one starts at an event."""
    ordered = sorted(times)
    best, first = 0, 0
    for last, at in enumerate(ordered):
        while at - ordered[first] >= window:
            first += 1
        best = max(best, last - first + 1)
    return best


def wait_until(
    condition: Callable[[], Any],
    timeout: float = 15,
    interval: float = 0.02,
    explain: Callable[[], str] | None = None,
) -> Any:
    """Poll ``condition`` until it is truthy; on timeout fail with what ``explain`` says."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met in {timeout} s" + (f": {explain()}" if explain else ""))
