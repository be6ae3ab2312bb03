"""The Anthropic call, and the line between transient and permanent AI failures."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anthropic
import httpx2  # the SDK's HTTP client: a stream read mid-way raises its errors unwrapped
import structlog
from anthropic.lib.streaming import AsyncMessageStream
from anthropic.types import Message, TextBlock

from app.contract.settings import Settings
from app.contract.usage import CallUsage
from workers.errors import BackPressure, PermanentError, TransientError
from workers.prompt import Prompt
from workers.retry_after import retry_after_seconds

log = structlog.get_logger(__name__)

#: Stop reasons where the text is usable but incomplete.
CUT_SHORT = frozenset({"max_tokens", "model_context_window_exceeded"})

#: Statuses worth another try besides 429 and 5xx.
RETRYABLE_STATUSES = frozenset({408, 409})

#: Statuses meaning "everyone slow down": rate limited, overloaded.
THROTTLED_STATUSES = frozenset({429, 529})

#: Bytes of text per output token when a stream's output count must be estimated: English text
#: averages about four, so three overestimates a little.
BYTES_PER_OUTPUT_TOKEN = 3

#: The limits Anthropic reports in anthropic-ratelimit-{kind}-remaining / -reset headers.
RATE_LIMIT_KINDS = ("requests", "tokens", "input-tokens", "output-tokens")

#: Anthropic rounds the token counts of its -remaining headers (to the nearest thousand): a
#: shortfall this small is rounding, not someone else's spending.
HEADER_ROUNDING_TOKENS = 1000


@dataclass(frozen=True)
class ReportedLimit:
    """One of the organisation's rate limits as a response's ``anthropic-ratelimit-{kind}-*``
    headers report it."""

    remaining: int
    #: Seconds from when the headers were read until the limit is fully replenished (-reset).
    reset_in: float
    #: The limit itself (-limit), when Anthropic sent it.
    limit: int | None = None


@dataclass(frozen=True)
class Answer:
    """What Claude said, and what it cost."""

    text: str
    stop_reason: str | None
    #: The model that answered and the tokens it read (cache writes and reads apart) and wrote.
    usage: CallUsage
    latency_ms: float
    request_id: str | None
    #: The organisation's rate limits as this response's headers report them, by kind.
    rate_limits: Mapping[str, ReportedLimit] = field(default_factory=dict)

    @property
    def cut_short(self) -> bool:
        """True when Claude stopped because of a length limit rather than by finishing."""
        return self.stop_reason in CUT_SHORT

    @property
    def slow_down_for(self) -> float | None:
        """Seconds until the latest reset among rate limits this call used up, if any: pausing
        until then avoids the 429 the next call would get."""
        waits = [limit.reset_in for limit in self.rate_limits.values() if limit.remaining <= 0]
        return max(waits) if waits and max(waits) > 0 else None


class Claude:
    """Asks Claude: one prepared request (workers/prompt.py). Retries are arq's job, so the SDK's
    own are off."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client = anthropic.AsyncAnthropic(
            api_key=settings.anthropic_api_key.get_secret_value(),
            base_url=settings.anthropic_base_url,
            # The SDK would otherwise wait out any retry-after, however long, inside our job.
            max_retries=0,
            timeout=settings.ai_timeout_seconds,
        )

    async def ask(self, prompt: Prompt) -> Answer:
        """Send the prompt's system prompt and messages (built from AI_SYSTEM_PROMPT and the
        conversation by workers/prompt.py; the question only ever in a user turn).

        Raises TransientError or PermanentError; never an SDK exception.
        """
        started = time.perf_counter()
        try:
            # The SDK's timeout bounds each read, so a response trickling in a byte at a time
            # would hold the slot until the job's own deadline: bound the whole call instead.
            async with asyncio.timeout(self._settings.ai_timeout_seconds):
                raw = await self._client.messages.with_raw_response.create(
                    model=self._settings.anthropic_model,
                    max_tokens=self._settings.ai_max_tokens,
                    system=prompt.system,
                    messages=prompt.messages,
                )
                parsed: object = await raw.parse()
        except TimeoutError as error:
            raise TransientError(
                f"anthropic call took over AI_TIMEOUT_SECONDS ({self._settings.ai_timeout_seconds:g} s)"
            ) from error
        except anthropic.NotFoundError as error:
            raise model_not_found(error, self._settings.anthropic_model) from error
        except anthropic.APIError as error:
            raise classify(error) from error
        except (json.JSONDecodeError, UnicodeDecodeError) as error:  # a 200 cut off, say
            raise unusable_body(f"{type(error).__name__}: {error}") from error
        latency_ms = round((time.perf_counter() - started) * 1000, 1)
        request_id = raw.headers.get("request-id")
        try:
            response = usable_message(parsed)
        except TransientError as error:
            error.request_id = request_id
            raise
        try:
            text = answer_text(response)
        except PermanentError as error:
            # Anthropic answered, and billed what it read and wrote.
            error.request_id, error.usage = request_id, message_usage(response)
            raise
        return Answer(
            text=text,
            stop_reason=response.stop_reason,
            usage=message_usage(response),
            latency_ms=latency_ms,
            request_id=request_id,
            rate_limits=reported_limits(raw.headers),
        )

    @asynccontextmanager
    async def stream(self, prompt: Prompt) -> AsyncIterator[AnswerStream]:
        """Ask as :meth:`ask` does, with Anthropic's streaming Messages API: the
        :class:`AnswerStream` yields the answer's text deltas as they arrive, and holds the final
        :class:`Answer` (usage, stop reason, request id) once they are all in.

        Leaving the block closes the HTTP stream at once, finished or not: Anthropic stops
        generating (and billing) when the client goes away. Failures are typed as :meth:`ask`
        types them: the HTTP status before the first event; an ``error`` event or a dropped
        connection mid-stream, or no event for AI_TIMEOUT_SECONDS, is a TransientError.
        """
        started = time.perf_counter()
        timeout = self._settings.ai_timeout_seconds
        manager = self._client.messages.stream(
            model=self._settings.anthropic_model,
            max_tokens=self._settings.ai_max_tokens,
            system=prompt.system,
            messages=prompt.messages,
        )
        try:
            async with asyncio.timeout(timeout):
                sdk_stream = await manager.__aenter__()
        except TimeoutError as error:
            raise TransientError(
                f"anthropic stream did not start within AI_TIMEOUT_SECONDS ({timeout:g} s)"
            ) from error
        except anthropic.NotFoundError as error:
            raise model_not_found(error, self._settings.anthropic_model) from error
        except anthropic.APIError as error:
            raise classify(error) from error
        try:
            yield AnswerStream(sdk_stream, started=started, stall_seconds=timeout)
        finally:
            # At once, whatever ended the block: an unread stream left open keeps Claude writing.
            await sdk_stream.close()

    async def warm_up(self) -> None:
        """Look up the configured model before the first question.

        A process's first request pays for lazy imports and for opening the connection (DNS, TLS)
        — tens of milliseconds between the rate limiter's grant and the request reaching
        Anthropic. Paying it at start-up keeps later grants and arrivals in step, and shows an
        operator a bad key, an unreachable API or a mistyped ANTHROPIC_MODEL at once.

        A model that does not exist is logged as one ERROR (``worker.model_not_found``) and the
        worker keeps running: every question then ends in a message saying an admin must fix
        the model, which is better than questions waiting on a worker that is not there.
        """
        model = self._settings.anthropic_model
        started = time.perf_counter()
        try:
            await self._client.models.retrieve(model, timeout=5.0)
        except anthropic.NotFoundError as error:
            if error.type != "not_found_error":  # not Anthropic's 404: a wrong ANTHROPIC_BASE_URL
                log.warning("worker.ai_unreachable", error=type(error).__name__, detail=str(classify(error)))
                return
            log.error(
                "worker.model_not_found",
                model=model,
                detail=f"ANTHROPIC_MODEL {model!r} does not exist for this API key; every question will fail",
                request_id=error.request_id,
            )
        except anthropic.APIError as error:
            log.warning("worker.ai_unreachable", error=type(error).__name__, detail=str(classify(error)))
        else:
            log.info(
                "worker.ai_ready", model=model, latency_ms=round((time.perf_counter() - started) * 1000, 1)
            )

    async def close(self) -> None:
        """Close the HTTP connection pool."""
        await self._client.close()


