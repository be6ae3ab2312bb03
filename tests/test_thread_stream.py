"""A thread answer streams (workers/thread_answer.py): Claude's deltas go into the Slack stream as
they arrive, and the message ends with its buttons, an "Interrupted" note, or "Stopped.".

These tests run the kind's steps under their lease with the worker's real Claude (against the fake
Anthropic's server-sent events), its real Slack delivery (against the fake Slack's streaming
methods) and real Redis, and look at what the AI was asked and sent and at what the thread shows.
How the stream writer batches and falls back on the wire is tests/test_streaming.py's.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis
from arq.connections import ArqRedis

from app.contract import answers, keys
from app.contract.jobs import ThreadQuestion
from app.contract.settings import Settings
from tests.support.fakes.anthropic import FakeAnthropic, StreamReply, error
from tests.support.fakes.server import Reply
from tests.support.fakes.slack import (
    SET_STATUS,
    START_STREAM,
    STOP_STREAM,
    UPDATE,
    FakeMessage,
    FakeSlack,
)
from tests.support.jobs import drain, enqueue, in_redis
from tests.support.processes import WorkerProcess
from tests.support.stream_writer import stop_buttons, stream
from tests.support.threads import question, run_thread_question, stop_thread_question
from tests.support.waiting import wait_until
from workers import job_state, memory
from workers.delivery import SlackDelivery
from workers.errors import PermanentError, TransientError
from workers.formatting import CUT_SHORT_NOTE, answer_buttons, retry_buttons, stop_button
from workers.ratelimit import SlotTooFar
from workers.thread_answer import (
    COMPLETED_AFTER_CRASH,
    STOPPED_NOTE,
    STREAMED,
    THINKING,
    interrupted_note,
)

TEXT = "Paris is the capital of France, and has been for most of the last thousand years."
#: What a run killed mid-answer had shown when it died.
PARTIAL = "What the run that died had shown so far"


def _run(
    settings: Settings, job: ThreadQuestion, before: Callable[[ArqRedis], Awaitable[None]] | None = None
) -> str:
    return asyncio.run(run_thread_question(settings, job, before=before))


async def _leave_stream_of_dead_run(settings: Settings, client: ArqRedis, job: ThreadQuestion) -> None:
    """Leave the job's answer as a run killed mid-stream leaves it: one message in the thread
    showing PARTIAL, still streaming, and the job's stream record naming it."""
    await stream(SlackDelivery(settings), client, job, [PARTIAL], finish=False)


def _thread(fake_slack: FakeSlack, job: ThreadQuestion) -> list[FakeMessage]:
    return fake_slack.thread(job.reply_to.channel_id, job.reply_to.thread_ts)


