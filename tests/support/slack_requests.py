"""Requests as Slack sends them to the web process: signed slash commands, and what the ack says."""

from __future__ import annotations

import hashlib
import hmac
import socket
import time
import uuid
from datetime import UTC, datetime
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
