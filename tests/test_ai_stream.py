"""Claude.stream (workers/ai.py): Anthropic's streaming Messages API, read by the real SDK from
the fake Anthropic's server-sent events — the deltas in order, the final answer's usage, every
failure typed at this edge, and an early close that stops generation."""

from __future__ import annotations

import asyncio

import pytest

from app.contract.settings import Settings
from tests.support.fakes.anthropic import FakeAnthropic, StreamReply, error
from tests.support.fakes.server import Reply
from workers.ai import Answer, Claude
from workers.errors import BackPressure, JobError, PermanentError, TransientError
from workers.prompt import Prompt

PROMPT = Prompt(system="be brief", messages=[{"role": "user", "content": "why is the sky blue?"}])

TEXT = "Rayleigh scattering: shorter wavelengths scatter more, so blue light fills the sky."


def _read(settings: Settings, *, take: int | None = None) -> tuple[list[str], Answer | None]:
    """Stream PROMPT; the deltas read (only ``take`` of them, then leave the block) and the answer."""

    async def run() -> tuple[list[str], Answer | None]:
        claude = Claude(settings)
        deltas: list[str] = []
        try:
            async with claude.stream(PROMPT) as stream:
                async for delta in stream:
                    deltas.append(delta)
                    if take is not None and len(deltas) == take:
                        break
            return deltas, stream.answer
        finally:
            await claude.close()

    return asyncio.run(run())


def _failure(settings: Settings) -> tuple[list[str], JobError]:
    """Stream PROMPT expecting a failure; the deltas read before it, and the failure."""
    deltas: list[str] = []

    async def run() -> None:
        claude = Claude(settings)
        try:
            async with claude.stream(PROMPT) as stream:
                async for delta in stream:
                    deltas.append(delta)
        finally:
            await claude.close()

    with pytest.raises(JobError) as raised:
        asyncio.run(run())
    return deltas, raised.value


def test_deltas_arrive_in_order_and_add_up_to_the_whole_answer(
    settings: Settings, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script("/v1/messages", StreamReply(text=TEXT, chunk=7))

    deltas, answer = _read(settings)

    assert deltas == fake_anthropic.streams[0].sent
    assert len(deltas) == len(TEXT) // 7 + 1
    assert "".join(deltas) == TEXT
    assert answer is not None and answer.text == TEXT


def test_the_request_asks_for_a_stream_of_the_prompt(
    settings: Settings, fake_anthropic: FakeAnthropic
) -> None:
    _read(settings)

    [call] = fake_anthropic.calls
    assert call["stream"] is True
    assert call["system"] == "be brief"
    assert call["messages"] == PROMPT.messages
    assert call["model"] == settings.anthropic_model
    assert call["max_tokens"] == settings.ai_max_tokens


def test_usage_cache_tokens_and_stop_reason_come_from_the_final_message(
    settings: Settings, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script(
        "/v1/messages",
        StreamReply(
            text=TEXT,
            stop_reason="max_tokens",
            output_tokens=57,
            usage={"input_tokens": 9, "cache_read_input_tokens": 1200, "cache_creation_input_tokens": 40},
            headers={"request-id": "req_streamed"},
        ),
    )

    _, answer = _read(settings)

    assert answer is not None
    assert (answer.usage.input_tokens, answer.usage.output_tokens) == (9, 57)
    assert (answer.usage.cache_read_input_tokens, answer.usage.cache_creation_input_tokens) == (1200, 40)
    assert answer.stop_reason == "max_tokens" and answer.cut_short
    assert answer.request_id == "req_streamed"


def _stalling(settings: Settings) -> Settings:
    return settings.model_copy(update={"ai_timeout_seconds": 0.5})


FAILURES: list[tuple[str, Reply, type[JobError], int, str]] = [
    # (case, scripted reply, error type, deltas read before it, words of its detail)
    ("529 before the stream", error(529, "overloaded_error", retry_after=3), TransientError, 0, "529"),
    ("500 before the stream", error(500, "api_error"), TransientError, 0, "500"),
    ("429 before the stream", error(429, "rate_limit_error", retry_after=2), BackPressure, 0, "429"),
    ("401 before the stream", error(401, "authentication_error"), PermanentError, 0, "401"),
    (
        "error event before any text",
        StreamReply(fail="error", fail_after=0),
        TransientError,
        0,
        "overloaded_error",
    ),
    (
        "overloaded event mid-stream",
        StreamReply(fail="error", fail_after=3),
        TransientError,
        3,
        "overloaded_error",
    ),
    (
        "api_error event mid-stream",
        StreamReply(fail="error", error_type="api_error", fail_after=2),
        TransientError,
        2,
        "api_error",
    ),
    ("connection dropped mid-stream", StreamReply(fail="drop", fail_after=4), TransientError, 4, "broken"),
    ("stream stalls mid-way", StreamReply(fail="stall", fail_after=2), TransientError, 2, "stalled"),
    ("stream stalls before any text", StreamReply(fail="stall", fail_after=0), TransientError, 0, "stalled"),
    ("refusal", StreamReply(text="I can't", stop_reason="refusal"), PermanentError, 1, "refusal"),
]


@pytest.mark.parametrize(
    ("reply", "expected", "read_before", "detail"),
    [case[1:] for case in FAILURES],
    ids=[case[0] for case in FAILURES],
)
def test_each_failure_is_typed_at_the_edge(
    settings: Settings,
    fake_anthropic: FakeAnthropic,
    reply: Reply,
    expected: type[JobError],
    read_before: int,
    detail: str,
) -> None:
    fake_anthropic.script("/v1/messages", reply)

    deltas, failure = _failure(_stalling(settings))

    assert type(failure) is expected
    assert detail in failure.detail
    assert len(deltas) == read_before


def test_an_http_error_keeps_its_retry_after_and_an_overload_throttles_everyone(
    settings: Settings, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script("/v1/messages", error(529, "overloaded_error", retry_after=3))

    _, failure = _failure(settings)

    assert isinstance(failure, TransientError)
    assert failure.retry_after == 3 and failure.throttled


def test_a_model_that_does_not_exist_is_named_for_the_admin(
    settings: Settings, fake_anthropic: FakeAnthropic
) -> None:
    _, failure = _failure(settings.model_copy(update={"anthropic_model": "claude-nonexistent"}))

    assert isinstance(failure, PermanentError)
    assert "ANTHROPIC_MODEL" in failure.reason


def test_leaving_the_stream_early_closes_it_and_the_server_stops_generating(
    settings: Settings, fake_anthropic: FakeAnthropic
) -> None:
    long_text = "word " * 400
    fake_anthropic.script("/v1/messages", StreamReply(text=long_text, chunk=5, event_delay=0.01))

    deltas, answer = _read(settings, take=3)

    assert deltas == ["word "] * 3 and answer is None
    log = fake_anthropic.wait_for_stream_end()
    assert log.client_gone and not log.completed
    assert len(log.sent) < 400 / 2


def test_a_stream_the_fake_serves_unscripted_answers_with_an_echo(
    settings: Settings, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.stream_chunk = 3

    deltas, answer = _read(settings)

    assert "".join(deltas) == "Answer to: why is the sky blue?"
    assert all(len(delta) <= 3 for delta in deltas)
    assert answer is not None and answer.usage.output_tokens == fake_anthropic.output_tokens
