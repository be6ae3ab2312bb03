"""A thread kind's run in this process, with a recording stand-in for the Slack side of streaming.

The thread kind's tests assert on what the AI was asked (the fake Anthropic) and on what the
stream was given (text in order, the note, the buttons), not on Slack's wire calls, which are
workers/streaming.py's (tests/test_streaming.py). :class:`RecordingSlack` offers exactly what the
kind calls on ``deps.slack``: ``update_notice``, ``open_stream``, ``complete_stream`` (and
``send``, for the runner's failure message).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

from arq.connections import ArqRedis

from app.contract import answers, keys
from app.contract.events import JobEvents
from app.contract.jobs import JobBase
from app.contract.messages import SlackMessage
from app.contract.queue import open_redis
from app.contract.settings import Settings
from workers.ai import Claude
from workers.delivery import SlackDelivery
from workers.kinds import JobKind, Run, Timings, WorkerDeps
from workers.lease import lease
from workers.ratelimit import RateLimiter


@dataclass
class RecordedStream:
    """What one SlackStream was given."""

    job_id: str
    #: Each append's text, in order.
    appended: list[str] = field(default_factory=list)
    #: The blocks it was finished with (None: not finished).
    finished_with: list[dict[str, Any]] | None = None
    #: The note and blocks it was ended with (None: not ended so).
    note: str | None = None
    note_blocks: list[dict[str, Any]] | None = None
    #: At the moment it was finished: whether the job's answer and its answer record were stored.
    answer_stored_when_finished: bool | None = None
    record_saved_when_finished: bool | None = None

    @property
    def text(self) -> str:
        return "".join(self.appended)

    @property
    def shown(self) -> bool:
        # As if every append reached Slack at once (the real stream batches them).
        return bool(self.appended)


class RecordingStream:
    """A SlackStream that records what it is given."""

    def __init__(self, redis: ArqRedis, record: RecordedStream, first_text: asyncio.Event) -> None:
        self._redis = redis
        self.record = record
        self._first_text = first_text

    @property
    def shown(self) -> bool:
        return self.record.shown

    async def append(self, text: str) -> None:
        self.record.appended.append(text)
        self._first_text.set()

    async def finish(self, blocks: list[dict[str, Any]]) -> None:
        job_id = self.record.job_id
        self.record.answer_stored_when_finished = bool(await self._redis.exists(keys.answer_key(job_id)))
        self.record.record_saved_when_finished = await answers.load(self._redis, job_id) is not None
        self.record.finished_with = blocks

    async def end_with_note(self, note: str, blocks: list[dict[str, Any]]) -> None:
        self.record.note, self.record.note_blocks = note, blocks


@dataclass
class Completion:
    """One complete_stream call that found an earlier run's stream."""

    text: str
    cut_short: bool
    blocks: list[dict[str, Any]]


class RecordingSlack:
    """The Slack side of a thread answer, recorded: statuses, streams, crash completions, posts."""

    def __init__(self) -> None:
        self.statuses: list[str] = []
        self.streams: list[RecordedStream] = []
        self.completions: list[Completion] = []
        self.sent: list[SlackMessage] = []
        #: Set once any stream was given text.
        self.first_text = asyncio.Event()

    async def update_notice(self, redis: ArqRedis, job: JobBase, message: SlackMessage) -> bool:
        self.statuses.append(message.text)
        return True

    def open_stream(self, redis: ArqRedis, job: JobBase) -> RecordingStream:
        record = RecordedStream(job.job_id)
        self.streams.append(record)
        return RecordingStream(redis, record, self.first_text)

    async def complete_stream(
        self, redis: ArqRedis, job: JobBase, text: str, *, cut_short: bool, blocks: list[dict[str, Any]]
    ) -> bool:
        # As the real one: True only when an earlier run's stream is recorded for the job.
        if not await redis.exists(keys.stream_key(job.job_id)):
            return False
        self.completions.append(Completion(text, cut_short, blocks))
        return True

    async def send(self, redis: ArqRedis, job: JobBase, message: SlackMessage) -> str:
        self.sent.append(message)
        return "recorded"


async def leave_stream_of_dead_run(redis: ArqRedis, job: JobBase) -> None:
    """Leave the job's stream record as a run killed mid-stream leaves it (one message, partly
    written); its format is workers/streaming.py's, only its presence matters to the kind."""
    record = {"channel": "C0CHANNEL", "messages": [{"ts": "1700000000.999999", "chars": 12}]}
    await redis.set(keys.stream_key(job.job_id), json.dumps(record), ex=1800)


async def run_kind(
    settings: Settings,
    kind: JobKind,
    job: JobBase,
    slack: RecordingSlack,
    *,
    before: Callable[[ArqRedis], Awaitable[None]] | None = None,
) -> str:
    """Run ``kind``'s steps for ``job`` once, as the runner would (under its lease, with the
    worker's Claude and rate limiter), with ``slack`` as the Slack side; returns the via or
    raises what the steps raised."""
    redis = open_redis(settings)
    claude = Claude(settings)
    deps = WorkerDeps(
        settings=settings,
        redis=redis,
        claude=claude,
        slack=cast(SlackDelivery, slack),
        limiter=RateLimiter.for_settings(redis, settings),
        events=JobEvents(),
    )
    try:
        if before is not None:
            await before(redis)
        async with lease(redis, job.job_id) as held:
            return await kind.perform(Run(job, deps, held, Timings()))
    finally:
        await claude.close()
        await redis.aclose()
