"""A fake Anthropic Messages API: records requests, answers from a script or with an echo.

A request whose blocks carry ``cache_control`` is answered with prompt-caching usage as Anthropic
reports it: each marked prefix seen before (same model, same blocks) is read from the cache
(``cache_read_input_tokens``), a new one is written (``cache_creation_input_tokens``), and
``input_tokens`` counts only what follows the last mark. Tokens are counted as characters / 4;
the fake caches prefixes of any length (Anthropic only caches those over a model's minimum).

It also serves ``GET /v1/models/{id}`` (404 for ids it does not know), can enforce a rate limit
the way Anthropic does (a continuously refilled bucket; over it, 429 ``rate_limit_error`` with
``retry-after``), and can send a reply's body verbatim or trickle it a byte at a time over a
chunked response.

A request with ``"stream": true`` is answered as the streaming Messages API answers it: a
``text/event-stream`` of ``message_start``, ``content_block_start``, ``content_block_delta``
(``text_delta``) …, ``content_block_stop``, ``message_delta`` (stop_reason, cumulative usage) and
``message_stop``, the answer cut into ``stream_chunk``-character deltas with ``stream_delay``
seconds between events. A :class:`StreamReply` scripts one stream (its text, chunks, delay, and a
failure after some deltas: an ``error`` event, a dropped connection, a stall); any other scripted
reply (an HTTP error with retry-after, say) is sent as it is, before any stream. Each stream is
logged in :attr:`FakeAnthropic.streams`: the deltas sent, and whether the client went away first.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

from tests.support.fakes.server import FakeServer, Reply

MESSAGES = "/v1/messages"
MODELS = "/v1/models"

#: Model ids the fake knows; any other is a 404 ``not_found_error``, as Anthropic answers.
KNOWN_MODELS = ("claude-haiku-5-5", "claude-sonnet-5-5", "claude-opus-5-5")


def message(
    text: str, *, stop_reason: str = "end_turn", model: str = "claude-haiku-5-5", output_tokens: int = 34
) -> dict[str, Any]:
    """A successful Messages API response body."""
    return {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": output_tokens},
    }


def error(
    status: int, kind: str, *, error_code: str | None = None, retry_after: float | None = None
) -> Reply:
    """An Anthropic error response."""
    body: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": f"fake {kind}"}}
    if error_code:
        body["error"]["details"] = {"error_code": error_code}
    headers = {"request-id": "req_fake_error"}
    if retry_after is not None:
        headers["retry-after"] = str(retry_after)
    return Reply(status=status, json=body, headers=headers)


@dataclass
class RawReply(Reply):
    """A reply whose body is sent as these bytes, not as JSON (a cut-off body, an HTML page).

    With ``byte_every`` set, the body is trickled one byte per that many seconds over a chunked
    response: each read arrives in time, the whole never does.
    """

    body: bytes = b""
    content_type: str = "application/json"
    byte_every: float | None = None


def trickled(body: dict[str, Any], byte_every: float) -> RawReply:
    """A 200 whose JSON ``body`` arrives one byte every ``byte_every`` seconds."""
    return RawReply(body=json.dumps(body).encode(), byte_every=byte_every, headers={"request-id": "req_slow"})


def api_key(headers: Any) -> str | None:
    """The key as the SDK sends it: ``x-api-key`` or ``Authorization: Bearer``."""
    bearer = headers.get("authorization", "")
    return headers.get("x-api-key") or (
        bearer.removeprefix("Bearer ") if bearer.startswith("Bearer ") else None
    )


@dataclass
class StreamReply(Reply):
    """One scripted stream: ``text`` in deltas of ``chunk`` characters (or exactly ``chunks``), with
    ``event_delay`` seconds before each event. After ``fail_after`` text deltas it fails as
    ``fail`` says: "error" sends an ``error`` event (``error_type``, overloaded_error by default)
    and ends the response, "drop" aborts the connection, "stall" sends nothing more (until the
    client goes away)."""

    text: str = "a streamed answer, long enough to come in several deltas"
    chunk: int = 8
    chunks: list[str] | None = None
    event_delay: float = 0.0
    stop_reason: str = "end_turn"
    output_tokens: int = 34
    usage: dict[str, int] = field(default_factory=dict)
    fail: Literal["error", "drop", "stall"] | None = None
    fail_after: int = 0
    error_type: str = "overloaded_error"

    def deltas(self) -> list[str]:
        if self.chunks is not None:
            return list(self.chunks)
        return [self.text[at : at + self.chunk] for at in range(0, len(self.text), self.chunk)] or [""]


@dataclass
class StreamLog:
    """What the fake sent on one stream, and how it ended."""

    #: The text deltas sent, in order, and when each was (monotonic, in the fake's clock).
    sent: list[str] = field(default_factory=list)
    sent_at: list[float] = field(default_factory=list)
    #: True once message_stop was sent.
    completed: bool = False
    #: True when the client closed the connection before the stream ended: generation stopped.
    client_gone: bool = False
    #: True once the handler stopped sending (for whatever reason).
    ended: bool = False


def sse(event: str, data: dict[str, Any]) -> bytes:
    """One server-sent event as Anthropic writes it."""
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


class _ClientGone(Exception):
    """The client closed the stream."""


@dataclass
class _Limit:
    requests: int | None
    output_tokens: int | None
    window: float


def text_of(content: Any) -> str:
    """The text of a message's content: a string, or its text blocks joined."""
    if isinstance(content, str):
        return content
    return "\n\n".join(str(block.get("text", "")) for block in content if isinstance(block, dict))


