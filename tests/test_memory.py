"""Conversation memory in Redis (workers/memory.py): each answered question stored once with its
answer, bounded in turns and characters, forgotten after a quiet period."""

from __future__ import annotations

import pytest
import redis

from app.contract import keys
from app.contract.settings import Settings
from tests.support.jobs import in_redis
from tests.support.threads import question
from workers import memory
from workers.job_state import StoredAnswer, load_answer

LIMITS = memory.Limits(ttl_seconds=3600, max_exchanges=20, max_chars=60_000)


def _answer(
    settings: Settings, number: int, text: str, limits: memory.Limits = LIMITS, **asked: str
) -> StoredAnswer:
    job = question(
        f"question {number}?", message_ts=f"1700000000.{number:06d}", thread_ts="1700000000.000000", **asked
    )
    return in_redis(
        settings,
        lambda client: memory.save_answer(client, job, StoredAnswer(text=text, cut_short=False), limits),
    )


def _conversation_key() -> str:
    return question("any", message_ts="1", thread_ts="1700000000.000000").conversation_key


def _stored(settings: Settings) -> list[memory.Exchange]:
    return in_redis(settings, lambda client: memory.load(client, _conversation_key()))


def test_an_answered_question_is_stored_with_its_asker_job_and_answer_beside_the_jobs_answer(
    settings: Settings,
) -> None:
    job = question("question 1?", message_ts="1700000000.000001", thread_ts="1700000000.000000", user_id="U7")

    posted = _answer(settings, 1, "answer 1.", user_id="U7")

    assert posted == StoredAnswer(text="answer 1.", cut_short=False)
    [stored] = _stored(settings)
    assert (stored.job_id, stored.user_id, stored.question, stored.answer) == (
        job.job_id,
        "U7",
        "question 1?",
        "answer 1.",
    )
    assert in_redis(settings, lambda client: load_answer(client, job.job_id)) == posted


def test_storing_a_jobs_answer_again_appends_nothing_and_returns_the_first_answer(settings: Settings) -> None:
    _answer(settings, 1, "first run's answer.")

    posted = _answer(settings, 1, "a racing run's answer.")

    assert posted.text == "first run's answer."
    assert [item.answer for item in _stored(settings)] == ["first run's answer."]


def test_a_job_whose_exchange_is_stored_and_posted_appends_nothing(
    settings: Settings, redis_client: redis.Redis
) -> None:
    _answer(settings, 1, "answer 1.")
    job = question("question 1?", message_ts="1700000000.000001", thread_ts="1700000000.000000")
    redis_client.delete(keys.answer_key(job.job_id))  # as the delivered marker does

    _answer(settings, 1, "a late run's answer.")

    assert [item.answer for item in _stored(settings)] == ["answer 1."]


@pytest.mark.parametrize(
    ("max_exchanges", "kept"),
    [(1, [5]), (2, [4, 5]), (5, [1, 2, 3, 4, 5]), (9, [1, 2, 3, 4, 5])],
)
def test_the_oldest_exchanges_go_past_the_turn_cap(
    settings: Settings, max_exchanges: int, kept: list[int]
) -> None:
    limits = memory.Limits(ttl_seconds=3600, max_exchanges=max_exchanges, max_chars=60_000)

    for number in range(1, 6):
        _answer(settings, number, f"answer {number}.", limits)

    assert [item.answer for item in _stored(settings)] == [f"answer {number}." for number in kept]


@pytest.mark.parametrize(("turns", "exchanges"), [(2, 1), (3, 1), (40, 20), (41, 20)])
def test_a_question_and_its_answer_are_two_turns(env: dict[str, str], turns: int, exchanges: int) -> None:
    settings = Settings(
        _env_file=None, **{k.lower(): v for k, v in env.items()}, conversation_max_turns=turns
    )

    assert memory.Limits.of(settings).max_exchanges == exchanges


def test_the_oldest_exchanges_go_past_the_character_cap(settings: Settings) -> None:
    # "question N?" is 11 characters; each exchange below is 11 + 89 = 100.
    limits = memory.Limits(ttl_seconds=3600, max_exchanges=20, max_chars=700)

    for number in range(1, 10):
        _answer(settings, number, f"{number:02d}" + "a" * 87, limits)

    stored = _stored(settings)
    assert [item.answer[:2] for item in stored] == [f"{number:02d}" for number in range(3, 10)]
    assert sum(item.chars for item in stored) == 700


def test_an_exchange_longer_than_the_character_cap_is_kept_cut_to_it(settings: Settings) -> None:
    limits = memory.Limits(ttl_seconds=3600, max_exchanges=20, max_chars=1000)
    _answer(settings, 1, "short.", limits)

    _answer(settings, 2, "b" * 5000, limits)

    [stored] = _stored(settings)
    assert stored.question == "question 2?"
    assert stored.answer == "b" * (1000 - len("question 2?") - 1) + memory.CUT
    assert stored.chars == len(stored.question) + len(stored.answer) == 1000


def test_each_exchange_restarts_the_conversations_expiry(
    settings: Settings, redis_client: redis.Redis
) -> None:
    limits = memory.Limits(ttl_seconds=600, max_exchanges=20, max_chars=60_000)
    _answer(settings, 1, "answer 1.", limits)
    assert 590_000 < redis_client.pttl(_conversation_key()) <= 600_000
    redis_client.pexpire(_conversation_key(), 5_000)  # as if the conversation had gone quiet

    _answer(settings, 2, "answer 2.", limits)

    assert 590_000 < redis_client.pttl(_conversation_key()) <= 600_000


def test_conversations_of_different_threads_are_kept_apart(settings: Settings) -> None:
    _answer(settings, 1, "in the first thread.")
    other = question("elsewhere?", message_ts="1700000099.000001", thread_ts="1700000099.000000")
    in_redis(
        settings,
        lambda client: memory.save_answer(client, other, StoredAnswer(text="x", cut_short=False), LIMITS),
    )

    assert [item.answer for item in _stored(settings)] == ["in the first thread."]
    assert [item.answer for item in in_redis(settings, lambda c: memory.load(c, other.conversation_key))] == [
        "x"
    ]


def test_an_entry_that_cannot_be_read_is_skipped_and_still_counts_toward_the_caps(
    settings: Settings, redis_client: redis.Redis
) -> None:
    redis_client.rpush(_conversation_key(), "not json from another release")
    limits = memory.Limits(ttl_seconds=3600, max_exchanges=2, max_chars=60_000)

    for number in (1, 2):
        _answer(settings, number, f"answer {number}.", limits)

    assert [item.answer for item in _stored(settings)] == ["answer 1.", "answer 2."]
    assert redis_client.llen(_conversation_key()) == 2
