"""A fake Anthropic Messages API: records requests, answers from a script or with an echo.

A request whose blocks carry ``cache_control`` is answered with prompt-caching usage as Anthropic
reports it: each marked prefix seen before (same model, same blocks) is read from the cache
(``cache_read_input_tokens``), a new one is written (``cache_creation_input_tokens``), and
``input_tokens`` counts only what follows the last mark. Tokens are counted as characters / 4;
the fake caches prefixes of any length (Anthropic only caches those over a model's minimum).

It also serves ``GET /v1/models/{id}`` (404 for ids it does not know), can enforce rate limits
the way Anthropic does (:meth:`FakeAnthropic.rate_limit`: requests, input and output tokens, each a
continuously refilled bucket; over one, 429 ``rate_limit_error`` with ``retry-after``; the
``anthropic-ratelimit-*`` headers on every answer, streamed or not), logs each answered request's
tokens (:attr:`FakeAnthropic.token_log`), and can send a reply's body verbatim or trickle it a
byte at a time over a chunked response. An unscripted answer reports the input tokens it counted
(characters / 4 per block, as for caching), so its usage and its limits agree.

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
from datetime import UTC, datetime, timedelta
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
    #: The unscripted call's entry in the token log, ended with the stream.
    use: TokenUse | None = None

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
    input_tokens: int | None
    output_tokens: int | None
    window: float

    def size(self, kind: str) -> int | None:
        return {
            "requests": self.requests,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
        }[kind]


#: The limits' names in the fake's buckets and in Anthropic's headers.
_HEADER_KINDS = {"requests": "requests", "input_tokens": "input-tokens", "output_tokens": "output-tokens"}


@dataclass
class TokenUse:
    """One answered (unscripted) request, as the token limits count it."""

    #: When it arrived (monotonic, the fake's clock).
    at: float
    #: Input tokens counted at the request: uncached input plus cache writes (reads do not count).
    input_tokens: int
    #: Output tokens: the request's max_tokens until it ends, then what it really wrote.
    output_tokens: int
    ended: bool = False


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
        self._levels = {"requests": 0.0, "input_tokens": 0.0, "output_tokens": 0.0}
        self._filled_at = 0.0
        #: Every answered unscripted request's tokens, in arrival order.
        self.token_log: list[TokenUse] = []
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
            self.token_log = []

    def rate_limit(
        self,
        *,
        requests: int | None = None,
        output_tokens: int | None = None,
        input_tokens: int | None = None,
        window: float = 60.0,
    ) -> None:
        """Enforce ``requests``, ``input_tokens`` and/or ``output_tokens`` per ``window`` seconds
        as Anthropic does: a bucket per limit holding up to that many, refilled continuously at
        that many per window. An answered call takes one request, its input tokens (uncached input
        and cache writes) at the request, and its ``max_tokens`` of output at the start, given back
        down to the tokens it really wrote when it ends. A call that finds a bucket short of what
        it takes gets a 429 ``rate_limit_error`` with a ``retry-after`` of the whole seconds until
        it would not. Every answer then carries the ``anthropic-ratelimit-*`` headers (limit,
        remaining, and reset: when the bucket is full again). Scripted replies are not counted."""
        with self._lock:
            self._limit = _Limit(requests, input_tokens, output_tokens, window)
            self._levels = {kind: float(self._limit.size(kind) or 0) for kind in _HEADER_KINDS}
            self._filled_at = time.monotonic()

    def spend(self, *, input_tokens: int = 0, output_tokens: int = 0) -> None:
        """Take tokens from the buckets as another app of the organisation would."""
        with self._lock:
            self._refill(time.monotonic())
            self._levels["input_tokens"] -= input_tokens
            self._levels["output_tokens"] -= output_tokens

    def _refill(self, now: float) -> None:
        limit = self._limit
        if limit is None:
            return
        elapsed, self._filled_at = now - self._filled_at, now
        for kind in _HEADER_KINDS:
            size = limit.size(kind)
            if size is not None:
                self._levels[kind] = min(float(size), self._levels[kind] + elapsed * size / limit.window)

    def _admit(self, input_tokens: int, max_tokens: int) -> Reply | TokenUse:
        """The 429 for a call arriving now, or (within limit) its entry in the token log, charged."""
        costs = {"requests": 1, "input_tokens": input_tokens, "output_tokens": max_tokens}
        with self._lock:
            now = time.monotonic()
            limit = self._limit
            if limit is not None:
                self._refill(now)
                waits = []
                for kind, cost in costs.items():
                    size = limit.size(kind)
                    if size is None or self._levels[kind] >= cost:
                        continue
                    rate = size / limit.window
                    waits.append((cost - self._levels[kind]) / rate if rate else limit.window)
                if waits:
                    self.refused += 1
                    refusal = error(429, "rate_limit_error", retry_after=max(1, math.ceil(max(waits))))
                    refusal.headers.update(self._limit_headers(now))
                    return refusal
                for kind, cost in costs.items():
                    if limit.size(kind) is not None:
                        self._levels[kind] -= cost
            use = TokenUse(now, input_tokens, max_tokens)
            self.token_log.append(use)
            return use

    def _end(self, use: TokenUse, output_tokens: int) -> None:
        """The call wrote ``output_tokens``: what its max_tokens reserved beyond them comes back."""
        with self._lock:
            if use.ended:
                return
            limit = self._limit
            if limit is not None and limit.output_tokens is not None:
                self._refill(time.monotonic())
                back = self._levels["output_tokens"] + use.output_tokens - output_tokens
                self._levels["output_tokens"] = min(float(limit.output_tokens), back)
            use.output_tokens, use.ended = output_tokens, True

    def headers_now(self) -> dict[str, str]:
        """The ``anthropic-ratelimit-*`` headers an answer sent now would carry."""
        with self._lock:
            now = time.monotonic()
            self._refill(now)
            return self._limit_headers(now)

    def _limit_headers(self, now: float) -> dict[str, str]:
        limit = self._limit
        if limit is None:
            return {}
        headers: dict[str, str] = {}
        tightest: tuple[int, str] | None = None
        for kind, name in _HEADER_KINDS.items():
            size = limit.size(kind)
            if size is None:
                continue
            level = self._levels[kind]
            remaining = max(0, math.floor(level))
            refill = (size - level) / (size / limit.window) if size else 0.0
            reset = datetime.now(UTC) + timedelta(seconds=math.ceil(max(0.0, refill)))
            headers[f"anthropic-ratelimit-{name}-limit"] = str(size)
            headers[f"anthropic-ratelimit-{name}-remaining"] = str(remaining)
            headers[f"anthropic-ratelimit-{name}-reset"] = reset.strftime("%Y-%m-%dT%H:%M:%SZ")
            if kind != "requests" and (tightest is None or remaining < tightest[0]):
                tightest = (remaining, name)
        if tightest is not None:
            # The most restrictive token limit in force, as Anthropic's tokens-* headers report it.
            for part in ("limit", "remaining", "reset"):
                headers[f"anthropic-ratelimit-tokens-{part}"] = headers[
                    f"anthropic-ratelimit-{tightest[1]}-{part}"
                ]
        return headers

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
            reply = self.next_reply(MESSAGES)
        use: TokenUse | None = None
        usage: dict[str, int] = {}
        if reply is None:
            usage, prefixes = self._input_usage(body)
            counted = usage["input_tokens"] + usage.get("cache_creation_input_tokens", 0)
            admitted = self._admit(counted, int(body.get("max_tokens") or 0))
            if isinstance(admitted, Reply):
                reply = admitted
            else:
                use = admitted
                with self._lock:  # a refused request writes nothing to the cache
                    self._cached.update(prefixes)
        streaming = body.get("stream") is True
        if reply is None and streaming:
            question = text_of(body["messages"][-1]["content"])
            reply = StreamReply(
                text=f"Answer to: {question}",
                chunk=self.stream_chunk,
                event_delay=self.stream_delay,
                output_tokens=self.output_tokens,
                usage=usage,
                headers={"request-id": "req_fake_stream", **self.headers_now()},
                delay=self.default_delay,
                use=use,
            )
        if reply is None:
            question = text_of(body["messages"][-1]["content"])
            answer = message(f"Answer to: {question}", output_tokens=self.output_tokens)
            answer["usage"].update(usage)
            reply = Reply(
                json=answer,
                headers={"request-id": "req_fake", **self.headers_now()},
                delay=self.default_delay,
            )
        self.record(MESSAGES, request.headers, body, reply)
        response = await self.respond(request, reply)
        if use is not None and not isinstance(reply, StreamReply):
            # Before the handler returns, so before the answer is on the wire.
            self._end(use, self.output_tokens)
        return response

    def _input_usage(self, body: dict[str, Any]) -> tuple[dict[str, int], list[str]]:
        """The input side of the usage an answer to ``body`` reports, and the prompt prefixes to
        cache if it is answered."""
        cached = self._cache_usage(body)
        if cached is not None:
            return cached
        return {"input_tokens": sum(_tokens(block) for block in _blocks(body))}, []

    def _cache_usage(self, body: dict[str, Any]) -> tuple[dict[str, int], list[str]] | None:
        """Prompt-caching usage for a request with cache_control marks (None without any), and
        the marked prefixes to put in the cache once it is answered."""
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
        last = marks[-1]
        usage = {
            "cache_read_input_tokens": sum(_tokens(block) for block in blocks[: hit + 1]),
            "cache_creation_input_tokens": sum(_tokens(block) for block in blocks[hit + 1 : last + 1]),
            "input_tokens": sum(_tokens(block) for block in blocks[last + 1 :]),
        }
        return usage, [key for _, key in prefixes]

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
            if reply.use is not None:
                # A stream left early wrote what it sent (characters / 4, as input is counted).
                written = reply.output_tokens if log.completed else math.ceil(len("".join(log.sent)) / 4)
                self._end(reply.use, written)

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
