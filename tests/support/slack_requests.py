"""Requests as Slack sends them to the web process: signed slash commands and Events API
requests, and what the ack says."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import socket
import time
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import httpx
from starlette.testclient import TestClient

from app.contract.job import AskJob
from tests.support.deployment import SIGNING_SECRET
from tests.support.fakes.slack import FakeSlack


def signature_headers(
    body: bytes, *, secret: str = SIGNING_SECRET, timestamp: int | None = None
) -> dict[str, str]:
    """Headers Slack would send with ``body``: v0 HMAC-SHA256 over ``v0:{timestamp}:{body}``."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(secret.encode(), f"v0:{ts}:".encode() + body, hashlib.sha256).hexdigest()
    return {
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": f"v0={digest}",
        "Content-Type": "application/x-www-form-urlencoded",
    }


class SlashCommands:
    """Builds slash-command form bodies as Slack sends them, addressed to the fake Slack."""

    def __init__(self, fake_slack: FakeSlack) -> None:
        self.fake_slack = fake_slack

    def form(self, text: str, **fields: str) -> dict[str, str]:
        hook = uuid.uuid4().hex
        form = {
            "token": "deprecated-verification-token",
            "team_id": "T0TEAM",
            "team_domain": "example",
            "channel_id": "C0CHANNEL",
            "channel_name": "general",
            "user_id": "U0ASKER",
            "user_name": "asker",
            "command": "/ask",
            "text": text,
            "api_app_id": "A0APP",
            "response_url": f"{self.fake_slack.response_prefix}{hook}",
            "trigger_id": f"{time.time_ns()}.{uuid.uuid4().int % 10**9}.{uuid.uuid4().hex}",
        }
        form.update(fields)
        return form

    def job(self, text: str, *, enqueued_at: datetime | None = None) -> AskJob:
        """The AskJob the web process would queue for this command."""
        form = self.form(text)
        return AskJob(
            team_id=form["team_id"],
            channel_id=form["channel_id"],
            user_id=form["user_id"],
            command="/ask",
            text=text,
            response_url=form["response_url"],
            trigger_id=form["trigger_id"],
            enqueued_at=enqueued_at or datetime.now(UTC),
        )

    def body(self, text: str, **fields: str) -> bytes:
        return urlencode(self.form(text, **fields)).encode()

    def send(
        self,
        client: TestClient | httpx.Client,
        text: str = "",
        *,
        form: dict[str, str] | None = None,
        **fields: str,
    ) -> httpx.Response:
        body = urlencode(form).encode() if form is not None else self.body(text, **fields)
        return client.post("/slack/events", content=body, headers=signature_headers(body))


def ack_text(response: httpx.Response) -> str:
    """All the text a user sees in an ack body."""
    body = response.json()
    parts = [body.get("text", "")]
    for block in body.get("blocks", []):
        if "text" in block:
            parts.append(block["text"]["text"])
        for element in block.get("elements", []):
            parts.append(element.get("text", ""))
    return "\n".join(parts)


#: The ids Slack would send for the test workspace, its app and the app's bot user.
TEAM_ID = "T0TEAM"
APP_ID = "A0APP"
BOT_USER_ID = "U0ASKLANE"

_ts_sequence = itertools.count()


def new_ts() -> str:
    """A fresh Slack message ts (seconds.microseconds), later than every one made before in this
    process, as Slack's are within a channel."""
    return f"{time.time() + next(_ts_sequence) * 1e-6:.6f}"


