"""The Bolt app: thin listeners for `/ask`, the Events API and clicks on buttons (interactivity),
behind the request gate of app/web/gate.py. Each validates and enqueues (app/web/ask.py,
app/web/conversations.py, app/web/clicks.py) and acks."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from arq.connections import ArqRedis
from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncBoltRequest
from slack_bolt.authorization import AuthorizeResult
from slack_bolt.response import BoltResponse
from slack_sdk.web.async_client import AsyncWebClient

from app.contract import messages, metrics
from app.contract.events import JobEvents
from app.contract.jobs import command_reference
from app.contract.settings import Settings
from app.web import budget, quota
from app.web.ask import handle_ask
from app.web.clicks import ClickAck, handle_click
from app.web.conversations import EventAck, handle_event
from app.web.events import HANDLED_TYPES
from app.web.gate import JSON

log = structlog.get_logger(__name__)


class _DropTokenIgnoredWarnings(logging.Filter):
    """Bolt reads SLACK_BOT_TOKEN from the environment on its own and, since we give it a client
    bound to SLACK_API_URL and an authorize function, warns at every start that the token is
    unused. It is not: both carry the same token from our settings."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("token" in message and ("will be unused" in message or "will be ignored" in message))


def build_bolt_app(settings: Settings, redis: ArqRedis, events: JobEvents) -> AsyncApp:
    """Bolt app that answers the slash command and the Events API (the gate has verified both)."""

    async def authorize(enterprise_id: str | None, team_id: str | None, **_: Any) -> AuthorizeResult:
        # A single-workspace token needs no lookup; skipping Bolt's auth.test keeps Slack's API
        # off the ack path (the web process never calls it).
        return AuthorizeResult(
            enterprise_id=enterprise_id,
            team_id=team_id,
            bot_token=settings.slack_bot_token.get_secret_value(),
        )

    limits = quota.limits_from(settings)
    budgets = budget.budgets_from(settings)
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
        # Bolt's 10 ms ack-polling timer. It is also what lets an event's listener answer 503.
        process_before_response=True,
        # app/web/events.py decides which events are asklane's own, with the rest of what is
        # ignored, and logs each one; Bolt's filter would need the bot's ids from auth.test.
        ignoring_self_events_enabled=False,
        # Bolt's say/set_status helpers for assistant threads are unused: the ack path never
        # calls Slack, workers do.
        attaching_conversation_kwargs_enabled=False,
    )

    async def answer_event(body: dict[str, Any], request: AsyncBoltRequest) -> BoltResponse:
        retry_num = request.headers.get("x-slack-retry-num", [None])[0]
        try:
            answered = await handle_event(
                body,
                redis,
                events,
                limits,
                app_id=settings.slack_app_id,
                retry_num=retry_num,
                budgets=budgets,
            )
        except Exception:
            # A bug, not an outage (those are typed): a 500 has Slack deliver the event again.
            log.exception("event.crashed", event_id=body.get("event_id"), retry_num=retry_num)
            answered = EventAck(500, "crashed")
        metrics.count_soon(redis, "asklane_events", outcome=answered.outcome)
        # Nobody sees an event's ack: an empty 200, or a status that asks Slack to retry.
        return BoltResponse(status=answered.status, body="")

    @app.middleware
    async def callbacks_other_than_events(
        request: AsyncBoltRequest, next: Callable[[], Awaitable[BoltResponse | None]]
    ) -> BoltResponse | None:
        # JSON callbacks with no event (app_rate_limited, …) match no listener, and Bolt would
        # answer 404. url_verification never gets here: Bolt answers its challenge before.
        if request.content_type == JSON and request.body.get("type") != "event_callback":
            return await answer_event(request.body, request)
        return await next()

    async def on_event(body: dict[str, Any], request: AsyncBoltRequest) -> BoltResponse:
        return await answer_event(body, request)

    for event_type in sorted(HANDLED_TYPES):
        app.event(event_type)(on_event)
    # Any other event (the app subscribed to more than asklane uses) gets 200 too: Bolt's 404 for
    # an unhandled event would have Slack deliver it again, and again.
    app.event(re.compile(r".*"))(on_event)

    # Every block_actions click, whatever its action_id: app/web/clicks.py ignores those that are
    # not asklane's (with a 200, as Bolt's 404 would show the clicker an error).
    @app.action(re.compile(r".*"))
    async def on_click(body: dict[str, Any]) -> BoltResponse:
        try:
            clicked = await handle_click(body, redis, events, limits, budgets)
        except Exception:
            log.exception("click.crashed", team=(body.get("team") or {}).get("id"))
            clicked = ClickAck(500, "crashed")
        metrics.count_soon(redis, "asklane_clicks", outcome=clicked.outcome)
        # Nobody sees a click's ack body; a non-2xx makes Slack show the clicker an error.
        return BoltResponse(status=clicked.status, body="")

    @app.command(settings.slack_command)
    async def ask(ack: AsyncAck, command: dict[str, Any]) -> None:
        outcome: str
        try:
            answered = await handle_ask(command, redis, events, limits, budgets)
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
