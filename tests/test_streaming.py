"""Thread answers streamed into Slack (workers/streaming.py): the writer a worker uses, against
the fake Slack's streaming methods, on real Redis. The thread kind's side (Claude's tokens) is
played by tests/support/stream_writer.py."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from arq.connections import ArqRedis
from slack_sdk.errors import SlackApiError

from app.contract import keys
from app.contract.settings import Settings
from app.contract.targets import Thread
from tests.support.fakes.slack import (
    APPEND_STREAM,
    START_STREAM,
    STOP_STREAM,
    FakeSlack,
    ratelimited,
    refused,
)
from tests.support.jobs import in_redis
from tests.support.stream_writer import BUTTONS, stop_buttons, stream, words
from tests.support.threads import CHANNEL, TEAM, question
from workers import job_state, streaming
from workers.delivery import SlackDelivery
from workers.formatting import stop_button
from workers.streaming import FLUSH_CHARS, MESSAGE_CHARS, StreamRecord


def thread_of(job: object) -> Thread:
    target = getattr(job, "reply_to", None)
    assert isinstance(target, Thread)
    return target


def test_a_streamed_answer_shows_every_piece_in_order_once_with_the_buttons_under_it(
    settings: Settings, fake_slack: FakeSlack
) -> None:
    job = question("explain streams")
    tokens = words(400)

    in_redis(settings, lambda client: stream(SlackDelivery(settings), client, job, tokens))

    [message] = fake_slack.thread(CHANNEL, thread_of(job).thread_ts)
    assert message.text == "".join(tokens)
    assert "".join(message.pieces) == "".join(tokens)
    assert message.blocks == [{"type": "markdown", "text": "".join(tokens)}, *BUTTONS]
    assert not message.streaming


def test_a_streaming_message_shows_a_stop_button_naming_its_job_until_it_ends(
    settings: Settings, fake_slack: FakeSlack
) -> None:
    job = question("stoppable")
    shown_while_streaming: list[list[Any]] = []

    async def run(client: ArqRedis) -> None:
        writer = SlackDelivery(settings).open_stream(client, job)
        for token in words(100):
            await writer.append(token)
        [message] = fake_slack.thread(CHANNEL, thread_of(job).thread_ts)
        shown_while_streaming.append(stop_buttons(message.blocks))
        await writer.finish(BUTTONS)

    in_redis(settings, run)

    [[stop]] = shown_while_streaming
    assert stop["value"] == job.job_id and stop["text"]["text"] == "Stop"
    [message] = fake_slack.thread(CHANNEL, thread_of(job).thread_ts)
    assert stop_buttons(message.blocks) == [] and message.blocks[1:] == BUTTONS


def test_a_stream_falling_back_to_chat_update_keeps_its_stop_button_until_it_ends(
    settings: Settings, fake_slack: FakeSlack
) -> None:
    job = question("expired but still going")
    kept: list[list[Any]] = []

    async def run(client: ArqRedis) -> None:
        writer = SlackDelivery(settings).open_stream(client, job)
        await writer.append("x" * 300)
        [message] = fake_slack.thread(CHANNEL, thread_of(job).thread_ts)
        fake_slack.expire_stream(message.ts)
        for token in words(100):
            await writer.append(token)
        kept.append(stop_buttons(fake_slack.thread(CHANNEL, thread_of(job).thread_ts)[0].blocks))
        await writer.finish(BUTTONS)

    in_redis(settings, run)

    assert len(kept[0]) == 1
    [message] = fake_slack.thread(CHANNEL, thread_of(job).thread_ts)
    assert stop_buttons(message.blocks) == [] and message.blocks[1:] == BUTTONS


def test_the_stream_starts_with_the_first_text_for_the_asker_in_their_workspace(
    settings: Settings, fake_slack: FakeSlack
) -> None:
    job = question("who sees it")

    in_redis(settings, lambda client: stream(SlackDelivery(settings), client, job, ["Hello", " there"]))

    [start] = [request.body for request in fake_slack.received("/api/chat.startStream")]
    assert start == {
        "channel": CHANNEL,
        "thread_ts": thread_of(job).thread_ts,
        "recipient_user_id": job.asker.user_id,
        "recipient_team_id": TEAM,
        "chunks": [
            {"type": "blocks", "blocks": [stop_button(job.job_id)]},
            {"type": "markdown_text", "text": "Hello"},
        ],
    }


def test_appends_are_batched_so_an_answer_takes_few_slack_calls(
    settings: Settings, fake_slack: FakeSlack
) -> None:
    tokens = words(2_000, width=5)  # 10,000 characters in 2,000 tokens

    in_redis(settings, lambda client: stream(SlackDelivery(settings), client, question("long"), tokens))

    assert fake_slack.calls("chat.startStream") == 1
    assert fake_slack.calls("chat.stopStream") == 1
    assert fake_slack.calls("chat.appendStream") <= len("".join(tokens)) // FLUSH_CHARS + 1
    assert min(len(r.body["markdown_text"]) for r in fake_slack.received(APPEND_STREAM)) >= FLUSH_CHARS


def test_a_429_on_append_keeps_the_text_and_sends_it_with_the_next_call_never_twice(
    settings: Settings, fake_slack: FakeSlack, redis_client: redis.Redis
) -> None:
    fake_slack.script(APPEND_STREAM, ratelimited(1))
    job = question("rate limited")
    tokens = words(300)

    in_redis(settings, lambda client: stream(SlackDelivery(settings), client, job, tokens))

    [message] = fake_slack.thread(CHANNEL, thread_of(job).thread_ts)
    assert message.text == "".join(tokens)
    [refused, *later] = fake_slack.received(APPEND_STREAM)
    assert refused.reply.status == 429
    carried = (
        later[0].body["markdown_text"] if later else fake_slack.received(STOP_STREAM)[0].body["markdown_text"]
    )
    assert carried.startswith(refused.body["markdown_text"])
    assert fake_slack.ratelimited_count() == 1


def test_a_429_pauses_the_workspace_for_every_worker(
    settings: Settings, fake_slack: FakeSlack, redis_client: redis.Redis
) -> None:
    fake_slack.script(APPEND_STREAM, ratelimited(30))

    async def run(client: ArqRedis) -> None:
        writer = SlackDelivery(settings).open_stream(client, question("paused"))
        for token in words(100):
            await writer.append(token)

    in_redis(settings, run)

    assert 0 < redis_client.pttl(keys.slack_pause_key(TEAM)) <= 6_000  # capped at JOB_TIMEOUT_SECONDS


def test_a_stream_slack_expired_is_completed_by_chat_update_with_its_full_text(
    settings: Settings, fake_slack: FakeSlack
) -> None:
    job = question("slow answer")
    first, second = words(50), words(60)[50:]

    async def run(client: ArqRedis) -> None:
        writer = SlackDelivery(settings).open_stream(client, job)
        for token in first:
            await writer.append(token)
        [message] = fake_slack.thread(CHANNEL, thread_of(job).thread_ts)
        fake_slack.expire_stream(message.ts)  # as after five idle minutes
        for token in second:
            await writer.append(token)
        await writer.finish(BUTTONS)

    in_redis(settings, run)

    [message] = fake_slack.thread(CHANNEL, thread_of(job).thread_ts)
    assert message.text == "".join(first + second)
    assert message.blocks[1:] == BUTTONS
    assert fake_slack.calls("chat.update") >= 1


def test_a_stream_idle_longer_than_slack_keeps_it_falls_back_to_chat_update(
    settings: Settings, fake_slack: FakeSlack
) -> None:
    fake_slack.stream_idle_seconds = 0.0  # every call after the start finds the stream ended
    job = question("idle")
    tokens = words(200)

    in_redis(settings, lambda client: stream(SlackDelivery(settings), client, job, tokens))

    [message] = fake_slack.thread(CHANNEL, thread_of(job).thread_ts)
    assert message.text == "".join(tokens)
    assert message.blocks[1:] == BUTTONS
    assert fake_slack.calls("chat.appendStream") == 1  # refused once; chat.update from then on


def test_the_fake_refuses_an_append_past_slacks_size_limit(settings: Settings, fake_slack: FakeSlack) -> None:
    async def run(client: ArqRedis) -> None:
        web = SlackDelivery(settings)._web
        started = await web.chat_startStream(channel=CHANNEL, thread_ts="1.000001", markdown_text="x")
        await web.chat_appendStream(channel=CHANNEL, ts=started["ts"], markdown_text="y" * 12_001)

    with pytest.raises(SlackApiError, match="msg_too_long"):
        in_redis(settings, run)


def test_an_answer_slack_will_not_stream_is_posted_once_complete(
    settings: Settings, fake_slack: FakeSlack
) -> None:
    fake_slack.script(START_STREAM, refused("channel_type_not_supported"))
    job = question("no streaming here")
    tokens = words(300)

    in_redis(settings, lambda client: stream(SlackDelivery(settings), client, job, tokens))

    [message] = fake_slack.thread(CHANNEL, thread_of(job).thread_ts)
    assert message.text == "".join(tokens)
    assert message.blocks[1:] == BUTTONS
    assert fake_slack.calls("chat.startStream") == 1
    assert fake_slack.calls("chat.postMessage") == 1


def test_a_refused_stop_falls_back_to_chat_update(settings: Settings, fake_slack: FakeSlack) -> None:
    fake_slack.script(STOP_STREAM, refused("message_not_in_streaming_state"))
    job = question("stop refused")
    tokens = words(30)

    in_redis(settings, lambda client: stream(SlackDelivery(settings), client, job, tokens))

    [message] = fake_slack.thread(CHANNEL, thread_of(job).thread_ts)
    assert message.text == "".join(tokens)
    assert message.blocks[1:] == BUTTONS


def test_a_long_answer_continues_in_new_messages_in_the_same_thread(
    settings: Settings, fake_slack: FakeSlack, redis_client: redis.Redis
) -> None:
    job = question("a very long answer")
    lines = [f"line {n:05d} of a long answer\n" for n in range(1_000)]  # about 27,000 characters

    in_redis(settings, lambda client: stream(SlackDelivery(settings), client, job, lines))

    messages = fake_slack.thread(CHANNEL, thread_of(job).thread_ts)
    assert len(messages) == 3
    assert "".join(message.text for message in messages) == "".join(lines)
    assert all(len(message.text) <= MESSAGE_CHARS for message in messages)
    assert all(message.text.endswith("\n") for message in messages)  # cut at lines
    assert [stop_buttons(message.blocks) for message in messages] == [[], [], []]
    assert [message.blocks[1:] for message in messages] == [[], [], BUTTONS]
    record = StreamRecord.model_validate_json(redis_client.get(keys.stream_key(job.job_id)) or b"")
    assert [m.ts for m in record.messages] == [message.ts for message in messages]


def test_an_answer_ended_short_shows_its_text_then_the_note_and_the_retry_button(
    settings: Settings, fake_slack: FakeSlack
) -> None:
    job = question("interrupted")
    retry = [{"type": "actions", "elements": [{"type": "button", "action_id": "asklane_regenerate"}]}]

    async def run(client: ArqRedis) -> None:
        writer = SlackDelivery(settings).open_stream(client, job)
        await writer.append("Half an ans")
        await writer.append("wer")
        assert writer.shown
        await writer.end_with_note("_Interrupted: Claude stopped answering._", retry)

    in_redis(settings, run)

    [message] = fake_slack.thread(CHANNEL, thread_of(job).thread_ts)
    assert message.text == "Half an answer\n\n_Interrupted: Claude stopped answering._"
    assert message.blocks[1:] == retry


def test_a_stop_before_any_text_still_leaves_the_note(settings: Settings, fake_slack: FakeSlack) -> None:
    job = question("stopped at once")

    async def run(client: ArqRedis) -> bool:
        writer = SlackDelivery(settings).open_stream(client, job)
        await writer.end_with_note("_Stopped._", [])
        return writer.shown

    assert in_redis(settings, run)
    assert fake_slack.thread_texts(CHANNEL, thread_of(job).thread_ts) == ["_Stopped._"]


# --- a later run completes what a dead run streamed ------------------------------------------------


def test_complete_stream_replaces_a_partial_streaming_message_with_the_complete_answer(
    settings: Settings, fake_slack: FakeSlack
) -> None:
    job = question("crash mid-stream")
    # The dead run: a message started and still streaming, the record as it left it.
    in_redis(settings, lambda client: stream(SlackDelivery(settings), client, job, words(80), finish=False))
    [partial] = fake_slack.thread(CHANNEL, thread_of(job).thread_ts)
    assert partial.streaming

    completed = in_redis(
        settings,
        lambda client: SlackDelivery(settings).complete_stream(
            client, job, "The complete answer.", cut_short=False, blocks=BUTTONS
        ),
    )

    assert completed
    [message] = fake_slack.thread(CHANNEL, thread_of(job).thread_ts)
    assert message.ts == partial.ts
    assert message.text == "The complete answer."
    assert message.blocks[1:] == BUTTONS
    assert not message.streaming


def test_complete_stream_deletes_the_messages_a_shorter_answer_does_not_need(
    settings: Settings, fake_slack: FakeSlack
) -> None:
    job = question("long, then short")
    lines = [f"line {n:05d} of a long answer\n" for n in range(500)]  # two messages' worth
    in_redis(settings, lambda client: stream(SlackDelivery(settings), client, job, lines, finish=False))
    assert len(fake_slack.thread(CHANNEL, thread_of(job).thread_ts)) == 2

    in_redis(
        settings,
        lambda client: SlackDelivery(settings).complete_stream(
            client, job, "Short.", cut_short=False, blocks=BUTTONS
        ),
    )

    assert fake_slack.thread_texts(CHANNEL, thread_of(job).thread_ts) == ["Short."]


def test_complete_stream_posts_the_parts_a_longer_answer_needs(
    settings: Settings, fake_slack: FakeSlack
) -> None:
    job = question("short, then long")
    in_redis(settings, lambda client: stream(SlackDelivery(settings), client, job, ["Begin"], finish=False))
    answer = "\n\n".join(f"Paragraph {n}: " + "x" * 1_000 for n in range(20))  # about 20,000 characters

    in_redis(
        settings,
        lambda client: SlackDelivery(settings).complete_stream(
            client, job, answer, cut_short=False, blocks=BUTTONS
        ),
    )

    messages = fake_slack.thread(CHANNEL, thread_of(job).thread_ts)
    assert len(messages) == 2
    assert "\n\n".join(message.text for message in messages) == answer
    assert messages[-1].blocks[1:] == BUTTONS


def test_complete_stream_after_slack_ended_the_stream_still_shows_the_answer(
    settings: Settings, fake_slack: FakeSlack
) -> None:
    job = question("expired before recovery")
    in_redis(settings, lambda client: stream(SlackDelivery(settings), client, job, words(10), finish=False))
    [partial] = fake_slack.thread(CHANNEL, thread_of(job).thread_ts)
    fake_slack.expire_stream(partial.ts)

    in_redis(
        settings,
        lambda client: SlackDelivery(settings).complete_stream(
            client, job, "Answer.", cut_short=True, blocks=BUTTONS
        ),
    )

    [message] = fake_slack.thread(CHANNEL, thread_of(job).thread_ts)
    assert message.text == "Answer."
    assert message.blocks[-1:] == BUTTONS
    assert "cut short" in str(message.blocks)


def test_complete_stream_run_again_after_an_interrupted_recovery_leaves_one_answer(
    settings: Settings, fake_slack: FakeSlack
) -> None:
    job = question("recovered twice")
    in_redis(settings, lambda client: stream(SlackDelivery(settings), client, job, words(80), finish=False))
    answer = "\n\n".join(f"Paragraph {n}: " + "x" * 1_000 for n in range(15))

    for _ in range(2):
        in_redis(
            settings,
            lambda client: SlackDelivery(settings).complete_stream(
                client, job, answer, cut_short=False, blocks=BUTTONS
            ),
        )

    messages = fake_slack.thread(CHANNEL, thread_of(job).thread_ts)
    assert "\n\n".join(message.text for message in messages) == answer
    assert [bool(message.blocks[1:]) for message in messages] == [False, True]


def test_complete_stream_without_an_earlier_stream_does_nothing(
    settings: Settings, fake_slack: FakeSlack
) -> None:
    job = question("first run")

    completed = in_redis(
        settings,
        lambda client: SlackDelivery(settings).complete_stream(
            client, job, "Answer.", cut_short=False, blocks=[]
        ),
    )

    assert not completed
    assert fake_slack.requests == []


@pytest.mark.parametrize(
    ("text", "room", "whole_lines", "head"),
    [
        ("short", 10, False, "short"),
        ("exactly10!", 10, True, "exactly10!"),
        ("one line\nanother line", 12, False, "one line\n"),
        ("a\nb\nc\nd", 5, True, "a\nb\n"),
        ("no breaks anywhere here", 9, False, "no breaks"),
        ("no breaks anywhere here", 9, True, ""),
        ("\nbreak at the start", 10, True, "\n"),
    ],
)
def test_a_message_is_cut_after_the_last_line_that_fits(
    text: str, room: int, whole_lines: bool, head: str
) -> None:
    assert streaming.cut(text, room, whole_lines=whole_lines) == head


def test_the_stream_record_lives_as_long_as_the_jobs_state(
    settings: Settings, fake_slack: FakeSlack, redis_client: redis.Redis
) -> None:
    job = question("record")
    in_redis(settings, lambda client: stream(SlackDelivery(settings), client, job, ["text"]))

    assert 0 < redis_client.ttl(keys.stream_key(job.job_id)) <= job_state.STATE_TTL_SECONDS
