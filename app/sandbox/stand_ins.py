"""Local stand-ins for Slack and Claude, so asklane runs without any account (``make run``).

One small HTTP server plays both outside parties; the web process and the workers talk to it
exactly as they talk to the real ones, through the same settings, so nothing is short-circuited:

* Slack: each command's response_url (``/slack/response/<hook>``) and the Web API
  (``/slack/api/<method>``) record what asklane posts. ``chat.postEphemeral`` messages are kept
  per channel and user, and ``GET /sandbox/messages/<hook>?after=N`` hands them, or a
  response_url's, to ``asklane ask`` as they arrive. ``chat.postMessage`` messages are kept per
  thread as Slack threads them (a top-level message starts its own thread), with each thread's
  status (``assistant.threads.setStatus``, cleared by a reply as Slack clears it) and the
  suggested prompts of each DM (``assistant.threads.setSuggestedPrompts``);
  ``chat.startStream`` / ``appendStream`` / ``stopStream`` stream a message into its thread as
  Slack does (an append after the stop is ``message_not_in_streaming_state``), ``chat.update``
  rewrites one and ``chat.delete`` removes it;
  ``GET /sandbox/threads/<channel>/<thread_ts>?after=N&version=V`` (a thread's messages, each with
  its text now as ``shown``, ``streaming``, its ``buttons`` and a ``version`` bumped by every
  change, and the thread's status; it waits for the thread's version to pass V),
  ``GET /sandbox/threads/<channel>`` (a channel's threads) and
  ``GET /sandbox/prompts/<channel>?after=N`` hand them to ``asklane chat`` as they arrive.
  ``auth.test`` names the sandbox's workspace and bot.
* Claude, when there is no ANTHROPIC_API_KEY: an offline model at ``/anthropic`` speaking the
  Messages API, whose every answer says it is the stand-in, and how much of the conversation it
  was sent (so a follow-up shows that memory works); streamed a few characters at a time, slowly
  enough to watch and to stop (``create_app(stream_delay)``).

Run by ``make run`` as its ``sandbox`` process (``asklane sandbox``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

#: Where the sandbox listens by default, and the paths the settings point at.
DEFAULT_PORT = 3001
RESPONSE_PATH = "/slack/response/"
API_PATH = "/slack/api/"
ANTHROPIC_PATH = "/anthropic"
MESSAGES_PATH = "/sandbox/messages/"
THREADS_PATH = "/sandbox/threads/"
PROMPTS_PATH = "/sandbox/prompts/"

#: Signing secret and bot token of sandbox mode: not secrets, since nothing outside the
#: machine accepts them.
SIGNING_SECRET = "sandbox-signing-secret"
BOT_TOKEN = "xoxb-sandbox-not-a-real-token"
ANTHROPIC_KEY = "sandbox-offline-model"

#: The sandbox's workspace as Slack would name it: the team, the app and its bot user, the person
#: at the terminal and their DM with the app (its Messages tab).
TEAM_ID = "T0SANDBOX"
APP_ID = "A0SANDBOX"
BOT_USER_ID = "U0ASKLANE"
BOT_ID = "B0ASKLANE"
USER_ID = "U0YOU"
DM_CHANNEL = "D0SANDBOX"

OFFLINE_LABEL = "_[offline stand-in model: set ANTHROPIC_API_KEY for real answers from Claude]_"

#: Characters per streamed delta, and seconds between deltas, of the offline model by default:
#: slow enough to watch an answer arrive, and to stop it (SANDBOX_STREAM_DELAY_SECONDS).
STREAM_CHUNK = 12
STREAM_DELAY_SECONDS = 0.05
STREAM_DELAY_ENV = "SANDBOX_STREAM_DELAY_SECONDS"

#: How long a ``GET /sandbox/...`` read waits for something new before answering with nothing.
POLL_SECONDS = 10.0


def sandbox_settings(port: int = DEFAULT_PORT, *, offline_model: bool) -> dict[str, str]:
    """The environment that points asklane's processes at this sandbox."""
    base = f"http://127.0.0.1:{port}"
    env = {
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_API_URL": base + API_PATH,
        "SLACK_RESPONSE_URL_PREFIXES": base + RESPONSE_PATH,
    }
    if offline_model:
        env |= {"ANTHROPIC_API_KEY": ANTHROPIC_KEY, "ANTHROPIC_BASE_URL": base + ANTHROPIC_PATH}
    return env


