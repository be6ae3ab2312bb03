"""The sandbox: `make run` without accounts answers `asklane ask` through the real processes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from starlette.testclient import TestClient

from app import sandbox
from tests.conftest import ROOT, RedisServer, free_port, is_alive, wait_until


def test_the_slack_stand_in_hands_out_posted_messages_in_order() -> None:
    with TestClient(sandbox.create_app()) as stand_in:
        for text in ("first", "second"):
            assert stand_in.post("/slack/response/hook1", json={"text": text}).text == "ok"

        everything = stand_in.get("/sandbox/messages/hook1?after=0&wait=0").json()
        later = stand_in.get("/sandbox/messages/hook1?after=1&wait=0").json()

    assert [message["text"] for message in everything] == ["first", "second"]
    assert [message["text"] for message in later] == ["second"]


def test_the_offline_model_says_what_it_is_in_every_answer() -> None:
    with TestClient(sandbox.create_app()) as stand_in:
        reply = stand_in.post(
            "/anthropic/v1/messages",
            json={"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "why?"}]},
        ).json()

    [block] = reply["content"]
    assert block["text"].startswith(sandbox.OFFLINE_LABEL)
    assert "why?" in block["text"]


def test_make_run_without_accounts_answers_asklane_ask(redis_server: RedisServer, tmp_path: Path) -> None:
    # A checkout of its own, so the test neither reads nor writes the developer's .env.
    stack = tmp_path / "checkout"
    (stack / "scripts").mkdir(parents=True)
    for name in ("scripts/run-local", "Procfile", ".env.example"):
        shutil.copy(ROOT / name, stack / name)
    (stack / ".venv").symlink_to(Path(sys.executable).parent.parent)
    web_port, sandbox_port = free_port(), free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SLACK_", "ANTHROPIC_", "QUOTA_", "LOG_"))
    }
    env |= {"PORT": str(web_port), "SANDBOX_PORT": str(sandbox_port), "REDIS_URL": redis_server.url}
    log = (tmp_path / "stack.log").open("wb")
    stack_process = subprocess.Popen(
        ["bash", "scripts/run-local"],
        cwd=stack,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_until(lambda: is_alive(f"http://127.0.0.1:{web_port}"), timeout=30)

        asked = subprocess.run(
            [
                str(stack / ".venv/bin/asklane"),
                "ask",
                "is the sandbox working?",
                "--url",
                f"http://127.0.0.1:{web_port}",
            ],
            cwd=stack,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        os.killpg(stack_process.pid, signal.SIGTERM)
        stack_process.wait(20)
        log.close()

    transcript = asked.stdout
    assert asked.returncode == 0, transcript + asked.stderr + (tmp_path / "stack.log").read_text()
    assert "Working on it" in transcript
    assert sandbox.OFFLINE_LABEL in transcript
    assert "You asked: *is the sandbox working?*" in transcript
    assert not (stack / ".local" / "sandbox.env").exists()
