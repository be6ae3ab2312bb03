"""The `asklane` operator command, against real Redis, real jobs and a real worker."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import redis
from starlette.testclient import TestClient

from app.contract import messages, usage
from app.contract.keys import FAILED_KEY
from app.contract.prices import PRICES_CHECKED
from app.contract.queue import enqueue_ask, open_redis
from app.contract.settings import Settings
from app.contract.usage import CallUsage, Retention
from app.ops import chat
from app.ops.cli import awaits_more, main, shown_to_asker
from app.sandbox import stand_ins
from app.web.clicks import read_click
from tests.support.cli import cli_json, cli_text
from tests.support.deployment import ROOT, settings_from
from tests.support.fakes.anthropic import MESSAGES, FakeAnthropic, error
from tests.support.fakes.slack import FakeSlack
from tests.support.jobs import drain, in_redis, queued_job_ids
from tests.support.processes import ASKLANE, WebProcess, WorkerProcess, free_port
from tests.support.slack_requests import SlashCommands, signature_headers
from tests.support.waiting import wait_until


def _fail_one_job(web: TestClient, commands: SlashCommands, settings: Settings, fake: FakeAnthropic) -> str:
    fake.script(MESSAGES, error(400, "invalid_request_error"))
    commands.send(web, "a question Claude refuses")
    drain(settings)
    with redis.Redis.from_url(settings.redis_url) as client:
        return str(json.loads(client.lindex(FAILED_KEY, 0) or b"{}")["job_id"])


def test_status_counts_queued_jobs_by_priority(
    web: TestClient, commands: SlashCommands, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    for n in range(2):
        commands.send(web, f"interactive {n}")

    async def queue_background() -> None:
        client = open_redis(settings)
        await enqueue_ask(client, commands.job("a later summary"), "background")
        await client.aclose()

    asyncio.run(queue_background())

    status = cli_json(capsys, settings, "status")

    assert status["queue"] == {"interactive": 2, "background": 1, "scheduled": 0}
    assert status["running"] == [] and status["paused_for_s"] == 0


def test_status_shows_each_live_worker_and_arqs_health_check(
    settings: Settings, start_worker: Callable[..., WorkerProcess], capsys: pytest.CaptureFixture[str]
) -> None:
    start_worker()
    wait_until(lambda: cli_json(capsys, settings, "status")["workers"], timeout=10)

    status = cli_json(capsys, settings, "status")

    [worker] = status["workers"]
    assert worker["running"] == 0 and worker["completed"] == 0
    assert "j_complete=" in status["arq_health"]


def test_jobs_failed_lists_the_failure_with_its_cause_and_reference(
    web: TestClient,
    commands: SlashCommands,
    settings: Settings,
    fake_anthropic: FakeAnthropic,
    capsys: pytest.CaptureFixture[str],
) -> None:
    job_id = _fail_one_job(web, commands, settings, fake_anthropic)

    [record] = cli_json(capsys, settings, "jobs", "failed")

    assert record["job_id"] == job_id
    assert record["error"].startswith("PermanentError") and record["reference"]
    assert main(["jobs", "failed"], settings) == 0
    table = capsys.readouterr().out
    assert job_id in table and "PermanentError" in table


def test_retry_queues_a_failed_job_again_and_it_is_answered(
    web: TestClient,
    commands: SlashCommands,
    settings: Settings,
    fake_anthropic: FakeAnthropic,
    fake_slack: FakeSlack,
    redis_client: redis.Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    job_id = _fail_one_job(web, commands, settings, fake_anthropic)

    [retried] = cli_json(capsys, settings, "retry", job_id)
    drain(settings)

    assert retried["failed_job_id"] == job_id and retried["job_id"] != job_id
    assert fake_slack.delivered()[-1]["text"] == "Answer to: a question Claude refuses"
    assert redis_client.llen(FAILED_KEY) == 0


def test_retry_all_failed_and_purge_empty_the_failed_list(
    web: TestClient,
    commands: SlashCommands,
    settings: Settings,
    fake_anthropic: FakeAnthropic,
    redis_client: redis.Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for _ in range(2):
        _fail_one_job(web, commands, settings, fake_anthropic)

    assert len(cli_json(capsys, settings, "retry", "--all-failed")) == 2
    assert len(queued_job_ids(redis_client)) == 2
    drain(settings)
    _fail_one_job(web, commands, settings, fake_anthropic)
    assert cli_json(capsys, settings, "purge", "--failed") == {"purged": 1}
    assert redis_client.llen(FAILED_KEY) == 0


def test_retrying_an_unknown_job_exits_non_zero(settings: Settings) -> None:
    assert main(["retry", "ask-unknown"], settings) == 1


def test_jobs_show_finds_a_failed_job_listed_by_jobs_failed(
    web: TestClient,
    commands: SlashCommands,
    settings: Settings,
    fake_anthropic: FakeAnthropic,
    capsys: pytest.CaptureFixture[str],
) -> None:
    job_id = _fail_one_job(web, commands, settings, fake_anthropic)
    [listed] = cli_json(capsys, settings, "jobs", "failed")

    shown = cli_json(capsys, settings, "jobs", "show", listed["reference"])

    assert (shown["job_id"], shown["state"]) == (job_id, "failed")
    assert shown["error"] == listed["error"]


@pytest.mark.parametrize(
    "argv",
    [["jobs", "show"], ["jobs", "failed", "ask-0123"], ["jobs", "completed", "0BADC0DE"]],
    ids=["show-without-a-job", "failed-with-a-job", "completed-with-a-job"],
)
def test_jobs_show_alone_takes_a_reference_or_job_id(
    argv: list[str], settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv, settings)

    assert exit_.value.code == 2
    assert "jobs show takes a REFERENCE_OR_JOB_ID" in capsys.readouterr().err


def test_the_asklane_command_reads_its_settings_from_the_environment(
    env: dict[str, str], tmp_path: Path
) -> None:
    done = subprocess.run(
        [*ASKLANE, "status"],
        env={**os.environ, **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("queued      0 interactive, 0 background")


# --- asklane ask: the sandbox's question from the terminal -------------------------------------


@pytest.fixture
def sandbox_env(env: dict[str, str]) -> dict[str, str]:
    """The test deployment with response_urls at a sandbox stand-in's address where nothing
    listens: ``asklane ask`` may not go there unless a message is still to come."""
    prefix = f"http://127.0.0.1:{free_port()}{stand_ins.RESPONSE_PATH}"
    return env | {"SLACK_RESPONSE_URL_PREFIXES": prefix}


@pytest.mark.parametrize(
    ("ack", "more"),
    [
        (messages.working_on_it("a question"), True),
        (messages.usage("/ask"), False),
        (messages.too_long("/ask", 5000, 4000), False),
        (messages.over_quota("user", 10, "minute", 30), False),
        (messages.unavailable("ref12345"), False),
        (messages.malformed_request("ref12345"), False),
    ],
    ids=["working-on-it", "usage", "too-long", "over-quota", "unavailable", "malformed"],
)
def test_only_the_working_on_it_ack_awaits_another_message(ack: messages.SlackMessage, more: bool) -> None:
    assert awaits_more({"response_type": "ephemeral", "text": ack.text, "blocks": ack.blocks}) is more


@pytest.mark.parametrize(
    ("question", "shown"), [("help", "Ask Claude anything"), ("x" * 4001, "4,001 characters long")]
)
def test_ask_prints_an_ack_that_is_the_whole_reply_and_exits_0_at_once(
    start_web: Callable[..., WebProcess],
    sandbox_env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    question: str,
    shown: str,
) -> None:
    web = start_web(**sandbox_env)

    status = main(["ask", question, "--url", web.url], settings_from(sandbox_env))

    assert status == 0
    assert shown in capsys.readouterr().out


def test_ask_without_url_asks_the_web_process_on_port_as_make_run_starts_it(
    start_web: Callable[..., WebProcess],
    sandbox_env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    web = start_web(**sandbox_env)
    monkeypatch.setenv("PORT", str(web.port))

    assert main(["ask", "help"], settings_from(sandbox_env)) == 0
    assert "Ask Claude anything" in capsys.readouterr().out


def test_ask_with_the_stack_not_running_says_in_one_line_how_to_start_it(
    sandbox_env: dict[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PORT", str(free_port()))  # nothing listens there

    status = main(["ask", "anyone there?"], settings_from(sandbox_env))

    [line] = capsys.readouterr().err.splitlines()
    assert status == 2
    assert "the stack is not running" in line and "`make run`" in line


def _asklane_outside_the_stack(command: str, folder: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """The ``asklane`` command run in ``folder``, with no setting from the test's environment."""
    names = {name.upper() for name in Settings.model_fields} | {"PORT"}
    clean = {key: value for key, value in os.environ.items() if key.upper() not in names}
    return subprocess.run(
        [*ASKLANE, command, *(["a question"] if command == "ask" else [])],
        env=clean | env,
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize("command", ["status", "ask", "chat"])
@pytest.mark.parametrize("dotenv", [False, True], ids=["no-.env", ".env-from-example"])
def test_without_credentials_or_a_running_sandbox_asklane_says_how_to_start_the_stack(
    tmp_path: Path, command: str, dotenv: bool
) -> None:
    if dotenv:  # what a newcomer has after a first `make run`, stopped since
        (tmp_path / ".env").write_text((ROOT / ".env.example").read_text())

    done = _asklane_outside_the_stack(command, tmp_path)

    [line] = done.stderr.splitlines()
    assert done.returncode == 2
    assert line.startswith("asklane: the stack is not running") and "`make run`" in line


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
        ({"SLACK_SIGNING_SECRET": "s", "SLACK_BOT_TOKEN": "xoxb-t"}, "ANTHROPIC_API_KEY"),
    ],
    ids=["a-bad-value-besides", "slack-credentials-without-anthropic"],
)
def test_a_real_misconfiguration_is_still_reported_as_one(
    tmp_path: Path, env: dict[str, str], named: str
) -> None:
    done = _asklane_outside_the_stack("status", tmp_path, **env)

    [line] = done.stderr.splitlines()
    assert done.returncode == 2
    assert line.startswith("asklane: invalid configuration:") and named in line


