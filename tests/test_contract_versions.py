"""The job contract across releases: what the previous release queued still runs, a newer one is
failed with a message (never dropped), and a job names its kind, asker, reply target and dedupe key."""

from __future__ import annotations

import hashlib
import json
import time
from datetime import UTC, datetime

import pytest
import redis
from starlette.testclient import TestClient

from app.contract import keys
from app.contract.jobs import RUN_JOB, ask_from_command
from app.contract.settings import Settings
from tests.support.fakes.anthropic import FakeAnthropic
from tests.support.fakes.slack import FakeSlack
from tests.support.jobs import drain
from tests.support.slack_requests import SlashCommands


def _queue_literally(client: redis.Redis, job_id: str, envelope: str) -> None:
    """What a release's enqueue leaves in Redis: arq's job key, as JSON, and the queue entry."""
    client.set(keys.job_key(job_id), envelope)
    client.zadd(keys.QUEUE_KEY, {job_id: int(time.time() * 1000)})


def test_a_job_the_previous_release_queued_is_answered_by_a_new_worker(
    settings: Settings,
    commands: SlashCommands,
    redis_client: redis.Redis,
    fake_anthropic: FakeAnthropic,
    fake_slack: FakeSlack,
) -> None:
    form = commands.form("queued before the deploy")
    # The previous release's AskJob v1 under its own function name, as its arq stored it, with
    # the job id it derived from the trigger_id alone.
    old_job_id = "ask-" + hashlib.sha256(form["trigger_id"].encode()).hexdigest()[:32]
    envelope = (
        '{"t":null,"f":"answer_question","a":[{"version":1,"team_id":"T0TEAM","enterprise_id":null,'
        '"channel_id":"C0CHANNEL","user_id":"U0ASKER","command":"/ask","text":"queued before the deploy",'
        f'"response_url":"{form["response_url"]}","trigger_id":"{form["trigger_id"]}",'
        f'"enqueued_at":"{datetime.now(UTC).isoformat()}"}}],"k":{{}},"et":{int(time.time() * 1000)}}}'
    )
    _queue_literally(redis_client, old_job_id, envelope)

    worker = drain(settings)

    assert fake_slack.answers() == ["Answer to: queued before the deploy"]
    [post] = fake_slack.received("/response/")
    assert post.path == form["response_url"].removeprefix(fake_slack.url)
    assert len(fake_anthropic.calls) == 1
    assert worker.jobs_complete == 1 and worker.jobs_failed == 0
    assert redis_client.get(keys.delivered_key(old_job_id)) == b"response_url"


def test_a_job_of_a_newer_contract_version_is_failed_with_a_message_to_its_asker(
    settings: Settings,
    commands: SlashCommands,
    redis_client: redis.Redis,
    fake_anthropic: FakeAnthropic,
    fake_slack: FakeSlack,
) -> None:
    form = commands.form("queued by a newer release")
    envelope = json.dumps(
        {
            "t": None,
            "f": RUN_JOB,
            "a": [
                {
                    "kind": "ask",
                    "version": 3,
                    "asker": {"team_id": "T0TEAM", "enterprise_id": None, "user_id": "U0ASKER"},
                    "reply_to": {
                        "type": "ephemeral",
                        "response_url": form["response_url"],
                        "channel_id": "C0CHANNEL",
                        "user_id": "U0ASKER",
                    },
                    "dedupe_key": f"T0TEAM:{form['trigger_id']}",
                    "command": "/ask",
                    "text": "queued by a newer release",
                    "tone": "something this release has never heard of",
                    "enqueued_at": datetime.now(UTC).isoformat(),
                }
            ],
            "k": {},
            "et": int(time.time() * 1000),
        }
    )
    _queue_literally(redis_client, "ask-from-the-future", envelope)

    worker = drain(settings)

    [told] = [post["text"] for post in fake_slack.delivered()]
    assert told.startswith(":warning: Sorry, that request could not be read.")
    assert worker.jobs_failed == 1 and fake_anthropic.calls == []
    [record] = [json.loads(raw) for raw in redis_client.lrange(keys.FAILED_KEY, 0, -1)]
    assert record["job_id"] == "ask-from-the-future" and "contract version 3" in record["error"]


def test_a_slash_command_queues_an_ask_job_with_its_asker_reply_target_and_team_scoped_dedupe_key(
    web: TestClient, commands: SlashCommands, redis_client: redis.Redis
) -> None:
    form = commands.form("what is a p99?")
    commands.send(web, form=form)

    [job_id] = [member.decode() for member in redis_client.zrange(keys.QUEUE_KEY, 0, -1)]
    stored = json.loads(redis_client.get(keys.job_key(job_id)) or b"")
    assert stored["f"] == RUN_JOB
    [payload] = stored["a"]
    assert {key: payload[key] for key in ("kind", "version", "asker", "reply_to", "dedupe_key")} == {
        "kind": "ask",
        "version": 2,
        "asker": {"team_id": "T0TEAM", "enterprise_id": None, "user_id": "U0ASKER"},
        "reply_to": {
            "type": "ephemeral",
            "response_url": form["response_url"],
            "channel_id": "C0CHANNEL",
            "user_id": "U0ASKER",
        },
        "dedupe_key": f"T0TEAM:{form['trigger_id']}",
    }
    assert job_id == "ask-" + hashlib.sha256(payload["dedupe_key"].encode()).hexdigest()[:32]


@pytest.mark.parametrize(
    ("first", "second", "same_job"),
    [
        (("T1", "123.456.abc"), ("T1", "123.456.abc"), True),
        (("T1", "123.456.abc"), ("T2", "123.456.abc"), False),
        (("T1", "123.456.abc"), ("T1", "123.456.other"), False),
    ],
)
def test_the_job_id_follows_the_dedupe_key_scoped_by_team(
    first: tuple[str, str], second: tuple[str, str], same_job: bool
) -> None:
    def job_id(team: str, trigger: str) -> str:
        return ask_from_command(
            team_id=team,
            enterprise_id=None,
            channel_id="C1",
            user_id="U1",
            command="/ask",
            text="why?",
            response_url="https://hooks.slack.com/commands/T1/1/abc",
            trigger_id=trigger,
            enqueued_at=datetime.now(UTC),
        ).job_id

    assert (job_id(*first) == job_id(*second)) is same_job