def _ended(text: str, blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The blocks of a message ended showing ``text`` with ``blocks`` under it, and no Stop button."""
    return [{"type": "markdown", "text": text}, *blocks]


def _the_dead_runs_message(fake_slack: FakeSlack, job: ThreadQuestion) -> FakeMessage:
    """The thread's one message, asserted to be the one the dead run started: no stream was
    started after it."""
    [started] = fake_slack.received(START_STREAM)
    [message] = _thread(fake_slack, job)
    assert message.ts == started.reply.json["ts"]
    return message


def _delivered(settings: Settings, job: ThreadQuestion) -> bool:
    return in_redis(settings, lambda client: job_state.was_delivered(client, job.job_id))


def _remembered(settings: Settings, job: ThreadQuestion) -> list[str]:
    exchanges = in_redis(settings, lambda client: memory.load(client, job.conversation_key))
    return [item.answer for item in exchanges]


def test_the_answer_streams_in_order_and_ends_with_feedback_and_regenerate_buttons(
    settings: Settings, fake_anthropic: FakeAnthropic, fake_slack: FakeSlack
) -> None:
    fake_anthropic.script("/v1/messages", StreamReply(text=TEXT, chunk=6))
    job = question("what is the capital of France?")

    via = _run(settings, job)

    [message] = _thread(fake_slack, job)
    # Every delta Claude sent reached Slack once, in order, in the stream's own calls.
    assert "".join(message.pieces) == "".join(fake_anthropic.streams[0].sent) == TEXT
    assert message.text == TEXT
    [start] = fake_slack.received(START_STREAM)
    assert start.body["chunks"][0] == {"type": "blocks", "blocks": [stop_button(job.job_id)]}
    # The stream is stopped, then one update draws the buttons in place of the Stop button.
    assert [request.path for request in fake_slack.received("/api/chat.")][-2:] == [STOP_STREAM, UPDATE]
    assert message.blocks == _ended(TEXT, answer_buttons(job.job_id))
    assert not message.streaming
    assert via == STREAMED and _delivered(settings, job)


def test_the_thread_shows_its_thinking_status_until_the_first_text(
    settings: Settings, fake_anthropic: FakeAnthropic, fake_slack: FakeSlack
) -> None:
    job = question("anything?")

    _run(settings, job)

    [status] = fake_slack.statuses(job.reply_to.channel_id)
    assert (status["thread_ts"], status["status"]) == (job.reply_to.thread_ts, THINKING)
    # Slack shows a thread's status until the app's reply appears in it.
    assert fake_slack.received(SET_STATUS)[0].at < fake_slack.received(START_STREAM)[0].at


def test_the_answer_and_its_record_are_stored_before_the_stream_is_finished(
    settings: Settings, redis_client: redis.Redis, fake_anthropic: FakeAnthropic, fake_slack: FakeSlack
) -> None:
    job = question("what is stored?")
    # Looked at as each call ending the stream or drawing its buttons arrives, while the worker
    # waits for Slack's answer to it: whatever the kind stores later cannot be there yet.
    seen: list[tuple[str, bool, bool]] = []

    def look(path: str, body: Any) -> None:
        if path in (STOP_STREAM, UPDATE):
            stored = bool(redis_client.exists(keys.answer_key(job.job_id)))
            seen.append((path, stored, bool(redis_client.exists(keys.answer_record_key(job.job_id)))))

    fake_slack.on_web_api = look

    _run(settings, job)

    assert seen == [(STOP_STREAM, True, True), (UPDATE, True, True)]
    assert _remembered(settings, job) == ["Answer to: what is stored?"]
    record = in_redis(settings, lambda client: answers.load(client, job.job_id))
    assert record is not None
    assert (record.kind, record.question, record.answer) == (
        "thread",
        "what is stored?",
        "Answer to: what is stored?",
    )
    assert (record.channel_id, record.thread_ts) == (job.reply_to.channel_id, job.reply_to.thread_ts)


def test_an_answer_cut_short_ends_with_the_cut_short_note(
    settings: Settings, fake_anthropic: FakeAnthropic, fake_slack: FakeSlack
) -> None:
    fake_anthropic.script("/v1/messages", StreamReply(text=TEXT, stop_reason="max_tokens"))
    job = question("a long one?")

    _run(settings, job)

    [message] = _thread(fake_slack, job)
    assert message.text == f"{TEXT}\n\n{CUT_SHORT_NOTE}"
    assert message.blocks == _ended(message.text, answer_buttons(job.job_id))


@pytest.mark.parametrize(
    "reply",
    [
        error(529, "overloaded_error", retry_after=1),
        StreamReply(text=TEXT, fail="error", fail_after=0),
        StreamReply(text=TEXT, fail="drop", fail_after=0),
    ],
    ids=["http 529", "error event before any text", "dropped before any text"],
)
def test_a_failure_before_any_text_was_shown_is_raised_for_the_runner_to_retry(
    settings: Settings, fake_anthropic: FakeAnthropic, fake_slack: FakeSlack, reply: Reply
) -> None:
    fake_anthropic.script("/v1/messages", reply)
    job = question("will it fail?")

    with pytest.raises(TransientError):
        _run(settings, job)

    assert _thread(fake_slack, job) == []
    assert fake_slack.received(START_STREAM) == []
    assert not _delivered(settings, job)


def test_a_failure_after_text_was_shown_ends_the_message_interrupted_with_a_retry_button(
    settings: Settings, fake_anthropic: FakeAnthropic, fake_slack: FakeSlack
) -> None:
    fake_anthropic.script("/v1/messages", StreamReply(text=TEXT, chunk=5, fail="error", fail_after=3))
    job = question("will it break?")

    with pytest.raises(PermanentError) as raised:
        _run(settings, job)

    assert raised.value.reason == TransientError.default_reason
    [message] = _thread(fake_slack, job)
    # The text shown, then the note naming the job's reference, and Retry where the answer's
    # buttons would be.
    assert message.text == f"{TEXT[:15]}\n\n{interrupted_note(raised.value.reason, job.reference)}"
    assert message.text.removeprefix(f"{TEXT[:15]}\n\n").startswith("_Interrupted: ")
    assert message.blocks == _ended(message.text, retry_buttons(job.job_id))
    assert not message.streaming
    # Retry asks the recorded question again: the record is kept for it.
    record = in_redis(settings, lambda client: answers.load(client, job.job_id))
    assert record is not None and record.question == "will it break?"
    # Its final message is the interrupted one: the runner neither retries nor posts another.
    assert _delivered(settings, job)
    assert _remembered(settings, job) == []


def test_a_dropped_connection_after_text_was_shown_is_interrupted_too(
    settings: Settings, fake_anthropic: FakeAnthropic, fake_slack: FakeSlack
) -> None:
    fake_anthropic.script("/v1/messages", StreamReply(text=TEXT, chunk=5, fail="drop", fail_after=2))
    job = question("dropped?")

    with pytest.raises(PermanentError):
        _run(settings, job)

    [message] = _thread(fake_slack, job)
    shown, note = message.text.split("\n\n", 1)
    assert shown and TEXT.startswith(shown)
    assert note == interrupted_note(TransientError.default_reason, job.reference)
    assert message.blocks[1:] == retry_buttons(job.job_id)


def test_stop_while_streaming_closes_the_ai_stream_at_once_and_raises_stop_requested(
    settings: Settings, fake_anthropic: FakeAnthropic, fake_slack: FakeSlack
) -> None:
    long_text = "token " * 500
    fake_anthropic.script("/v1/messages", StreamReply(text=long_text, chunk=6, event_delay=0.01))
    job = question("a long answer, please")

    # Stopped once the answer is showing.
    took = asyncio.run(stop_thread_question(settings, job, lambda: fake_slack.wait_for(START_STREAM)))

    log = fake_anthropic.wait_for_stream_end()
    assert log.client_gone and not log.completed
    assert len(log.sent) < 500 / 2
    assert took < 2  # behaviour, not a figure: a stop is not left to the end of the answer
    [message] = _thread(fake_slack, job)
    assert message.text.endswith(f"\n\n{STOPPED_NOTE}")
    shown = message.text.removesuffix(f"\n\n{STOPPED_NOTE}")
    assert shown and "".join(log.sent).startswith(shown)
    assert message.blocks == _ended(message.text, [])
    assert not message.streaming
    assert _delivered(settings, job)


def test_a_rerun_after_a_crash_mid_stream_replaces_the_partial_message_with_the_whole_answer(
    settings: Settings, fake_anthropic: FakeAnthropic, fake_slack: FakeSlack
) -> None:
    fake_anthropic.script("/v1/messages", StreamReply(text=TEXT, chunk=4))
    job = question("after a crash?")

    async def crashed(client: ArqRedis) -> None:
        await _leave_stream_of_dead_run(settings, client, job)

    via = _run(settings, job, crashed)

    assert len(fake_anthropic.calls) == 1
    # No second message: the earlier one, its stream ended, shows the whole answer.
    message = _the_dead_runs_message(fake_slack, job)
    assert message.text == TEXT
    assert message.blocks == _ended(TEXT, answer_buttons(job.job_id))
    assert not message.streaming
    assert via == COMPLETED_AFTER_CRASH and _delivered(settings, job)
    assert _remembered(settings, job) == [TEXT]


def test_a_rerun_with_the_answer_stored_completes_the_earlier_stream_without_asking_again(
    settings: Settings, fake_anthropic: FakeAnthropic, fake_slack: FakeSlack
) -> None:
    job = question("stored before the crash?")
    stored = job_state.StoredAnswer(text="the stored answer.", cut_short=True)

    async def crashed_after_storing(client: ArqRedis) -> None:
        await memory.save_answer(client, job, stored, memory.Limits.of(settings))
        await _leave_stream_of_dead_run(settings, client, job)

    _run(settings, job, crashed_after_storing)

    assert fake_anthropic.calls == []
    message = _the_dead_runs_message(fake_slack, job)
    assert message.text == "the stored answer."
    [markdown, note, *buttons] = message.blocks
    assert markdown == {"type": "markdown", "text": "the stored answer."}
    assert CUT_SHORT_NOTE in str(note)
    assert buttons == answer_buttons(job.job_id)
    assert not message.streaming and stop_buttons(message.blocks) == []
    assert _remembered(settings, job) == ["the stored answer."]


def test_a_rerun_with_the_answer_stored_but_no_stream_streams_the_stored_answer(
    settings: Settings, fake_anthropic: FakeAnthropic, fake_slack: FakeSlack
) -> None:
    job = question("stored, nothing shown?")
    stored = job_state.StoredAnswer(text="the stored answer.", cut_short=False)

    async def stored_only(client: ArqRedis) -> None:
        await memory.save_answer(client, job, stored, memory.Limits.of(settings))

    _run(settings, job, stored_only)

    assert fake_anthropic.calls == []
    [message] = _thread(fake_slack, job)
    assert "".join(message.pieces) == message.text == "the stored answer."
    assert message.blocks == _ended("the stored answer.", answer_buttons(job.job_id))
    assert fake_slack.calls("chat.startStream") == 1 and fake_slack.calls("chat.postMessage") == 0


def test_an_error_before_the_first_text_is_retried_by_the_runner_and_then_answered(
    settings: Settings, redis_client: redis.Redis, fake_anthropic: FakeAnthropic, fake_slack: FakeSlack
) -> None:
    fake_anthropic.script("/v1/messages", StreamReply(text=TEXT, fail="error", fail_after=0))
    job = question("first try fails?")
    enqueue(settings, job)

    drain(settings)

    assert len(fake_anthropic.calls) == 2
    assert redis_client.exists(keys.delivered_key(job.job_id))
    assert _remembered(settings, job) == ["Answer to: first try fails?"]
    [message] = _thread(fake_slack, job)
    assert message.blocks == _ended("Answer to: first try fails?", answer_buttons(job.job_id))


def test_a_stop_before_claude_has_written_anything_is_obeyed_without_waiting_for_text(
    settings: Settings, fake_anthropic: FakeAnthropic, fake_slack: FakeSlack
) -> None:
    # Claude sends nothing: only the stall deadline (AI_TIMEOUT_SECONDS) would end this stream.
    fake_anthropic.script("/v1/messages", StreamReply(text=TEXT, fail="stall", fail_after=0))
    job = question("thinking for long?")

    asyncio.run(stop_thread_question(settings, job, lambda: fake_anthropic.wait_for("/v1/messages")))

    log = fake_anthropic.wait_for_stream_end()
    assert log.client_gone and log.sent == []
    [message] = _thread(fake_slack, job)
    assert message.text == STOPPED_NOTE
    assert message.blocks == _ended(STOPPED_NOTE, [])
    assert not message.streaming


def test_a_stop_while_regenerating_after_a_crash_ends_the_earlier_message_stopped(
    settings: Settings, fake_anthropic: FakeAnthropic, fake_slack: FakeSlack
) -> None:
    fake_anthropic.script("/v1/messages", StreamReply(text="tick " * 400, chunk=5, event_delay=0.01))
    job = question("recovering, then stopped?")

    async def crashed(client: ArqRedis) -> None:
        await _leave_stream_of_dead_run(settings, client, job)

    def text_flows() -> None:
        wait_until(lambda: fake_anthropic.streams and fake_anthropic.streams[0].sent)

    asyncio.run(stop_thread_question(settings, job, text_flows, before=crashed))

    message = _the_dead_runs_message(fake_slack, job)
    assert message.text.startswith("tick") and message.text.endswith(f"\n\n{STOPPED_NOTE}")
    assert message.blocks == _ended(message.text, [])
    assert not message.streaming
    assert _delivered(settings, job)


def test_a_worker_killed_mid_stream_leaves_one_complete_answer_after_recovery(
    settings: Settings,
    redis_client: redis.Redis,
    fake_anthropic: FakeAnthropic,
    fake_slack: FakeSlack,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    # Slow enough to kill mid-answer, quick enough to end within JOB_TIMEOUT_SECONDS.
    fake_anthropic.script("/v1/messages", StreamReply(text="slowly " * 80, chunk=7, event_delay=0.05))
    job = question("what happens if the worker dies?")
    thread = job.reply_to
    enqueue(settings, job)
    doomed = start_worker()

    # Part of the answer is in the thread, still streaming, when the worker dies; and the stream's
    # record names its message (the one Redis round trip after chat.startStream in which a crash
    # would leave a message the next run cannot know of is README's documented window, not this
    # test's subject).
    def partly_shown() -> bool:
        shown = any("slowly" in text for text in fake_slack.thread_texts(thread.channel_id, thread.thread_ts))
        return shown and bool(redis_client.exists(keys.stream_key(job.job_id)))

    wait_until(partly_shown)

    doomed.signal_group(signal.SIGKILL)
    doomed.wait(timeout=5)
    rescuer = start_worker()
    wait_until(lambda: redis_client.exists(keys.delivered_key(job.job_id)), timeout=40)

    assert len(fake_anthropic.calls) == 2
    assert _remembered(settings, job) == ["Answer to: what happens if the worker dies?"]
    # The recovered run completed the dead run's message rather than posting a second one: the
    # thread shows one message, the whole new answer, its stream ended, its Stop button gone.
    [shown] = fake_slack.thread(thread.channel_id, thread.thread_ts)
    assert shown.text == "Answer to: what happens if the worker dies?"
    assert shown.blocks == _ended(shown.text, answer_buttons(job.job_id))
    assert not shown.streaming
    assert (redis_client.get(keys.delivered_key(job.job_id)) or b"").decode() == COMPLETED_AFTER_CRASH
    assert rescuer.events("job.stalled")


def test_the_ai_rate_limit_counts_a_streamed_call_at_its_start(
    settings: Settings, fake_anthropic: FakeAnthropic
) -> None:
    one_per_two_seconds = settings.model_copy(update={"jobs_per_second": 0.5})  # one per 2 s
    fake_anthropic.script("/v1/messages", StreamReply(text="long " * 100, chunk=5, event_delay=0.02))
    first, second = question("first?"), question("second?")

    async def scenario() -> None:
        running = asyncio.create_task(run_thread_question(one_per_two_seconds, first))
        await asyncio.to_thread(wait_until, lambda: fake_anthropic.streams and fake_anthropic.streams[0].sent)
        # The first call's slot was taken when its stream opened, not when it ends.
        with pytest.raises(SlotTooFar):
            await run_thread_question(one_per_two_seconds, second)
        assert not fake_anthropic.streams[0].ended
        await running

    asyncio.run(scenario())

    assert len(fake_anthropic.calls) == 1
