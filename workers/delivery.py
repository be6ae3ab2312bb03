"""Posting a job's messages to Slack, routed by the job's reply target (app/contract/targets.py).

What every target needing them shares lives here once: the response_url budget
(:class:`ResponseUrlBudget`), Slack's 429/5xx/transient-error classification of a Web API call
(:func:`_web_api_failure`), and the plain-text fallback for rejected blocks. A new target is a
new route in :meth:`SlackDelivery.send` (and :meth:`SlackDelivery.update_notice`).

``ephemeral``: the command's response_url comes first: it works in DMs and in channels the bot has not joined,
where chat.postEphemeral fails. chat.postEphemeral through SLACK_API_URL is the fallback. The rule
for when a response_url may be used, in one place (:class:`ResponseUrlBudget`):

* Slack accepts RESPONSE_URL_USES (5) posts to a response_url. Every POST is counted in Redis per
  job, failed ones included, and none is made past the budget.
* An interim update (progress) may only take a use that leaves KEPT_FOR_FINAL (2) of them: the
  final message (answer or error) and one retry of its post.
* The final message's post failing with a 5xx, a timeout, a dropped connection or a 429 is retried
  once (with the job's backoff); when that retry fails too, or a 429's Retry-After would outlive
  the job, or Slack refuses the URL, or the budget is spent, the response_url is marked unusable
  for the job (in Redis, so a re-run on another worker honours it) and the message goes by
  chat.postEphemeral at once.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import aiohttp
import structlog
from arq.connections import ArqRedis
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from app.contract import keys, scripts
from app.contract.jobs import JobBase
from app.contract.messages import SlackMessage
from app.contract.settings import Settings
from app.contract.targets import Ephemeral
from workers import age, job_state
from workers.errors import DeliveryFailed, PermanentError
from workers.retry import too_old_to_wait
from workers.retry_after import retry_after_seconds

log = structlog.get_logger(__name__)

#: Seconds for one HTTP call to Slack.
SLACK_TIMEOUT_SECONDS = 10

#: Web API errors that a later attempt may get past.
TRANSIENT_API_ERRORS = frozenset(
    {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)

UNDELIVERABLE = "I couldn't post the answer here. Try again in a channel or DM where asklane is available."


#: Posts Slack accepts to one response_url.
RESPONSE_URL_USES = 5

#: Uses an interim update must leave untouched: the final message and one retry of its post.
KEPT_FOR_FINAL = 2

#: Failed posts of a final message to the response_url before chat.postEphemeral takes over.
FAILED_POSTS_BEFORE_FALLBACK = 2


class ResponseUrlBudget:
    """Slack's five uses of a job's response_url, and whether it is still worth using, in Redis."""

    def __init__(self, redis: ArqRedis) -> None:
        self._redis = redis

    async def take(self, job: JobBase, *, interim: bool) -> bool:
        """Take one use for a POST about to be made; False when none may be taken."""
        limit = RESPONSE_URL_USES - KEPT_FOR_FINAL if interim else RESPONSE_URL_USES
        taken = int(
            await scripts.take_response_url_use(
                self._redis,
                keys=[keys.uses_key(job.job_id), keys.unusable_key(job.job_id)],
                args=[limit, job_state.STATE_TTL_SECONDS],
            )
        )
        if taken == 0 and not interim:
            await self.give_up(job, "budget spent")
        return taken == 1

    async def failed(self, job: JobBase, error: DeliveryFailed, max_wait: float) -> bool:
        """Count a failed post of a final message; True when the response_url is now given up."""
        key = keys.failed_posts_key(job.job_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, job_state.STATE_TTL_SECONDS)
            count, _ = await pipe.execute()
        wait = error.retry_after or 0.0
        if wait > max_wait or too_old_to_wait(await age.enqueued_at(self._redis, job), wait):
            await self.give_up(job, f"retry-after {wait:g} s would outlive the job")
            return True
        if int(count) >= FAILED_POSTS_BEFORE_FALLBACK:
            await self.give_up(job, f"{count} failed posts, last {error}")
            return True
        return False

    async def give_up(self, job: JobBase, reason: str) -> None:
        """Never post to this job's response_url again, on any worker."""
        if await self._redis.set(
            keys.unusable_key(job.job_id), reason, nx=True, ex=job_state.STATE_TTL_SECONDS
        ):
            log.warning("delivery.response_url_unusable", job_id=job.job_id, reason=reason)


