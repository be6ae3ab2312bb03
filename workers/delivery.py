"""Posting the ephemeral reply back to Slack.

The command's response_url comes first: it works in DMs and in channels the bot has not joined,
where chat.postEphemeral fails. When the response_url is refused, expired or used up (Slack allows
five posts in thirty minutes), chat.postEphemeral through SLACK_API_URL is the fallback.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import aiohttp
import structlog
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from app.job import AskJob
from app.messages import SlackMessage
from app.settings import Settings
from workers.errors import DeliveryFailed, PermanentError

log = structlog.get_logger(__name__)

#: Seconds for one HTTP call to Slack.
SLACK_TIMEOUT_SECONDS = 10

#: Web API errors that a later attempt may get past.
TRANSIENT_API_ERRORS = frozenset(
    {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)

UNDELIVERABLE = "I couldn't post the answer here. Try again in a channel or DM where asklane is available."


class SlackDelivery:
    """Sends one message to the user who asked, ephemerally."""

    def __init__(self, settings: Settings) -> None:
        self._prefixes = settings.slack_response_url_prefixes
        self._web = AsyncWebClient(
            token=settings.slack_bot_token.get_secret_value(),
            base_url=settings.slack_api_url,
            timeout=SLACK_TIMEOUT_SECONDS,
        )

    def allows(self, response_url: str) -> bool:
        """True when the URL is under one of SLACK_RESPONSE_URL_PREFIXES."""
        return any(response_url.startswith(prefix) for prefix in self._prefixes)

    async def send(self, job: AskJob, message: SlackMessage) -> str:
        """Post the message; returns the path used ("response_url" or "chat.postEphemeral").

        Raises TransientError (rate limited, Slack unreachable) or PermanentError.
        """
        try:
            return await self._send(job, message)
        except BlocksRejected as rejected:
            if message.plain is None:
                raise PermanentError(str(rejected), reason=UNDELIVERABLE) from rejected
            # Slack's block limits are not all documented (a markdown block expands into several);
            # the same answer as plain text always fits.
            log.warning("delivery.blocks_rejected", detail=str(rejected))
            return await self._send(job, SlackMessage(text=message.plain))

    async def update_notice(self, job: AskJob, message: SlackMessage) -> bool:
        """Replace the user's notice through the response_url only; True when Slack took it.

        Interim updates never fall back to chat.postEphemeral (which would add a message rather
        than replace one) and never raise: the answer matters, the update does not.
        """
        if not self.allows(job.response_url):
            return False
        try:
            return await self._via_response_url(job.response_url, message)
        except Exception as error:
            log.info("delivery.update_failed", error=type(error).__name__)
            return False

    async def _send(self, job: AskJob, message: SlackMessage) -> str:
        if self.allows(job.response_url):
            if await self._via_response_url(job.response_url, message):
                return "response_url"
        else:
            # A response_url outside Slack's hosts means a forged or poisoned job: never POST there.
            log.warning("security.response_url_refused", host=urlsplit(job.response_url).hostname)
        await self._via_post_ephemeral(job, message)
        return "chat.postEphemeral"

    async def _via_response_url(self, url: str, message: SlackMessage) -> bool:
        """True when posted; False when Slack refused the URL and the fallback should be tried."""
        client = AsyncWebhookClient(url, timeout=SLACK_TIMEOUT_SECONDS)
        try:
            response = await client.send(
                text=message.text,
                blocks=message.blocks,
                response_type="ephemeral",
                # Replace the "working on it" notice rather than leave it stale above the answer.
                replace_original=True,
            )
        except (aiohttp.ClientError, TimeoutError) as error:
            raise DeliveryFailed(f"response_url {type(error).__name__}") from error
        status = response.status_code
        if 200 <= status < 300:
            return True
        if status == 429:
            raise DeliveryFailed("response_url 429", retry_after=_retry_after(response.headers))
        if status >= 500:
            raise DeliveryFailed(f"response_url {status}")
        if message.blocks and _rejects_blocks(str(response.body)):
            raise BlocksRejected(f"response_url {status} {str(response.body)[:100]}")
        log.info("delivery.response_url_refused", status=status, body=str(response.body)[:100])
        return False

    async def _via_post_ephemeral(self, job: AskJob, message: SlackMessage) -> None:
        try:
            await self._web.chat_postEphemeral(
                channel=job.channel_id, user=job.user_id, text=message.text, blocks=message.blocks
            )
        except SlackApiError as error:
            # slack-sdk puts its own response here, or aiohttp's when Slack's body was not JSON.
            status = int(
                getattr(error.response, "status_code", None) or getattr(error.response, "status", None) or 0
            )
            data = getattr(error.response, "data", None)
            code = str(data.get("error", "")) if isinstance(data, dict) else ""
            headers = getattr(error.response, "headers", None)
            if status == 429 or status >= 500 or code in TRANSIENT_API_ERRORS or not code:
                raise DeliveryFailed(
                    f"chat.postEphemeral {status} {code}", retry_after=_retry_after(headers)
                ) from error
            if message.blocks and _rejects_blocks(code):
                raise BlocksRejected(f"chat.postEphemeral {code}") from error
            raise PermanentError(f"chat.postEphemeral {status} {code}", reason=UNDELIVERABLE) from error
        except (aiohttp.ClientError, TimeoutError) as error:
            raise DeliveryFailed(f"chat.postEphemeral {type(error).__name__}") from error


class BlocksRejected(Exception):
    """Slack refused the message's blocks (invalid_blocks, msg_blocks_too_long)."""


def _rejects_blocks(error: str) -> bool:
    return "blocks" in error or "too_long" in error


def _retry_after(headers: object) -> float | None:
    get = getattr(headers, "get", None)
    if get is None:
        return None
    value = get("Retry-After") or get("retry-after")
    try:
        return max(float(value), 0.0) if value is not None else None
    except (TypeError, ValueError):
        return None
