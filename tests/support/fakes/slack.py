"""A fake Slack: response_url endpoints under /response/ and the Web API under /api/.

Every request is recorded with its body; Web API bodies are JSON as slack_sdk sends them. Replies
are scripted per path (``script``), or per path and channel (``script_channel``: e.g. a 429 with
Retry-After for chat.postMessage in one channel only). chat.postMessage answers with a new ``ts``
each time, as Slack does, so thread replies can be told apart.

Messages are kept (:class:`FakeMessage`) as Slack shows them: posted ones, streamed ones
(``chat.startStream`` / ``appendStream`` / ``stopStream`` with slack_sdk's JSON bodies, a message
in streaming state until stopped or idle for ``stream_idle_seconds``, then
``message_not_in_streaming_state``; ``markdown_text`` over APPEND_LIMIT per call or a message over
``message_limit`` is ``msg_too_long``), edited by ``chat.update`` and removed by ``chat.delete``.
Per-method rate limits per workspace (the token) are off unless a test sets them
(:meth:`FakeSlack.limit_methods`); a call over its limit gets a 429 with Retry-After.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support.fakes.server import FakeServer, Reply

RESPONSE = "/response/"
POST_EPHEMERAL = "/api/chat.postEphemeral"
POST_MESSAGE = "/api/chat.postMessage"
SET_STATUS = "/api/assistant.threads.setStatus"
SET_SUGGESTED_PROMPTS = "/api/assistant.threads.setSuggestedPrompts"
START_STREAM = "/api/chat.startStream"
APPEND_STREAM = "/api/chat.appendStream"
STOP_STREAM = "/api/chat.stopStream"
UPDATE = "/api/chat.update"
DELETE = "/api/chat.delete"

#: Slack's limit on one call's markdown_text (and one message's markdown).
APPEND_LIMIT = 12_000


@dataclass
class FakeMessage:
    """A message as Slack shows it."""

    channel: str
    ts: str
    thread_ts: str | None
    text: str
    blocks: list[Any] = field(default_factory=list)
    streaming: bool = False
    #: When it last changed (monotonic): a stream idle past stream_idle_seconds ends.
    last_at: float = 0.0
    deleted: bool = False
    #: Every appended piece of a streamed message, in order.
    pieces: list[str] = field(default_factory=list)


def _message_text(body: Mapping[str, Any]) -> str:
    """What a message shows: its markdown blocks, else its markdown_text or text."""
    blocks = body.get("blocks")
    if isinstance(blocks, str):
        blocks = json.loads(blocks)
    markdown = [str(block.get("text", "")) for block in blocks or [] if block.get("type") == "markdown"]
    if markdown:
        return "\n\n".join(markdown)
    return str(body.get("markdown_text") or body.get("text") or "")


def _chunks(body: Mapping[str, Any]) -> tuple[str, list[Any]]:
    """A streaming call's text and blocks: its ``markdown_text``, or its ``chunks`` in order
    (``markdown_text`` chunks add text, ``blocks`` chunks add blocks where they fall)."""
    chunks = body.get("chunks")
    if isinstance(chunks, str):
        chunks = json.loads(chunks)
    if not chunks:
        return str(body.get("markdown_text") or ""), []
    text, blocks = "", []
    for chunk in chunks:
        if chunk.get("type") == "markdown_text":
            text += str(chunk.get("text", ""))
        elif chunk.get("type") == "blocks":
            blocks.extend(chunk.get("blocks") or [])
    return text, blocks


def ratelimited(retry_after: float) -> Reply:
    """Slack's answer to a call over its rate limit."""
    return Reply(
        status=429, json={"ok": False, "error": "ratelimited"}, headers={"Retry-After": f"{retry_after:g}"}
    )