class SlackDelivery:
    """Sends one message to the user who asked, ephemerally."""

    def __init__(self, settings: Settings) -> None:
        self._prefixes = settings.slack_response_url_prefixes
        #: A 429 asking for longer than this is not waited for on the response_url: a retry
        #: never waits longer than a job's run (workers/retry.py).
        self._max_wait = float(settings.job_timeout_seconds)
        self._web = AsyncWebClient(
            token=settings.slack_bot_token.get_secret_value(),
            base_url=settings.slack_api_url,
            timeout=SLACK_TIMEOUT_SECONDS,
        )

    def allows(self, response_url: str) -> bool:
        """True when the URL is under one of SLACK_RESPONSE_URL_PREFIXES."""
        return any(response_url.startswith(prefix) for prefix in self._prefixes)

    async def send(self, redis: ArqRedis, job: JobBase, message: SlackMessage) -> str:
        """Post the final message to the job's reply target; returns the path used (for
        ``ephemeral``: "response_url" or "chat.postEphemeral").

        Raises TransientError (rate limited, Slack unreachable) or PermanentError.
        """
        try:
            return await self._route(redis, job, message)
        except BlocksRejected as rejected:
            if message.plain is None:
                raise PermanentError(str(rejected), reason=UNDELIVERABLE) from rejected
            # Slack's block limits are not all documented (a markdown block expands into several);
            # the same answer as plain text always fits.
            log.warning("delivery.blocks_rejected", detail=str(rejected))
            return await self._route(redis, job, SlackMessage(text=message.plain))

    async def _route(self, redis: ArqRedis, job: JobBase, message: SlackMessage) -> str:
        match job.reply_to:
            case Ephemeral() as target:
                return await self._send_ephemeral(redis, job, target, message)

    async def update_notice(self, redis: ArqRedis, job: JobBase, message: SlackMessage) -> bool:
        """Replace the user's notice through the response_url only; True when Slack took it.

        Interim updates never fall back to chat.postEphemeral (which would add a message rather
        than replace one), only take a use the final message can spare, and never raise: the
        answer matters, the update does not.
        """
        target = job.reply_to
        if not isinstance(target, Ephemeral) or not self.allows(target.response_url):
            return False
        budget = ResponseUrlBudget(redis)
        try:
            if not await budget.take(job, interim=True):
                return False
            posted = await self._via_response_url(target.response_url, message)
            if not posted:
                await budget.give_up(job, "refused")
            return posted
        except Exception as error:
            log.info("delivery.update_failed", error=type(error).__name__)
            return False

    async def _send_ephemeral(
        self, redis: ArqRedis, job: JobBase, target: Ephemeral, message: SlackMessage
    ) -> str:
        if not self.allows(target.response_url):
            # A response_url outside Slack's hosts means a forged or poisoned job: never POST there.
            log.warning("security.response_url_refused", host=urlsplit(target.response_url).hostname)
        elif await (budget := ResponseUrlBudget(redis)).take(job, interim=False):
            try:
                if await self._via_response_url(target.response_url, message):
                    return "response_url"
                await budget.give_up(job, "refused")
            except DeliveryFailed as error:
                if not await budget.failed(job, error, self._max_wait):
                    raise
        await self._via_post_ephemeral(target, message)
        return "chat.postEphemeral"

    async def _via_response_url(self, url: str, message: SlackMessage) -> bool:
        """True when posted; False when Slack refused the URL and the fallback should be tried."""
        # No retry inside the SDK (its default re-sends on a dropped connection): every POST must
        # be one counted use of Slack's five.
        client = AsyncWebhookClient(url, timeout=SLACK_TIMEOUT_SECONDS, retry_handlers=[])
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
            raise DeliveryFailed("response_url 429", retry_after=retry_after_seconds(response.headers))
        if status >= 500:
            raise DeliveryFailed(f"response_url {status}")
        if message.blocks and _rejects_blocks(str(response.body)):
            raise BlocksRejected(f"response_url {status} {str(response.body)[:100]}")
        log.info("delivery.response_url_refused", status=status, body=str(response.body)[:100])
        return False

    async def _via_post_ephemeral(self, target: Ephemeral, message: SlackMessage) -> None:
        try:
            await self._web.chat_postEphemeral(
                channel=target.channel_id, user=target.user_id, text=message.text, blocks=message.blocks
            )
        except (SlackApiError, aiohttp.ClientError, TimeoutError) as error:
            raise _web_api_failure("chat.postEphemeral", error, message) from error


def _web_api_failure(call: str, error: Exception, message: SlackMessage) -> Exception:
    """The failure type of a Slack Web API call's error, for every call a target makes: a 429
    (with its Retry-After), a 5xx, a transient error code or no answer is DeliveryFailed;
    rejected blocks are BlocksRejected (re-sent as plain text); anything else is permanent."""
    if not isinstance(error, SlackApiError):
        return DeliveryFailed(f"{call} {type(error).__name__}")
    # slack-sdk puts its own response here, or aiohttp's when Slack's body was not JSON.
    status = int(getattr(error.response, "status_code", None) or getattr(error.response, "status", None) or 0)
    data = getattr(error.response, "data", None)
    code = str(data.get("error", "")) if isinstance(data, dict) else ""
    headers = getattr(error.response, "headers", None)
    if status == 429 or status >= 500 or code in TRANSIENT_API_ERRORS or not code:
        return DeliveryFailed(f"{call} {status} {code}", retry_after=retry_after_seconds(headers))
    if message.blocks and _rejects_blocks(code):
        return BlocksRejected(f"{call} {code}")
    return PermanentError(f"{call} {status} {code}", reason=UNDELIVERABLE)


class BlocksRejected(Exception):
    """Slack refused the message's blocks (invalid_blocks, msg_blocks_too_long)."""


def _rejects_blocks(error: str) -> bool:
    return "blocks" in error or "too_long" in error
