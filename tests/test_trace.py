"""A job's trace (app/contract/trace.py) and ``asklane jobs show`` (app/ops/job_trace.py): signed
requests and queued jobs run by a real worker in this process against the fake Slack and Anthropic,
then read back as an operator would."""

from __future__ import annotations

import re
import threading
from typing import Any

import anthropic
import pytest
import redis
from starlette.testclient import TestClient

from app.contract import keys, messages, stops, trace
from app.contract.jobs import command_reference, upgrade
from app.contract.prices import DEFAULT_PRICES, cost_usd
from app.contract.settings import Settings
from app.contract.usage import CallUsage
from app.ops.cli import main
from tests.support.cli import cli_json, cli_text
from tests.support.deployment import settings_from
from tests.support.fakes.anthropic import MESSAGES, FakeAnthropic, StreamReply, error, message
from tests.support.fakes.server import Reply
from tests.support.fakes.slack import FakeSlack
from tests.support.jobs import drain, enqueue, in_redis
from tests.support.logs import log_events
from tests.support.sdk_errors import REQUEST, error_body, status_error
from tests.support.slack_requests import SlashCommands
from tests.support.threads import question
from tests.support.waiting import wait_until
from workers.ai import classify, mid_stream_error, model_not_found
from workers.errors import JobError
from workers.thread_answer import STOPPED, interrupted_note

QUESTION = "how do I rotate an API key?"


def _ask(web: TestClient, commands: SlashCommands, settings: Settings, text: str = QUESTION) -> str:
    """Send a signed /ask, drain it with a real worker; returns the reference it was given."""
    form = commands.form(text)
    assert commands.send(web, form=form).status_code == 200
    drain(settings)
    return command_reference(form["team_id"], form["trigger_id"])


def _show(capsys: pytest.CaptureFixture[str], settings: Settings, target: str) -> dict[str, Any]:
    shown: dict[str, Any] = cli_json(capsys, settings, "jobs", "show", target)
    return shown


def _text(capsys: pytest.CaptureFixture[str], settings: Settings, target: str) -> str:
    return cli_text(capsys, settings, "jobs", "show", target)


def test_a_completed_ask_shows_its_question_asker_attempt_tokens_cost_stop_reason_request_id_and_delivery(
    web: TestClient,
    commands: SlashCommands,
    settings: Settings,
    fake_anthropic: FakeAnthropic,
    capsys: pytest.CaptureFixture[str],
) -> None:
    reference = _ask(web, commands, settings)

    shown = _text(capsys, settings, reference)

    # The fake counts the system prompt and the question as input.
    [counted] = fake_anthropic.token_log
    usage = CallUsage(model="claude-haiku-5-5", input_tokens=counted.input_tokens, output_tokens=34)
    cost = cost_usd(usage, DEFAULT_PRICES)
    assert f"(ref {reference})" in shown and "state       completed" in shown
    assert f'question    "{QUESTION}"' in shown
    assert "asked by    U0ASKER in workspace T0TEAM" in shown
    assert "reply to    ephemeral to U0ASKER in C0CHANNEL (response_url)" in shown
    assert "run 1, attempt 1" in shown
    assert (
        "AI call   answered in" in shown
        and f"claude-haiku-5-5, {counted.input_tokens} in / 34 out tokens" in shown
        and f"${cost:.6f}" in shown
        and "stop reason end_turn" in shown
        and "request-id req_fake" in shown
    )
    assert "delivery  final message: delivered via response_url" in shown
    assert "ended     completed via response_url" in shown


def test_the_json_output_holds_each_run_with_its_calls_and_deliveries(
    web: TestClient,
    commands: SlashCommands,
    settings: Settings,
    fake_anthropic: FakeAnthropic,
    capsys: pytest.CaptureFixture[str],
) -> None:
    reference = _ask(web, commands, settings)

    shown = _show(capsys, settings, reference)

    assert (shown["reference"], shown["state"], shown["kind"]) == (reference, "completed", "ask")
    assert (shown["question"], shown["user_id"], shown["team_id"]) == (QUESTION, "U0ASKER", "T0TEAM")
    [run] = shown["runs"]
    assert (run["run"], run["attempt"], run["outcome"], run["via"]) == (1, 1, "completed", "response_url")
    assert run["queued_ms"] is not None and run["ai_ms"] is not None and run["delivery_ms"] is not None
    [call] = run["calls"]
    assert (call["outcome"], call["stop_reason"], call["request_id"]) == ("answered", "end_turn", "req_fake")
    [counted] = fake_anthropic.token_log
    assert call["usage"]["input_tokens"] == counted.input_tokens and call["usage"]["output_tokens"] == 34
    assert call["cost_usd"] == shown["cost_usd"] > 0
    [delivery] = run["deliveries"]
    assert (delivery["message"], delivery["outcome"], delivery["via"]) == (
        "final",
        "delivered",
        "response_url",
    )


