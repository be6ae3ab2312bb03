"""The Bolt app: request verification and a thin `/ask` listener."""

from __future__ import annotations

from typing import Any

import structlog
from arq.connections import ArqRedis
from slack_bolt.async_app import AsyncAck, AsyncApp
from slack_bolt.authorization import AuthorizeResult
from slack_sdk.web.async_client import AsyncWebClient

from app import messages
from app.ask import handle_ask
from app.job import reference_for
from app.settings import Settings

log = structlog.get_logger(__name__)


def build_bolt_app(settings: Settings, redis: ArqRedis) -> AsyncApp:
    """Bolt app that verifies every request and answers the slash command."""

    async def authorize(enterprise_id: str | None, team_id: str | None, **_: Any) -> AuthorizeResult:
        # A single-workspace token needs no lookup; skipping Bolt's auth.test keeps Slack's API
        # off the ack path (the web process never calls it).
        return AuthorizeResult(
            enterprise_id=enterprise_id,
            team_id=team_id,
            bot_token=settings.slack_bot_token.get_secret_value(),
        )

    app = AsyncApp(
        signing_secret=settings.slack_signing_secret.get_secret_value(),
        authorize=authorize,
        client=AsyncWebClient(base_url=settings.slack_api_url),
        # Run the listener inline and answer when it returns: no background task, and no wait on
        # Bolt's 10 ms ack-polling timer.
        process_before_response=True,
    )

    @app.command(settings.slack_command)
    async def ask(ack: AsyncAck, command: dict[str, Any]) -> None:
        try:
            reply = await handle_ask(command, redis)
        except Exception:
            reference = reference_for(str(command.get("trigger_id") or "unknown"))
            log.exception("command.crashed", reference=reference)
            reply = messages.unavailable(reference)
        await ack(response_type="ephemeral", text=reply.text, blocks=reply.blocks)

    return app
