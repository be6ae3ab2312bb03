"""manifest.yml, the Slack app's configuration, agrees with what the code serves and calls."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
import yaml
from starlette.routing import Route
from starlette.testclient import TestClient

from app.contract import actions, keys
from app.contract.jobs import question_from_message
from app.contract.settings import Settings
from app.web.events import HANDLED_TYPES, SUBSCRIBED_EVENTS, Ignored, classify
from app.web.main import create_app
from tests.support.deployment import ROOT
from tests.support.fakes.slack import FakeSlack
from tests.support.jobs import enqueue, queued_jobs
from tests.support.slack_requests import (
    TEAM_ID,
    Clicks,
    SlackEvents,
    SlashCommands,
    ack_text,
    send_event,
    signature_headers,
)

#: The bot scope each Web API method the code calls needs.
SCOPE_OF_METHOD = {
    "chat_postEphemeral": "chat:write",
    "chat_postMessage": "chat:write",
    "chat_update": "chat:write",
    "chat_delete": "chat:write",
    # Slack's streaming methods post messages: chat:write.
    "chat_startStream": "chat:write",
    "chat_appendStream": "chat:write",
    "chat_stopStream": "chat:write",
    "assistant_threads_setStatus": "assistant:write",
    "assistant_threads_setSuggestedPrompts": "assistant:write",
}

#: The bot scope each subscribed bot event needs.
SCOPE_OF_EVENT = {
    "app_mention": "app_mentions:read",
    "message.im": "im:history",
    "app_home_opened": None,
    # Sent for agent sessions, which assistant:write sets up.
    "agent_session_stopped": "assistant:write",
}

#: An event of each subscribed kind, as Slack sends it, that asklane acts on.
slack = SlackEvents()
SAMPLE_OF_EVENT = {
    "app_mention": slack.mention("what is a p99?"),
    "message.im": slack.message("what is a p99?"),
    "app_home_opened": slack.home_opened("messages"),
}

#: Subscribed events that queue no job of their own.
ACTS_WITHOUT_A_JOB = {"agent_session_stopped"}


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "manifest.yml").read_text())
    return loaded


def test_the_slash_command_is_the_one_the_app_answers(manifest: dict[str, Any]) -> None:
    [command] = manifest["features"]["slash_commands"]

    assert command["command"] == Settings.model_fields["slack_command"].default


def test_the_request_url_is_the_path_the_web_process_serves(
    manifest: dict[str, Any], settings: Settings
) -> None:
    [command] = manifest["features"]["slash_commands"]
    paths = {route.path for route in create_app(settings).routes if isinstance(route, Route)}

    assert urlsplit(command["url"]).path in paths
    assert urlsplit(command["url"]).scheme == "https"


def test_a_command_sent_as_the_manifest_describes_it_is_answered(
    manifest: dict[str, Any], web: TestClient, commands: SlashCommands
) -> None:
    [command] = manifest["features"]["slash_commands"]
    body = commands.body("what is a p99?", command=command["command"])
    response = web.post(urlsplit(command["url"]).path, content=body, headers=signature_headers(body))

    assert "Working on it" in ack_text(response)


def test_the_bot_asks_for_exactly_the_scopes_the_code_uses(manifest: dict[str, Any]) -> None:
    sources = "\n".join(
        path.read_text() for folder in ("app", "workers") for path in (ROOT / folder).rglob("*.py")
    )
    called = set(
        re.findall(
            r"\.(chat_\w+|conversations_\w+|users_\w+|views_\w+|reactions_\w+|assistant_\w+|agents_\w+)\(",
            sources,
        )
    )
    events = manifest["settings"]["event_subscriptions"]["bot_events"]

    assert called <= set(SCOPE_OF_METHOD), f"add the scope of {called - set(SCOPE_OF_METHOD)} to the manifest"
    needed = (
        {"commands"}
        | {SCOPE_OF_METHOD[method] for method in called}
        | {scope for event in events if (scope := SCOPE_OF_EVENT[event]) is not None}
    )
    assert set(manifest["oauth_config"]["scopes"]["bot"]) == needed
    assert "user" not in manifest["oauth_config"]["scopes"]


def test_the_subscribed_events_are_those_the_code_listens_to(manifest: dict[str, Any]) -> None:
    events = manifest["settings"]["event_subscriptions"]["bot_events"]

    assert set(events) == set(SUBSCRIBED_EVENTS)
    assert set(SUBSCRIBED_EVENTS.values()) == HANDLED_TYPES


@pytest.mark.parametrize("event", sorted(set(SUBSCRIBED_EVENTS) - ACTS_WITHOUT_A_JOB))
def test_each_subscribed_event_reaches_a_listener_that_queues_its_job(
    event: str, web: TestClient, redis_client: redis.Redis
) -> None:
    response = send_event(web, SAMPLE_OF_EVENT[event])

    assert (response.status_code, response.text) == (200, "")
    assert len(queued_jobs(redis_client)) == 1


@pytest.mark.parametrize(
    "event_type", ["reaction_added", "member_joined_channel", "assistant_thread_started"]
)
def test_an_event_type_the_manifest_does_not_subscribe_to_is_not_acted_on(event_type: str) -> None:
    body = slack.envelope({"type": event_type, "user": "U0ASKER", "channel": "C0CHANNEL"})

    assert classify(body) == Ignored("unhandled_type")


def test_the_events_request_url_is_the_path_the_web_process_serves(
    manifest: dict[str, Any], settings: Settings
) -> None:
    url = manifest["settings"]["event_subscriptions"]["request_url"]
    paths = {route.path for route in create_app(settings).routes if isinstance(route, Route)}

    assert urlsplit(url).path in paths
    assert urlsplit(url).scheme == "https"


def test_the_messages_tab_is_on_with_the_agent_view(manifest: dict[str, Any]) -> None:
    features = manifest["features"]

    assert features["app_home"]["messages_tab_enabled"] is True
    assert features["app_home"]["messages_tab_read_only_enabled"] is False
    assert features["agent_view"]["agent_description"]


def test_slacks_stop_in_a_thread_reaches_the_listener_that_stops_its_question(
    web: TestClient, redis_client: redis.Redis, settings: Settings
) -> None:
    job = question_from_message(
        team_id=TEAM_ID,
        enterprise_id=None,
        user_id="U0ASKER",
        channel_id="D0DIRECT",
        message_ts="1700000000.000100",
        thread_ts=None,
        text="what is a p99?",
        source="dm",
        enqueued_at=datetime.now(UTC),
    )
    enqueue(settings, job)
    stopped = slack.envelope(
        {
            "type": "agent_session_stopped",
            "user": "U0ASKER",
            "channel": "D0DIRECT",
            "thread_ts": "1700000000.000100",
        }
    )

    response = send_event(web, stopped)

    assert (response.status_code, response.text) == (200, "")
    assert redis_client.exists(keys.stop_key(job.job_id))


def test_the_app_is_set_up_for_http_requests_with_interactivity(
    manifest: dict[str, Any], settings: Settings
) -> None:
    interactivity = manifest["settings"]["interactivity"]
    paths = {route.path for route in create_app(settings).routes if isinstance(route, Route)}

    assert manifest["settings"]["socket_mode_enabled"] is False
    assert interactivity["is_enabled"] is True
    assert urlsplit(interactivity["request_url"]).path in paths
    assert urlsplit(interactivity["request_url"]).scheme == "https"


def test_a_click_sent_as_the_manifest_describes_it_is_acked_at_once(
    manifest: dict[str, Any], web: TestClient, fake_slack: FakeSlack
) -> None:
    path = urlsplit(manifest["settings"]["interactivity"]["request_url"]).path
    body = Clicks.body(Clicks(fake_slack).payload(actions.STOP, "thread-0123"))

    response = web.post(path, content=body, headers=signature_headers(body))

    assert (response.status_code, response.text) == (200, "")
