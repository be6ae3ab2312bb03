"""Redis keys come from app/contract/keys.py, and Lua scripts run by SHA (app/contract/scripts.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, get_args

import redis
from starlette.testclient import TestClient

from app.contract import keys, usage
from app.contract.job import reference_for
from app.web.main import create_app
from tests.support.deployment import settings_from
from tests.support.fakes.anthropic import MESSAGES, FakeAnthropic, error
from tests.support.fakes.server import Reply
from tests.support.fakes.slack import RESPONSE, FakeSlack
from tests.support.jobs import drain, queued_job_ids
from tests.support.slack_requests import SlashCommands
from workers.job_state import Phase

QUOTA_ENV = {"QUOTA_USER_PER_MINUTE": "50", "QUOTA_USER_PER_DAY": "500", "QUOTA_TEAM_PER_MINUTE": "50"}


def _script_commands(client: redis.Redis) -> dict[str, Any]:
    stats: dict[str, Any] = client.info("commandstats")
    return {
        name: stats[name]["calls"]
        for name in stats
        if name.split("|")[0] in ("cmdstat_eval", "cmdstat_script")
    }


def test_acks_run_the_enqueue_script_by_sha_not_by_its_text(
    env: dict[str, str], web: TestClient, commands: SlashCommands, redis_client: redis.Redis
) -> None:
    redis_client.config_resetstat()

    for n in range(3):
        assert commands.send(web, f"question {n}").status_code == 200

    assert len(queued_job_ids(redis_client)) == 3
    # EVAL would send the whole script with every ack; at most one SCRIPT LOAD, the first time.
    sent = _script_commands(redis_client)
    assert "cmdstat_eval" not in sent, sent
    assert sent.get("cmdstat_script|load", 0) <= 1, sent


def test_an_ack_still_queues_after_redis_forgot_its_scripts(
    env: dict[str, str], web: TestClient, commands: SlashCommands, redis_client: redis.Redis
) -> None:
    assert commands.send(web, "before").status_code == 200
    # A restarted or failed-over Redis, or SCRIPT FLUSH, answers NOSCRIPT to the known SHA.
    redis_client.script_flush()

    assert commands.send(web, "after").status_code == 200

    assert len(queued_job_ids(redis_client)) == 2


def _named(job_ids: list[str], team_id: str, user_id: str) -> set[str]:
    """Every key app/contract/keys.py names for these jobs and this asker."""
    names = {value for name, value in vars(keys).items() if name.endswith("_KEY") and isinstance(value, str)}
    for job_id in job_ids:
        names |= {
            keys.answer_key(job_id),
            keys.answer_record_key(job_id),
            keys.failure_key(job_id),
            keys.delivered_key(job_id),
            keys.running_key(job_id),
            keys.uses_key(job_id),
            keys.failed_posts_key(job_id),
            keys.unusable_key(job_id),
            keys.progress_count_key(job_id),
            keys.progress_queued_key(job_id),
            keys.refused_since_key(job_id),
            keys.enqueued_at_key(job_id),
            keys.job_key(job_id),
            keys.result_key(job_id),
            keys.in_progress_key(job_id),
            keys.retry_key(job_id),
            keys.trace_key(job_id),
            keys.trace_reference_key(reference_for(job_id)),
            *(keys.failures_key(job_id, phase) for phase in get_args(Phase)),
        }
    names |= {keys.last_score_key(priority) for priority in ("interactive", "background")}
    for scope in ("user", "team"):
        names |= {keys.quota_key(scope, period, team_id, user_id) for period in ("minute", "day")}
    names |= set(usage.charge_keys(team_id, user_id, datetime.now(UTC)))
    return names


def test_every_key_answered_and_failed_jobs_leave_is_named_in_the_keys_module(
    env: dict[str, str],
    commands: SlashCommands,
    fake_anthropic: FakeAnthropic,
    fake_slack: FakeSlack,
    redis_client: redis.Redis,
) -> None:
    settings = settings_from({**env, **QUOTA_ENV, "PROGRESS_AFTER_SECONDS": "0.1"})
    fake_anthropic.script(
        MESSAGES, error(529, "overloaded_error", retry_after=0.2), error(400, "invalid_request_error")
    )
    fake_slack.script(RESPONSE, Reply(status=429, headers={"Retry-After": "0"}))
    with TestClient(create_app(settings)) as web:
        for n in range(4):
            assert commands.send(web, f"question {n}").status_code == 200
    drain(settings)

    records = [
        json.loads(raw)
        for key in (keys.COMPLETED_KEY, keys.FAILED_KEY)
        for raw in redis_client.lrange(key, 0, -1)
    ]
    job_ids = [str(record["job_id"]) for record in records]
    assert len(job_ids) == 4
    form = commands.form("")
    named = _named(job_ids, form["team_id"], form["user_id"])
    prefixes = (keys.WORKER_HEALTH_PREFIX,)
    unnamed = [
        key
        for key in (raw.decode() for raw in redis_client.scan_iter())
        if key not in named and not key.startswith(prefixes)
    ]
    assert not unnamed