def test_a_job_that_failed_once_then_succeeded_shows_both_attempts_with_the_first_ones_error_and_request_id(
    web: TestClient,
    commands: SlashCommands,
    settings: Settings,
    fake_anthropic: FakeAnthropic,
    capsys: pytest.CaptureFixture[str],
) -> None:
    failing = error(500, "api_error")
    failing.headers["request-id"] = "req_first_try"
    fake_anthropic.script(MESSAGES, failing)
    reference = _ask(web, commands, settings)

    shown = _show(capsys, settings, reference)

    first, second = shown["runs"]
    assert (first["attempt"], first["outcome"]) == (1, "retrying")
    assert "api_error" in first["reason"] and first["delay_s"] is not None
    [failed_call] = first["calls"]
    assert (failed_call["outcome"], failed_call["request_id"]) == ("failed", "req_first_try")
    assert "TransientError" in failed_call["error"] and "500" in failed_call["error"]
    assert first["deliveries"] == []
    assert (second["attempt"], second["outcome"], second["run"]) == (2, "completed", 2)
    assert [call["request_id"] for call in second["calls"]] == ["req_fake"]
    assert shown["ai_calls"] == 2


def test_a_failed_jobs_message_carries_a_reference_that_finds_the_job_and_its_request_id(
    web: TestClient,
    commands: SlashCommands,
    settings: Settings,
    fake_anthropic: FakeAnthropic,
    fake_slack: FakeSlack,
    capsys: pytest.CaptureFixture[str],
) -> None:
    refused = error(400, "invalid_request_error")
    refused.headers["request-id"] = "req_refused"
    fake_anthropic.script(MESSAGES, refused)
    _ask(web, commands, settings)

    told = fake_slack.delivered()[-1]["text"]
    found = re.search(r"\(ref ([0-9A-F]{8})\)", told)
    assert found is not None, told
    shown = _show(capsys, settings, found.group(1))

    assert (shown["state"], shown["question"]) == ("failed", QUESTION)
    [run] = shown["runs"]
    assert (run["outcome"], run["request_id"]) == ("failed", "req_refused")
    [delivery] = run["deliveries"]
    assert (delivery["message"], delivery["outcome"], delivery["via"]) == (
        "failure",
        "delivered",
        "response_url",
    )


