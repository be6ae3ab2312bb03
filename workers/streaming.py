"""Slack's native streaming out: a thread answer written into Slack while Claude writes it.

:class:`SlackStream` is the writer a thread kind feeds (``append``, then ``finish`` or
``end_with_note``); :func:`complete` is what a later run of the job does when an earlier run's
stream was left behind (a crash): it makes those messages show the complete answer.

Within Slack's limits, for every stream at once:

* Text is batched: the first text starts the stream at once (``chat.startStream``, so the
  asker sees the answer begin); after that a flush is due when FLUSH_CHARS are waiting or
  FLUSH_SECONDS have passed since the last one (``chat.appendStream``), and the last batch goes
  with ``chat.stopStream``. Both are checked as text arrives: Claude's tokens come steadily, and
  a pause in them costs no Slack call.
* Every call first books its method's moment in the workspace, shared by all workers
  (:func:`workers.slack_rate.book_method`). While that moment has not come, appends only add
  to the batch: with many streams at once each batch grows instead of the calls multiplying.
* A 429 pauses the workspace for its Retry-After (:func:`workers.slack_rate.pause`); the text
  Slack refused stays in the batch and goes with the next call: never lost, never sent twice.
* A message nearing Slack's size limits (MESSAGE_CHARS of markdown) is stopped and the answer
  continues in a new message in the same thread, cut at a line where one is near.
* While a message streams it shows a Stop button (app/contract/actions.py STOP). Slack takes blocks
  in a stream only as a ``blocks`` chunk, shown where the chunk falls, so the button goes first
  in ``chat.startStream`` and stays above the text; ``chat.stopStream``'s blocks would go under
  the text without removing it, so a message that showed a Stop button is ended by
  ``chat.stopStream`` and then one ``chat.update`` (Tier 3) with its text and final buttons.
* A stream Slack ends or refuses (``message_not_in_streaming_state`` after about five idle
  minutes, or any refusal of an append or a stop) falls back to ``chat.update`` of the same
  message with all its text so far. A stream Slack will not start (refused, or a Slack stand-in
  without streaming) is posted once the answer is complete, as an unstreamed answer is. The final
  text is always complete.

The messages written, in order, with how much of the answer each holds and whether its stream
may still be open, are kept in ``keys.stream_key`` (:class:`StreamRecord`) from the moment the
first one exists, for as long as the job's other state.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, Literal

import aiohttp
import structlog
from pydantic import BaseModel
from redis.asyncio import Redis
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from app.contract import keys
from app.contract.jobs import JobBase
from app.contract.messages import SlackMessage
from app.contract.targets import Thread
from workers import job_state, slack_rate
from workers.errors import DeliveryFailed, PermanentError, SlackBusy
from workers.formatting import fallback_text, stop_button, thread_answer
from workers.retry_after import retry_after_seconds

log = structlog.get_logger(__name__)

START = "chat.startStream"
APPEND = "chat.appendStream"
STOP = "chat.stopStream"
UPDATE = "chat.update"
DELETE = "chat.delete"

#: A batch this long is sent without waiting for FLUSH_SECONDS.
FLUSH_CHARS = 200
#: Longest a batch waits for more text once the stream has started (room permitting).
FLUSH_SECONDS = 0.5
#: Markdown kept in one streamed message: under Slack's 12,000 (per appendStream call, and per
#: message's markdown), with room for a note at the end.
MESSAGE_CHARS = 11_000
#: Seconds before a call that Slack failed (5xx, no answer) is tried again.
FAILED_CALL_BACKOFF = 1.0
#: Tries of one call when the answer must be complete now (finish, recovery) before the job's
#: own retry takes over.
FINAL_ATTEMPTS = 4

#: Web API errors that a later attempt may get past (as for posts, workers/delivery.py).
TRANSIENT_API_ERRORS = frozenset(
    {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)

Outcome = Literal["ok", "later", "refused"]


class StreamedMessage(BaseModel):
    """One Slack message an answer was written into."""

    ts: str
    #: Characters of the answer in it.
    chars: int = 0
    #: Its stream may still be open in Slack (started and not yet stopped or given up).
    streaming: bool = True
    #: It shows the Stop button (until it is ended).
    stop_button: bool = False


class StreamRecord(BaseModel):
    """What ``keys.stream_key`` holds: the channel and the job's messages there, in order."""

    channel: str
    messages: list[StreamedMessage] = []


