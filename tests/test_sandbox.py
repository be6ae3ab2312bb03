"""The sandbox: `make run` without accounts answers `asklane ask` through the real processes."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
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


def _post_message(stand_in: TestClient, **body: Any) -> dict[str, Any]:
    reply: dict[str, Any] = stand_in.post("/slack/api/chat.postMessage", json=body).json()
    return reply


def _thread(stand_in: TestClient, channel: str, thread_ts: str, after: int = 0) -> dict[str, Any]:
    read: dict[str, Any] = stand_in.get(f"/sandbox/threads/{channel}/{thread_ts}?after={after}&wait=0").json()
    return read


def test_a_top_level_post_starts_a_thread_of_its_own_and_answers_with_its_ts() -> None:
    with TestClient(stand_ins.create_app()) as stand_in:
        reply = _post_message(stand_in, channel="D0DM", text="hello")
        read = _thread(stand_in, "D0DM", reply["ts"])

    assert reply["ok"] is True and reply["channel"] == "D0DM"
    assert re.fullmatch(r"\d+\.\d{6}", reply["ts"])
    [message] = read["messages"]
    assert message["text"] == "hello" and message["thread_ts"] == reply["ts"]


def test_thread_replies_are_kept_in_their_thread_in_order() -> None:
    with TestClient(stand_ins.create_app()) as stand_in:
        for text in ("first", "second"):
            _post_message(stand_in, channel="D0DM", thread_ts="1700000000.000100", text=text)
        _post_message(stand_in, channel="D0DM", thread_ts="1700000000.000200", text="elsewhere")

        everything = _thread(stand_in, "D0DM", "1700000000.000100")
        later = _thread(stand_in, "D0DM", "1700000000.000100", after=1)
        threads = stand_in.get("/sandbox/threads/D0DM").json()

    assert [m["text"] for m in everything["messages"]] == ["first", "second"]
    assert [m["text"] for m in later["messages"]] == ["second"]
    assert [(t["thread_ts"], t["messages"]) for t in threads] == [
        ("1700000000.000100", 2),
        ("1700000000.000200", 1),
    ]
    assert later["version"] == everything["version"] == 2


def test_a_thread_shows_its_status_until_the_app_replies_as_slack_does() -> None:
    thread = {"channel_id": "D0DM", "thread_ts": "1700000000.000100"}
    with TestClient(stand_ins.create_app()) as stand_in:
        stand_in.post(
            "/slack/api/assistant.threads.setStatus",
            json={**thread, "status": "is thinking…", "loading_messages": ["Reading…"]},
        )
        thinking = _thread(stand_in, "D0DM", "1700000000.000100")
        _post_message(stand_in, channel="D0DM", thread_ts="1700000000.000100", text="the answer")
        answered = _thread(stand_in, "D0DM", "1700000000.000100")

    assert (thinking["status"], thinking["loading_messages"]) == ("is thinking…", ["Reading…"])
    assert answered["status"] == "" and answered["version"] > thinking["version"]


def test_suggested_prompts_are_recorded_per_dm_each_time_they_are_offered() -> None:
    prompts = [{"title": "Summarise", "message": "Summarise this text"}]
    with TestClient(stand_ins.create_app()) as stand_in:
        for _ in range(2):
            ok = stand_in.post(
                "/slack/api/assistant.threads.setSuggestedPrompts",
                json={"channel_id": "D0DM", "prompts": prompts},
            ).json()
        offered = stand_in.get("/sandbox/prompts/D0DM?after=0&wait=0").json()
        later = stand_in.get("/sandbox/prompts/D0DM?after=1&wait=0").json()

    assert ok == {"ok": True}
    assert [o["prompts"] for o in offered] == [prompts, prompts] and len(later) == 1


@pytest.mark.parametrize("encoding", ["json", "form"])
def test_web_api_calls_are_read_as_json_and_as_forms_with_blocks_as_json_text(encoding: str) -> None:
    blocks = [{"type": "markdown", "text": "**bold**"}]
    with TestClient(stand_ins.create_app()) as stand_in:
        if encoding == "json":
            sent = stand_in.post(
                "/slack/api/chat.postMessage", json={"channel": "D0DM", "text": "t", "blocks": blocks}
            )
        else:
            sent = stand_in.post(
                "/slack/api/chat.postMessage",
                data={"channel": "D0DM", "text": "t", "blocks": json.dumps(blocks)},
            )
        [message] = _thread(stand_in, "D0DM", sent.json()["ts"])["messages"]

    assert message["blocks"] == blocks


def test_ephemeral_posts_sent_as_a_form_reach_the_askers_mailbox() -> None:
    with TestClient(stand_ins.create_app()) as stand_in:
        posted = stand_in.post(
            "/slack/api/chat.postEphemeral", data={"channel": "C0C", "user": "U0U", "text": "only you"}
        ).json()
        [message] = stand_in.get("/sandbox/messages/C0C:U0U?after=0&wait=0").json()

    assert posted["ok"] is True
    assert message["text"] == "only you" and message["via"] == "chat.postEphemeral"


@pytest.mark.parametrize(
    ("method", "body", "error"),
    [
        ("chat.postMessage", {"text": "no channel"}, "channel_not_found"),
        ("chat.postMessage", {"channel": "D0DM"}, "no_text"),
        ("assistant.threads.setStatus", {"channel_id": "D0DM", "status": "x"}, "invalid_arguments"),
        ("assistant.threads.setSuggestedPrompts", {"channel_id": "D0DM", "prompts": []}, "invalid_arguments"),
        ("chat.delete", {"channel": "D0DM", "ts": "1.2"}, "message_not_found"),
        ("chat.appendStream", {"channel": "D0DM", "ts": "1.2", "markdown_text": "x"}, "message_not_found"),
        ("chat.startStream", {"channel": "D0DM", "markdown_text": "x"}, "invalid_arguments"),
        ("chat.unknownMethod", {"channel": "D0DM"}, "unknown_method"),
    ],
)
def test_the_slack_stand_in_refuses_what_slack_refuses(method: str, body: dict[str, Any], error: str) -> None:
    with TestClient(stand_ins.create_app()) as stand_in:
        reply = stand_in.post(f"/slack/api/{method}", json=body)

    assert reply.status_code == 200 and reply.json() == {"ok": False, "error": error}


def _call(stand_in: TestClient, method: str, **body: Any) -> dict[str, Any]:
    reply: dict[str, Any] = stand_in.post(f"/slack/api/{method}", json=body).json()
    return reply


FEEDBACK_AND_REGENERATE = [
    {
        "type": "context_actions",
        "elements": [
            {
                "type": "feedback_buttons",
                "action_id": "asklane_feedback",
                "positive_button": {"text": {"type": "plain_text", "text": "Good"}, "value": "good:J1"},
                "negative_button": {"text": {"type": "plain_text", "text": "Bad"}, "value": "bad:J1"},
            }
        ],
    },
    {
        "type": "actions",
        "elements": [
            {
                "type": "button",
                "action_id": "asklane_regenerate",
                "text": {"type": "plain_text", "text": "Regenerate"},
                "value": "J1",
            }
        ],
    },
]


def test_a_streamed_message_shows_each_append_as_it_comes_then_its_buttons_when_stopped() -> None:
    where = {"channel": "D0DM", "thread_ts": "1700000000.000100"}
    with TestClient(stand_ins.create_app()) as stand_in:
        started = _call(
            stand_in,
            "chat.startStream",
            **where,
            recipient_user_id="U0U",
            recipient_team_id="T0T",
            markdown_text="Hel",
        )
        first = _thread(stand_in, **where)
        assert _call(stand_in, "chat.appendStream", channel="D0DM", ts=started["ts"], markdown_text="lo") == {
            "ok": True,
            "channel": "D0DM",
            "ts": started["ts"],
        }
        second = _thread(stand_in, **where)
        _call(
            stand_in,
            "chat.stopStream",
            channel="D0DM",
            ts=started["ts"],
            markdown_text="!",
            blocks=FEEDBACK_AND_REGENERATE,
        )
        stopped = _thread(stand_in, **where)
        late = _call(stand_in, "chat.appendStream", channel="D0DM", ts=started["ts"], markdown_text="more")

    [streaming] = first["messages"]
    assert (streaming["shown"], streaming["streaming"], streaming["buttons"]) == ("Hel", True, [])
    [appended] = second["messages"]
    assert appended["shown"] == "Hello" and appended["streaming"] is True
    assert appended["version"] > streaming["version"] and second["version"] > first["version"]
    [done] = stopped["messages"]
    assert (done["shown"], done["streaming"]) == ("Hello!", False)
    assert [(b["action_id"], b["value"], b["label"]) for b in done["buttons"]] == [
        ("asklane_feedback", "good:J1", "good"),
        ("asklane_feedback", "bad:J1", "bad"),
        ("asklane_regenerate", "J1", "Regenerate"),
    ]
    assert late == {"ok": False, "error": "message_not_in_streaming_state"}


def test_chat_update_replaces_a_messages_text_and_chat_delete_removes_it() -> None:
    where = {"channel": "D0DM", "thread_ts": "1700000000.000100"}
    with TestClient(stand_ins.create_app()) as stand_in:
        ts = _call(stand_in, "chat.startStream", **where, markdown_text="partial")["ts"]
        other = _post_message(stand_in, **where, text="second part")["ts"]
        _call(
            stand_in,
            "chat.update",
            channel="D0DM",
            ts=ts,
            text="whole",
            blocks=[{"type": "markdown", "text": "the whole answer"}],
        )
        # slack_sdk sends chat.delete's arguments in the query string.
        deleted = stand_in.post(f"/slack/api/chat.delete?channel=D0DM&ts={other}").json()
        read = _thread(stand_in, **where)
        threads = stand_in.get("/sandbox/threads/D0DM").json()

    assert deleted["ok"] is True
    updated, gone = read["messages"]
    assert (updated["shown"], updated["streaming"]) == ("the whole answer", False)
    assert gone["deleted"] is True
    assert [t["messages"] for t in threads] == [1]


def test_the_offline_model_streams_its_answer_in_pieces_at_the_configured_pace() -> None:
    request = {
        "model": "m",
        "max_tokens": 10,
        "stream": True,
        "messages": [{"role": "user", "content": "why?"}],
    }
    with TestClient(stand_ins.create_app(stream_delay=0)) as stand_in:
        events = stand_in.post("/anthropic/v1/messages", json=request).text

    deltas = [
        json.loads(line.removeprefix("data: "))["delta"]["text"]
        for line in events.splitlines()
        if line.startswith("data: ") and '"text_delta"' in line
    ]
    assert len(deltas) > 10
    assert "".join(deltas) == stand_ins.offline_answer("why?")


def test_auth_test_names_the_sandbox_workspace_and_its_bot() -> None:
    with TestClient(stand_ins.create_app()) as stand_in:
        reply = stand_in.post("/slack/api/auth.test").json()

    assert (reply["team_id"], reply["user_id"], reply["bot_id"]) == (
        stand_ins.TEAM_ID,
        stand_ins.BOT_USER_ID,
        stand_ins.BOT_ID,
    )


@pytest.mark.parametrize(
    ("turns", "said"),
    [
        ([{"role": "user", "content": "why?"}], ["You asked: *why?*"]),
        (
            [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "why?", "cache_control": {"type": "ephemeral"}}],
                }
            ],
            ["You asked: *why?*"],
        ),
        (
            [
                {"role": "user", "content": "first?"},
                {"role": "assistant", "content": "an answer"},
                {"role": "user", "content": [{"type": "text", "text": "second?"}]},
            ],
            ["You asked: *second?*", "1 earlier question(s)", "the last one was: *first?*"],
        ),
    ],
    ids=["a-question", "content-blocks", "a-follow-up"],
)
def test_the_offline_model_answers_the_last_question_and_says_what_came_before(
    turns: list[dict[str, Any]], said: list[str]
) -> None:
    with TestClient(stand_ins.create_app()) as stand_in:
        reply = stand_in.post(
            "/anthropic/v1/messages", json={"model": "m", "max_tokens": 10, "messages": turns}
        ).json()

    [block] = reply["content"]
    for text in said:
        assert text in block["text"]


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


def test_make_run_without_accounts_holds_a_dm_conversation_and_a_channel_thread_with_asklane_chat(
    redis_server: RedisServer, start_stack: Callable[..., LocalStack]
) -> None:
    stack = start_stack(REDIS_URL=redis_server.url)
    wait_until(lambda: is_alive(f"http://127.0.0.1:{stack.web_port}"), timeout=30, explain=stack.log)

    # Lines piped in, as a script drives it: a DM, then a follow-up in its thread.
    chatted = subprocess.run(
        [str(stack.checkout / ".venv/bin/python"), "-m", "app.ops.cli", "chat"],
        input="what is a thread?\nand a follow-up?\n",
        cwd=stack.checkout,
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    # The same as mentions in a channel: the first starts a thread, the follow-up continues it.
    mentioned = subprocess.run(
        [str(stack.checkout / ".venv/bin/python"), "-m", "app.ops.cli", "chat", "--channel", "C0GENERAL"],
        input="what is a p99?\nand a p50?\n",
        cwd=stack.checkout,
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    stand_in = f"http://127.0.0.1:{stack.sandbox_port}"
    threads = httpx.get(f"{stand_in}{stand_ins.THREADS_PATH}{stand_ins.DM_CHANNEL}").json()
    channel_threads = httpx.get(f"{stand_in}{stand_ins.THREADS_PATH}C0GENERAL").json()
    stack.stop()

    transcript = chatted.stdout
    assert chatted.returncode == 0, transcript + chatted.stderr + stack.log()
    first, follow_up = transcript.split("you> and a follow-up?")
    assert "You asked: *what is a thread?*" in first
    assert "You asked: *and a follow-up?*" in follow_up
    # The follow-up's answer was written with the conversation so far: memory works.
    assert "1 earlier question(s)" in follow_up and "what is a thread?" in follow_up
    # Both answers are replies in one thread of the DM: the one the first message started.
    [thread] = threads
    assert thread["messages"] >= 2, threads
    assert mentioned.returncode == 0, mentioned.stdout + mentioned.stderr + stack.log()
    in_channel = mentioned.stdout.split("you> and a p50?")[1]
    assert "You asked: *and a p50?*" in in_channel and "what is a p99?" in in_channel
    [channel_thread] = channel_threads
    assert channel_thread["messages"] >= 2, channel_threads


def _asklane(stack: LocalStack, *argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(stack.checkout / ".venv/bin/python"), "-m", "app.ops.cli", *argv],
        input=stdin,
        cwd=stack.checkout,
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_asklane_chat_streams_an_answer_then_presses_its_feedback_and_regenerate_buttons(
    redis_server: RedisServer, start_stack: Callable[..., LocalStack]
) -> None:
    stack = start_stack(REDIS_URL=redis_server.url)
    wait_until(lambda: is_alive(f"http://127.0.0.1:{stack.web_port}"), timeout=30, explain=stack.log)

    chatted = _asklane(stack, "chat", stdin="what is a thread?\n:good\n:regenerate\n")
    stand_in = f"http://127.0.0.1:{stack.sandbox_port}"
    [thread] = httpx.get(f"{stand_in}{stand_ins.THREADS_PATH}{stand_ins.DM_CHANNEL}").json()
    messages = httpx.get(
        f"{stand_in}{stand_ins.THREADS_PATH}{stand_ins.DM_CHANNEL}/{thread['thread_ts']}?wait=0"
    ).json()["messages"]
    stack.stop()

    transcript = chatted.stdout
    assert chatted.returncode == 0, transcript + chatted.stderr + stack.log()
    asked, thanked = transcript.split("you> :good")
    thanked, regenerated = thanked.split("you> :regenerate")
    # The answer was streamed: the stand-in saw it start, grow and stop, with its buttons.
    assert "You asked: *what is a thread?*" in asked
    assert "buttons: :good  :bad  :regenerate" in asked
    assert "(only you) :pray: Thanks, glad it helped." in thanked
    assert "You asked: *what is a thread?*" in regenerated and "buttons:" in regenerated
    assert [m["via"] for m in messages] == ["chat.startStream", "chat.startStream"]
    assert all(not m["streaming"] and m["buttons"] for m in messages)


def test_asklane_chat_stop_ends_a_streaming_answer_with_the_stopped_note(
    redis_server: RedisServer, start_stack: Callable[..., LocalStack]
) -> None:
    # Slow enough that the answer is still streaming when the chat sees it begin.
    stack = start_stack(REDIS_URL=redis_server.url, SANDBOX_STREAM_DELAY_SECONDS="0.3")
    wait_until(lambda: is_alive(f"http://127.0.0.1:{stack.web_port}"), timeout=30, explain=stack.log)

    chatted = _asklane(stack, "chat", stdin="tell me a long story\n:stop\n")
    stand_in = f"http://127.0.0.1:{stack.sandbox_port}"
    [thread] = httpx.get(f"{stand_in}{stand_ins.THREADS_PATH}{stand_ins.DM_CHANNEL}").json()
    [message] = httpx.get(
        f"{stand_in}{stand_ins.THREADS_PATH}{stand_ins.DM_CHANNEL}/{thread['thread_ts']}?wait=0"
    ).json()["messages"]
    stack.stop()

    transcript = chatted.stdout
    assert chatted.returncode == 0, transcript + chatted.stderr + stack.log()
    assert "you> :stop" in transcript
    assert "Stopped" in transcript.split("you> :stop")[1], transcript
    # Cut short: the offline answer's last sentence never came.
    assert message["shown"].endswith("_Stopped._") and "once it is done" not in message["shown"]
    assert not message["streaming"]


def test_asklane_ask_presses_the_answers_regenerate_share_and_dismiss_buttons(
    redis_server: RedisServer, start_stack: Callable[..., LocalStack]
) -> None:
    stack = start_stack(REDIS_URL=redis_server.url)
    wait_until(lambda: is_alive(f"http://127.0.0.1:{stack.web_port}"), timeout=30, explain=stack.log)

    asked = _asklane(
        stack, "ask", "what is a p99?", "--then", "regenerate", "--then", "share", "--then", "dismiss"
    )
    stand_in = f"http://127.0.0.1:{stack.sandbox_port}"
    [shared] = httpx.get(f"{stand_in}{stand_ins.THREADS_PATH}C0SANDBOX").json()
    stack.stop()

    transcript = asked.stdout
    assert asked.returncode == 0, transcript + asked.stderr + stack.log()
    answered, regenerated = transcript.split("--- you press :arrows_counterclockwise: Regenerate")
    regenerated, shared_text = regenerated.split("--- you press :mega: Share to channel")
    shared_text, dismissed = shared_text.split("--- you press Dismiss")
    assert "You asked: *what is a p99?*" in answered and "[Dismiss]" in answered
    # The regenerated answer replaces the one clicked, through the click's response_url.
    assert "--- response_url\n" in regenerated and "You asked: *what is a p99?*" in regenerated
    assert "--- chat.postMessage in C0SANDBOX" in shared_text and "<@U0YOU>" in shared_text
    assert "delete_original\n(the answer is removed)" in dismissed
    assert shared["messages"] == 1


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
