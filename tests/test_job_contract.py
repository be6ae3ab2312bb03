"""The job payload is a versioned JSON contract; anything else fails cleanly, once."""

from __future__ import annotations

import asyncio
import json
import pickle
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlencode

import pytest
import redis
from arq.connections import ArqRedis
from slack_bolt.request.async_request import AsyncBoltRequest

from app.contract import keys
from app.contract.events import JobEvents
from app.contract.job import ANSWER_JOB, AskJob, deserialize, reference_for, serialize
from app.contract.jobs import ask_from_command, parse_job, upgrade
from app.contract.queue import enqueue_ask, open_redis
from app.contract.settings import Settings
from app.web.slack_app import build_bolt_app
from tests.support.deployment import settings_from
from tests.support.fakes.anthropic import FakeAnthropic
from tests.support.fakes.slack import FakeSlack
from tests.support.jobs import drain
from tests.support.processes import free_port
from tests.support.slack_requests import SlashCommands
from workers.retention import JobRecord, recent
from workers.retry import ARQ_MAX_TRIES


def _job(**overrides: object) -> AskJob:
    fields: dict[str, object] = {
        "team_id": "T1",
        "channel_id": "C1",
        "user_id": "U1",
        "command": "/ask",
        "text": "why?",
        "response_url": "https://hooks.slack.com/commands/T1/1/abc",
        "trigger_id": "123.456.abc",
        "enqueued_at": datetime(2026, 11, 22, tzinfo=UTC),
    }
    fields.update(overrides)
    return AskJob.model_validate(fields)


def _enqueue_raw(settings: Settings, payload: object) -> None:
    async def run() -> None:
        client: ArqRedis = open_redis(settings)
        await client.enqueue_job(ANSWER_JOB, payload, _job_id="raw-job")
        await client.aclose()

    asyncio.run(run())


def test_job_id_is_stable_for_a_trigger_id() -> None:
    assert _job().job_id == _job(text="something else").job_id
    assert _job().job_id != _job(trigger_id="123.456.other").job_id


def test_payload_round_trips_through_json() -> None:
    job = _job()

    raw = serialize({"a": [job.model_dump(mode="json")]})

    assert json.loads(raw)["a"][0]["version"] == 1
    assert AskJob.model_validate(deserialize(raw)["a"][0]) == job


def test_jobs_are_stored_as_json_not_pickle(settings: Settings, redis_client: redis.Redis) -> None:
    _enqueue_raw(settings, _job().model_dump(mode="json"))

    stored = redis_client.get(keys.job_key("raw-job"))
    assert stored is not None
    assert json.loads(stored)["f"] == ANSWER_JOB


def test_unknown_payload_version_fails_once_without_calling_claude(
    settings: Settings, fake_anthropic: FakeAnthropic
) -> None:
    _enqueue_raw(settings, {**_job().model_dump(mode="json"), "version": 99})

    worker = drain(settings)

    assert worker.jobs_failed == 1
    assert worker.jobs_retried == 0
    assert fake_anthropic.calls == []


def test_malformed_payload_fails_once_without_calling_claude(
    settings: Settings, fake_anthropic: FakeAnthropic
) -> None:
    _enqueue_raw(settings, {"hello": "world"})

    worker = drain(settings)

    assert worker.jobs_failed == 1
    assert fake_anthropic.calls == []


class _Canary:
    """Unpickling this writes a file: proof that a worker ran code it was handed."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (_touch, (self.path, "unpickled"))


def _touch(path: str, text: str) -> None:
    with open(path, "w") as handle:
        handle.write(text)


def test_a_pickled_job_is_never_unpickled(
    settings: Settings, redis_client: redis.Redis, fake_anthropic: FakeAnthropic, tmp_path: Path
) -> None:
    # Anyone who can write to Redis could otherwise run code on a worker.
    canary = tmp_path / "canary"
    job = {"t": 1, "f": ANSWER_JOB, "a": [_Canary(str(canary))], "k": {}, "et": int(time.time() * 1000)}
    redis_client.set(keys.job_key("evil"), pickle.dumps(job))
    redis_client.zadd(keys.QUEUE_KEY, {"evil": int(time.time() * 1000)})

    worker = drain(settings)

    assert not canary.exists()
    assert worker.jobs_failed == 1
    assert fake_anthropic.calls == []


def _failed_records(settings: Settings) -> list[JobRecord]:
    """What `asklane jobs failed` lists."""

    async def read() -> list[JobRecord]:
        client = open_redis(settings)
        try:
            return await recent(client, "failed")
        finally:
            await client.aclose()

    return asyncio.run(read())


def _envelope(function: str = ANSWER_JOB, args: object = (), kwargs: object | None = None) -> bytes:
    """arq's stored job, as JSON, with whatever function and arguments a test needs."""
    job = {"t": 1, "f": function, "a": args, "k": kwargs or {}, "et": int(time.time() * 1000)}
    return json.dumps(job).encode()


def _asked(commands: SlashCommands) -> dict[str, Any]:
    return commands.job("a question that was never answered").model_dump(mode="json")


