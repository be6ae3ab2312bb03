"""The global AI-call limiter and the shared pause, both kept atomically in Redis.

Every worker process books the moment of its next AI call here. One Lua script, on Redis's own
clock (``TIME``), keeps a sliding-window log of booked start times:

* a booking is never earlier than the newest booking, nor than the pause (set when Anthropic
  answers 429/529 with retry-after), nor than ``W`` after the N-th newest booking, where
  ``W`` is one second plus 20 ms of margin for network jitter;
* so in every sliding window of one second at most ``JOBS_PER_SECOND`` calls are booked, across
  all workers, and no fixed-window boundary lets 2N through.

A job whose booking would be near sleeps until it and then calls the AI with no other await in
between. When the next free moment is far off, nothing is booked: the job is deferred until
about then without being charged an attempt (see :class:`SlotTooFar`), so waiting neither holds a
concurrency slot for long nor polls Redis.

No pause is stored longer than the limiter's ``max_pause`` (the job timeout): a retry-after of a
day would otherwise stop every worker for a day. When the limit is still in force after it, the
next call meets another 429 and pauses again, so the fleet probes about once per ``max_pause``.
Each job's own wait is bounded apart from the pause, by its maximum age and, once it has been
refused itself, by AI_BACKPRESSURE_MAX_WAIT_SECONDS (:meth:`RateLimiter.refused_for`).

**Tokens** (AI_INPUT_TOKENS_PER_MINUTE, AI_OUTPUT_TOKENS_PER_MINUTE; :class:`TokenLimits`). The
same script run books the call's slot and its tokens, or nothing: a :class:`Reservation` of the
prompt's estimated input tokens and its ``max_tokens`` of output, in a sliding-window log of a
minute plus :data:`TOKEN_WINDOW_MARGIN_SECONDS`, at the earliest moment where every window
holding it stays within each limit. After the call :meth:`RateLimiter.settle` replaces the
reservation by what Anthropic reported (input and cache-creation tokens, not cache reads; output),
giving back the rest, and compares Anthropic's rate-limit headers with what asklane booked: a
remaining count lower than asklane's own bookings explain means something else spends the
organisation's tokens, and every worker pauses until that limit's reset. A call whose own
reservation exceeds a whole minute's limit can never be booked: it fails at once
(PermanentError) instead of waiting forever.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

import structlog
from arq.connections import ArqRedis
from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.contract import scripts
from app.contract.keys import RATE_PAUSE_KEY, RATE_TOKENS_KEY, RATE_WINDOW_KEY, refused_since_key
from app.contract.settings import Settings
from app.contract.usage import CallUsage
from workers.ai import ReportedLimit, spent_elsewhere
from workers.errors import PermanentError

log = structlog.get_logger(__name__)


#: The longest pause stored when the limiter is not told otherwise (the default job timeout).
MAX_PAUSE_SECONDS = 60.0

#: A job's refused-since mark outlives any job (they give up at 25 minutes).
REFUSED_SINCE_TTL_MS = 3600 * 1000

#: The window, in microseconds: one second plus 20 ms for the jitter between a grant and the
#: request reaching Anthropic (a process's first request opens its connection). It costs 2% of
#: the rate: at most 97.9% of JOBS_PER_SECOND is granted.
WINDOW_US = 1_020_000

#: A job ready to call later than this after its booked moment books again rather than call late.
LATE_TOLERANCE_SECONDS = 0.010

#: Late bookings in a row after which the job is deferred instead: on a CPU so busy that every
#: booking comes too late, rebooking would only use up the slots other workers could call in.
MAX_LATE_BOOKINGS = 3

#: Bookings nearer than this are slept out inside the job; farther ones defer the job instead.
MAX_INLINE_WAIT_SECONDS = 1.0


#: Added to a token window when booking: a call reaches Anthropic some time after its moment, and
#: calls booked a window apart must not arrive less than a window apart. Costs 0.4 % of a limit.
TOKEN_WINDOW_MARGIN_SECONDS = 0.25

#: A job whose tokens are far off comes back after at most this long to book again: calls in
#: flight give back what they did not use, which the predicted moment cannot know of.
TOKEN_RECHECK_SECONDS = 2.0


@dataclass(frozen=True)
class TokenLimits:
    """Tokens all workers together may book per window (None: that kind is not limited)."""

    input_per_window: int | None = None
    output_per_window: int | None = None
    #: Tests and benches shrink the window to see it work in seconds.
    window_seconds: float = 60.0

    @classmethod
    def per_minute(cls, settings: Settings) -> TokenLimits:
        return cls(settings.ai_input_tokens_per_minute, settings.ai_output_tokens_per_minute)

    @property
    def on(self) -> bool:
        return self.input_per_window is not None or self.output_per_window is not None

    @property
    def booking_window_us(self) -> int:
        return int((self.window_seconds + TOKEN_WINDOW_MARGIN_SECONDS) * 1_000_000)


@dataclass(frozen=True)
class Reservation:
    """The tokens an AI call books before it starts (its prompt's estimate and its max_tokens), or
    what a finished one used."""

    input_tokens: int = 0
    output_tokens: int = 0

    @classmethod
    def used(cls, usage: CallUsage | None) -> Reservation:
        """What a call used as Anthropic's limits count it: input and cache-creation tokens (cache
        reads do not count towards the input limit), and output (estimated for a stopped stream);
        nothing for a call that failed before Anthropic answered."""
        if usage is None:
            return cls()
        return cls(usage.input_tokens + usage.cache_creation_input_tokens, usage.output_tokens)


@dataclass
class Booking:
    """One booked AI call: what :meth:`RateLimiter.settle` needs after it."""

    member: str
    reserved: Reservation
    #: Anthropic's rate-limit headers on the call's answer (workers/ai.py), once it came.
    reported: Mapping[str, ReportedLimit] = field(default_factory=dict)


class SlotTooFar(Exception):
    """No AI slot within MAX_INLINE_WAIT_SECONDS; defer the job by ``wait`` without charging it."""

    def __init__(self, wait: float) -> None:
        super().__init__(f"next AI slot in {wait:.3f}s")
        self.wait = wait

    @property
    def defer(self) -> float:
        """How long to defer the job: the wait, spread over the inline window.

        Jobs deferred together would otherwise all come back at the same free moment, one would
        get it, and the rest would be deferred again and again.
        """
        return spread(self.wait)


def spread(wait: float) -> float:
    """``wait`` plus a random share of the inline window, so jobs waiting together part."""
    return wait + random.uniform(0.0, MAX_INLINE_WAIT_SECONDS)


class RateLimiter:
    """Books AI-call start times for every worker sharing the Redis."""

    def __init__(
        self,
        redis: ArqRedis,
        per_second: float,
        *,
        max_pause: float = MAX_PAUSE_SECONDS,
        tokens: TokenLimits = TokenLimits(),
    ) -> None:
        self._redis = redis
        self.max_pause = max_pause
        self.tokens = tokens
        # The log counts whole calls: a rate of 2.5 allows 2 per second; below 1 it allows one call
        # per 1/rate seconds.
        self._limit = max(1, int(per_second))
        self._window_us = WINDOW_US if per_second >= 1 else int(WINDOW_US / per_second)
        #: Monotonic time before which a newly started job would only be deferred again.
        self.no_slot_until = 0.0

    @classmethod
    def for_settings(cls, redis: ArqRedis, settings: Settings) -> RateLimiter:
        """The worker's limiter: JOBS_PER_SECOND, the token limits, pauses up to the job timeout."""
        return cls(
            redis,
            settings.jobs_per_second,
            max_pause=settings.job_timeout_seconds,
            tokens=TokenLimits.per_minute(settings),
        )

    async def wait_for_slot(self, reservation: Reservation = Reservation()) -> Booking:
        """Return at the booked moment of an AI call, its tokens booked with it; or raise
        SlotTooFar, or PermanentError when ``reservation`` alone exceeds a whole window's limit.

        The caller must start its AI request right after this returns, with no other await, and
        hand the booking to :meth:`settle` once the call has ended, however it ended.
        """
        self._refuse_unbookable(reservation)
        late = 0
        unused = ""
        while True:
            # Redis reads its clock somewhere between sending and the reply: the booked moment is
            # no earlier than ``sent + wait`` and no later than the reply's arrival plus ``wait``.
            sent = time.monotonic()
            reply = await scripts.rate_book(
                self._redis,
                keys=self._book_keys(),
                args=[
                    self._limit,
                    self._window_us,
                    int(MAX_INLINE_WAIT_SECONDS * 1_000_000),
                    member := uuid.uuid4().hex,
                    unused,
                    1000,  # microseconds
                    *self._token_args(reservation),
                ],
            )
            booked, wait = int(reply[0]), int(reply[1]) / 1_000_000
            bound = _text(reply[2]) if len(reply) > 2 else "calls"
            if not booked:
                if wait < 0:  # the script's own guard; the check above refuses these first
                    raise PermanentError(f"{bound} token reservation over a whole window's limit")
                if bound in ("input", "output"):
                    # Calls in flight give back what they did not use: look again soon.
                    wait = min(wait, TOKEN_RECHECK_SECONDS)
                # Tell this process's worker loop to leave the backlog alone until a slot is near,
                # instead of starting job after job that can only defer itself.
                self.no_slot_until = time.monotonic() + max(0.0, wait - MAX_INLINE_WAIT_SECONDS / 2)
                raise SlotTooFar(wait)
            if wait > 0:
                # Counted from the reply, so the call is never early.
                await asyncio.sleep(wait)
                # A pause may have begun while we slept (another worker met a 429): the booking
                # stands only if none is in force now.
                if int(await scripts.rate_paused_for(self._redis, keys=[RATE_PAUSE_KEY])):
                    unused = member
                    continue
            # Counted from the send, so lateness is never underestimated.
            lateness = time.monotonic() - (sent + wait)
            if lateness <= LATE_TOLERANCE_SECONDS:
                return Booking(member, reservation)  # the grant; the call follows it
            # Ready late (a busy CPU or event loop): a request sent now could share a second with
            # a call booked one window after ours. Book afresh, giving the missed slot back.
            log.info("ai.slot_missed", late_ms=round(lateness * 1000, 1))
            unused = member
            late += 1
            if late >= MAX_LATE_BOOKINGS:
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.zrem(RATE_WINDOW_KEY, unused)
                    pipe.zrem(RATE_TOKENS_KEY, _token_member(unused, reservation))
                    await pipe.execute()
                raise SlotTooFar(0.0)

    async def settle(
        self, booking: Booking | None, usage: CallUsage | None, *, answered: bool = True
    ) -> None:
        """After an AI call, however it ended: book what it used (``usage``, None when it failed
        before Anthropic answered) in place of its reservation, and pause every worker until the
        reset of a token limit of which Anthropic reports less remaining than asklane's bookings
        explain (something else is spending the organisation's tokens).

        ``answered`` False: no answer came at all (a timeout, a dropped connection), so whether
        Anthropic counted the call is unknown; the reservation stays booked, as if it had, rather
        than given back for a later header check to blame on someone else."""
        if booking is None or not self.tokens.on or not answered:
            return
        used = Reservation.used(usage)
        if (
            used.input_tokens < booking.reserved.input_tokens
            or used.output_tokens < booking.reserved.output_tokens
        ):
            # Tokens given back may let a call in now: this process's worker loop, holding the
            # backlog until the predicted moment, looks again as soon as this job ends.
            self.no_slot_until = 0.0
        try:
            found, input_booked, output_booked, since_us = await scripts.rate_settle(
                self._redis,
                keys=[RATE_TOKENS_KEY],
                args=[
                    booking.member,
                    booking.reserved.input_tokens,
                    booking.reserved.output_tokens,
                    used.input_tokens,
                    used.output_tokens,
                    self.tokens.booking_window_us,
                ],
            )
        except RedisError as error:
            # The reservation stays booked: the limit errs on the safe side for a minute. The
            # call's own outcome (an answer, or the failure being raised) must not be lost to it.
            log.warning("ai.settle_failed", error=type(error).__name__, detail=str(error))
            return
        # A call longer than the window: bookings Anthropic still counted may be gone from the log.
        if not int(found) or int(since_us) > self.tokens.window_seconds * 1_000_000:
            return
        expected = {}
        for kind, limit, booked in (
            ("input-tokens", self.tokens.input_per_window, int(input_booked)),
            ("output-tokens", self.tokens.output_per_window, int(output_booked)),
        ):
            report = booking.reported.get(kind)
            if limit is not None and report is not None:
                # Another app may use what the organisation's limit leaves beyond asklane's.
                ceiling = limit if report.limit is None else min(limit, report.limit)
                expected[kind] = ceiling - booked
        for kind, report, remaining in spent_elsewhere(booking.reported, expected):
            try:
                await self.pause(
                    report.reset_in,
                    f"anthropic reports {report.remaining} {kind} remaining where asklane expected "
                    f"{remaining}: something else is spending the organisation's tokens",
                )
            except RedisError as error:
                # As above: the call is done; the next call's headers tell again.
                log.warning("ai.pause_failed", error=type(error).__name__, detail=str(error))
                return

    def _book_keys(self) -> list[str]:
        if self.tokens.on:
            return [RATE_WINDOW_KEY, RATE_PAUSE_KEY, RATE_TOKENS_KEY]
        return [RATE_WINDOW_KEY, RATE_PAUSE_KEY]

    def _token_args(self, reservation: Reservation) -> list[int]:
        limits = self.tokens
        if not limits.on:
            return []
        return [
            limits.booking_window_us,
            # Kept two windows: settle looks back a window from a call that may have run one.
            2 * limits.booking_window_us,
            limits.input_per_window or 0,
            reservation.input_tokens,
            limits.output_per_window or 0,
            reservation.output_tokens,
        ]

    def _refuse_unbookable(self, reservation: Reservation) -> None:
        """Raise PermanentError when ``reservation`` alone is over a whole window's limit: no
        wait would ever book it."""
        limits = self.tokens
        if limits.input_per_window is not None:
            if reservation.input_tokens > limits.input_per_window:
                raise PermanentError(
                    f"input of ~{reservation.input_tokens} tokens, over AI_INPUT_TOKENS_PER_MINUTE "
                    f"{limits.input_per_window}",
                    reason=(
                        f"the question needs about {reservation.input_tokens:,} tokens, more than "
                        f"I may send Claude in a whole minute ({limits.input_per_window:,}). Please "
                        "ask a shorter question, or ask an admin to raise AI_INPUT_TOKENS_PER_MINUTE."
                    ),
                )
        if limits.output_per_window is not None:
            if reservation.output_tokens > limits.output_per_window:
                raise PermanentError(
                    f"max_tokens {reservation.output_tokens} over AI_OUTPUT_TOKENS_PER_MINUTE "
                    f"{limits.output_per_window}",
                    reason=(
                        "an answer may be longer than Claude may write for me in a whole minute; "
                        "an admin needs to lower AI_MAX_TOKENS or raise AI_OUTPUT_TOKENS_PER_MINUTE."
                    ),
                )

    async def pause(self, seconds: float, reason: str) -> float:
        """Hold every worker's new AI calls for ``seconds``, at most ``max_pause``; returns the
        pause asked for after the cap. Logs once per pause, not per job."""
        capped = min(seconds, self.max_pause)
        if capped <= 0:
            return 0.0
        if await scripts.rate_pause(self._redis, keys=[RATE_PAUSE_KEY], args=[int(capped * 1_000_000)]):
            log.warning("ai.paused", seconds=round(capped, 3), asked_s=round(seconds, 3), reason=reason)
        return capped

    async def refused_for(self, job_id: str, *, refused_now: bool) -> float | None:
        """Seconds since Anthropic first refused this job for the rate limit, None if never.

        ``refused_now`` marks a refusal that just happened (the first one starts the count).
        """
        millis = int(
            await scripts.rate_refused_for(
                self._redis,
                keys=[refused_since_key(job_id)],
                args=["1" if refused_now else "0", REFUSED_SINCE_TTL_MS],
            )
        )
        return None if millis < 0 else millis / 1000


async def tokens_booked(redis: Redis, window_seconds: float = 60.0) -> tuple[int, int]:
    """Input and output tokens booked by every worker in the window ending now (calls booked a
    moment ahead included), after the give-backs so far: for ``asklane status``."""
    input_tokens, output_tokens = await scripts.rate_tokens_booked(
        redis, keys=[RATE_TOKENS_KEY], args=[int(window_seconds * 1_000_000)]
    )
    return int(input_tokens), int(output_tokens)


def _token_member(member: str, reservation: Reservation) -> str:
    """A booking's entry in the token log, as RATE_BOOK writes it."""
    return f"{member}:{reservation.input_tokens}:{reservation.output_tokens}"


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
