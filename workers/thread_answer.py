"""The thread question's steps: answer with the conversation so far, streamed into the thread as
Claude writes it, remember the exchange, end the message with its buttons. Everything around them
(lease, retries, give-up, one question at a time per thread, Stop's outcome, events) is the
runner's (:mod:`workers.runner`); the stream's Slack side (batching, limits, long messages,
fallbacks) is :class:`workers.streaming.SlackStream`'s.

How a run ends:

* **Answered.** Claude's deltas go into a SlackStream as they arrive (the thread's "is thinking…"
  status shows until the first text); the answer and its exchange are stored, then its record
  (for the buttons), then the stream is finished with the feedback and Regenerate buttons.
* **Failed before any text was shown.** The error is raised as it came: the runner retries it.
* **Failed after text was shown.** The message ends with an "Interrupted" note and a Retry button,
  the job is marked delivered (the message is its final one: the runner must post no failure
  message) and a PermanentError ends it: a retry would show the text a second time.
* **Stopped.** Looked at every STOP_CHECK_SECONDS while Claude streams, deltas or not: the Anthropic stream is
  closed at once, the message ends with "Stopped.", and StopRequested tells the runner.
* **After a crash.** A run that finds the job's answer stored (an earlier run got that far) posts
  no new AI call: it completes the earlier run's stream messages with it
  (``complete_stream``), or streams it anew if none reached Slack. A run that finds an earlier
  run's stream but no answer asks Claude again without streaming into Slack, then replaces the
  earlier messages' text with the whole answer: one complete answer is visible, never two.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any, NoReturn, Protocol

import structlog

from app.contract import answers, keys, messages, stops
from app.contract.jobs import JobBase, ThreadQuestion
from app.contract.messages import SlackMessage
from workers import job_state, memory, prompt
from workers.ai import AnswerStream
from workers.errors import DeliveryFailed, JobError, PermanentError, StopRequested
from workers.formatting import CUT_SHORT_NOTE, answer_buttons, retry_buttons
from workers.kinds import LeaseLost, Run, record_delivery, trace_undelivered

log = structlog.get_logger(__name__)

#: The thread's status while the question is answered (Slack shows it after the app's name).
THINKING = "is thinking…"

#: Longest time between two looks at the job's stop request while Claude streams (one EXISTS).
STOP_CHECK_SECONDS = 0.3

#: How a thread answer was delivered (the run's ``via``).
STREAMED = "stream"
COMPLETED_AFTER_CRASH = "stream-completed"
INTERRUPTED = "stream-interrupted"
STOPPED = "stream-stopped"

STOPPED_NOTE = "_Stopped._"


def interrupted_note(reason: str, reference: str) -> str:
    """The note ending an answer whose stream broke after some of it was shown."""
    return f"_Interrupted: {reason} (ref {reference})_"


class ThreadKind:
    """A mention or a DM: answer in its thread, with the thread's conversation as context."""

    model: type[JobBase] = ThreadQuestion
    uses_ai = True

    async def perform(self, run: Run) -> str:
        try:
            return await self._answer(run)
        except DeliveryFailed as error:
            # Slack's side only (Claude's failures are not DeliveryFailed): noted in the trace,
            # then retried or given up by the runner as any delivery failure.
            await trace_undelivered(run.deps, run.job, "final", error)
            raise

    async def _answer(self, run: Run) -> str:
        job = _question(run.job)
        deps = run.deps
        # Best effort and never raises: for a thread, the status Slack shows under it.
        await deps.slack.update_notice(deps.redis, job, SlackMessage(text=THINKING))
        stored = await job_state.load_answer(deps.redis, job.job_id)
        if stored is not None:
            log.info("job.answer_reused")
            return await _deliver_stored(run, job, stored)
        if run.lease.lost:
            raise LeaseLost()
        request = await _prompt(run, job)
        if await deps.redis.exists(keys.stream_key(job.job_id)):
            # An earlier run died while streaming: its messages show part of an answer.
            log.info("stream.recovering")
            return await _regenerate_into_earlier_stream(run, job, request)
        return await _stream(run, job, request)

    def failure_message(self, job: JobBase, reason: str) -> SlackMessage:
        # Posted in the thread by delivery.
        return messages.failed(reason, job.reference)

    def retrying_message(self, job: JobBase, delay: float) -> SlackMessage:
        # Shown as the thread's status, after the app's name.
        return SlackMessage(text=f"is retrying in {max(1, round(delay))} s…")

    def queued_message(self, job: JobBase, ahead: int) -> SlackMessage:
        # ``ahead`` counts every queued question, from any thread or workspace.
        if ahead == 0:
            return SlackMessage(text="is queued, next in line…")
        if ahead == 1:
            return SlackMessage(text="is queued behind 1 other question…")
        return SlackMessage(text=f"is queued behind {ahead} other questions…")