#: Stored jobs no worker can run, and whether their asker can still be found in them.
BAD_JOBS: dict[str, tuple[Callable[[dict[str, Any]], bytes], bool]] = {
    "not JSON": (lambda asked: b"\x80\x04 not json {", False),
    "JSON but not a job": (lambda asked: b'["answer_question"]', False),
    "a function name that is not a string": (
        lambda asked: json.dumps({"t": 1, "f": [ANSWER_JOB], "a": [asked], "k": {}, "et": 0}).encode(),
        True,
    ),
    "unknown function": (lambda asked: _envelope("summarise_thread", [asked]), True),
    "args an object, not a list": (lambda asked: _envelope(args=asked), True),
    "several args": (lambda asked: _envelope(args=[asked, asked]), True),
    "keyword args": (lambda asked: _envelope(args=[], kwargs={"payload": asked}), True),
    "an arg that is not an AskJob": (lambda asked: _envelope(args=[{"hello": "world"}]), False),
    "an AskJob missing a field": (
        lambda asked: _envelope(args=[{k: v for k, v in asked.items() if k != "text"}]),
        True,
    ),
}


@pytest.mark.parametrize("case", list(BAD_JOBS))
def test_a_job_no_worker_can_run_ends_in_a_failed_event_a_failed_record_and_a_message_to_its_asker(
    case: str,
    settings: Settings,
    commands: SlashCommands,
    redis_client: redis.Redis,
    fake_anthropic: FakeAnthropic,
    fake_slack: FakeSlack,
) -> None:
    build, asker_known = BAD_JOBS[case]
    redis_client.set(keys.job_key("bad-job"), build(_asked(commands)))
    redis_client.zadd(keys.QUEUE_KEY, {"bad-job": int(time.time() * 1000)})
    failed: list[dict[str, Any]] = []

    async def hook(event: str, fields: dict[str, Any]) -> None:
        failed.append(fields)

    events = JobEvents()
    events.subscribe("job.failed", hook)

    worker = drain(settings, events=events)

    reference = reference_for("bad-job")
    [event] = failed
    assert event["job_id"] == "bad-job" and event["reference"] == reference
    [record] = _failed_records(settings)
    assert record.job_id == "bad-job" and record.error == event["detail"]
    told = [post["text"] for post in fake_slack.delivered()]
    assert told == (
        [f":warning: Sorry, that request could not be read. Please try again. (ref {reference})"]
        if asker_known
        else []
    )
    assert worker.jobs_failed == 1 and fake_anthropic.calls == []
    assert not redis_client.zrange(keys.QUEUE_KEY, 0, -1)


def test_a_job_arq_gives_up_on_by_itself_is_recorded_and_its_asker_told(
    settings: Settings,
    commands: SlashCommands,
    redis_client: redis.Redis,
    fake_anthropic: FakeAnthropic,
    fake_slack: FakeSlack,
) -> None:
    # arq fails a job over its try count without running it and without any hook.
    job = commands.job("a question out of tries")
    _enqueue(settings, job)
    redis_client.set(keys.retry_key(job.job_id), ARQ_MAX_TRIES)

    drain(settings)

    [record] = _failed_records(settings)
    assert record.job_id == job.job_id and record.reference == job.reference
    assert "retries exceeded" in (record.error or "")
    assert parse_job(record.payload) == upgrade(job)
    [told] = [post["text"] for post in fake_slack.delivered()]
    assert told.startswith(":x: Sorry, I couldn't answer that") and f"(ref {job.reference})" in told
    assert fake_anthropic.calls == []


def _enqueue(settings: Settings, job: AskJob) -> None:
    async def run() -> None:
        client = open_redis(settings)
        assert await enqueue_ask(client, job)
        await client.aclose()

    asyncio.run(run())


def _ack_reference(settings: Settings, redis_client: ArqRedis | None, form: dict[str, str]) -> str:
    """The reference id in the ack the Bolt app gives ``form``, Redis client as given."""

    async def run() -> str:
        app = build_bolt_app(settings, cast(ArqRedis, redis_client), JobEvents())
        request = AsyncBoltRequest(
            body=urlencode(form), headers={"content-type": ["application/x-www-form-urlencoded"]}
        )
        response = await app.async_dispatch(request)
        match = re.search(r"\(ref ([0-9A-F]{8})\)", json.loads(response.body)["text"])
        assert match, response.body
        return match.group(1)

    return asyncio.run(run())


#: How an ack without a queued job comes about, for one command: each must quote the reference
#: its job has (the one on its answer or failure message, and in every log line about it).
NO_JOB_PATHS = ("queue unavailable", "malformed command", "listener crashed")


@pytest.mark.parametrize("path", NO_JOB_PATHS)
def test_every_ack_of_a_command_quotes_the_reference_of_its_job(
    path: str, env: dict[str, str], settings: Settings, commands: SlashCommands, tmp_path: Path
) -> None:
    form = commands.form("what is a p99?")
    job = ask_from_command(
        team_id=form["team_id"],
        enterprise_id=None,
        channel_id=form["channel_id"],
        user_id=form["user_id"],
        command=form["command"],
        text=form["text"],
        response_url=form["response_url"],
        trigger_id=form["trigger_id"],
        enqueued_at=datetime.now(UTC),
    )
    if path == "queue unavailable":
        down = settings_from({**env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
        reference = _ack_reference(settings, open_redis(down), form)
    elif path == "malformed command":
        reference = _ack_reference(settings, open_redis(settings), {**form, "user_id": ""})
    else:
        # A client that is not one: the listener's last-resort handler answers.
        reference = _ack_reference(settings, None, form)

    assert reference == job.reference
