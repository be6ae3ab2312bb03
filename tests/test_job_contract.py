"""The job payload is a versioned JSON contract; anything else fails cleanly, once."""

from __future__ import annotations

import asyncio
import json
import pickle
import time
from datetime import UTC, datetime
from pathlib import Path

import redis
from arq.connections import ArqRedis

from app.job import ANSWER_JOB, AskJob, deserialize, serialize
from app.queue import open_redis
from app.settings import Settings
from tests.conftest import drain
from tests.fakes.anthropic import FakeAnthropic


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

    stored = redis_client.get("arq:job:raw-job")
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
    redis_client.set("arq:job:evil", pickle.dumps(job))
    redis_client.zadd("arq:queue", {"evil": int(time.time() * 1000)})

    worker = drain(settings)

    assert not canary.exists()
    assert worker.jobs_failed == 1
    assert fake_anthropic.calls == []
