"""Local stand-ins for Slack and Claude, so asklane runs without any account (``make run``).

One small HTTP server plays both outside parties; the web process and the workers talk to it
exactly as they talk to the real ones, through the same settings, so nothing is short-circuited:

* Slack: each command's response_url (``/slack/response/<hook>``) and the Web API
  (``/slack/api/chat.postEphemeral``) record the messages asklane posts;
  ``GET /sandbox/messages/<hook>?after=N`` hands them to ``asklane ask`` as they arrive.
* Claude, when there is no ANTHROPIC_API_KEY: an offline model at ``/anthropic`` speaking the
  Messages API, whose every answer says it is the stand-in.

Run by ``make run`` as the Procfile.sandbox's ``sandbox`` process (``asklane sandbox``).
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

#: Where the sandbox listens by default, and the paths the settings point at.
DEFAULT_PORT = 3001
RESPONSE_PATH = "/slack/response/"
API_PATH = "/slack/api/"
ANTHROPIC_PATH = "/anthropic"
MESSAGES_PATH = "/sandbox/messages/"

#: Signing secret and bot token of sandbox mode: not secrets, since nothing outside the
#: machine accepts them.
SIGNING_SECRET = "sandbox-signing-secret"
BOT_TOKEN = "xoxb-sandbox-not-a-real-token"
ANTHROPIC_KEY = "sandbox-offline-model"

OFFLINE_LABEL = "_[offline stand-in model: set ANTHROPIC_API_KEY for real answers from Claude]_"

#: How long ``GET /sandbox/messages`` waits for a new message before answering with none.
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


def offline_answer(question: str) -> str:
    """What the offline model says: an echo, labelled so nobody mistakes it for Claude."""
    return f"{OFFLINE_LABEL}\n\nYou asked: *{question}*\n\nWith a key, Claude would answer here."


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


def create_app() -> Starlette:
    """The sandbox's ASGI app."""
    boxes = Mailboxes()

    async def response_url(request: Request) -> Response:
        await boxes.post(request.path_params["hook"], await request.json())
        return PlainTextResponse("ok")  # what Slack answers

    async def web_api(request: Request) -> Response:
        if request.path_params["method"] != "chat.postEphemeral":
            return JSONResponse({"ok": False, "error": "unknown_method"})
        form = await request.form() if "form" in request.headers.get("content-type", "") else None
        body = dict(form) if form is not None else await request.json()
        # An ephemeral message is keyed by where it shows: the asker in the channel.
        await boxes.post(f"{body.get('channel')}:{body.get('user')}", {"via": "chat.postEphemeral", **body})
        return JSONResponse({"ok": True, "message_ts": "1700000000.000100"})

    async def messages(request: Request) -> Response:
        seen = int(request.query_params.get("after", "0"))
        wait = min(float(request.query_params.get("wait", POLL_SECONDS)), POLL_SECONDS)
        return JSONResponse(await boxes.after(request.path_params["box"], seen, wait))

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

    async def anthropic_messages(request: Request) -> Response:
        body = json.loads(await request.body())
        question = str(body["messages"][-1]["content"])
        answer = offline_answer(question)
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
            Route(ANTHROPIC_PATH + "/v1/models", models, methods=["GET"]),
            Route(ANTHROPIC_PATH + "/v1/messages", anthropic_messages, methods=["POST"]),
        ]
    )