# --- asklane chat: a DM conversation from the terminal ------------------------------------------


PERSON = chat.Person()


@pytest.mark.parametrize(
    ("thread_ts", "threaded"),
    [(None, {}), ("1700000000.000100", {"thread_ts": "1700000000.000100", "parent_user_id": PERSON.user_id})],
    ids=["first-line-top-level", "later-line-in-its-thread"],
)
def test_a_line_is_a_direct_message_event_top_level_or_in_the_conversations_thread(
    thread_ts: str | None, threaded: dict[str, str]
) -> None:
    payload = chat.dm_event(PERSON, "hello there", "1700000000.000200", thread_ts)

    event = payload["event"]
    assert (payload["type"], payload["team_id"], payload["api_app_id"]) == (
        "event_callback",
        stand_ins.TEAM_ID,
        stand_ins.APP_ID,
    )
    assert payload["authorizations"][0]["user_id"] == stand_ins.BOT_USER_ID
    assert (event["type"], event["channel_type"], event["channel"], event["user"]) == (
        "message",
        "im",
        stand_ins.DM_CHANNEL,
        stand_ins.USER_ID,
    )
    assert (event["text"], event["ts"]) == ("hello there", "1700000000.000200")
    assert {key: event[key] for key in ("thread_ts", "parent_user_id") if key in event} == threaded
    assert "subtype" not in event and "bot_id" not in event


