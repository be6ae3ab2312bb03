"""The sandbox: `make run` without accounts answers `asklane ask` through the real processes."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from app.sandbox import stand_ins
from tests.support.deployment import ROOT
from tests.support.processes import free_port, is_alive
from tests.support.redis import RedisServer
from tests.support.waiting import wait_until


def test_the_slack_stand_in_hands_out_posted_messages_in_order() -> None:
    with TestClient(stand_ins.create_app()) as stand_in:
        for text in ("first", "second"):
            assert stand_in.post("/slack/response/hook1", json={"text": text}).text == "ok"

        everything = stand_in.get("/sandbox/messages/hook1?after=0&wait=0").json()
        later = stand_in.get("/sandbox/messages/hook1?after=1&wait=0").json()

    assert [message["text"] for message in everything] == ["first", "second"]
    assert [message["text"] for message in later] == ["second"]


def test_the_offline_model_says_what_it_is_in_every_answer() -> None:
    with TestClient(stand_ins.create_app()) as stand_in:
        reply = stand_in.post(
            "/anthropic/v1/messages",
            json={"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "why?"}]},
        ).json()

    [block] = reply["content"]
    assert block["text"].startswith(stand_ins.OFFLINE_LABEL)
    assert "why?" in block["text"]


class LocalStack:
    """``make run`` (scripts/run-local) in a checkout of its own, so the test neither reads nor
    writes the developer's .env, started as a terminal starts a job: its own process group."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.checkout = tmp_path / "checkout"
        (self.checkout / "scripts").mkdir(parents=True)
        for name in ("scripts/run-local", "Procfile", ".env.example"):
            shutil.copy(ROOT / name, self.checkout / name)
        (self.checkout / ".venv").symlink_to(Path(sys.executable).parent.parent)
        self.web_port, self.sandbox_port = free_port(), free_port()
        clean = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("SLACK_", "ANTHROPIC_", "QUOTA_", "LOG_", "REDIS_"))
        }
        self.env = clean | {"PORT": str(self.web_port), "SANDBOX_PORT": str(self.sandbox_port)} | env
        self.log_path = tmp_path / "stack.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            ["bash", "scripts/run-local"],
            cwd=self.checkout,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 30) -> None:
        wait_until(
            lambda: text in self.log() or self.process.poll() is not None,
            timeout=timeout,
            interval=0.005,  # a Ctrl-C test sends its signal right after the line appears
            explain=lambda: self.log()[-3000:],
        )
        assert text in self.log(), self.log()[-3000:]

    def press_ctrl_c(self) -> None:
        """What a terminal does on Ctrl-C: SIGINT to every process of the foreground job."""
        os.killpg(self.process.pid, signal.SIGINT)

    def processes(self) -> list[str]:
        """Every process still running inside the checkout (redis-server, stand-in, honcho, web,
        worker all do), whatever process group it is in, as "pid command"."""
        found = []
        for proc in Path("/proc").iterdir():
            with contextlib.suppress(OSError):
                if proc.name.isdigit() and proc.joinpath("cwd").resolve().is_relative_to(
                    self.checkout.resolve()
                ):
                    command = proc.joinpath("cmdline").read_bytes().replace(b"\0", b" ").decode()
                    found.append(f"{proc.name} {command}")
        return found

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(20)
        for leftover in self.processes():  # whatever a failing test left, in any process group
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(leftover.split()[0]), signal.SIGKILL)
        self._log.close()


@pytest.fixture
def start_stack(tmp_path: Path) -> Iterator[Callable[..., LocalStack]]:
    started: list[LocalStack] = []

    def start(**env: str) -> LocalStack:
        started.append(LocalStack(tmp_path, env))
        return started[-1]

    yield start
    for stack in started:
        stack.stop()


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_make_run_without_accounts_answers_asklane_ask(
    redis_server: RedisServer, start_stack: Callable[..., LocalStack]
) -> None:
    stack = start_stack(REDIS_URL=redis_server.url)
    wait_until(lambda: is_alive(f"http://127.0.0.1:{stack.web_port}"), timeout=30, explain=stack.log)

    # No --url: asklane finds the web process on $PORT, as make run started it.
    asked = subprocess.run(
        [str(stack.checkout / ".venv/bin/python"), "-m", "app.ops.cli", "ask", "is the sandbox working?"],
        cwd=stack.checkout,
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    stack.stop()

    transcript = asked.stdout
    assert asked.returncode == 0, transcript + asked.stderr + stack.log()
    assert "Working on it" in transcript
    assert stand_ins.OFFLINE_LABEL in transcript
    assert "You asked: *is the sandbox working?*" in transcript
    assert not (stack.checkout / ".local" / "sandbox.env").exists()


def test_ctrl_c_while_redis_is_starting_stops_make_run_with_nothing_left_running(
    start_stack: Callable[..., LocalStack],
) -> None:
    # A Redis URL nothing answers, so run-local starts its own and waits for it to answer.
    stack = start_stack(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    stack.wait_for_log("run-local: starting redis-server")

    stack.press_ctrl_c()

    assert stack.process.wait(timeout=20) == 130, stack.log()
    assert stack.processes() == [], stack.log()
    assert not _listening(stack.web_port) and not _listening(stack.sandbox_port)
    assert "worker.started" not in stack.log()


def test_ctrl_c_reaches_web_and_worker_and_redis_is_stopped_only_after_them(
    start_stack: Callable[..., LocalStack],
) -> None:
    stack = start_stack(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    stack.wait_for_log("worker.started", timeout=60)
    wait_until(lambda: is_alive(f"http://127.0.0.1:{stack.web_port}"), timeout=30, explain=stack.log)

    stack.press_ctrl_c()

    assert stack.process.wait(timeout=30) == 130, stack.log()
    redis_log = (stack.checkout / ".local/redis/redis.log").read_text()
    # The terminal's SIGINT reaches honcho, web and worker only; Redis is stopped (SIGTERM) by
    # run-local once honcho has seen the worker exit.
    assert "Received SIGINT" not in redis_log and "Received SIGTERM" in redis_log, redis_log
    assert "worker.stopped" in stack.log() and "SIGKILL" not in stack.log(), stack.log()
    assert stack.processes() == [], stack.log()


@pytest.mark.parametrize(
    ("present", "missing"),
    [("SLACK_SIGNING_SECRET", "SLACK_BOT_TOKEN"), ("SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET")],
)
def test_make_run_with_half_the_slack_credentials_refuses_to_start_naming_the_missing_one(
    start_stack: Callable[..., LocalStack], present: str, missing: str
) -> None:
    stack = start_stack(**{present: "set-by-the-newcomer", "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})

    assert stack.process.wait(timeout=20) == 1, stack.log()
    assert f"{missing} is empty" in stack.log()
    assert stack.processes() == [] and "sandbox mode" not in stack.log()