class AnswerStream:
    """Claude's answer as it is written: ``async for text in stream`` yields the text deltas in
    order; once they end, :attr:`answer` holds the whole :class:`Answer`.

    Raises TransientError for a stream that breaks (an ``error`` event, a dropped connection, an
    end without ``message_stop``) or stalls (no event for ``stall_seconds``), and PermanentError
    for a refusal or an empty answer, as :meth:`Claude.ask` does.
    """

    def __init__(self, stream: AsyncMessageStream[Any], *, started: float, stall_seconds: float) -> None:
        self._stream = stream
        self._started = started
        self._stall_seconds = stall_seconds
        self._stopped = False
        #: The whole answer, once the stream has ended (None until then).
        self.answer: Answer | None = None
        #: The failure the stream raised, if it broke: a caller may handle it inside the block.
        self.failure: TransientError | PermanentError | None = None

    @property
    def request_id(self) -> str | None:
        return self._stream.request_id

    def usage_so_far(self) -> CallUsage | None:
        """The tokens used up to now by a stream that did not end with a whole :attr:`answer`
        (stopped, or broken mid-answer); None before Anthropic's ``message_start``.

        Anthropic reports the final output count only in the last ``message_delta``; until then
        it is estimated from the text received, at one token per BYTES_PER_OUTPUT_TOKEN bytes
        (a token is rarely shorter), so a budget is charged no less than the call cost.
        """
        try:
            snapshot = self._stream.current_message_snapshot
        except (AssertionError, AttributeError):  # no message_start yet
            return None
        usage = getattr(snapshot, "usage", None)
        if usage is None or not isinstance(usage.input_tokens, int):
            return None
        text = "".join(block.text for block in snapshot.content if isinstance(block, TextBlock))
        estimate = -(-len(text.encode()) // BYTES_PER_OUTPUT_TOKEN)
        return CallUsage(
            model=str(snapshot.model),
            input_tokens=usage.input_tokens,
            output_tokens=max(_tokens(usage.output_tokens), estimate),
            cache_creation_input_tokens=_tokens(usage.cache_creation_input_tokens),
            cache_read_input_tokens=_tokens(usage.cache_read_input_tokens),
            estimated=True,
        )

    def __aiter__(self) -> AnswerStream:
        return self

    async def __anext__(self) -> str:
        try:
            return await self._next_text()
        except (TransientError, PermanentError) as error:
            self.failure = error
            raise

    async def _next_text(self) -> str:
        while self.answer is None:
            event = await self._next_event()
            if event is None:
                self.answer = self._final()
                break
            if event.type == "message_stop":
                self._stopped = True
            elif event.type == "text" and event.text:
                return str(event.text)
        raise StopAsyncIteration

    async def _next_event(self) -> Any:
        """The next event of the SDK's stream, or None at its end; typed failures."""
        try:
            async with asyncio.timeout(self._stall_seconds):
                return await self._stream.__anext__()
        except StopAsyncIteration:
            return None
        except TimeoutError as error:
            raise TransientError(
                f"anthropic stream stalled: no event for AI_TIMEOUT_SECONDS ({self._stall_seconds:g} s)"
            ) from error
        except anthropic.APIStatusError as error:
            raise mid_stream_error(error) from error
        except anthropic.APIError as error:
            raise classify(error) from error
        except httpx2.HTTPError as error:  # the connection dropped, or the body broke off
            raise TransientError(f"anthropic stream broken: {type(error).__name__}") from error
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as error:
            raise unusable_body(f"stream event: {type(error).__name__}: {error}") from error

    def _final(self) -> Answer:
        if not self._stopped:
            raise TransientError("anthropic stream ended before message_stop")
        response = usable_message(self._stream.current_message_snapshot)
        text = answer_text(response)
        return Answer(
            text=text,
            stop_reason=response.stop_reason,
            usage=message_usage(response),
            latency_ms=round((time.perf_counter() - self._started) * 1000, 1),
            request_id=self._stream.request_id,
            rate_limits=reported_limits(self._stream.response.headers),
        )


def answer_text(response: Message) -> str:
    """The answer's text, or the PermanentError for a refusal or an empty answer."""
    if response.stop_reason == "refusal":
        raise PermanentError("stop_reason refusal", reason="Claude declined to answer this question.")
    text = "".join(block.text for block in response.content if isinstance(block, TextBlock)).strip()
    if not text:
        raise PermanentError(
            f"empty answer, stop_reason {response.stop_reason}",
            reason="Claude returned an empty answer. Try rephrasing the question.",
        )
    return text


def message_usage(response: Message) -> CallUsage:
    usage = response.usage
    return CallUsage(
        model=response.model,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_creation_input_tokens=_tokens(usage.cache_creation_input_tokens),
        cache_read_input_tokens=_tokens(usage.cache_read_input_tokens),
    )


def mid_stream_error(error: anthropic.APIStatusError) -> TransientError | PermanentError:
    """An ``error`` event after the stream began (its HTTP status was 200): Anthropic overloaded
    or failing mid-answer, worth another try. A status error raised mid-stream for any other
    status is classified as usual."""
    if error.status_code != 200:
        return classify(error)
    kind = error.type or "error"
    failure = TransientError(
        f"anthropic error event mid-stream: {kind}",
        throttled=kind in ("overloaded_error", "rate_limit_error"),
    )
    # The stream's own request-id: the answer Anthropic broke off.
    failure.request_id = error.request_id
    return failure


def _tokens(value: object) -> int:
    """A usage count Anthropic may leave out (or null, for a request without caching) as an int."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def classify(error: anthropic.APIError) -> TransientError | PermanentError:
    """Map an SDK exception to our two failure types, carrying Anthropic's ``request-id`` when
    Anthropic answered (what its support asks for)."""
    failure = _failure_type(error)
    failure.request_id = getattr(error, "request_id", None)
    return failure


def _failure_type(error: anthropic.APIError) -> TransientError | PermanentError:
    if isinstance(error, anthropic.APIConnectionError):  # includes APITimeoutError
        return TransientError(type(error).__name__)
    if not isinstance(error, anthropic.APIStatusError):
        return PermanentError(type(error).__name__)

    status = error.status_code
    detail = f"anthropic {status} {error.type or ''} {error.error_code or ''}".strip()
    if status == 429 and (error.error_code or "").endswith("spend_limit_reached"):
        return PermanentError(detail, reason="the team's Claude usage limit has been reached.")
    if status == 429:
        # The organisation's request or token rate: wait, as everyone must, not a failed try.
        return BackPressure(detail, retry_after=retry_after_seconds(error.response.headers))
    if status >= 500 or status in RETRYABLE_STATUSES:
        return TransientError(
            detail,
            retry_after=retry_after_seconds(error.response.headers),
            throttled=status in THROTTLED_STATUSES,
        )
    if status in (401, 403):
        return PermanentError(
            detail, reason="asklane is not allowed to use Claude; an admin needs to check its API key."
        )
    if status == 413:
        return PermanentError(detail, reason="the question is too large for Claude.")
    return PermanentError(detail, reason="Claude could not process this request.")


def model_not_found(error: anthropic.NotFoundError, model: str) -> TransientError | PermanentError:
    """A 404 from the Messages API: Anthropic's own (``not_found_error``) means the model."""
    if error.type != "not_found_error":
        return classify(error)  # not Anthropic's answer: a wrong ANTHROPIC_BASE_URL, say
    failure = PermanentError(
        f"anthropic 404 not_found_error: model {model}",
        reason=(
            f"the Claude model asklane is set to use ({model}) does not exist; "
            "an admin needs to fix ANTHROPIC_MODEL."
        ),
    )
    failure.request_id = error.request_id
    return failure


def unusable_body(detail: str) -> TransientError:
    """A 200 we cannot read (cut off, an HTML error page from a proxy, fields missing): the next
    try usually gets a proper one."""
    return TransientError(f"anthropic 200 with an unusable body: {detail}")


def usable_message(parsed: object) -> Message:
    """``parsed`` if it is a Message we can read, else raise :func:`unusable_body`.

    The SDK builds responses without validating them, so an HTML page comes back as a string
    and ``{}`` as a Message whose fields are all None.
    """
    if not isinstance(parsed, Message):
        raise unusable_body(f"not a message ({type(parsed).__name__})")
    if not isinstance(parsed.content, list):
        raise unusable_body("no content")
    usage = parsed.usage
    if usage is None or not isinstance(usage.input_tokens, int) or not isinstance(usage.output_tokens, int):
        raise unusable_body("no usage")
    if not isinstance(parsed.model, str):
        raise unusable_body("no model")
    for block in parsed.content:
        if isinstance(block, TextBlock) and not isinstance(block.text, str):
            raise unusable_body("a text block without text")
    return parsed


def reported_limits(headers: object) -> dict[str, ReportedLimit]:
    """Each rate limit whose -remaining and -reset headers are present and readable (with its
    -limit when that is too), by kind (requests, tokens, input-tokens, output-tokens)."""
    get = getattr(headers, "get", None)
    if get is None:
        return {}
    limits = {}
    for kind in RATE_LIMIT_KINDS:
        limit, remaining, reset = (
            get(f"anthropic-ratelimit-{kind}-{part}") for part in ("limit", "remaining", "reset")
        )
        if remaining is None or reset is None:
            continue
        try:
            when = datetime.fromisoformat(reset.replace("Z", "+00:00"))
            reported = int(remaining)
            ceiling = None if limit is None else int(limit)
        except ValueError:
            continue
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        limits[kind] = ReportedLimit(reported, (when - datetime.now(UTC)).total_seconds(), ceiling)
    return limits


def spent_elsewhere(
    reported: Mapping[str, ReportedLimit], expected: Mapping[str, int]
) -> list[tuple[str, ReportedLimit, int]]:
    """The limits (kind, report, the remaining asklane expected) of which Anthropic reports more
    than rounding less remaining than ``expected`` (by kind): something besides asklane is
    spending the organisation's tokens. Kinds without a report or an expectation are not judged."""
    short = []
    for kind, remaining in expected.items():
        report = reported.get(kind)
        if report is not None and report.remaining < remaining - HEADER_ROUNDING_TOKENS:
            short.append((kind, report, remaining))
    return short