async def load_record(redis: Redis, job_id: str) -> StreamRecord | None:
    raw = await redis.get(keys.stream_key(job_id))
    return None if raw is None else StreamRecord.model_validate_json(raw)


async def save_record(redis: Redis, job_id: str, record: StreamRecord) -> None:
    await redis.set(keys.stream_key(job_id), record.model_dump_json(), ex=job_state.STATE_TTL_SECONDS)


def markdown_blocks(text: str, extra: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """A message's blocks when it is written by ``chat.update``: its markdown, then ``extra``."""
    return [{"type": "markdown", "text": text or "…"}, *extra]


def cut(text: str, room: int, *, whole_lines: bool = False) -> str:
    """The head of ``text`` that fits in ``room``: all of it, else up to its last line break
    that fits (kept with the head), else (unless ``whole_lines``: then nothing) exactly ``room``
    characters, as a line longer than a message must be cut somewhere."""
    if len(text) <= room:
        return text
    at = text.rfind("\n", 0, room)
    if at >= 0:
        return text[: at + 1]
    return "" if whole_lines else text[:room]


class SlackCalls:
    """One job's Slack calls, each booked in its method's tier and classified: ``ok``, ``later``
    (rate limited or failed; for a call that may wait, the moment to try again is set), or
    ``refused`` (Slack will not take it: the caller falls back)."""

    def __init__(
        self,
        web: AsyncWebClient,
        redis: Redis,
        team_id: str,
        *,
        max_wait: float,
        limits: slack_rate.MethodLimits,
    ) -> None:
        self.web = web
        self.redis = redis
        self.team = team_id
        self.max_wait = max_wait
        self.limits = limits
        #: No call before this moment (monotonic): a booked moment, a pause, a backoff.
        self.not_before = 0.0
        #: Moments booked (monotonic) and not yet used, by method.
        self._booked: dict[str, float] = {}

    async def call(
        self, method: str, invoke: Callable[[], Awaitable[Any]], *, final: bool
    ) -> tuple[Outcome, dict[str, Any]]:
        """Make one call when its moment comes. ``final``: wait for it, and try up to
        FINAL_ATTEMPTS times (raising DeliveryFailed after); otherwise return ``later`` at once
        when the moment has not come or the call failed."""
        last = method
        for _ in range(FINAL_ATTEMPTS if final else 1):
            if not await self._turn(method, final=final):
                return "later", {}
            try:
                response = await invoke()
            except (SlackApiError, aiohttp.ClientError, TimeoutError) as error:
                status, code = _status_and_code(error)
                detail = f"{method} {status} {code or type(error).__name__}"
                if status == 429 or code == "ratelimited":
                    wait = retry_after_seconds(_headers(error)) or 1.0
                    await slack_rate.pause(self.redis, self.team, wait, max_pause=self.max_wait, call=method)
                    self.not_before = time.monotonic() + wait
                elif (
                    isinstance(error, SlackApiError)
                    and status < 500
                    and code
                    and code not in TRANSIENT_API_ERRORS
                ):
                    log.warning("stream.refused", call=method, error=code)
                    return "refused", {"error": code}
                else:
                    log.info("stream.call_failed", call=method, detail=detail)
                    self.not_before = time.monotonic() + FAILED_CALL_BACKOFF
                    if final:
                        await asyncio.sleep(FAILED_CALL_BACKOFF)
                if not final:
                    return "later", {}
                last = detail
                continue
            data = getattr(response, "data", None)
            return "ok", data if isinstance(data, dict) else {}
        raise DeliveryFailed(f"{last} after {FINAL_ATTEMPTS} tries")

    async def _turn(self, method: str, *, final: bool) -> bool:
        now = time.monotonic()
        if not final and now < self.not_before:
            return False
        at = self._booked.get(method)
        if at is None:
            try:
                wait = await slack_rate.book_method(
                    self.redis, self.team, method, max_wait=self.max_wait, limits=self.limits
                )
            except SlackBusy as busy:
                if final:
                    raise
                self.not_before = now + min(busy.retry_after or 1.0, self.max_wait)
                return False
            at = self._booked[method] = now + wait
        if at > now:
            if not final:
                self.not_before = at
                return False
            await asyncio.sleep(at - now)
        # A 429 elsewhere may have paused the workspace since the moment was booked.
        left = await slack_rate.paused_for(self.redis, self.team)
        if left > 0:
            if not final:
                self.not_before = time.monotonic() + left
                return False
            if left > self.max_wait:
                raise SlackBusy(f"slack paused this workspace for {left:g} s", retry_after=left)
            await asyncio.sleep(left)
        del self._booked[method]
        return True


class SlackStream:
    """One answer streamed into a thread (see the module's docstring). Not shared between tasks."""

    def __init__(
        self,
        web: AsyncWebClient,
        redis: Redis,
        job: JobBase,
        *,
        max_wait: float,
        post: Callable[[SlackMessage], Awaitable[str]],
        limits: slack_rate.MethodLimits = slack_rate.SLACK_TIERS,
        flush_chars: int = FLUSH_CHARS,
        flush_seconds: float = FLUSH_SECONDS,
        message_chars: int = MESSAGE_CHARS,
    ) -> None:
        target = job.reply_to
        assert isinstance(target, Thread)  # Slack streams in threads only
        self._job = job
        self._thread_ts = target.thread_ts
        self._calls = SlackCalls(web, redis, job.asker.team_id, max_wait=max_wait, limits=limits)
        #: Posts a message in the thread (a refused start's fallback); returns its ts.
        self._post = post
        self._flush_chars = flush_chars
        self._flush_seconds = flush_seconds
        self._message_chars = message_chars
        self._record = StreamRecord(channel=target.channel_id)
        self._stop_block = stop_button(job.job_id)
        #: The answer's text in each message of the record, for a chat.update fallback.
        self._texts: list[str] = []
        #: Text not yet in Slack.
        self._pending = ""
        self._last_flush = time.monotonic()
        #: Slack refused to start a stream: what is left is posted by finish.
        self._posting = False

    @property
    def shown(self) -> bool:
        """Some text has reached Slack: a message exists."""
        return bool(self._record.messages)

    @property
    def text(self) -> str:
        """The answer as it is in Slack now."""
        return "".join(self._texts)

    async def append(self, text: str) -> None:
        """Add ``text`` to the answer; it reaches Slack when a flush is due and Slack has room."""
        self._pending += text
        if self._due():
            await self._push(final=False)

    async def finish(self, blocks: list[dict[str, Any]]) -> None:
        """Write what is left and end the stream with ``blocks`` (the answer's buttons) under it.

        Raises DeliveryFailed when Slack cannot be reached now (the job's retry then completes
        the messages, :func:`complete`), PermanentError when it will not take the answer.
        """
        await self._push(final=True)
        if not self._record.messages and not self._posting:
            await self._start(final=True)
        if self._posting:
            await self._post_rest(blocks)
            return
        if self._pending or blocks or self._record.messages[-1].streaming:
            await self._end(len(self._record.messages) - 1, self._pending, blocks)
        self._pending = ""

    async def end_with_note(self, note: str, blocks: list[dict[str, Any]]) -> None:
        """:meth:`finish` with ``note`` (e.g. "_Stopped._") after the text: the answer ends
        visibly short, with ``blocks`` (a Retry button) under it."""
        self._pending += ("\n\n" if self.shown or self._pending.strip() else "") + note
        await self.finish(blocks)

    def _due(self) -> bool:
        if self._posting or not self._pending or time.monotonic() < self._calls.not_before:
            return False
        if not self._record.messages:
            return True  # the asker sees the answer begin as soon as there is some
        waited = time.monotonic() - self._last_flush
        return len(self._pending) >= self._flush_chars or waited >= self._flush_seconds

    async def _push(self, *, final: bool) -> None:
        """Write the batch into Slack, continuing in new messages as each fills. ``final``: keep
        the tail that fits in the last message for the stop; otherwise return as soon as a call
        must wait (the batch keeps growing meanwhile)."""
        while self._pending and not self._posting:
            if not self._record.messages:
                if not await self._start(final=final):
                    return
                continue
            index = len(self._record.messages) - 1
            room = self._message_chars - self._record.messages[index].chars
            if final and len(self._pending) <= room:
                return
            # A message already holding text takes only whole lines; the rest starts the next one.
            piece = cut(self._pending, room, whole_lines=True)
            if not piece:
                if not await self._end(index, "", []) or not await self._start(final=final):
                    return
                continue
            if not await self._add(index, piece, final=final):
                return

    async def _start(self, *, final: bool) -> bool:
        piece = cut(self._pending, self._message_chars) or "…"
        target = self._job.reply_to
        assert isinstance(target, Thread)
        outcome, data = await self._calls.call(
            START,
            lambda: self._calls.web.chat_startStream(
                channel=target.channel_id,
                thread_ts=target.thread_ts,
                recipient_user_id=self._job.asker.user_id,
                recipient_team_id=self._job.asker.team_id,
                chunks=[
                    {"type": "blocks", "blocks": [self._stop_block]},
                    {"type": "markdown_text", "text": piece},
                ],
            ),
            final=final,
        )
        if outcome == "later":
            return False
        if outcome == "refused" or not data.get("ts"):
            # Slack will not stream here: the rest of the answer is posted once it is complete.
            log.warning("stream.unavailable", error=data.get("error"))
            self._posting = True
            return False
        self._record.messages.append(StreamedMessage(ts=str(data["ts"]), chars=len(piece), stop_button=True))
        self._texts.append(piece)
        self._pending = self._pending[len(piece) :]
        await self._wrote()
        return True

    async def _post_rest(self, blocks: list[dict[str, Any]]) -> None:
        """Post what is not in Slack yet as the thread's next messages, ``blocks`` under the last
        (a stream Slack would not start)."""
        if not self._pending and self._record.messages:
            await self._end(len(self._record.messages) - 1, "", blocks)
            return
        parts = thread_answer(self._pending, cut_short=False)
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            ts = await self._post(
                SlackMessage(text=part.text, blocks=[*part.blocks, *(blocks if last else [])])
            )
            self._record.messages.append(StreamedMessage(ts=ts, chars=_markdown_chars(part), streaming=False))
            self._texts.append(str(part.blocks[0].get("text", "")))
            await self._wrote()
        self._pending = ""

    async def _add(self, index: int, piece: str, *, final: bool) -> bool:
        message = self._record.messages[index]
        if message.streaming:
            outcome, _ = await self._calls.call(
                APPEND,
                lambda: self._calls.web.chat_appendStream(
                    channel=self._record.channel, ts=message.ts, markdown_text=piece
                ),
                final=final,
            )
            if outcome == "later":
                return False
            if outcome == "refused":
                message.streaming = False
        # Still being written: a message updated instead of streamed keeps its Stop button.
        still = [self._stop_block] if message.stop_button else []
        if not message.streaming and not await self._update(
            index, self._texts[index] + piece, still, final=final
        ):
            return False
        message.chars += len(piece)
        self._texts[index] += piece
        self._pending = self._pending[len(piece) :]
        await self._wrote()
        return True

    async def _end(self, index: int, tail: str, blocks: list[dict[str, Any]]) -> bool:
        """Stop message ``index``'s stream with ``tail`` and ``blocks`` (always final), and take
        its Stop button away."""
        message = self._record.messages[index]
        if message.streaming:
            # Blocks given to chat.stopStream go under the text and leave the Stop button above
            # it: a message showing one gets its final blocks by the update below instead.
            outcome, _ = await self._calls.call(
                STOP,
                lambda: self._calls.web.chat_stopStream(
                    channel=self._record.channel,
                    ts=message.ts,
                    markdown_text=tail or None,
                    blocks=None if message.stop_button else (blocks or None),
                ),
                final=True,
            )
            message.streaming = False
            if outcome == "ok":
                message.chars += len(tail)
                self._texts[index] += tail
                tail = ""
                if not message.stop_button:
                    blocks = []  # chat.stopStream drew them
        if tail or blocks or message.stop_button:
            await self._update(index, self._texts[index] + tail, blocks, final=True)
            message.stop_button = False
            message.chars += len(tail)
            self._texts[index] += tail
        await self._wrote()
        return True

    async def _update(self, index: int, text: str, blocks: list[dict[str, Any]], *, final: bool) -> bool:
        """Make message ``index`` show ``text`` (and ``blocks``) by chat.update."""
        outcome, data = await self._calls.call(
            UPDATE,
            lambda: self._calls.web.chat_update(
                channel=self._record.channel,
                ts=self._record.messages[index].ts,
                text=fallback_text(text),
                blocks=markdown_blocks(text, blocks),
            ),
            final=final,
        )
        if outcome == "refused":
            raise PermanentError(f"{UPDATE} {data.get('error')}")
        return outcome == "ok"

    async def _wrote(self) -> None:
        self._last_flush = time.monotonic()
        await save_record(self._calls.redis, self._job.job_id, self._record)


async def complete(
    calls: SlackCalls,
    job: JobBase,
    record: StreamRecord,
    parts: Sequence[SlackMessage],
    blocks: list[dict[str, Any]],
    post: Callable[[SlackMessage], Awaitable[str]],
) -> None:
    """Make the messages of an earlier run's stream show exactly ``parts`` (the complete answer,
    one part per message) with ``blocks`` under the last: end any stream still open, update each
    message, delete the messages left over, post the parts missing. The record follows each step,
    so a run interrupted here resumes where it stopped."""
    channel = record.channel
    for message in list(record.messages):
        if message.streaming:
            # Refused when Slack already ended it (idle, or stopped before the crash): nothing to end.
            await calls.call(
                STOP, partial(calls.web.chat_stopStream, channel=channel, ts=message.ts), final=True
            )
            message.streaming = False
            await save_record(calls.redis, job.job_id, record)
    for index, message in enumerate(list(record.messages)):
        if index >= len(parts):
            outcome, data = await calls.call(
                DELETE, partial(calls.web.chat_delete, channel=channel, ts=message.ts), final=True
            )
            if outcome == "refused" and data.get("error") != "message_not_found":
                raise PermanentError(f"{DELETE} {data.get('error')}")
            record.messages.remove(message)
            await save_record(calls.redis, job.job_id, record)
            continue
        part = parts[index]
        last = index == len(parts) - 1
        outcome, data = await calls.call(
            UPDATE,
            partial(
                calls.web.chat_update,
                channel=channel,
                ts=message.ts,
                text=part.text,
                blocks=[*part.blocks, *(blocks if last else [])],
            ),
            final=True,
        )
        if outcome == "refused":
            raise PermanentError(f"{UPDATE} {data.get('error')}")
        message.chars = _markdown_chars(part)
        message.stop_button = False  # the update replaced every block
        await save_record(calls.redis, job.job_id, record)
    for index in range(len(record.messages), len(parts)):
        part = parts[index]
        if index == len(parts) - 1:
            part = SlackMessage(text=part.text, blocks=[*part.blocks, *blocks], plain=part.plain)
        ts = await post(part)
        record.messages.append(StreamedMessage(ts=ts, chars=_markdown_chars(part), streaming=False))
        await save_record(calls.redis, job.job_id, record)
    log.info("stream.completed", messages=len(record.messages))


def _markdown_chars(message: SlackMessage) -> int:
    return sum(len(str(block.get("text", ""))) for block in message.blocks if block.get("type") == "markdown")


def _status_and_code(error: Exception) -> tuple[int, str]:
    if not isinstance(error, SlackApiError):
        return 0, ""
    response = error.response
    status = int(getattr(response, "status_code", None) or getattr(response, "status", None) or 0)
    data = getattr(response, "data", None)
    return status, str(data.get("error", "")) if isinstance(data, dict) else ""


def _headers(error: Exception) -> Any:
    return getattr(getattr(error, "response", None), "headers", None)
