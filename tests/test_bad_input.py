"""Bad requests to /slack/events: every one gets a clear answer, none crashes, none queues a job."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from urllib.parse import urlencode

import pytest
import redis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from app.contract import keys
from app.web.gate import MAX_BODY_BYTES
from tests.support.jobs import queued_job_ids
from tests.support.logs import caplog_events
from tests.support.slack_requests import SlashCommands, ack_text, signature_headers

FORM = "application/x-www-form-urlencoded"


def _signed_post(web: TestClient, body: bytes, content_type: str = FORM) -> tuple[int, str]:
    headers = {**signature_headers(body), "Content-Type": content_type}
    response = web.post("/slack/events", content=body, headers=headers)
    return response.status_code, response.text


def test_a_signed_body_that_is_neither_a_form_nor_json_is_refused_with_415(
    web: TestClient, commands: SlashCommands, redis_client: redis.Redis
) -> None:
    body = json.dumps(commands.form("what is a p99?")).encode()

    status, text = _signed_post(web, body, content_type="text/plain")

    assert (status, text) == (415, "unsupported content type")
    assert queued_job_ids(redis_client) == []


@pytest.mark.parametrize(
    ("header", "second"),
    [
        # The gate would check the form; Bolt, handed the last copy, would parse JSON and fail.
        ("Content-Type", "application/json"),
        ("X-Slack-Signature", "v0=" + "0" * 64),
        ("X-Slack-Request-Timestamp", "0"),
    ],
)
def test_a_repeated_security_header_is_refused_with_400_and_logged(
    web: TestClient,
    commands: SlashCommands,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    header: str,
    second: str,
) -> None:
    body = commands.body("what is a p99?")
    headers = [*signature_headers(body).items(), (header, second)]

    response = web.post("/slack/events", content=body, headers=headers)

    assert (response.status_code, response.text) == (400, f"repeated {header.lower()} header")
    assert queued_job_ids(redis_client) == []
    [refused] = caplog_events(caplog, "security.request_refused")
    assert (refused["status"], refused["reason"]) == (400, f"repeated {header.lower()} header")


def test_a_body_declared_larger_than_the_limit_is_refused_with_413(
    web: TestClient, commands: SlashCommands, redis_client: redis.Redis
) -> None:
    body = commands.body("x" * MAX_BODY_BYTES)

    status, text = _signed_post(web, body)

    assert (status, text) == (413, "body too large")
    assert queued_job_ids(redis_client) == []


def test_a_streamed_body_over_the_limit_is_refused_with_413_without_a_length(
    web: TestClient, commands: SlashCommands, redis_client: redis.Redis
) -> None:
    body = commands.body("x" * MAX_BODY_BYTES)

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 4096):
            yield body[start : start + 4096]

    # A generator body goes out chunked, with no Content-Length to refuse it by.
    response = web.post("/slack/events", content=chunks(), headers=signature_headers(body))

    assert response.status_code == 413
    assert queued_job_ids(redis_client) == []


def test_a_timestamp_that_is_not_a_number_is_refused_with_401(
    web: TestClient, commands: SlashCommands, redis_client: redis.Redis
) -> None:
    body = commands.body("what is a p99?")
    headers = {**signature_headers(body), "X-Slack-Request-Timestamp": "soon"}

    response = web.post("/slack/events", content=body, headers=headers)

    assert response.status_code == 401
    assert queued_job_ids(redis_client) == []


def test_a_timestamp_of_unicode_digits_or_huge_is_refused_with_401(
    web: TestClient, commands: SlashCommands, redis_client: redis.Redis
) -> None:
    body = commands.body("what is a p99?")
    for timestamp in ("\u00b2".encode(), b"9" * 400):
        headers: dict[str, str | bytes] = {**signature_headers(body), "X-Slack-Request-Timestamp": timestamp}

        response = web.post("/slack/events", content=body, headers=headers)

        assert response.status_code == 401
    assert queued_job_ids(redis_client) == []


def test_a_future_timestamp_outside_the_window_is_refused(
    web: TestClient, commands: SlashCommands, redis_client: redis.Redis
) -> None:
    body = commands.body("what is a p99?")

    response = web.post(
        "/slack/events", content=body, headers=signature_headers(body, timestamp=int(time.time()) + 360)
    )

    assert response.status_code == 401
    assert queued_job_ids(redis_client) == []


def test_an_unknown_command_gets_a_pointer_to_the_real_one(
    web: TestClient, commands: SlashCommands, redis_client: redis.Redis
) -> None:
    response = commands.send(web, "what is a p99?", command="/summarise")

    assert response.status_code == 200
    assert "does not know `/summarise`" in ack_text(response)
    assert "/ask" in ack_text(response)
    assert queued_job_ids(redis_client) == []


def test_a_10k_character_question_is_refused_with_its_length(
    web: TestClient, commands: SlashCommands, redis_client: redis.Redis
) -> None:
    response = commands.send(web, "why " * 2500)  # 9,999 once the trailing space is stripped

    assert response.status_code == 200
    assert "9,999 characters" in ack_text(response)
    assert queued_job_ids(redis_client) == []


def test_control_characters_are_dropped_from_the_question(
    web: TestClient, commands: SlashCommands, redis_client: redis.Redis
) -> None:
    response = commands.send(web, "what\x00 is\x07 a\x1b p99?\x7f")

    assert response.status_code == 200
    [job_id] = queued_job_ids(redis_client)
    stored = json.loads(redis_client.get(keys.job_key(job_id)) or b"{}")
    assert stored["a"][0]["text"] == "what is a p99?"


def test_invalid_utf8_in_the_form_is_read_with_replacement_characters(
    web: TestClient, commands: SlashCommands, redis_client: redis.Redis
) -> None:
    form = urlencode({**commands.form(""), "text": ""}).encode()
    body = form.replace(b"text=", b"text=why%FF%FE+not") + b"&raw=\xff\xfe"

    status, text = _signed_post(web, body)

    assert status == 200
    assert "Working on it" in text
    assert len(queued_job_ids(redis_client)) == 1


def test_a_form_that_is_not_percent_encoded_properly_gets_an_answer(
    web: TestClient, redis_client: redis.Redis
) -> None:
    status, text = _signed_post(web, b"command=%2Fask&text=%E0%A4%A&&&==&%%%=%")

    assert status == 200
    assert "could not be read" in text and "(ref " in text
    assert queued_job_ids(redis_client) == []


# Field values as Slack could never send them, but as an attacker holding the signing secret, or a
# bug on either side, might.
_values = st.one_of(st.text(max_size=300), st.sampled_from(["", " ", "/ask", "help", "<!channel>", "%", "="]))
_forms = st.dictionaries(
    st.one_of(
        st.sampled_from(
            [
                "command",
                "text",
                "team_id",
                "user_id",
                "channel_id",
                "response_url",
                "trigger_id",
                "enterprise_id",
            ]
        ),
        st.text(max_size=20),
    ),
    _values,
    max_size=10,
)


@hypothesis_settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(form=_forms)
def test_any_signed_form_gets_an_answer_and_at_most_one_job(
    web: TestClient, redis_client: redis.Redis, form: dict[str, str]
) -> None:
    redis_client.flushdb()

    status, text = _signed_post(web, urlencode(form).encode())

    # A slash command is always answered ephemerally; a form that is no command at all is Bolt's 404.
    assert status in (200, 404), text
    if status == 200:
        answer = json.loads(text)
        assert answer["response_type"] == "ephemeral" and answer["text"]
    jobs = queued_job_ids(redis_client)
    assert len(jobs) <= 1
    if jobs:
        assert status == 200 and "Working on it" in text
