"""The Events API at the web edge: mentions and DMs become thread questions, once each, acked at
once with an empty 200; everything else is ignored; Redis down asks Slack to deliver again."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import redis
from starlette.testclient import TestClient

from app.contract import keys
from app.contract.jobs import SuggestPrompts, ThreadNotice, ThreadQuestion
from app.contract.queue import THREAD_ORDER_TTL_SECONDS
from app.contract.settings import Settings
from app.contract.targets import DirectMessage, Thread
from app.web.ask import MAX_QUESTION_CHARS
from app.web.events import Ignored, Message, Prompts, Question, classify, question_text
from app.web.main import create_app
from tests.support.deployment import settings_from
from tests.support.fakes.slack import FakeSlack
from tests.support.jobs import queued_job_ids, queued_jobs
from tests.support.logs import caplog_events
from tests.support.processes import WebProcess, free_port
from tests.support.slack_requests import (
    APP_ID,
    BOT_USER_ID,
    SlackEvents,
    SlashCommands,
    event_headers,
    new_ts,
    send_event,
    signature_headers,
)
from tests.support.waiting import wait_until

slack = SlackEvents()


@pytest.fixture
def debug_web(env: dict[str, str]) -> Iterator[TestClient]:
    """The real app logging at DEBUG (where ignored events are logged), with SLACK_APP_ID set."""
    settings = settings_from({**env, "LOG_LEVEL": "DEBUG", "SLACK_APP_ID": APP_ID})
    with TestClient(create_app(settings)) as client:
        yield client


# --- classification (pure) ---------------------------------------------------------------------


def _message(**event: Any) -> dict[str, Any]:
    return slack.envelope(
        {"type": "message", "user": "U0ASKER", "ts": "1.000001", "channel": "D0DIRECT", **event}
    )


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (SlackEvents.url_verification("x"), "not_an_event"),
        ({**slack.mention("hi"), "type": "app_rate_limited"}, "not_an_event"),
        ({**slack.mention("hi"), "api_app_id": "A0SOMEONE"}, "other_app"),
        (slack.envelope({"type": "reaction_added", "user": "U0ASKER"}), "unhandled_type"),
        (_message(text="hi", channel_type="im", user=BOT_USER_ID), "own_message"),
        (_message(text="hi", channel_type="im", bot_id="B0OURS", app_id=APP_ID), "own_message"),
        (_message(text="hi", channel_type="im", bot_id="B0OTHER", app_id="A0OTHER"), "other_bot"),
        (_message(text="hi", channel_type="im", subtype="bot_message"), "other_bot"),
        (_message(text="hi", channel_type="im", subtype="message_changed"), "subtype"),
        (_message(channel_type="im", subtype="message_deleted"), "subtype"),
        (
            _message(text="joined", channel="C0CHANNEL", channel_type="channel", subtype="channel_join"),
            "subtype",
        ),
        (_message(text="hi", channel_type="im", subtype="file_share"), "subtype"),
        (_message(text="hi all", channel="C0CHANNEL", channel_type="channel"), "no_mention"),
        (_message(text="ask <@U0OTHER>", channel="C0CHANNEL", channel_type="channel"), "no_mention"),
        (slack.home_opened("home"), "home_tab"),
        (slack.envelope({"type": "app_home_opened", "user": "U0ASKER", "tab": "messages"}), "missing_fields"),
        (_message(text="hi", channel_type="im", ts=""), "missing_fields"),
        (_message(text="hi", channel_type="im", user=None), "missing_fields"),
        (_message(text=42, channel_type="im"), "missing_fields"),
        ({**slack.mention("hi"), "authorizations": []}, "missing_fields"),
        ({**slack.mention("hi"), "team_id": None}, "missing_fields"),
        ({**slack.mention("hi"), "event": "app_mention"}, "missing_fields"),
    ],
)
def test_events_asklane_has_no_question_in_are_ignored_with_a_reason(
    body: dict[str, Any], reason: str
) -> None:
    assert classify(body, app_id=APP_ID) == Ignored(reason)  # type: ignore[arg-type]


def test_events_for_another_app_are_read_when_no_app_id_is_configured() -> None:
    assert isinstance(classify({**slack.mention("hi"), "api_app_id": "A0SOMEONE"}, app_id=None), Question)


@pytest.mark.parametrize(
    ("event", "source", "thread_ts"),
    [
        ({"type": "app_mention", "channel": "C0CHANNEL"}, "mention", None),
        ({"type": "app_mention", "channel": "C0CHANNEL", "thread_ts": "0.5"}, "mention", "0.5"),
        ({"type": "message", "channel": "D0DIRECT", "channel_type": "im"}, "dm", None),
        ({"type": "message", "channel": "D0DIRECT", "channel_type": "im", "thread_ts": "0.5"}, "dm", "0.5"),
        # The parent of a thread names itself as its thread: still top-level.
        (
            {"type": "message", "channel": "D0DIRECT", "channel_type": "im", "thread_ts": "1.000001"},
            "dm",
            None,
        ),
        # The message twin of a mention, in a channel the app also reads.
        ({"type": "message", "channel": "C0CHANNEL", "channel_type": "channel"}, "mention", None),
    ],
)
def test_mentions_and_dms_are_questions_in_their_thread(
    event: dict[str, Any], source: str, thread_ts: str | None
) -> None:
    body = slack.envelope({"user": "U0ASKER", "ts": "1.000001", "text": f"<@{BOT_USER_ID}> why?", **event})

    assert classify(body, app_id=APP_ID) == Question(
        source,  # type: ignore[arg-type]
        Message("T0TEAM", None, "U0ASKER", event["channel"], "1.000001", thread_ts),
        "why?",
    )


def test_opening_the_messages_tab_asks_for_suggested_prompts() -> None:
    body = slack.home_opened("messages", channel="D0DIRECT", user="U0ASKER")

    assert classify(body) == Prompts("T0TEAM", None, "U0ASKER", "D0DIRECT", body["event_id"])


@pytest.mark.parametrize(
    ("text", "question"),
    [
        (f"<@{BOT_USER_ID}> how do I rotate a key?", "how do I rotate a key?"),
        (f"<@{BOT_USER_ID}|asklane> how do I rotate a key?", "how do I rotate a key?"),
        (f"how do I rotate a key <@{BOT_USER_ID}>?", "how do I rotate a key?"),
        (f"thanks <@{BOT_USER_ID}>! and why?", "thanks! and why?"),
        (
            f"ask <@{BOT_USER_ID}> about <@U0ALICE> and <#C0INFRA|infra>",
            "ask about <@U0ALICE> and <#C0INFRA|infra>",
        ),
        (f"<@{BOT_USER_ID}> <@{BOT_USER_ID}> twice", "twice"),
        (f"<@{BOT_USER_ID}>", ""),
        (f"  <@{BOT_USER_ID}>\x00\x07  ", ""),
        ("line one\nline\x1b two\t<@U0BOTX>", "line one\nline two\t<@U0BOTX>"),
    ],
)
def test_the_question_loses_only_asklanes_own_mention_and_control_characters(
    text: str, question: str
) -> None:
    assert question_text(text, BOT_USER_ID) == question


# --- mentions and DMs become one thread question each ------------------------------------------


def test_a_mention_is_acked_with_an_empty_200(web: TestClient) -> None:
    response = send_event(web, slack.mention("what is a p99?"))

    assert (response.status_code, response.text) == (200, "")


def test_the_ack_path_calls_no_slack_api(web: TestClient, fake_slack: FakeSlack) -> None:
    for event in (
        slack.mention("hi?"),
        slack.message("hi?"),
        slack.home_opened("messages"),
        slack.mention(""),
    ):
        assert send_event(web, event).status_code == 200

    assert fake_slack.requests == []


def test_a_top_level_mention_queues_a_question_answered_in_a_new_thread_under_it(
    web: TestClient, redis_client: redis.Redis
) -> None:
    mention = slack.mention("what is a p99?", channel="C0CHANNEL")
    send_event(web, mention)

    [job] = queued_jobs(redis_client)
    assert isinstance(job, ThreadQuestion)
    assert (job.source, job.text, job.message_ts) == ("mention", "what is a p99?", mention["event"]["ts"])
    assert job.reply_to == Thread(channel_id="C0CHANNEL", thread_ts=mention["event"]["ts"])
    assert (job.asker.team_id, job.asker.user_id) == ("T0TEAM", "U0ASKER")


def test_a_mention_in_a_thread_is_answered_in_that_thread(web: TestClient, redis_client: redis.Redis) -> None:
    parent = new_ts()
    send_event(web, slack.mention("and the p999?", channel="C0CHANNEL", thread_ts=parent))

    [job] = queued_jobs(redis_client)
    assert isinstance(job, ThreadQuestion)
    assert job.reply_to == Thread(channel_id="C0CHANNEL", thread_ts=parent)


def test_a_top_level_dm_starts_a_conversation_in_its_own_thread(
    web: TestClient, redis_client: redis.Redis
) -> None:
    dm = slack.message("what is a p99?", channel="D0DIRECT")
    send_event(web, dm)

    [job] = queued_jobs(redis_client)
    assert isinstance(job, ThreadQuestion)
    assert (job.source, job.text) == ("dm", "what is a p99?")
    assert job.reply_to == Thread(channel_id="D0DIRECT", thread_ts=dm["event"]["ts"])


def test_a_reply_in_a_dm_thread_continues_that_thread(web: TestClient, redis_client: redis.Redis) -> None:
    first = slack.message("what is a p99?")
    send_event(web, first)
    send_event(web, slack.message("and the p999?", thread_ts=first["event"]["ts"]))

    questions = queued_jobs(redis_client)
    assert [job.text for job in questions if isinstance(job, ThreadQuestion)] == [
        "what is a p99?",
        "and the p999?",
    ]
    assert {job.reply_to for job in questions} == {
        Thread(channel_id="D0DIRECT", thread_ts=first["event"]["ts"])
    }


def test_a_redelivered_event_makes_no_second_job_and_its_retry_number_is_logged(
    web: TestClient, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    mention = slack.mention("what is a p99?")

    first = send_event(web, mention)
    again = send_event(web, mention, retry_num=1)

    assert first.status_code == again.status_code == 200
    assert len(queued_job_ids(redis_client)) == 1
    [duplicate] = caplog_events(caplog, "event.duplicate")
    assert (duplicate["event_id"], duplicate["retry_num"]) == (mention["event_id"], "1")


def test_a_mention_and_its_message_twin_make_one_job(web: TestClient, redis_client: redis.Redis) -> None:
    ts = new_ts()
    mention = slack.mention("what is a p99?", channel="C0CHANNEL", ts=ts)
    twin = slack.message(mention["event"]["text"], channel="C0CHANNEL", channel_type="channel", ts=ts)

    send_event(web, mention)
    send_event(web, twin)

    [job] = queued_jobs(redis_client)
    assert isinstance(job, ThreadQuestion) and job.text == "what is a p99?"


def test_a_question_answered_already_is_not_queued_again_on_redelivery(
    web: TestClient, redis_client: redis.Redis
) -> None:
    mention = slack.mention("what is a p99?")
    send_event(web, mention)
    [job_id] = queued_job_ids(redis_client)
    # As arq leaves a finished job: its result kept, the job gone from the queue.
    redis_client.zrem(keys.QUEUE_KEY, job_id)
    redis_client.delete(keys.job_key(job_id))
    redis_client.set(keys.result_key(job_id), b"{}", ex=60)

    send_event(web, mention, retry_num=2)

    assert queued_job_ids(redis_client) == []


# --- thread order --------------------------------------------------------------------------------


def test_a_queued_thread_question_joins_its_thread_order_at_its_ts(
    web: TestClient, redis_client: redis.Redis
) -> None:
    first = slack.message("what is a p99?")
    send_event(web, first)
    reply = slack.message("and the p999?", thread_ts=first["event"]["ts"])
    send_event(web, reply)

    order = keys.thread_order_key("T0TEAM", "D0DIRECT", first["event"]["ts"])
    members = redis_client.zrange(order, 0, -1, withscores=True)
    ids = [job.job_id for job in queued_jobs(redis_client)]
    assert [member.decode() for member, _ in members] == ids
    assert [score for _, score in members] == [float(first["event"]["ts"]), float(reply["event"]["ts"])]
    assert 0 < redis_client.ttl(order) <= THREAD_ORDER_TTL_SECONDS


def test_a_duplicate_delivery_leaves_the_thread_order_as_it_was(
    web: TestClient, redis_client: redis.Redis
) -> None:
    mention = slack.mention("what is a p99?")
    send_event(web, mention)
    order = keys.thread_order_key("T0TEAM", "C0CHANNEL", mention["event"]["ts"])
    [job_id] = queued_job_ids(redis_client)
    redis_client.zrem(order, job_id)  # as the runner does when the job ends

    send_event(web, mention, retry_num=1)

    assert redis_client.exists(order) == 0


# --- notices instead of questions ----------------------------------------------------------------


def test_a_mention_with_no_question_queues_a_usage_notice_in_its_thread(
    web: TestClient, redis_client: redis.Redis
) -> None:
    mention = slack.mention("", channel="C0CHANNEL")
    send_event(web, mention)

    [job] = queued_jobs(redis_client)
    assert isinstance(job, ThreadNotice)
    assert "Mention me with your question" in job.text
    assert job.reply_to == Thread(channel_id="C0CHANNEL", thread_ts=mention["event"]["ts"])


def test_a_question_too_long_queues_one_notice_and_no_question(
    web: TestClient, redis_client: redis.Redis
) -> None:
    dm = slack.message("x" * (MAX_QUESTION_CHARS + 1))
    send_event(web, dm)
    send_event(web, dm, retry_num=1)

    [job] = queued_jobs(redis_client)
    assert isinstance(job, ThreadNotice)
    assert f"up to {MAX_QUESTION_CHARS:,}" in job.text


def test_a_question_at_the_length_limit_is_queued(web: TestClient, redis_client: redis.Redis) -> None:
    send_event(web, slack.message("x" * MAX_QUESTION_CHARS))

    [job] = queued_jobs(redis_client)
    assert isinstance(job, ThreadQuestion)


def test_a_question_over_quota_queues_one_notice_and_stays_out_of_the_thread_order(
    env: dict[str, str], redis_client: redis.Redis
) -> None:
    settings = settings_from({**env, "QUOTA_USER_PER_MINUTE": "1"})
    first = slack.message("what is a p99?")
    second = slack.message("and the p999?", thread_ts=first["event"]["ts"])

    with TestClient(create_app(settings)) as web:
        send_event(web, first)
        send_event(web, second)
        send_event(web, second, retry_num=1)

    question, notice = queued_jobs(redis_client)
    assert isinstance(question, ThreadQuestion) and isinstance(notice, ThreadNotice)
    assert "You can ask again in" in notice.text
    assert notice.reply_to == Thread(channel_id="D0DIRECT", thread_ts=first["event"]["ts"])
    order = keys.thread_order_key("T0TEAM", "D0DIRECT", first["event"]["ts"])
    assert [member.decode() for member in redis_client.zrange(order, 0, -1)] == [question.job_id]


def test_mentions_dms_and_slash_commands_share_one_quota(
    env: dict[str, str], redis_client: redis.Redis, commands: SlashCommands
) -> None:
    settings = settings_from({**env, "QUOTA_USER_PER_MINUTE": "3"})

    with TestClient(create_app(settings)) as web:
        commands.send(web, "one?")
        send_event(web, slack.mention("two?"))
        send_event(web, slack.message("three?"))
        send_event(web, slack.message("four?"))

    assert [job.kind for job in queued_jobs(redis_client)] == ["ask", "thread", "thread", "notice"]


# --- the Messages tab ----------------------------------------------------------------------------


def test_opening_the_messages_tab_queues_one_prompts_job(web: TestClient, redis_client: redis.Redis) -> None:
    opened = slack.home_opened("messages", channel="D0DIRECT", user="U0ASKER")

    response = send_event(web, opened)
    send_event(web, opened, retry_num=1)

    assert (response.status_code, response.text) == (200, "")
    [job] = queued_jobs(redis_client)
    assert isinstance(job, SuggestPrompts)
    assert job.reply_to == DirectMessage(channel_id="D0DIRECT", user_id="U0ASKER")


# --- ignored events -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "body", "reason"),
    [
        (
            "own message",
            slack.message("answer", user=BOT_USER_ID, bot_id="B0OURS", app_id=APP_ID),
            "own_message",
        ),
        ("other bot", slack.message("beep", bot_id="B0OTHER", subtype="bot_message"), "other_bot"),
        ("edit", slack.message("hi", subtype="message_changed"), "subtype"),
        ("deletion", slack.message("", subtype="message_deleted"), "subtype"),
        (
            "join",
            slack.message("joined", channel="C0CHANNEL", channel_type="channel", subtype="channel_join"),
            "subtype",
        ),
        ("no mention", slack.message("hello all", channel="C0CHANNEL", channel_type="channel"), "no_mention"),
        ("another app", {**slack.mention("hi"), "api_app_id": "A0SOMEONE"}, "other_app"),
        (
            "missing fields",
            slack.envelope({"type": "message", "channel_type": "im", "text": "hi"}),
            "missing_fields",
        ),
        (
            "unsubscribed type",
            slack.envelope({"type": "reaction_added", "user": "U0ASKER"}),
            "unhandled_type",
        ),
        ("home tab", slack.home_opened("home"), "home_tab"),
        (
            "not an event",
            {"type": "app_rate_limited", "team_id": "T0TEAM", "api_app_id": APP_ID},
            "not_an_event",
        ),
    ],
)
def test_an_ignored_event_gets_an_empty_200_a_debug_line_and_no_job(
    debug_web: TestClient,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    name: str,
    body: dict[str, Any],
    reason: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    response = send_event(debug_web, body)

    assert (response.status_code, response.text) == (200, "")
    assert queued_job_ids(redis_client) == []
    [ignored] = caplog_events(caplog, "event.ignored")
    assert (ignored["reason"], ignored["level"]) == (reason, "debug")


# --- the gate --------------------------------------------------------------------------------------


def test_url_verification_is_answered_with_its_challenge(web: TestClient) -> None:
    response = send_event(
        web, SlackEvents.url_verification("3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P")
    )

    assert response.status_code == 200
    assert response.json() == {"challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"}


@pytest.mark.parametrize("body", [json.dumps(slack.mention("hi")).encode(), b"{not json", b"[1, 2]"])
def test_a_json_body_with_a_bad_signature_is_refused_with_401_before_it_is_parsed(
    web: TestClient, redis_client: redis.Redis, body: bytes
) -> None:
    response = web.post(
        "/slack/events", content=body, headers=event_headers(body, secret="not-the-signing-secret")
    )

    assert (response.status_code, response.text) == (401, "invalid signature")
    assert queued_job_ids(redis_client) == []


def test_a_stale_event_is_refused_with_401(web: TestClient, redis_client: redis.Redis) -> None:
    body = json.dumps(slack.mention("hi")).encode()

    response = web.post(
        "/slack/events", content=body, headers=event_headers(body, timestamp=int(time.time()) - 301)
    )

    assert response.status_code == 401
    assert queued_job_ids(redis_client) == []


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "malformed JSON body"),
        (b"\xff\xfe{}", "malformed JSON body"),
        (b"[1, 2]", "JSON body is not an object"),
    ],
)
def test_a_signed_json_body_that_is_not_an_object_is_refused_with_400(
    web: TestClient, redis_client: redis.Redis, body: bytes, reason: str
) -> None:
    response = web.post("/slack/events", content=body, headers=event_headers(body))

    assert (response.status_code, response.text) == (400, reason)
    assert queued_job_ids(redis_client) == []


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/xml", "multipart/form-data; boundary=x", ""]
)
def test_a_signed_body_of_another_content_type_is_refused_with_415(
    web: TestClient, redis_client: redis.Redis, content_type: str
) -> None:
    body = json.dumps(slack.mention("hi")).encode()
    headers = {**signature_headers(body), "Content-Type": content_type}

    response = web.post("/slack/events", content=body, headers=headers)

    assert (response.status_code, response.text) == (415, "unsupported content type")
    assert queued_job_ids(redis_client) == []


# --- Redis unreachable ------------------------------------------------------------------------------


@pytest.fixture
def silent_redis_port() -> Iterator[int]:
    """A port that accepts TCP connections (kernel backlog) but never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield sock.getsockname()[1]