def test_a_stopped_stream_shows_the_stopped_call_with_its_estimated_tokens_and_the_stopped_message(
    settings: Settings, fake_anthropic: FakeAnthropic, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_anthropic.script(MESSAGES, StreamReply(text="token " * 300, chunk=6, event_delay=0.01))
    job = question("a long answer, please")
    enqueue(settings, job)

    def stop_once_text_flows() -> None:
        wait_until(lambda: fake_anthropic.streams and fake_anthropic.streams[0].sent)
        assert in_redis(settings, lambda client: stops.request_stop(client, job.job_id))

    stopper = threading.Thread(target=stop_once_text_flows)
    stopper.start()
    drain(settings)
    stopper.join()

    shown = _show(capsys, settings, job.job_id)

    assert (shown["state"], shown["kind"], shown["question"]) == (
        "stopped",
        "thread",
        "a long answer, please",
    )
    [run] = shown["runs"]
    assert run["outcome"] == "stopped"
    [call] = run["calls"]
    assert (call["outcome"], call["stop_reason"], call["request_id"]) == (
        "stopped",
        "stopped",
        "req_fake_stream",
    )
    assert call["usage"]["estimated"] and call["usage"]["output_tokens"] > 0
    [delivery] = run["deliveries"]
    assert (delivery["outcome"], delivery["via"]) == ("delivered", STOPPED)


def test_a_job_is_found_by_its_job_id_and_by_its_reference_in_either_case(
    web: TestClient,
    commands: SlashCommands,
    settings: Settings,
    fake_anthropic: FakeAnthropic,
    capsys: pytest.CaptureFixture[str],
) -> None:
    reference = _ask(web, commands, settings)
    by_reference = _show(capsys, settings, reference)

    assert _show(capsys, settings, by_reference["job_id"]) == by_reference
    assert _show(capsys, settings, reference.lower()) == by_reference


def test_a_queued_job_is_found_by_its_reference_and_shows_its_question_before_any_run(
    commands: SlashCommands, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    job = upgrade(commands.job("still waiting?"))
    enqueue(settings, job)

    shown = _show(capsys, settings, job.reference)

    assert (shown["job_id"], shown["state"], shown["question"]) == (job.job_id, "queued", "still waiting?")
    assert shown["runs"] == []


def test_a_job_found_only_among_the_recent_jobs_still_shows_its_question(
    web: TestClient,
    commands: SlashCommands,
    settings: Settings,
    fake_anthropic: FakeAnthropic,
    redis_client: redis.Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    reference = _ask(web, commands, settings)
    for key in redis_client.scan_iter("asklane:trace*"):
        redis_client.delete(key)  # as when the trace expired before the record left the list

    shown = _show(capsys, settings, reference)

    assert (shown["state"], shown["question"], shown["runs"]) == ("completed", QUESTION, [])


def test_a_job_whose_payload_is_no_longer_kept_shows_its_questions_length(
    web: TestClient,
    commands: SlashCommands,
    env: dict[str, str],
    fake_anthropic: FakeAnthropic,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = settings_from({**env, "RETAIN_COMPLETED_JOBS": "0"})
    reference = _ask(web, commands, settings)

    shown = _show(capsys, settings, reference)

    assert (shown["question"], shown["question_chars"], shown["user_id"]) == (None, len(QUESTION), "U0ASKER")
    assert f"question    not kept any more ({len(QUESTION)} characters)" in _text(capsys, settings, reference)


@pytest.mark.parametrize("target", ["0BADC0DE", "ask-0123456789abcdef0123456789abcdef", "nonsense"])
def test_an_unknown_reference_or_job_id_is_one_clear_line_and_exit_1(
    settings: Settings, capsys: pytest.CaptureFixture[str], target: str
) -> None:
    capsys.readouterr()

    assert main(["jobs", "show", target], settings) == 1

    out, err = capsys.readouterr()
    assert out == "" and err == f"asklane: no job known by {target!r} (nor a trace of one)\n"


def test_a_trace_keeps_only_its_newest_entries(settings: Settings, redis_client: redis.Redis) -> None:
    extra = 3

    async def fill(client: Any) -> list[trace.TraceEntry]:
        for number in range(trace.TRACE_MAX_ENTRIES + extra):
            entry = trace.Delivery(message="final", outcome="delivered", via=f"post {number}")
            assert await trace.append(client, "ask-capped", entry, settings.trace_ttl_seconds)
        return await trace.read(client, "ask-capped")

    entries = in_redis(settings, fill)

    assert len(entries) == trace.TRACE_MAX_ENTRIES
    vias = [entry.via for entry in entries if isinstance(entry, trace.Delivery)]
    assert vias[0] == f"post {extra}" and vias[-1] == f"post {trace.TRACE_MAX_ENTRIES + extra - 1}"


def test_a_capped_trace_says_its_oldest_entries_were_left_out(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    async def fill(client: Any) -> None:
        for _ in range(trace.TRACE_MAX_ENTRIES):
            entry = trace.Delivery(message="final", outcome="failed", error="DeliveryFailed: slack 500")
            await trace.append(client, "ask-capped", entry, settings.trace_ttl_seconds)

    in_redis(settings, fill)

    assert f"only its newest {trace.TRACE_MAX_ENTRIES} entries are kept" in _text(
        capsys, settings, "ask-capped"
    )


def test_a_trace_and_its_reference_expire_after_trace_ttl_seconds(
    web: TestClient,
    commands: SlashCommands,
    env: dict[str, str],
    fake_anthropic: FakeAnthropic,
    redis_client: redis.Redis,
) -> None:
    settings = settings_from({**env, "TRACE_TTL_SECONDS": "600"})
    reference = _ask(web, commands, settings)
    job_id = (redis_client.get(keys.trace_reference_key(reference)) or b"").decode()

    for key in (keys.trace_key(job_id), keys.trace_reference_key(reference)):
        assert 0 < redis_client.pttl(key) <= 600_000


def test_a_trace_written_with_a_short_ttl_is_gone_after_it(
    settings: Settings, redis_client: redis.Redis
) -> None:
    async def write(client: Any) -> None:
        entry = trace.Delivery(message="final", outcome="delivered", via="response_url")
        assert await trace.append(client, "ask-brief", entry, 0.2, reference="ABCD1234")

    in_redis(settings, write)

    wait_until(
        lambda: not redis_client.exists(keys.trace_key("ask-brief"), keys.trace_reference_key("ABCD1234"))
    )


def test_a_trace_that_cannot_be_written_never_fails_the_job(
    commands: SlashCommands,
    settings: Settings,
    fake_anthropic: FakeAnthropic,
    fake_slack: FakeSlack,
    redis_client: redis.Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    job = upgrade(commands.job("answered all the same?"))
    # A string where the trace's list goes: every write to it is refused by Redis (WRONGTYPE).
    redis_client.set(keys.trace_key(job.job_id), b"not a list")
    enqueue(settings, job)
    capsys.readouterr()

    drain(settings)

    assert fake_slack.delivered()[-1]["text"] == "Answer to: answered all the same?"
    unrecorded = log_events(capsys.readouterr().out, "trace.unrecorded")
    assert {line["entry"] for line in unrecorded} >= {"run.started", "ai.call", "delivery", "run.ended"}


def _status_error(status: int, kind: str, *, cls: type = anthropic.APIStatusError) -> Any:
    return status_error(status, error_body(kind), {"request-id": f"req_{status}"}, cls=cls)


@pytest.mark.parametrize(
    ("failure", "request_id"),
    [
        (classify(_status_error(429, "rate_limit_error")), "req_429"),
        (classify(_status_error(500, "api_error")), "req_500"),
        (classify(_status_error(401, "authentication_error")), "req_401"),
        (mid_stream_error(_status_error(200, "overloaded_error")), "req_200"),
        (model_not_found(_status_error(404, "not_found_error", cls=anthropic.NotFoundError), "m"), "req_404"),
        (classify(anthropic.APIConnectionError(request=REQUEST)), None),
    ],
    ids=[
        "back-pressure",
        "server error",
        "permanent",
        "error event mid-stream",
        "unknown model",
        "no answer",
    ],
)
def test_an_ai_failure_carries_anthropics_request_id_when_anthropic_answered(
    failure: JobError, request_id: str | None
) -> None:
    assert failure.request_id == request_id


@pytest.mark.parametrize(
    "message",
    [
        messages.failed("Claude is busy.", "1A2B3C4D").text,
        messages.unavailable("1A2B3C4D").text,
        messages.malformed_request("1A2B3C4D").text,
        messages.action_failed("share", "slack said no.", "1A2B3C4D").text,
        interrupted_note("the stream broke.", "1A2B3C4D"),
    ],
)
def test_every_failure_message_carries_the_reference_jobs_show_takes(message: str) -> None:
    assert "(ref 1A2B3C4D)" in message


def test_a_refused_answer_shows_its_request_id_and_the_tokens_anthropic_billed(
    web: TestClient,
    commands: SlashCommands,
    settings: Settings,
    fake_anthropic: FakeAnthropic,
    capsys: pytest.CaptureFixture[str],
) -> None:
    refusal = message("", stop_reason="refusal")
    fake_anthropic.script(MESSAGES, Reply(json=refusal, headers={"request-id": "req_refused"}))
    reference = _ask(web, commands, settings)

    shown = _show(capsys, settings, reference)

    [run] = shown["runs"]
    [call] = run["calls"]
    assert (call["outcome"], call["request_id"]) == ("failed", "req_refused")
    assert call["usage"]["input_tokens"] == 12 and call["cost_usd"] > 0
