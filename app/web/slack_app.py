"""The Bolt app: a thin `/ask` listener, behind the request gate of app/web/gate.py."""

from __future__ import annotations

import logging
import re
from typing import Any

import structlog
from arq.connections import ArqRedis
from slack_bolt.async_app import AsyncAck, AsyncApp
from slack_bolt.authorization import AuthorizeResult
from slack_sdk.web.async_client import AsyncWebClient

from app.contract import messages, metrics
from app.contract.events import JobEvents
from app.contract.jobs import command_reference
from app.contract.settings import Settings
from app.web import quota
from app.web.ask import handle_ask

log = structlog.get_logger(__name__)


class _DropTokenIgnoredWarnings(logging.Filter):
    """Bolt reads SLACK_BOT_TOKEN from the environment on its own and, since we give it a client
    bound to SLACK_API_URL and an authorize function, warns at every start that the token is
    unused. It is not: both carry the same token from our settings."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("token" in message and ("will be unused" in message or "will be ignored" in message))


def build_bolt_app(settings: Settings, redis: ArqRedis, events: JobEvents) -> AsyncApp:
    """Bolt app that verifies every request and answers the slash command."""

    async def authorize(enterprise_id: str | None, team_id: str | None, **_: Any) -> AuthorizeResult:
        # A single-workspace token needs no lookup; skipping Bolt's auth.test keeps Slack's API
        # off the ack path (the web process never calls it).
        return AuthorizeResult(
            enterprise_id=enterprise_id,
            team_id=team_id,
            bot_token=settings.slack_bot_token.get_secret_value(),
        )

    limits = quota.limits_from(settings)
    bolt_logger = logging.getLogger("slack_bolt.asklane")
    bolt_logger.addFilter(_DropTokenIgnoredWarnings())
    app = AsyncApp(
        name="asklane",
        logger=bolt_logger,
        signing_secret=settings.slack_signing_secret.get_secret_value(),
        # app/web/gate.py checks every request before Bolt sees it, without parsing it first.
        request_verification_enabled=False,
        authorize=authorize,
        client=AsyncWebClient(
            token=settings.slack_bot_token.get_secret_value(), base_url=settings.slack_api_url
        ),
        # Run the listener inline and answer when it returns: no background task, and no wait on
        # Bolt's 10 ms ack-polling timer.
        process_before_response=True,
    )

    @app.command(settings.slack_command)
    async def ask(ack: AsyncAck, command: dict[str, Any]) -> None:
        outcome: str
        try:
            answered = await handle_ask(command, redis, events, limits)
            reply, outcome = answered.message, answered.outcome
        except Exception:
            reference = command_reference(
                str(command.get("team_id") or ""), str(command.get("trigger_id") or "unknown")
            )
            log.exception("command.crashed", reference=reference)
            reply, outcome = messages.unavailable(reference), "crashed"
        metrics.count_soon(redis, "asklane_commands", outcome=outcome)
        await ack(response_type="ephemeral", text=reply.text, blocks=reply.blocks)

    # Registered after /ask, so it only sees other commands: a Slack app pointing more commands at
    # this URL than it serves gets an answer instead of Bolt's 404.
    @app.command(re.compile(r".*"))
    async def unknown(ack: AsyncAck, command: dict[str, Any]) -> None:
        log.warning("command.unknown", command=str(command.get("command"))[:40], team=command.get("team_id"))
        reply = messages.unknown_command(str(command.get("command")), settings.slack_command)
        metrics.count_soon(redis, "asklane_commands", outcome="unknown_command")
        await ack(response_type="ephemeral", text=reply.text, blocks=reply.blocks)

    return app