@pytest.mark.parametrize(
    "thread_ts", [None, "1700000000.000100"], ids=["first-line-top-level", "later-line-in-its-thread"]
)
def test_a_line_in_channel_mode_is_a_mention_of_the_app_top_level_or_in_its_thread(
    thread_ts: str | None,
) -> None:
    person = chat.Person(channel_id="C0GENERAL")

    event = chat.mention_event(person, "what is a p99?", "1700000000.000200", thread_ts)["event"]

    assert (event["type"], event["channel"], event["user"]) == ("app_mention", "C0GENERAL", stand_ins.USER_ID)
    assert event["text"] == f"<@{stand_ins.BOT_USER_ID}> what is a p99?"
    assert event.get("thread_ts") == thread_ts


def test_every_message_has_a_fresh_ts_and_every_event_its_own_event_id() -> None:
    clock = chat.Clock()
    stamps = [clock.ts() for _ in range(1000)]
    events = [chat.dm_event(PERSON, "same text", ts) for ts in stamps[:2]]

    assert all(re.fullmatch(r"\d{10}\.\d{6}", ts) for ts in stamps)
    assert [float(ts) for ts in stamps] == sorted({float(ts) for ts in stamps})
    assert events[0]["event_id"] != events[1]["event_id"]


def test_events_are_signed_as_slack_signs_them() -> None:
    request = chat.signed_event(
        "http://127.0.0.1:1/slack/events", chat.dm_event(PERSON, "hi", "1.000001"), "s3cret"
    )
    headers = {name.lower(): value for name, value in request.header_items()}
    body = request.data
    assert isinstance(body, bytes)

    expected = signature_headers(body, secret="s3cret", timestamp=int(headers["x-slack-request-timestamp"]))

    assert headers["x-slack-signature"] == expected["X-Slack-Signature"]
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["event"]["text"] == "hi"