async def _prompt(run: Run, job: ThreadQuestion) -> prompt.Prompt:
    deps = run.deps
    history = await memory.load(deps.redis, job.conversation_key)
    request = prompt.build(
        deps.settings.ai_system_prompt,
        memory.turns(history),
        prompt.Turn("user", job.text, job.asker.user_id),
        prompt.input_budget(deps.settings.ai_context_tokens, deps.settings.ai_input_tokens_per_minute),
    )
    log.info(
        "prompt.built",
        exchanges=len(history),
        turns_left_out=request.turns_left_out,
        estimated_tokens=request.estimated_tokens,
    )
    return request


class _Stream(Protocol):
    """What the kind needs of workers.streaming.SlackStream."""

    @property
    def shown(self) -> bool: ...

    async def append(self, text: str) -> None: ...

    async def finish(self, blocks: list[dict[str, Any]]) -> None: ...

    async def end_with_note(self, note: str, blocks: list[dict[str, Any]]) -> None: ...


class _Stopped(Exception):
    """The job's stop request was seen while Claude streamed."""


class _Deltas:
    """Claude's deltas, one at a time, with the job's stop request looked at every
    STOP_CHECK_SECONDS (one EXISTS) whether deltas come or not: a stop is obeyed at once also
    while Claude has not written anything yet."""

    def __init__(self, run: Run, answer: AnswerStream) -> None:
        self._run = run
        self._answer = answer
        self._pending: asyncio.Task[str] | None = None
        self._next_look = time.monotonic() + STOP_CHECK_SECONDS

    async def next(self) -> str | None:
        """The next delta, or None at the end. Raises _Stopped, LeaseLost, and the stream's
        failures (workers/errors.py)."""
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._answer.__anext__())
        pending = self._pending
        while True:
            wait = self._next_look - time.monotonic()
            if wait <= 0:
                self._next_look = time.monotonic() + STOP_CHECK_SECONDS
                if await stops.stop_requested(self._run.deps.redis, self._run.job.job_id):
                    await self.cancel()
                    raise _Stopped()
                if self._run.lease.lost:
                    await self.cancel()
                    raise LeaseLost()
                continue
            done, _ = await asyncio.wait({pending}, timeout=wait)
            if done:
                self._pending = None
                try:
                    return pending.result()
                except StopAsyncIteration:
                    return None

    async def cancel(self) -> None:
        """Stop waiting for the next delta (the caller then closes the stream)."""
        pending, self._pending = self._pending, None
        if pending is not None and not pending.done():
            pending.cancel()
            await asyncio.wait({pending})


async def _stream(run: Run, job: ThreadQuestion, request: prompt.Prompt) -> str:
    """Stream Claude's answer into a new SlackStream, and end it as the run ends."""
    deps = run.deps
    stream = deps.slack.open_stream(deps.redis, job)
    written: list[str] = []
    failure: JobError | None = None
    stopped = False
    async with run.stream_claude(request) as answer:
        deltas = _Deltas(run, answer)
        try:
            while True:
                try:
                    delta = await deltas.next()
                except _Stopped:
                    stopped = True
                    break
                except JobError as error:  # Claude's side only: Slack's errors (append) propagate
                    failure = error
                    break
                if delta is None:
                    break
                await stream.append(delta)
                written.append(delta)
        finally:
            await deltas.cancel()
    # The Anthropic stream is closed here, whatever ended the loop: no more tokens are billed.
    if stopped:
        log.info("stream.stopped", shown=stream.shown)
        await stream.end_with_note(STOPPED_NOTE, [])
        await record_delivery(deps, job, STOPPED)
        raise StopRequested()
    if failure is not None:
        if not stream.shown:
            raise failure  # nothing visible yet: retried as any AI failure
        await _interrupted(run, job, stream, failure, "".join(written))
    assert answer.answer is not None  # the deltas ended without an error
    generated = job_state.StoredAnswer(text=answer.answer.text, cut_short=answer.answer.cut_short)
    # Stored with the exchange in one step before the message is finished: a re-run reuses it
    # and never remembers the exchange twice.
    stored = await memory.save_answer(deps.redis, job, generated, memory.Limits.of(deps.settings))
    await _save_record(run, job, stored)
    if stored.cut_short:
        await stream.append(f"\n\n{CUT_SHORT_NOTE}")
    started = time.perf_counter()
    await stream.finish(answer_buttons(job.job_id))
    run.timings.delivery_ms = round((time.perf_counter() - started) * 1000, 1)
    await record_delivery(deps, job, STREAMED, duration_ms=run.timings.delivery_ms)
    return STREAMED