def refused(code: str) -> Reply:
    """A Web API refusal: HTTP 200 with ``ok: false``, as Slack answers."""
    return Reply(json={"ok": False, "error": code})


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
        #: Called with each Web API call's path and body as it arrives, before it is answered (in
        #: the server's thread): a test looks at the world at that moment while the caller waits.
        self.on_web_api: Callable[[str, Any], None] | None = None
        self._message_ts = itertools.count(1)
        #: Messages by ts, as Slack shows them.
        self.messages: dict[str, FakeMessage] = {}
        #: A stream idle this long is no longer in streaming state (Slack: about five minutes).
        self.stream_idle_seconds = 300.0
        #: Markdown one message may hold.
        self.message_limit = APPEND_LIMIT
        self._method_limits: dict[str, int] = {}
        self._limit_window = 60.0
        self._calls_at: dict[tuple[str, str], list[float]] = {}

    def reset(self) -> None:
        super().reset()
        self.socket = None
        self.socket_acks = []
        self.on_response_url = None
        self.on_web_api = None
        with self._lock:
            self.messages = {}
            self.stream_idle_seconds = 300.0
            self.message_limit = APPEND_LIMIT
            self._method_limits = {}
            self._limit_window = 60.0
            self._calls_at = {}

    def limit_methods(self, per_window: Mapping[str, int], window: float = 60.0) -> None:
        """Answer 429 (Retry-After: until the window has room) to a method called more than
        ``per_window[method]`` times in ``window`` seconds by one workspace (token)."""
        with self._lock:
            self._method_limits = dict(per_window)
            self._limit_window = window

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
        # chat.delete's arguments come in the query string (slack_sdk sends them as params).
        body = {**request.query, **body} if isinstance(body, dict) else body
        path = request.path
        if self.on_web_api is not None:
            self.on_web_api(path, body)
        channel = body.get("channel") or body.get("channel_id") if isinstance(body, dict) else None
        workspace = request.headers.get("Authorization", "")
        reply = (
            self.next_reply(f"{path}#{channel}")
            or self.next_reply(path)
            or self._over_limit(workspace, path)
            or self._default_reply(path, channel, body)
        )
        self.record(path, request.headers, body, reply)
        return await self.respond(request, reply)

    def _over_limit(self, workspace: str, path: str) -> Reply | None:
        method = path.removeprefix("/api/")
        now = time.monotonic()
        with self._lock:
            limit = self._method_limits.get(method)
            if limit is None:
                return None
            calls = [
                at for at in self._calls_at.get((workspace, method), []) if at > now - self._limit_window
            ]
            self._calls_at[(workspace, method)] = calls
            if len(calls) >= limit:
                return ratelimited(max(1, math.ceil(calls[0] + self._limit_window - now)))
            calls.append(now)
            return None

    def _default_reply(self, path: str, channel: object, body: Any) -> Reply:
        if path in (POST_MESSAGE, START_STREAM, APPEND_STREAM, STOP_STREAM, UPDATE, DELETE):
            with self._lock:
                return self._message_call(path, str(channel), body)
        return Reply(json={"ok": True, "message_ts": "1700000000.000100"})

    def _message_call(self, path: str, channel: str, body: dict[str, Any]) -> Reply:
        """The calls that change what a message shows, on the kept messages (under the lock)."""
        now = time.monotonic()
        if path in (POST_MESSAGE, START_STREAM):
            text, streamed_blocks = _chunks(body) if path == START_STREAM else (_message_text(body), [])
            if path == START_STREAM and len(text) > APPEND_LIMIT:
                return refused("msg_too_long")
            ts = f"1700000100.{next(self._message_ts):06d}"
            self.messages[ts] = FakeMessage(
                channel=channel,
                ts=ts,
                thread_ts=body.get("thread_ts"),
                text=text,
                blocks=list(body.get("blocks") or []) if path == POST_MESSAGE else streamed_blocks,
                streaming=path == START_STREAM,
                last_at=now,
                pieces=[text] if path == START_STREAM and text else [],
            )
            return Reply(json={"ok": True, "channel": channel, "ts": ts})
        message = self.messages.get(str(body.get("ts")))
        if message is None or message.deleted or message.channel != channel:
            return refused("message_not_found")
        if message.streaming and now - message.last_at > self.stream_idle_seconds:
            message.streaming = False
        if path == DELETE:
            message.deleted = True
            return Reply(json={"ok": True, "channel": channel, "ts": message.ts})
        if path == UPDATE:
            text = _message_text(body)
            if len(text) > self.message_limit:
                return refused("msg_too_long")
            message.text, message.blocks, message.last_at = text, list(body.get("blocks") or []), now
            return Reply(json={"ok": True, "channel": channel, "ts": message.ts})
        if not message.streaming:
            return refused("message_not_in_streaming_state")
        piece, streamed_blocks = _chunks(body)
        if len(piece) > APPEND_LIMIT or len(message.text) + len(piece) > self.message_limit:
            return refused("msg_too_long")
        if piece:
            message.text += piece
            message.pieces.append(piece)
        message.blocks.extend(streamed_blocks)
        message.last_at = now
        if path == STOP_STREAM:
            message.streaming = False
            # Rendered under what the stream showed (Slack: "at the bottom of the finalized message").
            message.blocks.extend(body.get("blocks") or [])
        return Reply(json={"ok": True, "channel": channel, "ts": message.ts})

    def expire_stream(self, ts: str) -> None:
        """End a message's streaming state now, as Slack does after it was idle too long."""
        with self._lock:
            self.messages[ts].streaming = False

    def thread(self, channel: str, thread_ts: str) -> list[FakeMessage]:
        """The messages shown in a thread (not deleted), oldest first."""
        with self._lock:
            return sorted(
                (
                    m
                    for m in self.messages.values()
                    if m.channel == channel and m.thread_ts == thread_ts and not m.deleted
                ),
                key=lambda m: m.ts,
            )

    def thread_texts(self, channel: str, thread_ts: str) -> list[str]:
        """The text each message in a thread shows now, oldest first."""
        return [message.text for message in self.thread(channel, thread_ts)]

    def calls(self, method: str) -> int:
        """How many calls to a Web API method (e.g. "chat.appendStream") arrived."""
        return len(self.received(f"/api/{method}"))

    def ratelimited_count(self, method: str | None = None) -> int:
        """How many calls (to ``method``, or any) were answered 429."""
        prefix = f"/api/{method}" if method else "/api/"
        return sum(1 for request in self.received(prefix) if request.reply.status == 429)

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