def test_opening_the_chat_is_opening_the_apps_messages_tab() -> None:
    event = chat.home_opened_event(PERSON, "1700000000.000300")["event"]

    assert (event["type"], event["tab"], event["user"], event["channel"]) == (
        "app_home_opened",
        "messages",
        stand_ins.USER_ID,
        stand_ins.DM_CHANNEL,
    )


@pytest.mark.parametrize(
    ("message", "shown"),
    [
        (
            {"text": "fallback", "blocks": [{"type": "markdown", "text": "**bold** answer"}]},
            "**bold** answer",
        ),
        (
            {
                "text": "t",
                "blocks": [{"type": "markdown", "text": "part one"}, {"type": "markdown", "text": "two"}],
            },
            "part one\ntwo",
        ),
        (
            {"text": "t", "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": ":x: no"}}]},
            ":x: no",
        ),
        (
            {"text": "t", "blocks": [{"type": "context", "elements": [{"type": "mrkdwn", "text": "> q"}]}]},
            "> q",
        ),
        ({"markdown_text": "# heading"}, "# heading"),
        ({"text": "plain only"}, "plain only"),
        (
            {
                "markdown_text": "streamed answer",
                "blocks": [
                    {
                        "type": "actions",
                        "elements": [
                            {"type": "button", "text": {"type": "plain_text", "text": "Regenerate"}}
                        ],
                    }
                ],
            },
            "streamed answer",
        ),
    ],
    ids=[
        "markdown-block",
        "several-blocks",
        "section",
        "context",
        "markdown_text",
        "text",
        "buttons-are-not-text",
    ],
)
def test_a_reply_is_shown_as_its_blocks_read(message: dict[str, Any], shown: str) -> None:
    assert chat.render(message) == shown


@pytest.mark.parametrize(
    ("message", "shown"),
    [
        ({"via": "response_url", "text": "the answer"}, "--- response_url\nthe answer"),
        (
            {"via": "response_url", "text": "thanks", "replace_original": False},
            "--- response_url (a new message beside the answer)\nthanks",
        ),
        (
            {"via": "response_url", "delete_original": True},
            "--- response_url: delete_original\n(the answer is removed)",
        ),
        ({"via": "chat.postEphemeral", "text": "fallback"}, "--- chat.postEphemeral\nfallback"),
        (
            {
                "text": "answer",
                "blocks": [
                    {"type": "markdown", "text": "answer"},
                    {
                        "type": "actions",
                        "elements": [
                            {
                                "type": "button",
                                "action_id": "asklane_dismiss",
                                "value": "J",
                                "text": {"text": "Dismiss"},
                            }
                        ],
                    },
                ],
            },
            "--- response_url\nanswer\n[Dismiss]",
        ),
    ],
    ids=["replaces", "beside", "removes", "fallback", "with-buttons"],
)
def test_ask_shows_what_each_private_message_does_to_the_answer_shown(
    message: dict[str, Any], shown: str
) -> None:
    assert shown_to_asker(message) == shown


