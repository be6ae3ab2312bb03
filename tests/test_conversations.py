"""Conversations end to end: signed Events API requests to the real ASGI app, real worker
processes, real Redis, and the fake Slack recording every post in every thread.

The parts have their own specifications (tests/test_events.py for the web edge,
tests/test_thread_answer.py and tests/test_memory.py for memory, tests/test_thread_order.py for
order, tests/test_thread_delivery.py for posting); these prove they add up to what a user sees.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

import pytest
from starlette.testclient import TestClient

from app.contract import actions
from app.web.main import create_app
from tests.support.deployment import settings_from
from tests.support.fakes.anthropic import MESSAGES, FakeAnthropic, StreamReply, text_of
from tests.support.fakes.slack import SET_STATUS, SET_SUGGESTED_PROMPTS, FakeSlack
from tests.support.processes import WorkerProcess
from tests.support.slack_requests import BOT_USER_ID, Clicks, SlackEvents, new_ts, send_event
from tests.support.stream_writer import stop_buttons
from tests.support.waiting import wait_until

CHANNEL = "C0CHANNEL"
DM = "D0DIRECT"


@pytest.fixture
def events() -> SlackEvents:
    return SlackEvents()


def _ask(web: TestClient, envelope: dict[str, Any], **options: Any) -> None:
    response = send_event(web, envelope, **options)
    assert response.status_code == 200, response.text
    assert response.content == b""


def _replies(fake_slack: FakeSlack, channel: str, thread_ts: str, count: int) -> list[str]:
    """What the thread's replies show, once there are ``count`` of them and none is still
    streaming."""

    def shown() -> bool:
        messages = fake_slack.thread(channel, thread_ts)
        return len(messages) >= count and not any(message.streaming for message in messages)

    wait_until(shown, timeout=30)
    return fake_slack.thread_texts(channel, thread_ts)


def _messages_shown(fake_slack: FakeSlack) -> int:
    """Messages anyone can see in the workspace: posted or streamed, not deleted."""
    return sum(1 for message in fake_slack.messages.values() if not message.deleted)


def _settled(worker: WorkerProcess, count: int) -> None:
    """Wait until the worker finished ``count`` jobs (completed), so nothing more is on its way."""
    wait_until(lambda: len(worker.events("job.completed")) >= count, timeout=30)


def _ai_turns(fake_anthropic: FakeAnthropic, index: int) -> list[tuple[str, str]]:
    """(role, text) of every message in the ``index``-th AI request."""
    body = fake_anthropic.received(MESSAGES)[index].body
    return [(message["role"], text_of(message["content"])) for message in body["messages"]]


def test_a_mention_is_answered_once_in_a_new_thread_under_it_without_the_bot_mention_in_the_prompt(
    web: TestClient,
    events: SlackEvents,
    start_worker: Callable[..., WorkerProcess],
    fake_anthropic: FakeAnthropic,
    fake_slack: FakeSlack,
) -> None:
    worker = start_worker()
    mention = events.mention("what does <@U0OTHER> mean by p99?", channel=CHANNEL)
    ts = mention["event"]["ts"]

    _ask(web, mention)

    assert _replies(fake_slack, CHANNEL, ts, 1) == ["Answer to: what does <@U0OTHER> mean by p99?"]
    _settled(worker, 1)
    assert _ai_turns(fake_anthropic, 0) == [("user", "what does <@U0OTHER> mean by p99?")]
    assert BOT_USER_ID not in str(fake_anthropic.received(MESSAGES)[0].body)
    assert _messages_shown(fake_slack) == 1


def test_a_mention_inside_a_thread_is_answered_in_that_thread(
    web: TestClient,
    events: SlackEvents,
    start_worker: Callable[..., WorkerProcess],
    fake_slack: FakeSlack,
) -> None:
    start_worker()
    thread_ts = new_ts()

    _ask(web, events.mention("and in this thread?", channel=CHANNEL, thread_ts=thread_ts))

    assert _replies(fake_slack, CHANNEL, thread_ts, 1) == ["Answer to: and in this thread?"]


def test_a_follow_up_mention_continues_the_conversation_with_its_history(
    web: TestClient,
    events: SlackEvents,
    start_worker: Callable[..., WorkerProcess],
    fake_anthropic: FakeAnthropic,
    fake_slack: FakeSlack,
) -> None:
    start_worker()
    first = events.mention("what is a p99?", channel=CHANNEL)
    thread_ts = first["event"]["ts"]
    _ask(web, first)
    _replies(fake_slack, CHANNEL, thread_ts, 1)

    _ask(web, events.mention("and a p50?", channel=CHANNEL, thread_ts=thread_ts))

    assert _replies(fake_slack, CHANNEL, thread_ts, 2)[1] == "Answer to: and a p50?"
    assert _ai_turns(fake_anthropic, 1) == [
        ("user", "what is a p99?"),
        ("assistant", "Answer to: what is a p99?"),
        ("user", "and a p50?"),
    ]


def test_a_direct_message_starts_a_conversation_answered_in_its_thread_and_replies_continue_it(
    web: TestClient,
    events: SlackEvents,
    start_worker: Callable[..., WorkerProcess],
    fake_anthropic: FakeAnthropic,
    fake_slack: FakeSlack,
) -> None:
    start_worker()
    first = events.message("hello, who are you?", channel=DM)
    thread_ts = first["event"]["ts"]
    _ask(web, first)
    _replies(fake_slack, DM, thread_ts, 1)

    _ask(web, events.message("tell me more", channel=DM, thread_ts=thread_ts))

    assert _replies(fake_slack, DM, thread_ts, 2) == [
        "Answer to: hello, who are you?",
        "Answer to: tell me more",
    ]
    assert [role for role, _ in _ai_turns(fake_anthropic, 1)] == ["user", "assistant", "user"]


def test_every_delivery_of_one_mention_makes_one_ai_call_and_one_reply(
    web: TestClient,
    events: SlackEvents,
    start_worker: Callable[..., WorkerProcess],
    fake_anthropic: FakeAnthropic,
    fake_slack: FakeSlack,
) -> None:
    worker = start_worker()
    mention = events.mention("is this answered once?", channel=CHANNEL)
    ts = mention["event"]["ts"]
    # The same message as a channel `message` event: another event_id, the same channel and ts.
    twin = events.message(mention["event"]["text"], channel=CHANNEL, channel_type="channel", ts=ts)

    _ask(web, mention)
    _ask(web, mention, retry_num=1)
    _ask(web, twin)
    _replies(fake_slack, CHANNEL, ts, 1)
    _settled(worker, 1)
    _ask(web, mention, retry_num=2)  # a late re-delivery, after the answer

    assert len(fake_anthropic.received(MESSAGES)) == 1
    assert _messages_shown(fake_slack) == 1
    assert len(worker.events("job.started")) == 1


def test_two_questions_in_one_thread_on_two_workers_are_answered_in_the_order_asked(
    web: TestClient,
    events: SlackEvents,
    start_worker: Callable[..., WorkerProcess],
    fake_anthropic: FakeAnthropic,
    fake_slack: FakeSlack,
) -> None:
    workers = [start_worker(), start_worker()]
    fake_anthropic.default_delay = 0.5  # the first answer is still being written when the second is asked
    first = events.mention("first question", channel=CHANNEL)
    thread_ts = first["event"]["ts"]

    _ask(web, first)
    _ask(web, events.mention("second question", channel=CHANNEL, thread_ts=thread_ts))

    assert _replies(fake_slack, CHANNEL, thread_ts, 2) == [
        "Answer to: first question",
        "Answer to: second question",
    ]
    assert ("assistant", "Answer to: first question") in _ai_turns(fake_anthropic, 1)
    # The second question was picked up while the first was answered, and waited for it.
    assert any(worker.events("job.waiting_turn") for worker in workers)


def test_a_worker_killed_mid_answer_leaves_exactly_one_reply_in_the_thread(
    web: TestClient,
    events: SlackEvents,
    start_worker: Callable[..., WorkerProcess],
    fake_anthropic: FakeAnthropic,
    fake_slack: FakeSlack,
) -> None:
    fake_anthropic.default_delay = 1.5  # under AI_TIMEOUT_SECONDS, long enough to kill mid-call
    doomed = start_worker()
    mention = events.mention("will this survive a crash?", channel=CHANNEL)
    ts = mention["event"]["ts"]
    _ask(web, mention)
    fake_anthropic.wait_for(MESSAGES)

    doomed.signal_group(signal.SIGKILL)
    doomed.wait(timeout=5)
    rescuer = start_worker()

    assert _replies(fake_slack, CHANNEL, ts, 1) == ["Answer to: will this survive a crash?"]
    _settled(rescuer, 1)
    assert _messages_shown(fake_slack) == 1
    assert rescuer.events("job.stalled")


def test_a_question_shows_that_asklane_is_working_in_its_thread(
    web: TestClient,
    events: SlackEvents,
    start_worker: Callable[..., WorkerProcess],
    fake_slack: FakeSlack,
) -> None:
    start_worker()
    mention = events.mention("are you on it?", channel=CHANNEL)
    ts = mention["event"]["ts"]

    _ask(web, mention)

    _replies(fake_slack, CHANNEL, ts, 1)
    [status, *_] = fake_slack.statuses(CHANNEL)
    assert status["thread_ts"] == ts
    assert status["status"]
    first_status = fake_slack.received(SET_STATUS)[0].at
    assert first_status < fake_slack.received("/api/chat.startStream")[0].at


def test_opening_the_messages_tab_offers_the_suggested_prompts(
    web: TestClient,
    events: SlackEvents,
    start_worker: Callable[..., WorkerProcess],
    fake_slack: FakeSlack,
) -> None:
    start_worker(SUGGESTED_PROMPTS='["What can you do?", "Summarise this"]')

    _ask(web, events.home_opened("messages", channel=DM))

    [offered] = fake_slack.wait_for(SET_SUGGESTED_PROMPTS)
    assert offered.body["channel_id"] == DM
    assert [prompt["message"] for prompt in offered.body["prompts"]] == ["What can you do?", "Summarise this"]


def test_a_question_over_quota_is_told_so_in_its_thread_and_never_reaches_claude(
    env: dict[str, str],
    events: SlackEvents,
    start_worker: Callable[..., WorkerProcess],
    fake_anthropic: FakeAnthropic,
    fake_slack: FakeSlack,
) -> None:
    start_worker()
    with TestClient(create_app(settings_from({**env, "QUOTA_USER_PER_MINUTE": "1"}))) as web:
        _ask(web, events.mention("one", channel=CHANNEL))
        second = events.mention("two", channel=CHANNEL)
        _ask(web, second)

    [notice] = _replies(fake_slack, CHANNEL, second["event"]["ts"], 1)
    assert "You can ask again in 1 min" in notice
    wait_until(lambda: _messages_shown(fake_slack) == 2, timeout=30)
    assert [
        text_of(request.body["messages"][-1]["content"]) for request in fake_anthropic.received(MESSAGES)
    ] == ["one"]


def test_the_stop_button_on_a_streaming_answer_stops_it_and_ends_the_message_stopped(
    web: TestClient,
    events: SlackEvents,
    start_worker: Callable[..., WorkerProcess],
    fake_anthropic: FakeAnthropic,
    fake_slack: FakeSlack,
) -> None:
    # Long enough to still be streaming when the click lands, however slow the machine.
    fake_anthropic.script(MESSAGES, StreamReply(text="word " * 2_000, chunk=5, event_delay=0.01))
    worker = start_worker()
    mention = events.mention("write me an essay", channel=CHANNEL)
    ts = mention["event"]["ts"]
    _ask(web, mention)

    def stop_shown() -> dict[str, Any] | None:
        for message in fake_slack.thread(CHANNEL, ts):
            for stop in stop_buttons(message.blocks):
                if message.streaming:
                    return {"ts": message.ts, **stop}
        return None

    stop = wait_until(stop_shown, timeout=30)
    response = Clicks(fake_slack).click(
        web, actions.STOP, stop["value"], channel=CHANNEL, message_ts=stop["ts"], thread_ts=ts
    )

    assert response.status_code == 200
    wait_until(lambda: worker.events("job.stopped"), timeout=30)
    [message] = fake_slack.thread(CHANNEL, ts)
    assert not message.streaming and message.text.endswith("_Stopped._")
    assert stop_shown() is None and stop_buttons(message.blocks) == []
    assert fake_anthropic.wait_for_stream_end().client_gone