class SlackEvents:
    """Builds Events API requests (JSON envelopes) as Slack sends them for the test workspace.

    A mention or message gets a fresh ts unless given one; pass the same ts to build another
    delivery of the same message (the app_mention / message twin).
    """

    def __init__(self, team_id: str = TEAM_ID, app_id: str = APP_ID, bot_user_id: str = BOT_USER_ID) -> None:
        self.team_id = team_id
        self.app_id = app_id
        self.bot_user_id = bot_user_id

    def envelope(self, event: dict[str, Any], **fields: Any) -> dict[str, Any]:
        """The event_callback carrying ``event``, with a unique event_id; ``fields`` override."""
        body: dict[str, Any] = {
            "token": "deprecated-verification-token",
            "team_id": self.team_id,
            "api_app_id": self.app_id,
            "event": {"event_ts": event.get("ts", new_ts()), **event},
            "type": "event_callback",
            "event_id": "Ev" + uuid.uuid4().hex[:10].upper(),
            "event_time": int(time.time()),
            "authorizations": [
                {
                    "enterprise_id": None,
                    "team_id": self.team_id,
                    "user_id": self.bot_user_id,
                    "is_bot": True,
                    "is_enterprise_install": False,
                }
            ],
            "is_ext_shared_channel": False,
        }
        body.update(fields)
        return body

    def mention(
        self,
        question: str,
        *,
        channel: str = "C0CHANNEL",
        user: str = "U0ASKER",
        ts: str | None = None,
        thread_ts: str | None = None,
    ) -> dict[str, Any]:
        """An ``app_mention``: ``question`` written after the bot's mention, as Slack shows it."""
        event = {
            "type": "app_mention",
            "user": user,
            "text": f"<@{self.bot_user_id}> {question}",
            "ts": ts or new_ts(),
            "channel": channel,
        }
        if thread_ts is not None:
            event["thread_ts"] = thread_ts
        return self.envelope(event)

    def message(
        self,
        text: str,
        *,
        channel: str = "D0DIRECT",
        channel_type: str = "im",
        user: str = "U0ASKER",
        ts: str | None = None,
        thread_ts: str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """A ``message`` event: by default a DM to the app; ``extra`` adds fields (subtype, bot_id…)."""
        event = {
            "type": "message",
            "user": user,
            "text": text,
            "ts": ts or new_ts(),
            "channel": channel,
            "channel_type": channel_type,
            **extra,
        }
        if thread_ts is not None:
            event["thread_ts"] = thread_ts
        return self.envelope(event)

    def home_opened(
        self, tab: str = "messages", *, channel: str = "D0DIRECT", user: str = "U0ASKER"
    ) -> dict[str, Any]:
        """``app_home_opened``: the user opened the app's Messages (or Home) tab."""
        return self.envelope({"type": "app_home_opened", "user": user, "channel": channel, "tab": tab})

    @staticmethod
    def url_verification(challenge: str) -> dict[str, Any]:
        """The request Slack sends when the Events request URL is set."""
        return {"token": "deprecated-verification-token", "challenge": challenge, "type": "url_verification"}


def event_headers(
    body: bytes, *, retry_num: int | None = None, secret: str = SIGNING_SECRET, timestamp: int | None = None
) -> dict[str, str]:
    """Headers Slack sends with an Events API ``body``: signed, JSON, and on a re-delivery its
    X-Slack-Retry-Num and reason."""
    headers = {
        **signature_headers(body, secret=secret, timestamp=timestamp),
        "Content-Type": "application/json",
    }
    if retry_num is not None:
        headers["X-Slack-Retry-Num"] = str(retry_num)
        headers["X-Slack-Retry-Reason"] = "http_timeout"
    return headers


def send_event(
    client: TestClient | httpx.Client, envelope: dict[str, Any], *, retry_num: int | None = None
) -> httpx.Response:
    """POST ``envelope`` to /slack/events as Slack does."""
    body = json.dumps(envelope).encode()
    return client.post("/slack/events", content=body, headers=event_headers(body, retry_num=retry_num))


def flood_headers(port: int, total: int, chunk: int = 256 * 1024) -> int:
    """Send one request whose headers go on for ``total`` bytes, as fast as the server takes them,
    with no signature. Returns the bytes sent before the server closed the connection (all of
    them when it never did)."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        try:
            sock.sendall(b"POST /slack/events HTTP/1.1\r\nHost: asklane\r\nX-Flood: ")
            block = b"a" * chunk
            while sent < total:
                sock.sendall(block)
                sent += chunk
        except OSError:  # reset or broken pipe: the server closed it
            pass
    return sent


class Clicks:
    """Builds ``block_actions`` interactivity requests as Slack sends them when someone clicks a
    button on an answer: a signed form whose ``payload`` field is JSON, with a response_url on
    the fake Slack (one per click, as Slack gives each click its own)."""

    def __init__(self, fake_slack: FakeSlack, team_id: str = TEAM_ID) -> None:
        self.fake_slack = fake_slack
        self.team_id = team_id

    def payload(
        self,
        action_id: str,
        value: str,
        *,
        user: str = "U0ASKER",
        channel: str = "C0CHANNEL",
        message_ts: str | None = None,
        thread_ts: str | None = None,
        ephemeral: bool = False,
    ) -> dict[str, Any]:
        """The JSON payload of one click on the button ``action_id`` whose value is ``value``."""
        action_ts = new_ts()
        container: dict[str, Any] = {
            "type": "message",
            "message_ts": message_ts or action_ts,
            "channel_id": channel,
            "is_ephemeral": ephemeral,
        }
        if thread_ts is not None:
            container["thread_ts"] = thread_ts
        payload: dict[str, Any] = {
            "type": "block_actions",
            "user": {"id": user, "username": "someone", "name": "someone", "team_id": self.team_id},
            "api_app_id": APP_ID,
            "token": "deprecated-verification-token",
            "container": container,
            "trigger_id": f"{time.time_ns()}.{uuid.uuid4().int % 10**9}.{uuid.uuid4().hex}",
            "team": {"id": self.team_id, "domain": "example"},
            "enterprise": None,
            "is_enterprise_install": False,
            "channel": {"id": channel, "name": "general"},
            "state": {"values": {}},
            "response_url": f"{self.fake_slack.response_prefix}{uuid.uuid4().hex}",
            "actions": [
                {
                    "action_id": action_id,
                    "block_id": "asklane_answer_actions",
                    "text": {"type": "plain_text", "text": action_id, "emoji": True},
                    "value": value,
                    "type": "button",
                    "action_ts": action_ts,
                }
            ],
        }
        if not ephemeral:
            payload["message"] = {"type": "message", "ts": message_ts or action_ts, "thread_ts": thread_ts}
        return payload

    @staticmethod
    def body(payload: dict[str, Any]) -> bytes:
        return urlencode({"payload": json.dumps(payload)}).encode()

    def send(self, client: TestClient | httpx.Client, payload: dict[str, Any]) -> httpx.Response:
        """POST the click to /slack/events as Slack does."""
        body = self.body(payload)
        return client.post("/slack/events", content=body, headers=signature_headers(body))

    def click(
        self, client: TestClient | httpx.Client, action_id: str, value: str, **fields: Any
    ) -> httpx.Response:
        """Build and send one click; see :meth:`payload` for ``fields``."""
        return self.send(client, self.payload(action_id, value, **fields))
