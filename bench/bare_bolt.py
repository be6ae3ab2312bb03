"""The baseline for bench/load.py: a Bolt app behind Starlette that verifies and only acks `/ask`.

Nothing of asklane is used, so the difference between this and the real web process is what
asklane adds: its request gate, the listener's validation, the quota check and the enqueue.
``BARE_BOLT_INLINE=1`` runs the listener inline (``process_before_response=True``) instead of
Bolt's default runner, which polls for ``ack()`` on a 10 ms timer.

Run: ``uvicorn --app-dir bench bare_bolt:create_app --factory``.
"""

from __future__ import annotations

import os
from typing import Any

from slack_bolt.adapter.starlette.async_handler import AsyncSlackRequestHandler
from slack_bolt.async_app import AsyncAck, AsyncApp
from slack_bolt.authorization import AuthorizeResult
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def create_app() -> Starlette:
    """The bare app, configured from the same environment variables as asklane's web process."""
    token = os.environ["SLACK_BOT_TOKEN"]

    async def authorize(enterprise_id: str | None, team_id: str | None, **_: Any) -> AuthorizeResult:
        # As asklane does: no auth.test call on the request path.
        return AuthorizeResult(enterprise_id=enterprise_id, team_id=team_id, bot_token=token)

    bolt = AsyncApp(
        signing_secret=os.environ["SLACK_SIGNING_SECRET"],
        authorize=authorize,
        process_before_response=os.environ.get("BARE_BOLT_INLINE") == "1",
    )

    @bolt.command("/ask")
    async def ask(ack: AsyncAck) -> None:
        await ack(response_type="ephemeral", text="Working on it")

    handler = AsyncSlackRequestHandler(bolt)

    async def events(request: Request) -> Response:
        return await handler.handle(request)

    return Starlette(routes=[Route("/slack/events", events, methods=["POST"])])
