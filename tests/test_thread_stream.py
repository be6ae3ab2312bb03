"""A thread answer streams (workers/thread_answer.py): Claude's deltas go into the Slack stream as
they arrive, and the message ends with its buttons, an "Interrupted" note, or "Stopped.".

These tests run the kind's steps under their lease with the worker's real Claude (against the fake
Anthropic's server-sent events) and real Redis, and look at what the AI was asked and what the
stream was given (tests/support/streams.py); Slack's wire calls are workers/streaming.py's
(tests/test_streaming.py).
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable

import pytest
import redis
from arq.connections import ArqRedis

from app.contract import answers, keys, stops
from app.contract.jobs import ThreadQuestion
from app.contract.queue import open_redis
from app.contract.settings import Settings
from tests.support.fakes.anthropic import FakeAnthropic, StreamReply, error
from tests.support.fakes.server import Reply
from tests.support.fakes.slack import FakeSlack
from tests.support.jobs import drain, enqueue, in_redis
from tests.support.processes import WorkerProcess
from tests.support.streams import RecordingSlack, leave_stream_of_dead_run, run_kind
from tests.support.threads import question
from tests.support.waiting import wait_until
from workers import job_state, memory
from workers.errors import PermanentError, StopRequested, TransientError
from workers.formatting import answer_buttons, retry_buttons
from workers.ratelimit import SlotTooFar
from workers.thread_answer import (
    COMPLETED_AFTER_CRASH,
    STOPPED_NOTE,
    STREAMED,
    THINKING,
    THREAD,
)

TEXT = "Paris is the capital of France, and has been for most of the last thousand years."


def _run(
    settings: Settings,
    job: ThreadQuestion,
    slack: RecordingSlack,
    before: Callable[[ArqRedis], Awaitable[None]] | None = None,
) -> str:
    return asyncio.run(run_kind(settings, THREAD, job, slack, before=before))


def _delivered(settings: Settings, job: ThreadQuestion) -> bool:
    return in_redis(settings, lambda client: job_state.was_delivered(client, job.job_id))


def _remembered(settings: Settings, job: ThreadQuestion) -> list[str]:
    exchanges = in_redis(settings, lambda client: memory.load(client, job.conversation_key))
    return [item.answer for item in exchanges]


def test_the_answer_streams_in_order_and_ends_with_feedback_and_regenerate_buttons(
    settings: Settings, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script("/v1/messages", StreamReply(text=TEXT, chunk=6))
    slack, job = RecordingSlack(), question("what is the capital of France?")

    via = _run(settings, job, slack)

    [stream] = slack.streams
    assert stream.appended == fake_anthropic.streams[0].sent
    assert stream.text == TEXT
    assert stream.finished_with == answer_buttons(job.job_id)
    assert stream.note is None
    assert via == STREAMED and _delivered(settings, job)


def test_the_thread_shows_its_thinking_status_until_the_first_text(
    settings: Settings, fake_anthropic: FakeAnthropic
) -> None:
    slack = RecordingSlack()

    _run(settings, question("anything?"), slack)

    assert slack.statuses == [THINKING]


def test_the_answer_and_its_record_are_stored_before_the_stream_is_finished(
    settings: Settings, fake_anthropic: FakeAnthropic
) -> None:
    slack, job = RecordingSlack(), question("what is stored?")

    _run(settings, job, slack)

    [stream] = slack.streams
    assert stream.answer_stored_when_finished and stream.record_saved_when_finished
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
    settings: Settings, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script("/v1/messages", StreamReply(text=TEXT, stop_reason="max_tokens"))
    slack = RecordingSlack()

    _run(settings, question("a long one?"), slack)

    assert slack.streams[0].text.startswith(TEXT)
    assert "cut short" in slack.streams[0].text.removeprefix(TEXT)


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
    settings: Settings, fake_anthropic: FakeAnthropic, reply: Reply
) -> None:
    fake_anthropic.script("/v1/messages", reply)
    slack, job = RecordingSlack(), question("will it fail?")

    with pytest.raises(TransientError):
        _run(settings, job, slack)

    assert all(not stream.appended and stream.note is None for stream in slack.streams)
    assert not _delivered(settings, job)


def test_a_failure_after_text_was_shown_ends_the_message_interrupted_with_a_retry_button(
    settings: Settings, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script("/v1/messages", StreamReply(text=TEXT, chunk=5, fail="error", fail_after=3))
    slack, job = RecordingSlack(), question("will it break?")

    with pytest.raises(PermanentError) as raised:
        _run(settings, job, slack)

    [stream] = slack.streams
    assert stream.text == TEXT[:15]
    assert stream.note is not None and stream.note.startswith("_Interrupted: ")
    assert job.reference in stream.note
    assert stream.note_blocks == retry_buttons(job.job_id)
    assert stream.finished_with is None
    # Retry asks the recorded question again: the record is kept for it.
    record = in_redis(settings, lambda client: answers.load(client, job.job_id))
    assert record is not None and record.question == "will it break?"
    # Its final message is the interrupted one: the runner neither retries nor posts another.
    assert _delivered(settings, job)
    assert raised.value.reason == TransientError.default_reason
    assert _remembered(settings, job) == []


def test_a_dropped_connection_after_text_was_shown_is_interrupted_too(
    settings: Settings, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script("/v1/messages", StreamReply(text=TEXT, chunk=5, fail="drop", fail_after=2))
    slack = RecordingSlack()

    with pytest.raises(PermanentError):
        _run(settings, question("dropped?"), slack)

    assert slack.streams[0].note is not None and slack.streams[0].note.startswith("_Interrupted: ")


def test_stop_while_streaming_closes_the_ai_stream_at_once_and_raises_stop_requested(
    settings: Settings, fake_anthropic: FakeAnthropic
) -> None:
    long_text = "token " * 500
    fake_anthropic.script("/v1/messages", StreamReply(text=long_text, chunk=6, event_delay=0.01))
    slack, job = RecordingSlack(), question("a long answer, please")

    async def scenario() -> float:
        running = asyncio.create_task(run_kind(settings, THREAD, job, slack))
        await asyncio.wait_for(slack.first_text.wait(), 10)
        client = open_redis(settings)
        await stops.request_stop(client, job.job_id)
        await client.aclose()
        asked = time.monotonic()
        with pytest.raises(StopRequested):
            await running
        return time.monotonic() - asked

    took = asyncio.run(scenario())

    log = fake_anthropic.wait_for_stream_end()
    assert log.client_gone and not log.completed
    assert len(log.sent) < 500 / 2
    assert took < 2  # behaviour, not a figure: a stop is not left to the end of the answer
    [stream] = slack.streams
    assert stream.note == STOPPED_NOTE and stream.note_blocks == []
    assert long_text.startswith(stream.text)
    assert _delivered(settings, job)


def test_a_rerun_after_a_crash_mid_stream_replaces_the_partial_message_with_the_whole_answer(
    settings: Settings, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script("/v1/messages", StreamReply(text=TEXT, chunk=4))
    slack, job = RecordingSlack(), question("after a crash?")

    async def crashed(client: ArqRedis) -> None:
        await leave_stream_of_dead_run(client, job)

    via = _run(settings, job, slack, crashed)

    assert len(fake_anthropic.calls) == 1
    assert slack.streams == []  # no second message: the earlier one is completed
    [completion] = slack.completions
    assert (completion.text, completion.cut_short) == (TEXT, False)
    assert completion.blocks == answer_buttons(job.job_id)
    assert via == COMPLETED_AFTER_CRASH and _delivered(settings, job)
    assert _remembered(settings, job) == [TEXT]


def test_a_rerun_with_the_answer_stored_completes_the_earlier_stream_without_asking_again(
    settings: Settings, fake_anthropic: FakeAnthropic
) -> None:
    slack, job = RecordingSlack(), question("stored before the crash?")
    stored = job_state.StoredAnswer(text="the stored answer.", cut_short=True)

    async def crashed_after_storing(client: ArqRedis) -> None:
        await memory.save_answer(client, job, stored, memory.Limits.of(settings))
        await leave_stream_of_dead_run(client, job)

    _run(settings, job, slack, crashed_after_storing)

    assert fake_anthropic.calls == []
    assert [(c.text, c.cut_short) for c in slack.completions] == [("the stored answer.", True)]
    assert slack.streams == []
    assert _remembered(settings, job) == ["the stored answer."]


def test_a_rerun_with_the_answer_stored_but_no_stream_streams_the_stored_answer(
    settings: Settings, fake_anthropic: FakeAnthropic
) -> None:
    slack, job = RecordingSlack(), question("stored, nothing shown?")
    stored = job_state.StoredAnswer(text="the stored answer.", cut_short=False)

    async def stored_only(client: ArqRedis) -> None:
        await memory.save_answer(client, job, stored, memory.Limits.of(settings))

    _run(settings, job, slack, stored_only)

    assert fake_anthropic.calls == []
    [stream] = slack.streams
    assert stream.text == "the stored answer."
    assert stream.finished_with == answer_buttons(job.job_id)


def test_an_error_before_the_first_text_is_retried_by_the_runner_and_then_answered(
    settings: Settings, redis_client: redis.Redis, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script("/v1/messages", StreamReply(text=TEXT, fail="error", fail_after=0))
    job = question("first try fails?")
    enqueue(settings, job)

    drain(settings)

    assert len(fake_anthropic.calls) == 2
    assert redis_client.exists(keys.delivered_key(job.job_id))
    assert _remembered(settings, job) == ["Answer to: first try fails?"]


def test_a_stop_before_claude_has_written_anything_is_obeyed_without_waiting_for_text(
    settings: Settings, fake_anthropic: FakeAnthropic
) -> None:
    # Claude sends nothing: only the stall deadline (AI_TIMEOUT_SECONDS) would end this stream.
    fake_anthropic.script("/v1/messages", StreamReply(text=TEXT, fail="stall", fail_after=0))
    slack, job = RecordingSlack(), question("thinking for long?")

    async def scenario() -> None:
        running = asyncio.create_task(run_kind(settings, THREAD, job, slack))
        await asyncio.to_thread(fake_anthropic.wait_for, "/v1/messages")
        client = open_redis(settings)
        await stops.request_stop(client, job.job_id)
        await client.aclose()
        with pytest.raises(StopRequested):
            await running

    asyncio.run(scenario())

    log = fake_anthropic.wait_for_stream_end()
    assert log.client_gone and log.sent == []
    assert slack.streams[0].note == STOPPED_NOTE


def test_a_stop_while_regenerating_after_a_crash_ends_the_earlier_message_stopped(
    settings: Settings, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script("/v1/messages", StreamReply(text="tick " * 400, chunk=5, event_delay=0.01))
    slack, job = RecordingSlack(), question("recovering, then stopped?")

    async def scenario() -> None:
        client = open_redis(settings)
        await leave_stream_of_dead_run(client, job)
        running = asyncio.create_task(run_kind(settings, THREAD, job, slack))
        await asyncio.to_thread(wait_until, lambda: fake_anthropic.streams and fake_anthropic.streams[0].sent)
        await stops.request_stop(client, job.job_id)
        await client.aclose()
        with pytest.raises(StopRequested):
            await running

    asyncio.run(scenario())

    assert slack.streams == []
    [completion] = slack.completions
    assert completion.text.startswith("tick") and completion.text.endswith(STOPPED_NOTE)
    assert completion.blocks == []
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

    # Part of the answer is in the thread, still streaming, when the worker dies.
    def partly_shown() -> bool:
        return any("slowly" in text for text in fake_slack.thread_texts(thread.channel_id, thread.thread_ts))

    wait_until(partly_shown)

    doomed.signal_group(signal.SIGKILL)
    doomed.wait(timeout=5)
    rescuer = start_worker()
    wait_until(lambda: redis_client.exists(keys.delivered_key(job.job_id)), timeout=40)

    assert len(fake_anthropic.calls) == 2
    assert _remembered(settings, job) == ["Answer to: what happens if the worker dies?"]
    # The recovered run completed the dead run's message rather than posting a second one: the
    # thread shows one message, the whole new answer, its stream ended.
    [shown] = fake_slack.thread(thread.channel_id, thread.thread_ts)
    assert shown.text == "Answer to: what happens if the worker dies?"
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
        running = asyncio.create_task(run_kind(one_per_two_seconds, THREAD, first, RecordingSlack()))
        await asyncio.to_thread(wait_until, lambda: fake_anthropic.streams and fake_anthropic.streams[0].sent)
        # The first call's slot was taken when its stream opened, not when it ends.
        with pytest.raises(SlotTooFar):
            await run_kind(one_per_two_seconds, THREAD, second, RecordingSlack())
        assert not fake_anthropic.streams[0].ended
        await running

    asyncio.run(scenario())

    assert len(fake_anthropic.calls) == 1