async def _interrupted(
    run: Run, job: ThreadQuestion, stream: _Stream, failure: JobError, written: str
) -> NoReturn:
    """End a message that shows part of an answer with the "Interrupted" note and a Retry button,
    mark the job delivered (the note is its final message) and end the job, unretried."""
    log.warning("stream.interrupted", error=type(failure).__name__, detail=failure.detail)
    # Retry is Regenerate by another name: it asks the recorded question again.
    await _save_record(run, job, job_state.StoredAnswer(text=written, cut_short=True))
    await stream.end_with_note(interrupted_note(failure.reason, job.reference), retry_buttons(job.job_id))
    await record_delivery(run.deps, job, INTERRUPTED)
    raise PermanentError(f"stream interrupted after text was shown: {failure.detail}", reason=failure.reason)


async def _deliver_stored(run: Run, job: ThreadQuestion, stored: job_state.StoredAnswer) -> str:
    """Show an answer an earlier run generated: complete that run's stream messages with it, or
    stream it anew when none reached Slack."""
    deps = run.deps
    if run.lease.lost or await job_state.was_delivered(deps.redis, job.job_id):
        raise LeaseLost()
    await _save_record(run, job, stored)
    blocks = answer_buttons(job.job_id)
    started = time.perf_counter()
    if await deps.slack.complete_stream(
        deps.redis, job, stored.text, cut_short=stored.cut_short, blocks=blocks
    ):
        via = COMPLETED_AFTER_CRASH
    else:
        stream = deps.slack.open_stream(deps.redis, job)
        await stream.append(stored.text + (f"\n\n{CUT_SHORT_NOTE}" if stored.cut_short else ""))
        await stream.finish(blocks)
        via = STREAMED
    run.timings.delivery_ms = round((time.perf_counter() - started) * 1000, 1)
    await record_delivery(deps, job, via, duration_ms=run.timings.delivery_ms)
    return via


async def _regenerate_into_earlier_stream(run: Run, job: ThreadQuestion, request: prompt.Prompt) -> str:
    """Ask Claude again for a job whose earlier run died mid-stream, without streaming into Slack
    (its messages already show part of an answer), then replace their text with the whole answer.

    AI failures are raised as they come (retried as usual; the earlier message keeps its partial
    text meanwhile, under the thread's status). A stop ends the earlier message with the note.
    """
    deps = run.deps
    written: list[str] = []
    stopped = False
    async with run.stream_claude(request) as answer:
        deltas = _Deltas(run, answer)
        try:
            while (delta := await deltas.next()) is not None:
                written.append(delta)
        except _Stopped:
            stopped = True
        finally:
            await deltas.cancel()
    if stopped:
        log.info("stream.stopped", shown=True)
        so_far = "".join(written).strip()
        text = f"{so_far}\n\n{STOPPED_NOTE}" if so_far else STOPPED_NOTE
        await deps.slack.complete_stream(deps.redis, job, text, cut_short=False, blocks=[])
        await record_delivery(deps, job, STOPPED)
        raise StopRequested()
    assert answer.answer is not None
    generated = job_state.StoredAnswer(text=answer.answer.text, cut_short=answer.answer.cut_short)
    stored = await memory.save_answer(deps.redis, job, generated, memory.Limits.of(deps.settings))
    return await _deliver_stored(run, job, stored)


async def _save_record(run: Run, job: ThreadQuestion, stored: job_state.StoredAnswer) -> None:
    """Keep what the answer's buttons need (app/contract/answers.py), before they are shown."""
    record = answers.AnswerRecord(
        job_id=job.job_id,
        kind="thread",
        asker=job.asker,
        channel_id=job.reply_to.channel_id,
        thread_ts=job.reply_to.thread_ts,
        question=job.text,
        answer=stored.text,
        cut_short=stored.cut_short,
        answered_at=datetime.now(UTC),
    )
    await answers.save(run.deps.redis, record, run.deps.settings.answer_record_ttl_seconds)


def _question(job: JobBase) -> ThreadQuestion:
    assert isinstance(job, ThreadQuestion)  # the runner picks this kind by the payload's kind
    return job


#: The kind registration of questions asked in threads (mentions and DMs).
THREAD = ThreadKind()