def offline_answer(question: str, earlier: list[str] | None = None) -> str:
    """What the offline model says: an echo, labelled so nobody mistakes it for Claude. With
    ``earlier`` questions of the same conversation, it says how many it was sent and the last."""
    answer = (
        f"{OFFLINE_LABEL}\n\nYou asked: *{question}*\n\nWith a key, Claude would answer here. "
        "In a thread this stand-in writes its answer a few characters at a time, as Claude streams, "
        "so you can watch it arrive. Stop it while it does; rate it or regenerate it once it is done."
    )
    if earlier:
        answer += (
            f"\n\nI was sent this conversation's {len(earlier)} earlier question(s); "
            f"the last one was: *{earlier[-1]}*"
        )
    return answer


def text_of(content: Any) -> str:
    """The text of a Messages API turn: a string, or a list of content blocks (a block marked for
    prompt caching is one of them)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(block.get("text", ""))
            for block in content
            if isinstance(block, dict) and block.get("type") == "text"
        )
    return str(content)


#: Slack's limit on one message's markdown (and one appendStream call's).
APPEND_LIMIT = 12_000

#: Blocks that hold buttons rather than text.
_BUTTON_BLOCKS = frozenset({"actions", "context_actions"})


def stream_chunks(body: dict[str, Any]) -> tuple[str, list[Any]]:
    """A streaming call's text and blocks: its ``markdown_text``, or its ``chunks`` in order
    (``markdown_text`` chunks add text, ``blocks`` chunks add blocks)."""
    chunks = body.get("chunks")
    if not isinstance(chunks, list) or not chunks:
        return str(body.get("markdown_text") or ""), []
    text, blocks = "", []
    for chunk in chunks:
        if not isinstance(chunk, dict):
            continue
        if chunk.get("type") == "markdown_text":
            text += str(chunk.get("text", ""))
        elif chunk.get("type") == "blocks" and isinstance(chunk.get("blocks"), list):
            blocks.extend(chunk["blocks"])
    return text, blocks


def shown_text(message: dict[str, Any]) -> str:
    """What a message shows as a person reads it in Slack: its blocks' text (a ``markdown``
    block's Markdown as written, a section's or context's text), else its streamed
    ``markdown_text``, else its ``text``. Buttons are not text (:func:`buttons_of`)."""
    parts = []
    for block in message.get("blocks") or []:
        if not isinstance(block, dict) or block.get("type") in _BUTTON_BLOCKS:
            continue
        if block.get("type") == "markdown":
            parts.append(str(block.get("text", "")))
        elif isinstance(block.get("text"), dict):
            parts.append(str(block["text"].get("text", "")))
        for element in block.get("elements") or []:
            if isinstance(element, dict) and isinstance(element.get("text"), str):
                parts.append(element["text"])
    return "\n".join(parts) or str(message.get("markdown_text") or message.get("text", ""))


def buttons_of(message: dict[str, Any]) -> list[dict[str, str]]:
    """The buttons under a message, each as ``action_id``, ``value`` and ``label``: buttons and
    icon buttons of ``actions`` and ``context_actions`` blocks, and both halves of Slack's
    ``feedback_buttons`` (labelled ``good`` and ``bad``)."""
    found = []
    for block in message.get("blocks") or []:
        if not isinstance(block, dict) or block.get("type") not in _BUTTON_BLOCKS:
            continue
        for element in block.get("elements") or []:
            if not isinstance(element, dict):
                continue
            action_id = str(element.get("action_id", ""))
            if element.get("type") == "feedback_buttons":
                for label, half in (("good", "positive_button"), ("bad", "negative_button")):
                    value = (element.get(half) or {}).get("value", "")
                    found.append({"action_id": action_id, "value": str(value), "label": label})
            elif element.get("type") in ("button", "icon_button"):
                text = element.get("text")
                label = text.get("text", "") if isinstance(text, dict) else str(text or "")
                found.append({"action_id": action_id, "value": str(element.get("value", "")), "label": label})
    return found


def _as_shown(message: dict[str, Any]) -> dict[str, Any]:
    """A kept message with what a reader needs: its text now (``shown``) and its buttons."""
    return {**message, "shown": shown_text(message), "buttons": buttons_of(message)}


class Mailboxes:
    """Messages posted per response_url hook (or per channel and user through the Web API)."""

    def __init__(self) -> None:
        self._messages: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self._changed = asyncio.Condition()

    async def post(self, box: str, message: dict[str, Any]) -> None:
        async with self._changed:
            self._messages[box].append(message)
            self._changed.notify_all()

    async def after(self, box: str, seen: int, wait: float) -> list[dict[str, Any]]:
        """Messages of ``box`` after the first ``seen``, waiting up to ``wait`` s for one."""
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: len(self._messages[box]) > seen), wait)
            except TimeoutError:
                pass
            return self._messages[box][seen:]


@dataclass
class Thread:
    """One thread as Slack shows it: the app's replies in order and its status line."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    status: str = ""
    loading_messages: list[str] = field(default_factory=list)
    #: Bumped by every change (a reply, a status set or cleared), so a reader can wait for one.
    version: int = 0


