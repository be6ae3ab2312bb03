"""A question asked in a thread (workers/thread_answer.py) is answered with the conversation so
far: what Claude receives, what is remembered, and what the cache saved.

Posting in the thread is the delivery's (tests/test_thread_delivery.py); these tests look at the
AI requests the fake Anthropic recorded and at the memory in Redis.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from app.contract import keys, messages
from app.contract.jobs import ThreadQuestion
from app.contract.messages import SlackMessage
from app.contract.settings import Settings
from tests.support.fakes.anthropic import FakeAnthropic, text_of
from tests.support.jobs import drain, enqueue, in_redis, recording
from tests.support.processes import WorkerProcess
from tests.support.threads import question
from tests.support.waiting import wait_until
from workers import memory
from workers.job_state import StoredAnswer
from workers.prompt import estimate_tokens
from workers.thread_answer import THREAD

THREAD_TS = "1700000000.000100"
EPHEMERAL = {"type": "ephemeral"}


def _question(number: int, text: str | None = None, user_id: str = "U0ASKER") -> ThreadQuestion:
    return question(
        text or f"question {number}?",
        message_ts=f"{float(THREAD_TS) + number / 1000:.6f}",
        thread_ts=THREAD_TS,
        user_id=user_id,
    )


def _ask(settings: Settings, client: redis.Redis, *questions: ThreadQuestion) -> None:
    enqueue(settings, *questions)
    drain(settings)


def _stored(settings: Settings, key: str) -> list[memory.Exchange]:
    return in_redis(settings, lambda client: memory.load(client, key))


def _remember(settings: Settings, job: ThreadQuestion, answer: str) -> None:
    stored = StoredAnswer(text=answer, cut_short=False)
    in_redis(settings, lambda client: memory.save_answer(client, job, stored, memory.Limits.of(settings)))


def test_the_first_question_of_a_thread_is_sent_alone_under_the_cached_system_prompt(
    settings: Settings, redis_client: redis.Redis, fake_anthropic: FakeAnthropic
) -> None:
    _ask(settings, redis_client, _question(1))

    [call] = fake_anthropic.calls
    assert call["system"] == [{"type": "text", "text": settings.ai_system_prompt, "cache_control": EPHEMERAL}]
    assert call["messages"] == [{"role": "user", "content": "question 1?"}]


def test_a_follow_up_carries_the_conversation_with_the_previous_answer_marked_for_caching(
    settings: Settings, redis_client: redis.Redis, fake_anthropic: FakeAnthropic
) -> None:
    _ask(settings, redis_client, _question(1))

    _ask(settings, redis_client, _question(2))

    follow_up = fake_anthropic.calls[1]["messages"]
    assert follow_up == [
        {"role": "user", "content": "question 1?"},
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "Answer to: question 1?", "cache_control": EPHEMERAL}],
        },
        {"role": "user", "content": "question 2?"},
    ]
    stored = _stored(settings, _question(1).conversation_key)
    assert [(item.question, item.answer) for item in stored] == [
        ("question 1?", "Answer to: question 1?"),
        ("question 2?", "Answer to: question 2?"),
    ]


def test_when_several_people_ask_in_a_thread_each_question_says_who_asked(
    settings: Settings, redis_client: redis.Redis, fake_anthropic: FakeAnthropic
) -> None:
    _ask(settings, redis_client, _question(1, user_id="U0ALICE"))

    _ask(settings, redis_client, _question(2, user_id="U0BOB"))

    questions = [text_of(m["content"]) for m in fake_anthropic.calls[1]["messages"] if m["role"] == "user"]
    assert questions == ["<@U0ALICE>: question 1?", "<@U0BOB>: question 2?"]


def test_a_rerun_posts_the_stored_answer_without_asking_again_or_remembering_twice(
    settings: Settings, redis_client: redis.Redis, fake_anthropic: FakeAnthropic
) -> None:
    question = _question(1)
    # An earlier run stored the answer (and the exchange with it), then died before posting.
    _remember(settings, question, "the stored answer.")

    _ask(settings, redis_client, question)

    assert fake_anthropic.calls == []
    assert [item.answer for item in _stored(settings, question.conversation_key)] == ["the stored answer."]


def test_a_long_conversation_is_trimmed_from_the_oldest_turns_to_fit_the_context_budget(
    env: dict[str, str], redis_client: redis.Redis, fake_anthropic: FakeAnthropic
) -> None:
    settings = Settings(_env_file=None, **{k.lower(): v for k, v in env.items()}, ai_context_tokens=2000)
    for number in range(1, 7):
        _remember(settings, _question(number), f"answer {number} " + "x" * 1200)

    _ask(settings, redis_client, _question(7))

    [call] = fake_anthropic.calls
    messages = call["messages"]
    sent = [text_of(m["content"]) for m in messages]
    assert sent[-1] == "question 7?"
    assert sent[-3:-1] == ["question 6?", "answer 6 " + "x" * 1200]
    assert "question 1?" not in sent
    assert messages[0]["role"] == "user"
    assert estimate_tokens(settings.ai_system_prompt) + sum(map(estimate_tokens, sent)) <= 2000


def test_a_question_that_cannot_fit_the_context_budget_fails_without_asking_claude(
    env: dict[str, str], redis_client: redis.Redis, fake_anthropic: FakeAnthropic
) -> None:
    settings = Settings(
        _env_file=None,
        **{k.lower(): v for k, v in env.items()},
        ai_context_tokens=1000,
        ai_system_prompt="x" * 3000,
    )
    seen: list[dict[str, Any]] = []

    async def failed(event: str, fields: dict[str, Any]) -> None:
        if event == "job.failed":
            seen.append(fields)

    enqueue(settings, _question(1))
    drain(settings, events=recording(failed)[0])

    assert fake_anthropic.calls == []
    [failure] = seen
    assert failure["permanent"] is True and "AI_CONTEXT_TOKENS" in failure["detail"]


def _samples(web: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(web.get("/metrics").text)
        for sample in family.samples
    }


def test_prompt_cache_tokens_are_logged_per_job_and_counted_in_metrics(
    settings: Settings,
    redis_client: redis.Redis,
    web: TestClient,
    start_worker: Callable[..., WorkerProcess],
    fake_anthropic: FakeAnthropic,
) -> None:
    worker = start_worker()

    enqueue(settings, _question(1), _question(2))
    wait_until(lambda: len(worker.events("job.completed")) == 2, timeout=30)

    first, second = worker.events("ai.completed")
    # The first call writes the system prompt to the cache; the follow-up reads it back and
    # writes the first exchange.
    assert first["cache_read_input_tokens"] == 0 and first["cache_creation_input_tokens"] > 0
    assert second["cache_read_input_tokens"] == first["cache_creation_input_tokens"]
    assert second["cache_creation_input_tokens"] > 0
    completed = worker.events("job.completed")
    assert [event["cache_read_input_tokens"] for event in completed] == [0, second["cache_read_input_tokens"]]
    records = [json.loads(raw) for raw in redis_client.lrange(keys.COMPLETED_KEY, 0, -1)]
    assert sorted(record["cache_read_input_tokens"] for record in records) == [
        0,
        second["cache_read_input_tokens"],
    ]
    labels = (("job_kind", "thread"), ("model", "claude-haiku-5-5"))

    def counted() -> bool:
        samples = _samples(web)
        return samples.get(("asklane_ai_cache_tokens_total", (("cache", "read"), *labels))) == second[
            "cache_read_input_tokens"
        ] and samples.get(("asklane_ai_cache_tokens_total", (("cache", "write"), *labels))) == (
            first["cache_creation_input_tokens"] + second["cache_creation_input_tokens"]
        )

    wait_until(counted, timeout=10)


@pytest.mark.parametrize(
    ("message", "text"),
    [
        (lambda job: THREAD.retrying_message(job, 3.6), "is retrying in 4 s…"),
        (lambda job: THREAD.queued_message(job, 0), "is queued, next in line…"),
        (lambda job: THREAD.queued_message(job, 1), "is queued behind 1 other question…"),
        (lambda job: THREAD.queued_message(job, 3), "is queued behind 3 other questions…"),
    ],
    ids=["retrying", "next in line", "one before", "several before"],
)
def test_waiting_and_retrying_are_short_status_lines(
    message: Callable[[ThreadQuestion], SlackMessage], text: str
) -> None:
    # Slack shows a thread's status after the app's name: "asklane is retrying in 4 s…".
    assert message(_question(1)) == SlackMessage(text=text)


def test_a_failure_is_the_usual_short_message_with_the_reference() -> None:
    job = _question(1)

    assert THREAD.failure_message(job, "Claude is busy.") == messages.failed("Claude is busy.", job.reference)
