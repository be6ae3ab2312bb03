"""One question at a time per thread, in the order asked, whichever worker holds each; different
threads in parallel (workers/in_order.py, applied by the runner to any job with ``in_order``).

The web's enqueue script enters each thread question in its thread's order set.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis

from app.contract import keys
from app.contract.jobs import ThreadQuestion
from app.contract.queue import PRIORITY_OFFSET_MS
from app.contract.settings import Settings
from tests.support.fakes.anthropic import FakeAnthropic, text_of
from tests.support.jobs import drain, drain_together, enqueue, in_redis, recording
from tests.support.threads import question
from workers import in_order, memory
from workers.retry import MAX_JOB_AGE_SECONDS

THREAD_TS = "1700000000.000100"


def _question(number: int, thread_ts: str = THREAD_TS) -> ThreadQuestion:
    # A reply in the thread, number thousandths of a second after its top-level message.
    message_ts = f"{float(thread_ts) + number / 1000:.6f}"
    return question(f"question {number}?", message_ts=message_ts, thread_ts=thread_ts)


def _one_at_a_time(settings: Settings) -> Settings:
    # One job per worker, so two workers are two jobs running at once at most, one each.
    return settings.model_copy(update={"worker_concurrency": 1})


class _Seen:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    async def __call__(self, event: str, fields: dict[str, Any]) -> None:
        self.events.append((event, fields))

    def named(self, name: str) -> list[dict[str, Any]]:
        return [fields for event, fields in self.events if event == name]


@pytest.mark.parametrize("queued_first", [1, 2], ids=["queued in order", "second question queued first"])
def test_two_questions_in_one_thread_are_answered_in_order_by_two_workers_and_the_second_sees_the_first(
    queued_first: int, settings: Settings, redis_client: redis.Redis, fake_anthropic: FakeAnthropic
) -> None:
    # Slow enough that the free worker picks the other question while the first is answered.
    fake_anthropic.default_delay = 1.0
    first, second = _question(1), _question(2)
    enqueue(settings, *([first, second] if queued_first == 1 else [second, first]))
    seen = _Seen()

    drain_together(_one_at_a_time(settings), recording(seen, 2))

    asked = [text_of(call["messages"][-1]["content"]) for call in fake_anthropic.calls]
    assert asked == ["question 1?", "question 2?"]
    assert fake_anthropic.max_in_flight == 1
    follow_up = fake_anthropic.calls[1]["messages"]
    assert [message["role"] for message in follow_up] == ["user", "assistant", "user"]
    assert text_of(follow_up[1]["content"]) == "Answer to: question 1?"
    [waited, *_] = seen.named("job.waiting_turn")
    assert waited["job_id"] == second.job_id and waited["waiting_for"] == first.job_id
    # It showed no status of its own: the thread's one status was the first question's.
    assert not redis_client.exists(keys.status_shown_key(second.job_id))
    # Waiting is not a failure: the second question's one run that did work is its first attempt.
    assert [fields["attempt"] for fields in seen.named("job.started")] == [1, 1]
    assert [fields["job_id"] for fields in seen.named("job.completed")] == [first.job_id, second.job_id]
    stored = in_redis(settings, lambda client: memory.load(client, first.conversation_key))
    assert [item.question for item in stored] == ["question 1?", "question 2?"]
    assert not redis_client.exists(first.in_order.key)


def test_questions_in_different_threads_are_answered_at_the_same_time(
    settings: Settings, redis_client: redis.Redis, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.default_delay = 1.0
    enqueue(settings, _question(1), _question(1, thread_ts="1700000000.000200"))
    seen = _Seen()

    drain_together(_one_at_a_time(settings), recording(seen, 2))

    assert len(fake_anthropic.calls) == 2
    assert fake_anthropic.max_in_flight == 2
    assert seen.named("job.waiting_turn") == []


@pytest.mark.parametrize("earlier", ["dead", "absent"], ids=["earlier job gone", "not in the set"])
def test_a_question_with_no_live_question_before_it_runs_at_once(
    earlier: str, settings: Settings, redis_client: redis.Redis, fake_anthropic: FakeAnthropic
) -> None:
    question = _question(2)
    group = question.in_order
    enqueue(settings, question)
    if earlier == "dead":
        # An earlier question arq has finished or failed: its job key is gone.
        redis_client.zadd(group.key, {"thread-long-gone": group.position - 1})
    else:
        redis_client.zrem(group.key, question.job_id)  # its entry expired
    seen = _Seen()

    drain(settings, events=recording(seen)[0])

    assert len(fake_anthropic.calls) == 1
    assert seen.named("job.waiting_turn") == []
    assert not redis_client.exists(group.key)


def test_an_earlier_question_queued_after_a_later_one_started_waits_for_it_to_end(
    settings: Settings,
) -> None:
    # The later message's delivery got through first (the earlier one was refused during an
    # outage and re-delivered by Slack a minute later): the later question is already running.
    first, second = _question(1), _question(2)
    group = second.in_order
    enqueue(settings, second)
    assert in_redis(settings, lambda client: in_order.ahead(client, group, second.job_id)).count == 0
    enqueue(settings, first)

    waiting = in_redis(settings, lambda client: in_order.ahead(client, group, first.job_id))
    in_redis(settings, lambda client: in_order.let_next_run(client, group, second.job_id))
    after = in_redis(settings, lambda client: in_order.ahead(client, group, first.job_id))

    assert (waiting.count, waiting.first) == (1, second.job_id)
    assert after.count == 0


def test_a_question_waiting_for_its_turn_still_ends_at_the_maximum_age(
    settings: Settings, redis_client: redis.Redis, fake_anthropic: FakeAnthropic
) -> None:
    question = _question(2)
    group = question.in_order
    enqueue(settings, question)
    # An earlier question arq still holds (its job key lives) but that never ends.
    redis_client.set(keys.job_key("thread-stuck"), b"{}", px=3_600_000)
    redis_client.zadd(group.key, {"thread-stuck": group.position - 1})
    seconds, micros = redis_client.time()
    old = seconds * 1000 + micros // 1000 - (MAX_JOB_AGE_SECONDS - 0.5) * 1000
    redis_client.set(keys.enqueued_at_key(question.job_id), int(old), px=3_600_000)
    seen = _Seen()

    drain(settings, events=recording(seen)[0])

    assert fake_anthropic.calls == []
    [failed] = seen.named("job.failed")
    assert failed["job_id"] == question.job_id and failed["permanent"] is True
    assert "waited for earlier jobs" in failed["detail"]


@pytest.mark.parametrize("lane", ["background", "interactive"])
def test_a_question_that_ends_brings_the_deferred_next_one_forward_and_wakes_a_worker(
    lane: str, settings: Settings, redis_client: redis.Redis
) -> None:
    first, second = _question(1), _question(2)
    enqueue(settings, first, second)
    later_ms = time.time() * 1000 + 60_000
    redis_client.zadd(keys.QUEUE_KEY, {second.job_id: later_ms})  # deferred, as a waiting job is
    if lane == "interactive":
        redis_client.zadd(keys.RESCORED_INTERACTIVE_KEY, {second.job_id: later_ms})
    redis_client.delete(keys.WAKE_KEY)

    following = in_redis(settings, lambda client: in_order.let_next_run(client, first.in_order, first.job_id))

    assert following == second.job_id
    assert redis_client.zrange(first.in_order.key, 0, -1) == [second.job_id.encode()]
    score = redis_client.zscore(keys.QUEUE_KEY, second.job_id)
    assert score is not None
    offset = PRIORITY_OFFSET_MS["interactive"] if lane == "interactive" else 0
    assert score <= time.time() * 1000 - offset
    assert score > time.time() * 1000 - offset - 60_000
    assert not redis_client.zscore(keys.RESCORED_INTERACTIVE_KEY, second.job_id)
    assert redis_client.llen(keys.WAKE_KEY) == 1