class Threads:
    """What the app posted with ``chat.postMessage``, by channel and thread, and the status and
    suggested prompts it set: the part of Slack ``asklane chat`` reads."""

    def __init__(self) -> None:
        self._threads: dict[tuple[str, str], Thread] = defaultdict(Thread)
        self._prompts: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self._changed = asyncio.Condition()
        self._last_ts = 0
        #: Each message's thread and place in it, by channel and ts (the calls that change it).
        self._where: dict[tuple[str, str], tuple[Thread, int]] = {}

    def next_ts(self) -> str:
        """A fresh ts as Slack writes it (seconds.microseconds): unique and increasing."""
        self._last_ts = max(self._last_ts + 1, time.time_ns() // 1000)
        return f"{self._last_ts // 1_000_000}.{self._last_ts % 1_000_000:06d}"

    async def post(
        self, channel: str, thread_ts: str | None, message: dict[str, Any], *, streaming: bool = False
    ) -> str:
        """Record a message (one whose stream starts, with ``streaming``); returns its ts. A reply
        clears the thread's status, as Slack does."""
        async with self._changed:
            ts = self.next_ts()
            thread = self._threads[(channel, thread_ts or ts)]
            thread.messages.append(
                {
                    **message,
                    "channel": channel,
                    "ts": ts,
                    "thread_ts": thread_ts or ts,
                    "streaming": streaming,
                    "deleted": False,
                    "version": 0,
                }
            )
            self._where[(channel, ts)] = (thread, len(thread.messages) - 1)
            thread.status, thread.loading_messages = "", []
            thread.version += 1
            self._changed.notify_all()
            return ts

    async def change(self, channel: str, ts: str, method: str, body: dict[str, Any]) -> str | None:
        """Apply ``chat.appendStream`` / ``stopStream`` / ``update`` / ``delete`` to the message
        ``ts`` in ``channel`` as Slack does; None when done, else Slack's error code."""
        async with self._changed:
            found = self._where.get((channel, ts))
            if found is None or found[0].messages[found[1]]["deleted"]:
                return "message_not_found"
            thread, index = found
            message = thread.messages[index]
            if method == "chat.delete":
                message["deleted"] = True
            elif method == "chat.update":
                for key in ("text", "blocks", "markdown_text"):
                    message.pop(key, None)
                message.update({key: body[key] for key in ("text", "blocks") if key in body})
                message["streaming"] = False
            else:
                if not message["streaming"]:
                    return "message_not_in_streaming_state"
                piece, streamed_blocks = stream_chunks(body)
                if (
                    len(piece) > APPEND_LIMIT
                    or len(str(message.get("markdown_text", ""))) + len(piece) > APPEND_LIMIT
                ):
                    return "msg_too_long"
                message["markdown_text"] = str(message.get("markdown_text", "")) + piece
                message["blocks"] = [*(message.get("blocks") or []), *streamed_blocks]
                if method == "chat.stopStream":
                    message["streaming"] = False
                    # Rendered under what the stream showed.
                    message["blocks"] = [*message["blocks"], *(body.get("blocks") or [])]
            message["version"] += 1
            thread.version += 1
            self._changed.notify_all()
            return None

    async def set_status(self, channel: str, thread_ts: str, status: str, loading: list[str]) -> None:
        async with self._changed:
            thread = self._threads[(channel, thread_ts)]
            thread.status, thread.loading_messages = status, loading
            thread.version += 1
            self._changed.notify_all()

    async def set_prompts(self, channel: str, prompts: dict[str, Any]) -> None:
        async with self._changed:
            self._prompts[channel].append(prompts)
            self._changed.notify_all()

    async def read(self, channel: str, thread_ts: str, seen: int, since: int, wait: float) -> dict[str, Any]:
        """The thread's messages after the first ``seen`` and its status, once it has changed
        since ``version`` ``since`` (or after ``wait`` s)."""
        async with self._changed:
            thread = self._threads[(channel, thread_ts)]
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: thread.version > since), wait)
            except TimeoutError:
                pass
            return {
                "messages": [_as_shown(message) for message in thread.messages[seen:]],
                "status": thread.status,
                "loading_messages": thread.loading_messages,
                "version": thread.version,
            }

    async def in_channel(self, channel: str) -> list[dict[str, Any]]:
        """The threads of ``channel`` the app posted in, oldest first, with how many messages."""
        async with self._changed:
            return [
                {
                    "thread_ts": thread_ts,
                    "messages": sum(not message["deleted"] for message in thread.messages),
                    "status": thread.status,
                }
                for (where, thread_ts), thread in sorted(self._threads.items())
                if where == channel and thread.messages
            ]

    async def prompts(self, channel: str, seen: int, wait: float) -> list[dict[str, Any]]:
        """The prompt sets offered in ``channel`` after the first ``seen``, waiting up to ``wait`` s."""
        async with self._changed:
            offered = self._prompts[channel]
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: len(offered) > seen), wait)
            except TimeoutError:
                pass
            return offered[seen:]