def test_chat_refuses_outside_the_sandbox(env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    # The test deployment's Web API is not the sandbox's stand-in: posts would go to "Slack".
    status = main(["chat", "--url", "http://127.0.0.1:1"], settings_from(env))

    [line] = capsys.readouterr().err.splitlines()
    assert status == 2
    assert "asklane chat works in the sandbox" in line


def test_chat_with_the_stack_not_running_says_in_one_line_how_to_start_it(
    env: dict[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    nothing_there = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("PORT", str(free_port()))
    sandbox = env | {"SLACK_API_URL": nothing_there + stand_ins.API_PATH}

    status = main(["chat"], settings_from(sandbox))

    [line] = capsys.readouterr().err.splitlines()
    assert status == 2
    assert "the stack is not running" in line and "`make run`" in line


@pytest.mark.parametrize(
    ("piped", "sent"),
    [
        ("hi\nmore\n", ["hi", "more"]),
        ("hi\n\n   \nmore", ["hi", "more"]),
        ("hi\n:quit\nnot sent\n", ["hi"]),
        ("  spaced out  \n", ["spaced out"]),
        ("", []),
    ],
    ids=["two-lines", "blank-lines-skipped", "quit-ends", "trimmed", "nothing"],
)
def test_piped_lines_are_sent_until_eof_or_quit(piped: str, sent: list[str]) -> None:
    assert list(chat.lines_from(io.StringIO(piped))) == sent


def test_piped_lines_are_read_while_an_answer_streams_so_a_stop_waits_ready() -> None:
    lines = chat.Lines(io.StringIO("tell me more\n:stop\n"))

    assert lines.next() == "tell me more"
    wait_until(lambda: lines.peek() == chat.STOP_COMMAND, timeout=5)
    assert lines.next() == chat.STOP_COMMAND
    assert lines.next() is None and lines.peek() is None


@pytest.mark.parametrize(
    ("button", "command"),
    [
        ({"action_id": "asklane_feedback", "value": "good:J1", "label": "good"}, ":good"),
        ({"action_id": "asklane_feedback", "value": "bad:J1", "label": "bad"}, ":bad"),
        ({"action_id": "asklane_regenerate", "value": "J1", "label": "Retry"}, ":regenerate"),
        ({"action_id": "asklane_stop", "value": "J1", "label": "Stop"}, ":stop"),
        ({"action_id": "asklane_share", "value": "J1", "label": "Share"}, ":share"),
        ({"action_id": "asklane_dismiss", "value": "J1", "label": "Dismiss"}, ":dismiss"),
    ],
)
def test_each_button_is_pressed_by_the_command_named_after_it(button: dict[str, str], command: str) -> None:
    assert chat.command_of(button) == command


def test_a_press_is_a_signed_block_actions_request_that_the_web_process_reads() -> None:
    button = {"action_id": "asklane_feedback", "value": "good:J1", "label": "good"}
    payload = chat.click_payload(
        PERSON,
        button,
        response_url="http://127.0.0.1:1/slack/response/h1",
        action_ts="1700000000.000400",
        message_ts="1700000000.000300",
        thread_ts="1700000000.000200",
    )
    request = chat.signed_click("http://127.0.0.1:1/slack/events", payload, "s3cret")
    headers = {name.lower(): value for name, value in request.header_items()}
    body = request.data
    assert isinstance(body, bytes)

    click = read_click(json.loads(parse_qs(body.decode())["payload"][0]))

    expected = signature_headers(body, secret="s3cret", timestamp=int(headers["x-slack-request-timestamp"]))
    assert headers["x-slack-signature"] == expected["X-Slack-Signature"]
    assert headers["content-type"] == "application/x-www-form-urlencoded"
    assert (click.team_id, click.user_id, click.channel_id) == (
        stand_ins.TEAM_ID,
        stand_ins.USER_ID,
        stand_ins.DM_CHANNEL,
    )
    assert (click.action_id, click.value, click.action_ts) == (
        "asklane_feedback",
        "good:J1",
        "1700000000.000400",
    )
    assert click.response_url == "http://127.0.0.1:1/slack/response/h1"
    assert payload["container"] == {
        "type": "message",
        "message_ts": "1700000000.000300",
        "channel_id": stand_ins.DM_CHANNEL,
        "is_ephemeral": False,
        "thread_ts": "1700000000.000200",
    }


# --- asklane usage -------------------------------------------------------------------------------


def _charge(settings: Settings, team: str, user: str, model: str, cost: int, *, days_ago: int = 0) -> None:
    call = CallUsage(
        model=model,
        input_tokens=1000,
        output_tokens=100,
        cache_creation_input_tokens=0,
        cache_read_input_tokens=3000,
    )
    moment = datetime.now(UTC) - timedelta(days=days_ago)
    retention = Retention.of(settings)
    in_redis(settings, lambda client: usage.charge(client, team, user, call, cost, moment, retention))


def _spent(settings: Settings) -> None:
    _charge(settings, "T1", "U1", "claude-haiku-5-5", 1_000)
    _charge(settings, "T1", "U1", "claude-sonnet-5-5", 20_000)
    _charge(settings, "T1", "U2", "claude-haiku-5-5", 3_000)
    _charge(settings, "T2", "U9", "claude-haiku-5-5", 500_000)


def test_usage_reports_spend_and_tokens_by_workspace_person_and_day_and_model(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    _spent(settings)

    report = cli_json(capsys, settings, "usage")

    today = datetime.now(UTC).strftime("%Y-%m-%d")
    assert report["prices_checked"] == PRICES_CHECKED.isoformat()
    assert len(report["days"]) == 7 and report["days"][-1] == today
    assert report["total"]["cost_usd"] == pytest.approx(0.524) and report["total"]["calls"] == 4
    assert [(row["team"], row["cost_usd"], row["calls"]) for row in report["workspaces"]] == [
        ("T2", 0.5, 1),
        ("T1", 0.024, 3),
    ]
    assert [(row["team"], row["user"], row["cost_usd"]) for row in report["people"]] == [
        ("T2", "U9", 0.5),
        ("T1", "U1", 0.021),
        ("T1", "U2", 0.003),
    ]
    assert [(row["day"], row["model"], row["calls"]) for row in report["days_and_models"]] == [
        (today, "claude-haiku-5-5", 3),
        (today, "claude-sonnet-5-5", 1),
    ]
    # Cache reads over all input tokens: 3,000 of 4,000.
    assert report["people"][1]["cache_hit_ratio"] == 0.75
    assert report["people"][1]["input_tokens"] == 2000 and report["people"][1]["cache_read_tokens"] == 6000


def test_usage_for_people_is_a_table_with_the_prices_checked_date_in_its_header(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    _spent(settings)

    text = cli_text(capsys, settings, "usage")

    lines = text.splitlines()
    assert f"prices checked {PRICES_CHECKED.isoformat()}" in lines[0]
    assert any(line.split()[:3] == ["T1", "U1", "$0.021000"] for line in lines), text
    assert any(line.split()[:2] == ["T2", "$0.500000"] for line in lines), text
    assert any("claude-sonnet-5-5" in line and line.rstrip().endswith("75.0%") for line in lines), text


def test_usage_covers_only_the_days_asked_for(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    _charge(settings, "T1", "U1", "claude-haiku-5-5", 1_000)
    _charge(settings, "T1", "U1", "claude-haiku-5-5", 7_000, days_ago=3)

    assert cli_json(capsys, settings, "usage", "--days", "1")["total"]["cost_usd"] == 0.001
    assert cli_json(capsys, settings, "usage", "--days", "4")["total"]["cost_usd"] == 0.008


def test_usage_for_a_month_reads_that_months_totals(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    _spent(settings)
    this_month = datetime.now(UTC).strftime("%Y-%m")

    report = cli_json(capsys, settings, "usage", "--month", this_month)
    earlier = cli_json(capsys, settings, "usage", "--month", "2020-01")

    assert report["period"] == this_month and report["total"]["calls"] == 4
    assert len(report["people"]) == 3
    assert (earlier["total"]["calls"], earlier["people"], len(earlier["days"])) == (0, [], 31)


@pytest.mark.parametrize(
    "argv", [["--month", "December"], ["--days", "0"], ["--days", "7", "--month", "2026-12"]]
)
def test_usage_refuses_a_period_it_cannot_read_in_one_line(
    argv: list[str], settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["usage", *argv], settings)

    assert exited.value.code == 2
    assert "usage:" in capsys.readouterr().err