def _blocks(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The request's blocks in prompt order: system, then each message's."""
    blocks: list[dict[str, Any]] = []
    for part in [body.get("system")] + [message.get("content") for message in body.get("messages", [])]:
        if isinstance(part, str):
            blocks.append({"type": "text", "text": part})
        elif isinstance(part, list):
            blocks.extend(block for block in part if isinstance(block, dict))
    return blocks


def _tokens(block: dict[str, Any]) -> int:
    return max(1, math.ceil(len(str(block.get("text", ""))) / 4))


class FakeAnthropic(FakeServer):
    """Answers "Answer to: <question>" unless scripted otherwise."""

    #: Seconds every unscripted answer takes.
    default_delay = 0.0
    #: Output tokens every unscripted answer reports (and counts against an output-token limit).
    output_tokens = 34
    #: Characters per text delta, and seconds before each event, of an unscripted stream.
    stream_chunk = 8
    stream_delay = 0.0

    def __init__(self) -> None:
        super().__init__()
        self._limit: _Limit | None = None
        #: What is left in each bucket of the rate limit, as of ``_filled_at`` (monotonic).
        self._levels = {"requests": 0.0, "output_tokens": 0.0}
        self._filled_at = 0.0
        #: Calls refused by the rate limit.
        self.refused = 0
        #: Hashes of the prompt prefixes in the cache (model + blocks up to a cache_control mark).
        self._cached: set[str] = set()
        #: One log per stream served, in order.
        self.streams: list[StreamLog] = []

    def reset(self) -> None:
        super().reset()
        self.default_delay = 0.0
        self.output_tokens = 34
        self.stream_chunk = 8
        self.stream_delay = 0.0
        with self._lock:
            self.streams = []
            self._limit = None
            self.refused = 0
            self._cached = set()

    def rate_limit(
        self, *, requests: int | None = None, output_tokens: int | None = None, window: float = 60.0
    ) -> None:
        """Enforce ``requests`` and/or ``output_tokens`` per ``window`` seconds as Anthropic does:
        a bucket per limit holding up to that many, refilled continuously at that many per window,
        from which each answered call takes one request and its output tokens. A call finding a
        bucket short (under one request or one token) gets a 429 ``rate_limit_error`` with a
        ``retry-after`` of the whole seconds until it is not. Scripted replies are not counted."""
        with self._lock:
            self._limit = _Limit(requests, output_tokens, window)
            self._levels = {"requests": float(requests or 0), "output_tokens": float(output_tokens or 0)}
            self._filled_at = time.monotonic()

    def _over_limit(self) -> Reply | None:
        """The 429 for a call arriving now, or None (and the call is charged) when within limit."""
        with self._lock:
            limit = self._limit
            if limit is None:
                return None
            now = time.monotonic()
            elapsed, self._filled_at = now - self._filled_at, now
            waits = []
            for kind, size in (("requests", limit.requests), ("output_tokens", limit.output_tokens)):
                if size is None:
                    continue
                rate = size / limit.window
                self._levels[kind] = min(float(size), self._levels[kind] + elapsed * rate)
                if self._levels[kind] < 1:
                    waits.append((1 - self._levels[kind]) / rate if rate else limit.window)
            if not waits:
                self._levels["requests"] -= 1
                self._levels["output_tokens"] -= self.output_tokens
                return None
            self.refused += 1
        return error(429, "rate_limit_error", retry_after=max(1, math.ceil(max(waits))))

    def routes(self, app: web.Application) -> None:
        app.router.add_post(MESSAGES, self._messages)
        app.router.add_get(MODELS, self._models)
        app.router.add_get(MODELS + "/{model_id}", self._model)

    @staticmethod
    def _model_info(model_id: str) -> dict[str, Any]:
        return {
            "type": "model",
            "id": model_id,
            "display_name": model_id.replace("-", " ").title(),
            "created_at": "2026-01-01T00:00:00Z",
        }

    async def _models(self, request: web.Request) -> web.StreamResponse:
        if not api_key(request.headers):
            return web.json_response(error(401, "authentication_error").json, status=401)
        models = [self._model_info(model_id) for model_id in KNOWN_MODELS]
        limit = int(request.query.get("limit", "20"))
        data = models[:limit]
        return web.json_response(
            {
                "data": data,
                "has_more": len(models) > limit,
                "first_id": data[0]["id"],
                "last_id": data[-1]["id"],
            }
        )

    async def _model(self, request: web.Request) -> web.StreamResponse:
        model_id = request.match_info["model_id"]
        if not api_key(request.headers):
            reply = error(401, "authentication_error")
        elif model_id not in KNOWN_MODELS:
            reply = error(404, "not_found_error")
        else:
            reply = Reply(json=self._model_info(model_id))
        self.record(MODELS, request.headers, {"model": model_id}, reply)
        return await self.respond(request, reply)

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        reply: Reply | None
        if not api_key(request.headers):
            reply = error(401, "authentication_error")
        elif body.get("model") not in KNOWN_MODELS:
            reply = error(404, "not_found_error")
        else:
            reply = self.next_reply(MESSAGES) or self._over_limit()
        streaming = body.get("stream") is True
        if reply is None and streaming:
            question = text_of(body["messages"][-1]["content"])
            reply = StreamReply(
                text=f"Answer to: {question}",
                chunk=self.stream_chunk,
                event_delay=self.stream_delay,
                output_tokens=self.output_tokens,
                usage=self._cache_usage(body) or {},
                headers={"request-id": "req_fake_stream"},
                delay=self.default_delay,
            )
        if reply is None:
            question = text_of(body["messages"][-1]["content"])
            answer = message(f"Answer to: {question}", output_tokens=self.output_tokens)
            cached = self._cache_usage(body)
            if cached is not None:
                answer["usage"].update(cached)
            reply = Reply(json=answer, headers={"request-id": "req_fake"}, delay=self.default_delay)
        self.record(MESSAGES, request.headers, body, reply)
        return await self.respond(request, reply)

    def _cache_usage(self, body: dict[str, Any]) -> dict[str, int] | None:
        """Prompt-caching usage for a request with cache_control marks (None without any), and
        the marked prefixes put in the cache."""
        blocks = _blocks(body)
        marks = [index for index, block in enumerate(blocks) if block.get("cache_control")]
        if not marks:
            return None
        digest = hashlib.sha256(str(body.get("model")).encode())
        prefixes = []
        for index, block in enumerate(blocks):
            digest.update(json.dumps({"text": block.get("text")}, sort_keys=True).encode())
            if index in marks:
                prefixes.append((index, digest.hexdigest()))
        with self._lock:
            hit = max((index for index, key in prefixes if key in self._cached), default=-1)
            self._cached.update(key for _, key in prefixes)
        last = marks[-1]
        return {
            "cache_read_input_tokens": sum(_tokens(block) for block in blocks[: hit + 1]),
            "cache_creation_input_tokens": sum(_tokens(block) for block in blocks[hit + 1 : last + 1]),
            "input_tokens": sum(_tokens(block) for block in blocks[last + 1 :]),
        }

    async def respond(self, request: web.Request, reply: Reply) -> web.StreamResponse:
        if isinstance(reply, StreamReply):
            return await self._stream(request, reply)
        if not isinstance(reply, RawReply):
            return await super().respond(request, reply)
        if reply.byte_every is None:
            return web.Response(
                body=reply.body, status=reply.status, headers=reply.headers, content_type=reply.content_type
            )
        response = web.StreamResponse(status=reply.status, headers=reply.headers)
        response.content_type = reply.content_type
        response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            for index in range(len(reply.body)):
                await response.write(reply.body[index : index + 1])
                await asyncio.sleep(reply.byte_every)
            await response.write_eof()
        except ConnectionError:
            pass  # the client gave up on it, as it should
        return response

    async def _stream(self, request: web.Request, reply: StreamReply) -> web.StreamResponse:
        """Send ``reply`` as server-sent events, noting in a StreamLog what went out and whether the
        client went away first (it closed the stream: no more tokens generated)."""
        log = StreamLog()
        with self._lock:
            self.streams.append(log)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._send_stream(request, reply, log)
        finally:
            self.in_flight -= 1

    async def _send_stream(
        self, request: web.Request, reply: StreamReply, log: StreamLog
    ) -> web.StreamResponse:
        if reply.delay:  # before the response starts, as a slow first byte
            await asyncio.sleep(reply.delay)
        headers = {"request-id": "req_fake_stream", **reply.headers}
        response = web.StreamResponse(status=200, headers=headers)
        response.content_type = "text/event-stream"
        await response.prepare(request)
        usage = {"input_tokens": 12, "output_tokens": 1, **reply.usage}
        start = {
            "type": "message_start",
            "message": {
                "id": "msg_fake_stream",
                "type": "message",
                "role": "assistant",
                "model": "claude-haiku-5-5",
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": usage,
            },
        }

        async def send(event: str, data: dict[str, Any]) -> None:
            if reply.event_delay:
                await asyncio.sleep(reply.event_delay)
            if request.transport is None or request.transport.is_closing():
                raise _ClientGone()
            try:
                await response.write(sse(event, data))
            except ConnectionError as error:
                raise _ClientGone() from error

        try:
            await send("message_start", start)
            await send(
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            )
            await send("ping", {"type": "ping"})
            for number, delta in enumerate(reply.deltas()):
                if reply.fail is not None and number == reply.fail_after:
                    return await self._fail(request, response, reply, log)
                await send(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "text_delta", "text": delta},
                    },
                )
                log.sent.append(delta)
                log.sent_at.append(time.monotonic())
            if reply.fail is not None:
                return await self._fail(request, response, reply, log)
            await send("content_block_stop", {"type": "content_block_stop", "index": 0})
            await send(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": reply.stop_reason, "stop_sequence": None},
                    "usage": {"output_tokens": reply.output_tokens},
                },
            )
            await send("message_stop", {"type": "message_stop"})
            log.completed = True
            await response.write_eof()
        except _ClientGone:
            log.client_gone = True
        finally:
            log.ended = True
        return response

    async def _fail(
        self, request: web.Request, response: web.StreamResponse, reply: StreamReply, log: StreamLog
    ) -> web.StreamResponse:
        if reply.fail == "error":
            body = {
                "type": "error",
                "error": {"type": reply.error_type, "message": f"fake {reply.error_type}"},
            }
            try:
                await response.write(sse("error", body))
                await response.write_eof()
            except ConnectionError:
                log.client_gone = True
            return response
        if reply.fail == "drop":
            assert request.transport is not None
            request.transport.abort()
            return response
        # A stall: nothing more is sent; the stream stays open until the client gives up on it.
        while request.transport is not None and not request.transport.is_closing():  # noqa: ASYNC110
            await asyncio.sleep(0.02)  # aiohttp offers no event for a client going away
        log.client_gone = True
        return response

    def wait_for_stream_end(self, index: int = 0, timeout: float = 5.0) -> StreamLog:
        """Block until stream ``index`` has ended (completed, failed, or left by the client)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                log = self.streams[index] if len(self.streams) > index else None
            if log is not None and log.ended:
                return log
            time.sleep(0.02)
        raise AssertionError(f"stream {index} did not end in {timeout} s")

    @property
    def calls(self) -> list[Any]:
        return [r.body for r in self.received(MESSAGES)]