def _decoded(body: dict[str, Any], *names: str) -> dict[str, Any]:
    """A form-encoded Web API call carries lists and objects as JSON strings; a JSON one as is."""
    for name in names:
        if isinstance(body.get(name), str):
            try:
                body[name] = json.loads(body[name])
            except ValueError:
                pass
    return body


def _error(error: str) -> Response:
    return JSONResponse({"ok": False, "error": error})


def create_app(stream_delay: float = STREAM_DELAY_SECONDS) -> Starlette:
    """The sandbox's ASGI app; the offline model streams a delta every ``stream_delay`` s."""
    boxes = Mailboxes()
    threads = Threads()

    async def response_url(request: Request) -> Response:
        await boxes.post(request.path_params["hook"], await request.json())
        return PlainTextResponse("ok")  # what Slack answers

    async def chat_post_ephemeral(body: dict[str, Any]) -> Response:
        # An ephemeral message is keyed by where it shows: the asker in the channel.
        await boxes.post(f"{body.get('channel')}:{body.get('user')}", {"via": "chat.postEphemeral", **body})
        return JSONResponse({"ok": True, "message_ts": threads.next_ts()})

    async def chat_post_message(body: dict[str, Any]) -> Response:
        channel = body.get("channel")
        if not channel:
            return _error("channel_not_found")
        if not (body.get("text") or body.get("blocks") or body.get("markdown_text")):
            return _error("no_text")
        thread_ts = body.get("thread_ts") or None
        message = {"via": "chat.postMessage", "user": BOT_USER_ID, "bot_id": BOT_ID, **body}
        ts = await threads.post(str(channel), thread_ts and str(thread_ts), message)
        shown = {key: body[key] for key in ("text", "blocks", "thread_ts") if key in body}
        return JSONResponse(
            {"ok": True, "channel": channel, "ts": ts, "message": {"type": "message", "ts": ts, **shown}}
        )

    async def start_stream(body: dict[str, Any]) -> Response:
        channel, thread_ts = body.get("channel"), body.get("thread_ts")
        if not channel or not thread_ts:
            return _error("invalid_arguments")
        text, blocks = stream_chunks(body)
        if len(text) > APPEND_LIMIT:
            return _error("msg_too_long")
        message = {
            "via": "chat.startStream",
            "user": BOT_USER_ID,
            "bot_id": BOT_ID,
            "markdown_text": text,
            "blocks": blocks,
        }
        ts = await threads.post(str(channel), str(thread_ts), message, streaming=True)
        return JSONResponse({"ok": True, "channel": channel, "ts": ts})

    def changing(method: str) -> Callable[[dict[str, Any]], Awaitable[Response]]:
        async def change(body: dict[str, Any]) -> Response:
            channel, ts = body.get("channel"), body.get("ts")
            if not channel or not ts:
                return _error("invalid_arguments")
            error = await threads.change(str(channel), str(ts), method, body)
            if error is not None:
                return _error(error)
            return JSONResponse({"ok": True, "channel": channel, "ts": ts})

        return change

    async def set_status(body: dict[str, Any]) -> Response:
        if not (body.get("channel_id") and body.get("thread_ts")) or "status" not in body:
            return _error("invalid_arguments")
        loading = [str(m) for m in body.get("loading_messages") or []]
        await threads.set_status(
            str(body["channel_id"]), str(body["thread_ts"]), str(body["status"]), loading
        )
        return JSONResponse({"ok": True})

    async def set_suggested_prompts(body: dict[str, Any]) -> Response:
        prompts = body.get("prompts")
        if not body.get("channel_id") or not isinstance(prompts, list) or not prompts:
            return _error("invalid_arguments")
        await threads.set_prompts(
            str(body["channel_id"]),
            {"prompts": prompts, "title": body.get("title"), "thread_ts": body.get("thread_ts")},
        )
        return JSONResponse({"ok": True})

    async def auth_test(body: dict[str, Any]) -> Response:
        return JSONResponse(
            {
                "ok": True,
                "url": "https://sandbox.slack.invalid/",
                "team": "asklane sandbox",
                "user": "asklane",
                "team_id": TEAM_ID,
                "user_id": BOT_USER_ID,
                "bot_id": BOT_ID,
                "is_enterprise_install": False,
            }
        )

    methods = {
        "chat.postEphemeral": chat_post_ephemeral,
        "chat.postMessage": chat_post_message,
        "chat.startStream": start_stream,
        "chat.appendStream": changing("chat.appendStream"),
        "chat.stopStream": changing("chat.stopStream"),
        "chat.update": changing("chat.update"),
        "chat.delete": changing("chat.delete"),
        "assistant.threads.setStatus": set_status,
        "assistant.threads.setSuggestedPrompts": set_suggested_prompts,
        "auth.test": auth_test,
    }

    async def web_api(request: Request) -> Response:
        method = methods.get(request.path_params["method"])
        if method is None:
            return _error("unknown_method")
        raw = await request.body()
        if "form" in request.headers.get("content-type", ""):
            body = dict(parse_qsl(raw.decode(), keep_blank_values=True))  # no multipart parser needed
        else:
            body = json.loads(raw or b"{}")
        # chat.delete's arguments come in the query string (slack_sdk sends them as params).
        body = {**request.query_params, **body}
        return await method(_decoded(body, "blocks", "prompts", "loading_messages"))

    async def messages(request: Request) -> Response:
        seen = int(request.query_params.get("after", "0"))
        return JSONResponse(await boxes.after(request.path_params["box"], seen, _wait(request)))

    async def thread(request: Request) -> Response:
        seen = int(request.query_params.get("after", "0"))
        since = int(request.query_params.get("version", "-1"))
        read = await threads.read(
            request.path_params["channel"], request.path_params["thread_ts"], seen, since, _wait(request)
        )
        return JSONResponse(read)

    async def channel_threads(request: Request) -> Response:
        return JSONResponse(await threads.in_channel(request.path_params["channel"]))

    async def prompts(request: Request) -> Response:
        seen = int(request.query_params.get("after", "0"))
        return JSONResponse(await threads.prompts(request.path_params["channel"], seen, _wait(request)))

    async def models(request: Request) -> Response:
        model = {
            "type": "model",
            "id": "offline-stand-in",
            "display_name": "Offline stand-in",
            "created_at": "2026-01-01T00:00:00Z",
        }
        return JSONResponse(
            {"data": [model], "has_more": False, "first_id": model["id"], "last_id": model["id"]}
        )

    async def model(request: Request) -> Response:
        # The offline model answers as whatever model the worker is configured with, so its
        # start-up check finds it.
        model_id = request.path_params["model_id"]
        return JSONResponse(
            {"type": "model", "id": model_id, "display_name": model_id, "created_at": "2026-01-01T00:00:00Z"}
        )

    async def anthropic_messages(request: Request) -> Response:
        body = json.loads(await request.body())
        turns = body["messages"]
        question = text_of(turns[-1]["content"])
        earlier = [text_of(turn["content"]) for turn in turns[:-1] if turn.get("role") == "user"]
        answer = offline_answer(question, earlier)
        if body.get("stream") is True:
            # Thread answers stream (workers/thread_answer.py): the same answer, as server-sent events.
            return StreamingResponse(
                _answer_events(
                    answer, body.get("model", "offline-stand-in"), len(question.split()), stream_delay
                ),
                media_type="text/event-stream",
                headers={"request-id": "req_offline"},
            )
        return JSONResponse(
            {
                "id": "msg_offline",
                "type": "message",
                "role": "assistant",
                "model": body.get("model", "offline-stand-in"),
                "content": [{"type": "text", "text": answer}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": len(question.split()), "output_tokens": len(answer.split())},
            },
            headers={"request-id": "req_offline"},
        )

    return Starlette(
        routes=[
            Route(RESPONSE_PATH + "{hook}", response_url, methods=["POST"]),
            Route(API_PATH + "{method}", web_api, methods=["POST"]),
            Route(MESSAGES_PATH + "{box}", messages, methods=["GET"]),
            Route(THREADS_PATH + "{channel}", channel_threads, methods=["GET"]),
            Route(THREADS_PATH + "{channel}/{thread_ts}", thread, methods=["GET"]),
            Route(PROMPTS_PATH + "{channel}", prompts, methods=["GET"]),
            Route(ANTHROPIC_PATH + "/v1/models", models, methods=["GET"]),
            Route(ANTHROPIC_PATH + "/v1/models/{model_id}", model, methods=["GET"]),
            Route(ANTHROPIC_PATH + "/v1/messages", anthropic_messages, methods=["POST"]),
        ]
    )


async def _answer_events(answer: str, model: str, input_tokens: int, delay: float) -> AsyncIterator[bytes]:
    """``answer`` as the streaming Messages API sends it."""

    def event(name: str, data: dict[str, Any]) -> bytes:
        return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()

    message: dict[str, Any] = {
        "id": "msg_offline",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": 1},
    }
    yield event("message_start", {"type": "message_start", "message": message})
    yield event(
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    )
    for at in range(0, len(answer), STREAM_CHUNK):
        await asyncio.sleep(delay)
        delta = {"type": "text_delta", "text": answer[at : at + STREAM_CHUNK]}
        yield event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
    yield event("content_block_stop", {"type": "content_block_stop", "index": 0})
    yield event(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": len(answer.split())},
        },
    )
    yield event("message_stop", {"type": "message_stop"})


def _wait(request: Request) -> float:
    return max(0.0, min(float(request.query_params.get("wait", POLL_SECONDS)), POLL_SECONDS))