@pytest.mark.parametrize("outage", ["refused", "silent"])
def test_with_redis_down_an_event_gets_a_fast_503_so_slack_delivers_it_again(
    env: dict[str, str], silent_redis_port: int, caplog: pytest.LogCaptureFixture, outage: str
) -> None:
    port = free_port() if outage == "refused" else silent_redis_port
    settings = settings_from({**env, "REDIS_URL": f"redis://127.0.0.1:{port}/0"})

    with TestClient(create_app(settings)) as web:
        started = time.monotonic()
        response = send_event(web, slack.mention("what is a p99?"))
        elapsed = time.monotonic() - started

    assert response.status_code == 503
    # Slack gives up on an ack after 3 s; the enqueue is bounded well inside it.
    assert elapsed < 2.5
    [unavailable] = caplog_events(caplog, "event.queue_unavailable")
    assert unavailable["status"] == 503


def test_an_event_slack_delivers_again_after_an_outage_is_queued_once(
    env: dict[str, str], redis_client: redis.Redis, settings: Settings
) -> None:
    mention = slack.mention("what is a p99?")
    down = settings_from({**env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    with TestClient(create_app(down)) as web:
        assert send_event(web, mention).status_code == 503

    with TestClient(create_app(settings)) as web:
        retries = [send_event(web, mention, retry_num=n).status_code for n in (1, 2)]

    assert retries == [200, 200]
    assert len(queued_job_ids(redis_client)) == 1


# --- metrics ----------------------------------------------------------------------------------------


def test_events_are_counted_by_outcome(web: TestClient, redis_client: redis.Redis) -> None:
    mention = slack.mention("what is a p99?")
    send_event(web, mention)
    send_event(web, mention, retry_num=1)
    send_event(web, slack.home_opened("home"))

    def counts() -> dict[str, float]:
        return {
            field.decode(): float(value)
            for field, value in redis_client.hgetall(keys.COUNTERS_KEY).items()
            if field.startswith(b"asklane_events|")
        }

    expected = {
        'asklane_events|outcome="queued"': 1.0,
        'asklane_events|outcome="duplicate"': 1.0,
        'asklane_events|outcome="ignored"': 1.0,
    }
    wait_until(lambda: counts() == expected, explain=lambda: str(counts()))


def test_the_web_process_acks_an_event_and_queues_its_question(
    start_web: Callable[..., WebProcess], redis_client: redis.Redis
) -> None:
    web = start_web()
    mention = slack.mention("what is a p99?")

    with httpx.Client(base_url=web.url, timeout=10) as client:
        response = send_event(client, mention)

    assert (response.status_code, response.text) == (200, "")
    [job] = queued_jobs(redis_client)
    assert isinstance(job, ThreadQuestion) and job.message_ts == mention["event"]["ts"]
