"""Stop: a job someone stopped ends as stopped (not failed, not retried, no failure message),
whether it saw the stop while running or was stopped before it ran; and a job whose final message
went out posts no failure message when it gives up afterwards."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
from starlette.testclient import TestClient

from app.contract import keys, metrics, stops
from app.contract.settings import Settings
from app.web.events import Ignored, StopThread, classify
from tests.support.chores import KINDS, chore
from tests.support.fakes.anthropic import FakeAnthropic
from tests.support.fakes.slack import RESPONSE, SET_STATUS, FakeSlack
from tests.support.jobs import drain, enqueue, in_redis, queued_jobs, recording
from tests.support.slack_requests import TEAM_ID, SlackEvents, SlashCommands, send_event
from workers.outcomes import Stopped
from workers.runner import to_arq


def _records(client: redis.Redis, key: str) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in client.lrange(key, 0, -1)]


def _stop(settings: Settings, job_id: str) -> None:
    async def run(client: Any) -> None:
        assert await stops.request_stop(client, job_id)

    in_redis(settings, run)


def test_a_stopped_run_becomes_a_finished_job_in_arq_not_a_retry_nor_a_failure() -> None:
    assert to_arq(Stopped()) == "stopped"


def test_a_question_stopped_while_queued_never_reaches_the_ai_and_is_recorded_stopped(
    web: TestClient,
    commands: SlashCommands,
    settings: Settings,
    fake_anthropic: FakeAnthropic,
    fake_slack: FakeSlack,
    redis_client: redis.Redis,
) -> None:
    commands.send(web, "what is a p99?")
    [job] = queued_jobs(redis_client)
    _stop(settings, job.job_id)

    drain(settings)

    assert fake_anthropic.received("/v1/messages") == []
    assert fake_slack.delivered() == []
    [record] = _records(redis_client, keys.COMPLETED_KEY)
    assert (record["job_id"], record["state"]) == (job.job_id, "stopped")
    assert _records(redis_client, keys.FAILED_KEY) == []


def test_slacks_stop_in_a_thread_stops_its_question_before_it_runs_and_clears_the_status(
    web: TestClient,
    settings: Settings,
    fake_anthropic: FakeAnthropic,
    fake_slack: FakeSlack,
    redis_client: redis.Redis,
) -> None:
    slack = SlackEvents()
    asked = slack.message("what is a p99?")
    send_event(web, asked)
    [job] = queued_jobs(redis_client)
    event = asked["event"]
    stopped = slack.envelope(
        {
            "type": "agent_session_stopped",
            "user": event["user"],
            "channel": event["channel"],
            "thread_ts": event["ts"],
            "streaming_message_ts": [],
        }
    )

    assert send_event(web, stopped).status_code == 200
    drain(settings)

    assert redis_client.exists(keys.stop_key(job.job_id))
    assert fake_anthropic.received("/v1/messages") == []
    assert fake_slack.posts() == []
    assert [status["status"] for status in fake_slack.statuses()] == [""]
    [record] = _records(redis_client, keys.COMPLETED_KEY)
    assert (record["job_id"], record["state"]) == (job.job_id, "stopped")


def test_slacks_stop_in_a_thread_with_no_question_running_is_acked_and_does_nothing(
    web: TestClient, redis_client: redis.Redis
) -> None:
    stopped = SlackEvents().envelope(
        {"type": "agent_session_stopped", "user": "U0ASKER", "channel": "D0DIRECT", "thread_ts": "1.000001"}
    )

    response = send_event(web, stopped)

    assert (response.status_code, response.text) == (200, "")
    assert redis_client.keys("asklane:stop:*") == []


def test_a_kind_that_saw_the_stop_ends_stopped_not_failed_nor_retried_and_tells_nobody(
    commands: SlashCommands, settings: Settings, fake_slack: FakeSlack, redis_client: redis.Redis
) -> None:
    seen: list[str] = []

    async def hook(event: str, fields: dict[str, Any]) -> None:
        seen.append(event)

    job = chore(commands, "stop-me", "stop")
    enqueue(settings, job)

    drain(settings, events=recording(hook)[0], kinds=KINDS)

    assert "job.stopped" in seen
    assert not {"job.failed", "job.retrying", "job.completed"} & set(seen)
    assert fake_slack.received(RESPONSE) == []
    assert int(redis_client.get(f"test:chore-runs:{job.job_id}") or 0) == 1
    [record] = _records(redis_client, keys.COMPLETED_KEY)
    assert record["state"] == "stopped"


def test_a_job_whose_final_message_went_out_posts_no_failure_message_when_it_gives_up(
    commands: SlashCommands, settings: Settings, fake_slack: FakeSlack, redis_client: redis.Redis
) -> None:
    seen: list[str] = []

    async def hook(event: str, fields: dict[str, Any]) -> None:
        seen.append(event)

    job = chore(commands, "half-done", "delivered_then_permanent")
    enqueue(settings, job)

    drain(settings, events=recording(hook)[0], kinds=KINDS)

    assert [post.body["text"] for post in fake_slack.received(RESPONSE)] == [
        f"chore {job.dedupe_key} half done"
    ]
    assert "job.failed" in seen
    [record] = _records(redis_client, keys.FAILED_KEY)
    assert record["job_id"] == job.job_id


def test_stopped_jobs_are_counted_as_finished_by_state(
    commands: SlashCommands, settings: Settings, redis_client: redis.Redis
) -> None:
    enqueue(settings, chore(commands, "stop-me", "stop"))

    drain(settings, kinds=KINDS)

    exposition = in_redis(settings, metrics.render).decode()
    assert 'asklane_jobs_finished_total{state="stopped"} 1.0' in exposition


def test_the_thread_status_is_left_alone_for_a_kind_that_saw_the_stop_itself(
    commands: SlashCommands, settings: Settings, fake_slack: FakeSlack
) -> None:
    # The kind ended its own message with the stopped note; only a job that never ran is cleared.
    enqueue(settings, chore(commands, "stop-me", "stop"))

    drain(settings, kinds=KINDS)

    assert fake_slack.received(SET_STATUS) == []


@pytest.mark.parametrize(
    ("fields", "decision"),
    [
        (
            {"channel": "D0DIRECT", "thread_ts": "1700000000.000100", "streaming_message_ts": ["1.2"]},
            StopThread(TEAM_ID, "D0DIRECT", "1700000000.000100"),
        ),
        (
            {"channel": "C0CHANNEL", "thread_ts": "1700000000.000100", "streaming_message_ts": []},
            StopThread(TEAM_ID, "C0CHANNEL", "1700000000.000100"),
        ),
        ({"channel": "D0DIRECT"}, Ignored("missing_fields")),
        ({"thread_ts": "1700000000.000100"}, Ignored("missing_fields")),
        ({"channel": "D0DIRECT", "thread_ts": 17}, Ignored("missing_fields")),
    ],
    ids=["dm thread", "channel thread, no stream", "no thread", "no channel", "thread not text"],
)
def test_slacks_stop_names_the_thread_to_stop(fields: dict[str, Any], decision: object) -> None:
    body = SlackEvents().envelope({"type": "agent_session_stopped", "user": "U0ASKER", **fields})

    assert classify(body) == decision
