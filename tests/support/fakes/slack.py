"""A fake Slack: response_url endpoints under /response/ and the Web API under /api/.

Every request is recorded with its body; Web API bodies are JSON as slack_sdk sends them. Replies
are scripted per path (``script``), or per path and channel (``script_channel``: e.g. a 429 with
Retry-After for chat.postMessage in one channel only). chat.postMessage answers with a new ``ts``
each time, as Slack does, so thread replies can be told apart.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from collections.abc import Callable
from typing import Any

from aiohttp import web

from tests.support.fakes.server import FakeServer, Reply

RESPONSE = "/response/"
POST_EPHEMERAL = "/api/chat.postEphemeral"
POST_MESSAGE = "/api/chat.postMessage"
SET_STATUS = "/api/assistant.threads.setStatus"
SET_SUGGESTED_PROMPTS = "/api/assistant.threads.setSuggestedPrompts"


def ratelimited(retry_after: float) -> Reply:
    """Slack's answer to a call over its rate limit."""
    return Reply(
        status=429, json={"ok": False, "error": "ratelimited"}, headers={"Retry-After": f"{retry_after:g}"}
    )


class FakeSlack(FakeServer):
    """Accepts every post unless scripted otherwise; records bodies for inspection."""

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/response/{hook}", self._response_url)
        app.router.add_post("/api/apps.connections.open", self._connections_open)
        app.router.add_post("/api/{method}", self._web_api)
        app.router.add_get("/socket", self._socket)

    def __init__(self) -> None:
        super().__init__()
        #: The Socket Mode connection an app holds, and the envelopes' acks it sent back.
        self.socket: web.WebSocketResponse | None = None
        self.socket_acks: list[dict[str, Any]] = []
        #: Called with each response_url post's body before it is answered (in the server's thread).
        self.on_response_url: Callable[[Any], None] | None = None
        self._message_ts = itertools.count(1)

    def reset(self) -> None:
        super().reset()
        self.socket = None
        self.socket_acks = []
        self.on_response_url = None

    async def _connections_open(self, request: web.Request) -> web.StreamResponse:
        app_token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        reply = Reply(json={"ok": True, "url": f"ws://127.0.0.1:{self.port}/socket"})
        if not app_token.startswith("xapp-"):
            reply = Reply(json={"ok": False, "error": "not_allowed_token_type"})
        self.record(request.path, request.headers, {}, reply)
        return await self.respond(request, reply)

    async def _socket(self, request: web.Request) -> web.StreamResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        self.socket = socket
        await socket.send_json(
            {"type": "hello", "num_connections": 1, "connection_info": {"app_id": "A0APP"}}
        )
        async for message in socket:
            if message.type == web.WSMsgType.TEXT:
                with self._lock:
                    self.socket_acks.append(json.loads(message.data))
        return socket

    def send_slash_command(self, form: dict[str, str]) -> str:
        """Deliver a slash command over the Socket Mode connection; returns its envelope id."""
        assert self.socket is not None, "no app is connected over Socket Mode"
        envelope_id = uuid.uuid4().hex
        envelope = {
            "envelope_id": envelope_id,
            "type": "slash_commands",
            "payload": form,
            "accepts_response_payload": True,
        }
        asyncio.run_coroutine_threadsafe(self.socket.send_json(envelope), self._loop).result(5)
        return envelope_id

    @property
    def response_prefix(self) -> str:
        return f"{self.url}{RESPONSE}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api/"

    async def _response_url(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if self.on_response_url is not None:
            self.on_response_url(body)
        reply = self.next_reply(RESPONSE) or Reply(json=None)
        self.record(request.path, request.headers, body, reply)
        if reply.json is None and reply.action == "reply":
            # Slack answers a response_url post with plain "ok".
            return web.Response(text="ok", status=reply.status, headers=reply.headers)
        return await self.respond(request, reply)

    async def _web_api(self, request: web.Request) -> web.StreamResponse:
        if request.content_type == "application/json":
            body: Any = await request.json()
        else:
            body = dict(await request.post())
        path = request.path
        channel = body.get("channel") or body.get("channel_id") if isinstance(body, dict) else None
        reply = (
            self.next_reply(f"{path}#{channel}")
            or self.next_reply(path)
            or self._default_reply(path, channel)
        )
        self.record(path, request.headers, body, reply)
        return await self.respond(request, reply)

    def _default_reply(self, path: str, channel: object) -> Reply:
        if path == POST_MESSAGE:
            ts = f"1700000100.{next(self._message_ts):06d}"
            return Reply(json={"ok": True, "channel": channel, "ts": ts})
        return Reply(json={"ok": True, "message_ts": "1700000000.000100"})

    def script_channel(self, path: str, channel: str, *replies: Reply) -> None:
        """Queue replies for calls to ``path`` about ``channel`` only (before ``script``'s)."""
        self.script(f"{path}#{channel}", *replies)

    def posts(self, channel: str | None = None, thread_ts: str | None = None) -> list[Any]:
        """Bodies of the chat.postMessage calls Slack accepted, in arrival order; only those in
        ``channel`` and (when given) replies in the thread ``thread_ts``."""
        return [
            request.body
            for request in self.received(POST_MESSAGE)
            if request.accepted
            and (channel is None or request.body.get("channel") == channel)
            and (thread_ts is None or request.body.get("thread_ts") == thread_ts)
        ]

    def post_times(self, channel: str) -> list[float]:
        """When each chat.postMessage call in ``channel`` arrived, accepted or not (monotonic)."""
        return [
            request.at for request in self.received(POST_MESSAGE) if request.body.get("channel") == channel
        ]

    def statuses(self, channel: str | None = None) -> list[Any]:
        """Bodies of the assistant.threads.setStatus calls, in arrival order."""
        return [
            r.body
            for r in self.received(SET_STATUS)
            if channel is None or r.body.get("channel_id") == channel
        ]

    def answers(self) -> list[str]:
        """The texts of the answers Slack accepted, without notices, progress updates or errors."""
        return [
            str(body["text"])
            for body in self.delivered()
            if str(body.get("text", "")).startswith("Answer to:")
        ]

    def delivered(self) -> list[Any]:
        """Every message body Slack accepted (so the user saw it), in arrival order."""
        with self._lock:
            return [
                r.body
                for r in self.requests
                if r.path.startswith((RESPONSE, POST_EPHEMERAL, POST_MESSAGE)) and r.accepted
            ]
