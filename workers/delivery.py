"""Posting a job's messages to Slack, routed by the job's reply target (app/contract/targets.py).

What every target needing them shares lives here once: the response_url budget
(:class:`ResponseUrlBudget`), Slack's 429/5xx/transient-error classification of a Web API call
(:func:`_web_api_failure`), and the plain-text fallback for rejected blocks. A new target is a
new route in :meth:`SlackDelivery.send` (and :meth:`SlackDelivery.update_notice`).

``thread`` and ``direct_message``: ``chat.postMessage`` in the channel (with ``thread_ts`` for a
thread), the ``markdown`` block with a text fallback. Every post first books the channel's next
posting moment and honours the workspace's pause after a 429 (:mod:`workers.slack_rate`); a 429
from any ``chat.*`` call sets that pause for every worker. Interim notices in a thread are its
status (``assistant.threads.setStatus``): best effort, never a post.

Streamed thread answers: :meth:`SlackDelivery.open_stream` gives the writer
(:class:`workers.streaming.SlackStream`: ``chat.startStream`` / ``appendStream`` / ``stopStream``,
each method within its tier for the workspace, ``chat.update`` when Slack ends or refuses a
stream); :meth:`SlackDelivery.complete_stream` is a later run's way to finish the messages an
earlier run's stream left (a crash mid-stream) with the complete answer.

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

from collections.abc import Sequence
from typing import Any
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
from app.contract.targets import DirectMessage, Ephemeral, PrivateNote, Thread
from workers import age, job_state, slack_rate, streaming
from workers.errors import DeliveryFailed, PermanentError
from workers.formatting import thread_answer
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

#: Why a message could not be removed through its response_url.
GONE = "the message is gone already, or too old to change (Slack allows changes for 30 minutes)."

#: Web API errors meaning the app cannot post in that conversation at all.
NOT_A_MEMBER_ERRORS = frozenset({"not_in_channel", "channel_not_found", "is_archived"})
NOT_A_MEMBER = (
    "asklane can't post in that conversation (it isn't a member, or the channel is gone). "
    "Invite it with `/invite @asklane` and ask again."
)

#: What a thread's status cycles through while a question waits or runs (Slack takes up to 10).
LOADING_MESSAGES = ("Reading your question…", "Thinking it over…", "Writing an answer…")

POST_MESSAGE = "chat.postMessage"
SET_STATUS = "assistant.threads.setStatus"
SET_SUGGESTED_PROMPTS = "assistant.threads.setSuggestedPrompts"


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
    """Sends a job's messages to its reply target."""

    def __init__(
        self, settings: Settings, *, limits: slack_rate.MethodLimits = slack_rate.SLACK_TIERS
    ) -> None:
        #: Slack's per-method tiers (tests shrink the window).
        self._limits = limits
        self._prefixes = settings.slack_response_url_prefixes
        #: A 429 asking for longer than this is not waited for on the response_url: a retry
        #: never waits longer than a job's run (workers/retry.py).
        self._max_wait = float(settings.job_timeout_seconds)
        #: Longest wait for a posting moment inside a job (its AI call shares the job's run); a
        #: longer one defers the job (DeliveryFailed with retry_after).
        self._max_post_wait = settings.job_timeout_seconds / 3
        self._web = AsyncWebClient(
            token=settings.slack_bot_token.get_secret_value(),
            base_url=settings.slack_api_url,
            timeout=SLACK_TIMEOUT_SECONDS,
        )

    def open_stream(self, redis: ArqRedis, job: JobBase) -> streaming.SlackStream:
        """A writer streaming the answer to ``job`` (its reply target is a Thread) into its
        thread; no Slack call is made until it is given text."""
        target = job.reply_to
        assert isinstance(target, Thread)  # Slack cannot stream ephemeral messages

        async def post(message: SlackMessage) -> str:
            return await self._post_message(
                redis, job, target.channel_id, message, thread_ts=target.thread_ts
            )

        return streaming.SlackStream(
            self._web, redis, job, max_wait=self._max_post_wait, post=post, limits=self._limits
        )

    async def complete_stream(
        self, redis: ArqRedis, job: JobBase, text: str, *, cut_short: bool, blocks: list[dict[str, Any]]
    ) -> bool:
        """After a crash mid-stream: when an earlier run of ``job`` wrote messages by streaming
        (``keys.stream_key``), make them show exactly ``text`` (its parts, as a posted answer
        would be split), with ``blocks`` under the last, ending any stream still open; returns
        False when the job has no such messages (the caller streams or posts as usual).

        Raises DeliveryFailed (Slack busy or unreachable: the job's retry comes back here) or
        PermanentError.
        """
        target = job.reply_to
        record = await streaming.load_record(redis, job.job_id)
        if record is None or not record.messages or not isinstance(target, Thread):
            return False

        async def post(message: SlackMessage) -> str:
            return await self._post_message(
                redis, job, target.channel_id, message, thread_ts=target.thread_ts
            )

        calls = streaming.SlackCalls(
            self._web, redis, job.asker.team_id, max_wait=self._max_post_wait, limits=self._limits
        )
        await streaming.complete(calls, job, record, thread_answer(text, cut_short=cut_short), blocks, post)
        return True

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
            case Thread() as target:
                await self._post_message(redis, job, target.channel_id, message, thread_ts=target.thread_ts)
                return POST_MESSAGE
            case DirectMessage() as target:
                await self._post_message(redis, job, target.channel_id, message, thread_ts=None)
                return POST_MESSAGE
            case PrivateNote() as target:
                # Beside the message clicked, never over it: the same paths as an ephemeral reply.
                return await self._send_ephemeral(redis, job, target, message, replace_original=False)

    async def post_in_channel(
        self, redis: ArqRedis, job: JobBase, channel_id: str, message: SlackMessage
    ) -> str:
        """Post ``message`` top-level in ``channel_id`` as the app, whatever the job's reply target
        (a shared ``/ask`` answer). Raises as :meth:`send` does; PermanentError with NOT_A_MEMBER
        when the app cannot post there."""
        try:
            await self._post_message(redis, job, channel_id, message, thread_ts=None)
        except BlocksRejected as rejected:
            if message.plain is None:
                raise PermanentError(str(rejected), reason=UNDELIVERABLE) from rejected
            await self._post_message(redis, job, channel_id, SlackMessage(text=message.plain), thread_ts=None)
        return POST_MESSAGE

    async def delete_original(self, redis: ArqRedis, job: JobBase) -> str:
        """Remove the ephemeral message whose response_url is the job's reply target
        (``delete_original``), within its five uses. Raises DeliveryFailed (429, 5xx, unreachable)
        or PermanentError (Slack refused: the message is gone already, or the URL expired)."""
        target = job.reply_to
        assert isinstance(target, Ephemeral)  # the dismiss kind is queued with the click's response_url
        if not self.allows(target.response_url):
            log.warning("security.response_url_refused", host=urlsplit(target.response_url).hostname)
            raise PermanentError("response_url outside SLACK_RESPONSE_URL_PREFIXES", reason=GONE)
        if not await ResponseUrlBudget(redis).take(job, interim=False):
            raise PermanentError("response_url budget spent", reason=GONE)
        client = AsyncWebhookClient(target.response_url, timeout=SLACK_TIMEOUT_SECONDS, retry_handlers=[])
        try:
            response = await client.send_dict({"delete_original": True})
        except (aiohttp.ClientError, TimeoutError) as error:
            raise DeliveryFailed(f"response_url {type(error).__name__}") from error
        status = response.status_code
        if 200 <= status < 300:
            return "response_url"
        if status == 429:
            raise DeliveryFailed("response_url 429", retry_after=retry_after_seconds(response.headers))
        if status >= 500:
            raise DeliveryFailed(f"response_url {status}")
        raise PermanentError(f"response_url {status} {str(response.body)[:100]}", reason=GONE)

    async def update_notice(self, redis: ArqRedis, job: JobBase, message: SlackMessage) -> bool:
        """Show an interim notice; True when Slack took it. Never raises: the answer matters,
        the update does not.

        ``ephemeral``: replaces the user's notice through the response_url only. Interim updates
        never fall back to chat.postEphemeral (which would add a message rather than replace
        one) and only take a use the final message can spare. ``thread``: the thread's status
        (``message.text``, e.g. "is thinking…", with a few loading messages), which Slack clears
        when the answer is posted; it is no post, so no posting slot is booked. ``direct_message``:
        nothing to update.
        """
        target = job.reply_to
        if isinstance(target, Thread):
            return await self._set_status(target, message.text)
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
        self,
        redis: ArqRedis,
        job: JobBase,
        target: Ephemeral | PrivateNote,
        message: SlackMessage,
        *,
        replace_original: bool = True,
    ) -> str:
        if not self.allows(target.response_url):
            # A response_url outside Slack's hosts means a forged or poisoned job: never POST there.
            log.warning("security.response_url_refused", host=urlsplit(target.response_url).hostname)
        elif await (budget := ResponseUrlBudget(redis)).take(job, interim=False):
            try:
                posted = await self._via_response_url(
                    target.response_url, message, replace_original=replace_original
                )
                if posted:
                    return "response_url"
                await budget.give_up(job, "refused")
            except DeliveryFailed as error:
                if not await budget.failed(job, error, self._max_wait):
                    raise
        await self._via_post_ephemeral(redis, job, target, message)
        return "chat.postEphemeral"

    async def _post_message(
        self, redis: ArqRedis, job: JobBase, channel_id: str, message: SlackMessage, *, thread_ts: str | None
    ) -> str:
        """Post ``message``; returns its ts."""
        team = job.asker.team_id
        # Booked across all workers: Slack allows about one message per second per channel.
        await slack_rate.wait_turn(redis, team, channel_id, max_wait=self._max_post_wait)
        try:
            response = await self._web.chat_postMessage(
                channel=channel_id, thread_ts=thread_ts, text=message.text, blocks=message.blocks or None
            )
        except (SlackApiError, aiohttp.ClientError, TimeoutError) as error:
            raise await self._failure(redis, team, POST_MESSAGE, error, message) from error
        return str(response.get("ts", ""))

    async def _set_status(self, target: Thread, status: str) -> bool:
        try:
            await self._web.assistant_threads_setStatus(
                channel_id=target.channel_id,
                thread_ts=target.thread_ts,
                status=status,
                loading_messages=list(LOADING_MESSAGES),
            )
        except Exception as error:
            log.info("delivery.status_failed", error=type(error).__name__, detail=str(error)[:100])
            return False
        return True

    async def suggest_prompts(self, job: JobBase, prompts: Sequence[str]) -> str:
        """Offer ``prompts`` in the user's DM with the app (its Messages tab); returns the call used.

        Raises DeliveryFailed or PermanentError, as a post would.
        """
        target = job.reply_to
        assert isinstance(target, DirectMessage)  # the prompts kind is queued with its DM
        try:
            await self._web.assistant_threads_setSuggestedPrompts(
                channel_id=target.channel_id,
                prompts=[{"title": prompt, "message": prompt} for prompt in prompts],
            )
        except (SlackApiError, aiohttp.ClientError, TimeoutError) as error:
            raise _web_api_failure(SET_SUGGESTED_PROMPTS, error, SlackMessage(text="")) from error
        return SET_SUGGESTED_PROMPTS

    async def _failure(
        self, redis: ArqRedis, team_id: str, call: str, error: Exception, message: SlackMessage
    ) -> Exception:
        """:func:`_web_api_failure`, and a 429 from a ``chat.*`` call pauses every worker's posts
        to the workspace for its Retry-After."""
        failure = _web_api_failure(call, error, message)
        if _rate_limited(error) and isinstance(failure, DeliveryFailed):
            await slack_rate.pause(
                redis, team_id, failure.retry_after or 1.0, max_pause=self._max_wait, call=call
            )
        return failure

    async def _via_response_url(
        self, url: str, message: SlackMessage, *, replace_original: bool = True
    ) -> bool:
        """True when posted; False when Slack refused the URL and the fallback should be tried."""
        # No retry inside the SDK (its default re-sends on a dropped connection): every POST must
        # be one counted use of Slack's five.
        client = AsyncWebhookClient(url, timeout=SLACK_TIMEOUT_SECONDS, retry_handlers=[])
        try:
            response = await client.send(
                text=message.text,
                blocks=message.blocks,
                response_type="ephemeral",
                # Replace the "working on it" notice rather than leave it stale above the answer
                # (a private note beside a clicked message replaces nothing).
                replace_original=replace_original,
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

    async def _via_post_ephemeral(
        self, redis: ArqRedis, job: JobBase, target: Ephemeral | PrivateNote, message: SlackMessage
    ) -> None:
        team = job.asker.team_id
        await slack_rate.honour_pause(redis, team, max_wait=self._max_post_wait)
        try:
            await self._web.chat_postEphemeral(
                channel=target.channel_id, user=target.user_id, text=message.text, blocks=message.blocks
            )
        except (SlackApiError, aiohttp.ClientError, TimeoutError) as error:
            raise await self._failure(redis, team, "chat.postEphemeral", error, message) from error


def _web_api_failure(call: str, error: Exception, message: SlackMessage) -> Exception:
    """The failure type of a Slack Web API call's error, for every call a target makes: a 429
    (with its Retry-After), a 5xx, a transient error code or no answer is DeliveryFailed;
    rejected blocks are BlocksRejected (re-sent as plain text); anything else is permanent."""
    if not isinstance(error, SlackApiError):
        return DeliveryFailed(f"{call} {type(error).__name__}")
    status, code = _status_and_code(error)
    headers = getattr(error.response, "headers", None)
    if status == 429 or status >= 500 or code in TRANSIENT_API_ERRORS or not code:
        return DeliveryFailed(f"{call} {status} {code}", retry_after=retry_after_seconds(headers))
    if message.blocks and _rejects_blocks(code):
        return BlocksRejected(f"{call} {code}")
    if code in NOT_A_MEMBER_ERRORS:
        return PermanentError(f"{call} {status} {code}", reason=NOT_A_MEMBER)
    return PermanentError(f"{call} {status} {code}", reason=UNDELIVERABLE)


def _status_and_code(error: SlackApiError) -> tuple[int, str]:
    # slack-sdk puts its own response here, or aiohttp's when Slack's body was not JSON.
    status = int(getattr(error.response, "status_code", None) or getattr(error.response, "status", None) or 0)
    data = getattr(error.response, "data", None)
    return status, str(data.get("error", "")) if isinstance(data, dict) else ""


def _rate_limited(error: Exception) -> bool:
    if not isinstance(error, SlackApiError):
        return False
    status, code = _status_and_code(error)
    return status == 429 or code == "ratelimited"


class BlocksRejected(Exception):
    """Slack refused the message's blocks (invalid_blocks, msg_blocks_too_long)."""


def _rejects_blocks(error: str) -> bool:
    return "blocks" in error or "too_long" in error
