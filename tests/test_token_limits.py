"""Token-aware AI rate limits: reservation and give-back, several workers racing, the header-driven
pause, and questions no minute can hold (workers/ratelimit.py, against a real Redis and the fake
Anthropic)."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import pytest
import redis
from starlette.testclient import TestClient

from app.contract import scripts
from app.contract.keys import RATE_PAUSE_KEY, RATE_TOKENS_KEY, RATE_WINDOW_KEY
from app.contract.logs import configure_logging
from app.contract.queue import open_redis
from app.contract.settings import Settings
from app.contract.usage import CallUsage
from app.ops import operations
from app.web.main import create_app
from tests.support.deployment import settings_from
from tests.support.fakes.anthropic import MESSAGES, FakeAnthropic, StreamReply, error
from tests.support.fakes.slack import START_STREAM, FakeSlack
from tests.support.jobs import drain, in_redis
from tests.support.logs import caplog_events
from tests.support.measures import max_sum_in_window
from tests.support.slack_requests import SlashCommands
from tests.support.threads import question, stop_thread_question
from workers.ai import Claude
from workers.errors import PermanentError
from workers.prompt import input_budget, single_question
from workers.ratelimit import Booking, RateLimiter, Reservation, SlotTooFar, TokenLimits, tokens_booked

MINUTE = TokenLimits(input_per_window=10_000, output_per_window=5_000)


def _usage(
    input_tokens: int, output_tokens: int, *, cache_creation: int = 0, cache_read: int = 0
) -> CallUsage:
    return CallUsage(
        model="claude-haiku-5-5",
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cache_creation_input_tokens=cache_creation,
        cache_read_input_tokens=cache_read,
    )


@pytest.mark.parametrize(
    ("usage", "counted"),
    [
        (None, Reservation(0, 0)),  # failed before Anthropic answered: nothing used
        (_usage(100, 50), Reservation(100, 50)),
        # Cache writes count towards Anthropic's input limit; cache reads do not.
        (_usage(100, 50, cache_creation=30, cache_read=4_000), Reservation(130, 50)),
        (CallUsage(model="m", input_tokens=9, output_tokens=7, estimated=True), Reservation(9, 7)),
    ],
)
def test_what_a_call_used_counts_as_anthropics_limits_count_it(
    usage: CallUsage | None, counted: Reservation
) -> None:
    assert Reservation.used(usage) == counted


@pytest.mark.parametrize(
    ("context", "input_limit", "budget"),
    [(20_000, None, 20_000), (20_000, 8_000, 8_000), (4_000, 8_000, 4_000)],
)
def test_a_conversation_is_built_within_the_context_budget_and_a_minutes_input_limit(
    context: int, input_limit: int | None, budget: int
) -> None:
    assert input_budget(context, input_limit) == budget


def test_a_call_books_its_estimate_and_max_tokens_and_gives_back_what_it_did_not_use(
    settings: Settings,
) -> None:
    async def run(client: Any) -> list[tuple[int, int]]:
        limiter = RateLimiter(client, 10, tokens=MINUTE)
        booking = await limiter.wait_for_slot(Reservation(800, 1_000))
        reserved = await tokens_booked(client)
        await limiter.settle(booking, _usage(300, 120, cache_creation=20, cache_read=500))
        return [reserved, await tokens_booked(client)]

    assert in_redis(settings, run) == [(800, 1_000), (320, 120)]


def test_status_shows_the_tokens_booked_in_the_last_minute(settings: Settings) -> None:
    async def run(client: Any) -> tuple[int, int]:
        limiter = RateLimiter(client, 10, tokens=MINUTE)
        await limiter.settle(await limiter.wait_for_slot(Reservation(800, 1_000)), _usage(300, 120))
        await limiter.wait_for_slot(Reservation(500, 1_000))  # still in flight: its reservation
        shown = await operations.status(client)
        return shown.ai_input_tokens_last_minute, shown.ai_output_tokens_last_minute

    assert in_redis(settings, run) == (800, 1_120)


def test_a_call_that_failed_before_anthropic_answered_gives_back_all_its_tokens(settings: Settings) -> None:
    async def run(client: Any) -> tuple[int, int]:
        limiter = RateLimiter(client, 10, tokens=MINUTE)
        await limiter.settle(await limiter.wait_for_slot(Reservation(800, 1_000)), None)
        return await tokens_booked(client)

    assert in_redis(settings, run) == (0, 0)


def test_a_call_that_got_no_answer_at_all_keeps_its_reservation_booked(settings: Settings) -> None:
    # A timeout or a dropped connection: Anthropic may have counted it, so it is not given back.
    async def run(client: Any) -> tuple[int, int]:
        limiter = RateLimiter(client, 10, tokens=MINUTE)
        await limiter.settle(await limiter.wait_for_slot(Reservation(800, 1_000)), None, answered=False)
        return await tokens_booked(client)

    assert in_redis(settings, run) == (800, 1_000)


def test_usage_above_the_reservation_is_booked_too(settings: Settings) -> None:
    async def run(client: Any) -> tuple[int, int]:
        limiter = RateLimiter(client, 10, tokens=MINUTE)
        await limiter.settle(await limiter.wait_for_slot(Reservation(800, 1_000)), _usage(900, 1_000))
        return await tokens_booked(client)

    assert in_redis(settings, run) == (900, 1_000)


def test_a_call_waits_for_tokens_and_tokens_given_back_let_the_next_one_in(settings: Settings) -> None:
    async def run(client: Any) -> tuple[float, int, int]:
        limiter = RateLimiter(client, 10, tokens=MINUTE)
        first = await limiter.wait_for_slot(Reservation(100, 4_000))
        with pytest.raises(SlotTooFar) as waiting:
            await limiter.wait_for_slot(Reservation(100, 4_000))  # 9,000 output tokens: over 5,000
        calls_booked = await client.zcard(RATE_WINDOW_KEY)
        await limiter.settle(first, _usage(100, 200))
        await limiter.wait_for_slot(Reservation(100, 4_000))  # 4,200: booked at once
        return waiting.value.wait, calls_booked, await client.zcard(RATE_WINDOW_KEY)

    wait, calls_booked, calls_after = in_redis(settings, run)
    # A wait for tokens comes back soon to look again, not a whole minute later.
    assert 0 < wait <= 2.0
    # The refused booking took no call slot either: the call and its tokens together or nothing.
    assert (calls_booked, calls_after) == (1, 2)


def test_a_call_refused_a_call_slot_books_no_tokens(settings: Settings) -> None:
    async def run(client: Any) -> tuple[int, int]:
        limiter = RateLimiter(client, 0.5, tokens=MINUTE)  # one call per two seconds
        await limiter.wait_for_slot(Reservation(100, 100))
        with pytest.raises(SlotTooFar):
            await limiter.wait_for_slot(Reservation(100, 100))
        return await tokens_booked(client)

    assert in_redis(settings, run) == (100, 100)


def test_without_token_limits_nothing_is_booked_in_the_token_log(
    settings: Settings, redis_client: redis.Redis
) -> None:
    async def run(client: Any) -> None:
        limiter = RateLimiter(client, 10)
        await limiter.settle(await limiter.wait_for_slot(Reservation(800, 1_000)), _usage(1, 1))

    in_redis(settings, run)

    assert redis_client.zcard(RATE_WINDOW_KEY) == 1
    assert not redis_client.exists(RATE_TOKENS_KEY)


@pytest.mark.parametrize(
    ("reservation", "told"),
    [
        (Reservation(10_001, 100), "Please ask a shorter question, or ask an admin to raise"),
        (Reservation(100, 5_001), "an admin needs to lower AI_MAX_TOKENS"),
    ],
)
def test_a_call_over_a_whole_windows_limit_fails_at_once_saying_what_to_do(
    settings: Settings, reservation: Reservation, told: str
) -> None:
    async def run(client: Any) -> PermanentError:
        limiter = RateLimiter(client, 10, tokens=MINUTE)
        with pytest.raises(PermanentError) as refused:
            await limiter.wait_for_slot(reservation)
        return refused.value

    refused = in_redis(settings, run)

    assert told in refused.reason
    assert not in_redis(settings, lambda client: client.exists(RATE_WINDOW_KEY))


def test_a_question_over_a_minutes_input_limit_gets_a_message_saying_what_to_do(
    env: dict[str, str], commands: SlashCommands, fake_anthropic: FakeAnthropic, fake_slack: FakeSlack
) -> None:
    settings = settings_from({**env, "AI_INPUT_TOKENS_PER_MINUTE": "200"})
    with TestClient(create_app(settings)) as web:
        commands.send(web, "why? " * 200)  # ~340 tokens with the system prompt

    drain(settings)

    [text] = [str(post["text"]) for post in fake_slack.delivered() if str(post["text"]).startswith(":x:")]
    assert "shorter question" in text and "AI_INPUT_TOKENS_PER_MINUTE" in text and "(ref " in text
    assert fake_anthropic.calls == []


def test_an_answered_question_leaves_booked_what_anthropic_counted(
    env: dict[str, str], commands: SlashCommands, fake_anthropic: FakeAnthropic, fake_slack: FakeSlack
) -> None:
    settings = settings_from(
        {**env, "AI_INPUT_TOKENS_PER_MINUTE": "50000", "AI_OUTPUT_TOKENS_PER_MINUTE": "5000"}
    )
    # The first try fails before Anthropic answers (nothing used), the second is answered.
    fake_anthropic.script(MESSAGES, error(500, "api_error"))
    with TestClient(create_app(settings)) as web:
        commands.send(web, "what is a p99?")

    drain(settings)

    assert fake_slack.answers() == ["Answer to: what is a p99?"]
    [counted] = fake_anthropic.token_log
    booked = in_redis(settings, tokens_booked)
    assert booked == (counted.input_tokens, counted.output_tokens) == (counted.input_tokens, 34)


def test_a_stream_stopped_mid_answer_keeps_booked_the_output_it_wrote(
    settings: Settings, fake_anthropic: FakeAnthropic, fake_slack: FakeSlack
) -> None:
    limits = {"ai_input_tokens_per_minute": 50_000, "ai_output_tokens_per_minute": 5_000}
    limited = settings.model_copy(update=limits)
    fake_anthropic.script(MESSAGES, StreamReply(text="token " * 500, chunk=6, event_delay=0.01))

    job = question("a long answer, please")
    # Stopped once the answer is showing.
    asyncio.run(stop_thread_question(limited, job, lambda: fake_slack.wait_for(START_STREAM)))

    input_booked, output_booked = in_redis(limited, tokens_booked)

    # Input as message_start reported it; output estimated from the text received, not max_tokens.
    assert input_booked == 12
    assert 0 < output_booked < limited.ai_max_tokens


def test_anthropic_reporting_fewer_tokens_left_than_asklane_booked_pauses_every_worker_until_the_reset(
    settings: Settings, fake_anthropic: FakeAnthropic, caplog: pytest.LogCaptureFixture
) -> None:
    configure_logging(settings)  # structlog's own capture misses a logger cached by earlier tests
    fake_anthropic.rate_limit(input_tokens=10_000, output_tokens=5_000)
    # Another app of the organisation takes half the input limit; refilled in 30 s.
    fake_anthropic.spend(input_tokens=5_000)

    paused_for = in_redis(settings, lambda client: _one_call(settings, client))

    assert 25 <= paused_for <= 31
    [paused] = caplog_events(caplog, "ai.paused")
    assert "input-tokens" in paused["reason"] and "something else is spending" in paused["reason"]


def test_calls_only_asklane_makes_do_not_pause(settings: Settings, fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.rate_limit(input_tokens=10_000, output_tokens=5_000)
    fake_anthropic.output_tokens = 900

    async def calls(client: Any) -> float:
        for _ in range(4):  # the last leaves less than a call's max_tokens of output
            paused_for = await _one_call(settings, client)
        return paused_for

    assert in_redis(settings, calls) == 0


async def _one_call(settings: Settings, client: Any) -> float:
    """One question through the limiter and the real SDK client, as Run.ask_claude makes it;
    returns the seconds of shared pause then in force."""
    limiter = RateLimiter(client, 10, tokens=MINUTE, max_pause=60)
    claude = Claude(settings)
    try:
        prompt = single_question(settings.ai_system_prompt, "what is a p99?")
        booking = await limiter.wait_for_slot(Reservation(prompt.estimated_tokens, settings.ai_max_tokens))
        answer = await claude.ask(prompt)
        booking.reported = answer.rate_limits
        await limiter.settle(booking, answer.usage)
    finally:
        await claude.close()
    return int(await scripts.rate_paused_for(client, keys=[RATE_PAUSE_KEY])) / 1_000_000


def test_rate_limit_headers_reach_the_answer_streamed_or_not(
    settings: Settings, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.rate_limit(requests=50, input_tokens=10_000, output_tokens=5_000)

    async def both() -> list[set[str]]:
        claude = Claude(settings)
        prompt = single_question(settings.ai_system_prompt, "what is a p99?")
        try:
            answer = await claude.ask(prompt)
            async with claude.stream(prompt) as stream:
                async for _ in stream:
                    pass
            assert stream.answer is not None
            return [set(answer.rate_limits), set(stream.answer.rate_limits)]
        finally:
            await claude.close()

    kinds = {"requests", "tokens", "input-tokens", "output-tokens"}
    assert asyncio.run(both()) == [kinds, kinds]


# --- several workers racing on one Redis --------------------------------------------------------

RACE_WINDOW = 2.0
RACE_INPUT, RACE_OUTPUT = 8_000, 5_000
RACE_LIMITS = TokenLimits(
    input_per_window=RACE_INPUT, output_per_window=RACE_OUTPUT, window_seconds=RACE_WINDOW
)
RACE_PROCESSES = 3
RACE_TASKS = 2


def test_several_workers_racing_never_book_over_either_limit_in_any_sliding_window(
    env: dict[str, str], fake_anthropic: FakeAnthropic, redis_client: redis.Redis
) -> None:
    fake_anthropic.rate_limit(
        input_tokens=RACE_INPUT,
        output_tokens=RACE_OUTPUT,
        window=RACE_WINDOW,
    )
    fake_anthropic.output_tokens = 600
    race_env = {**env, "AI_MAX_TOKENS": "1000"}

    with ProcessPoolExecutor(RACE_PROCESSES, mp_context=multiprocessing.get_context("spawn")) as pool:
        runs = [pool.submit(_race, race_env, 3.5 * RACE_WINDOW) for _ in range(RACE_PROCESSES)]
        results = [run.result(timeout=60) for run in runs]
    bookings = [booking for booked, _ in results for booking in booked]
    deferred = sum(waits for _, waits in results)

    assert deferred > 0, "the limits never bound: the race proves nothing"
    assert fake_anthropic.refused == 0
    for kind, limit in (("input", RACE_INPUT), ("output", RACE_OUTPUT)):
        booked = [(at, used_in if kind == "input" else used_out) for at, used_in, used_out in bookings]
        seen = [
            (use.at, use.input_tokens if kind == "input" else use.output_tokens)
            for use in fake_anthropic.token_log
        ]
        assert max_sum_in_window(booked, RACE_WINDOW) <= limit, kind
        assert max_sum_in_window(seen, RACE_WINDOW) <= limit, kind
    # Asklane's own spending never looked like someone else's.
    assert not redis_client.exists(RATE_PAUSE_KEY)


def _race(env: dict[str, str], seconds: float) -> tuple[list[tuple[float, int, int]], int]:
    """One worker process: RACE_TASKS jobs asking question after question for ``seconds``, each
    booked, asked and settled as Run.ask_claude does, a too-far slot waited out as a deferral.
    Returns each call's (booked moment, input and output tokens it used) and the deferrals."""
    settings = settings_from(env)
    question = "explain the sliding window log in detail " * 60  # ~600 tokens to the fake

    async def asker(limiter: RateLimiter, claude: Claude, until: float, booked: list[Any]) -> int:
        prompt = single_question(settings.ai_system_prompt, question)
        reservation = Reservation(prompt.estimated_tokens, settings.ai_max_tokens)
        deferrals = 0
        while time.monotonic() < until:
            try:
                booking: Booking = await limiter.wait_for_slot(reservation)
            except SlotTooFar as far:
                deferrals += 1
                await asyncio.sleep(far.defer)
                continue
            at = time.monotonic()
            answer = await claude.ask(prompt)
            booking.reported = answer.rate_limits
            await limiter.settle(booking, answer.usage)
            used = Reservation.used(answer.usage)
            booked.append((at, used.input_tokens, used.output_tokens))
        return deferrals

    async def run() -> tuple[list[tuple[float, int, int]], int]:
        client = open_redis(settings, timeout=5)
        claude = Claude(settings)
        limiter = RateLimiter(client, 50, tokens=RACE_LIMITS)
        booked: list[tuple[float, int, int]] = []
        until = time.monotonic() + seconds
        try:
            waits = await asyncio.gather(*(asker(limiter, claude, until, booked) for _ in range(RACE_TASKS)))
        finally:
            await claude.close()
            await client.aclose()
        return booked, sum(waits)

    return asyncio.run(run())
