"""The wording of what a user is told: counts in proper grammar, waits in words a person reads."""

from __future__ import annotations

import pytest

from app.contract import messages


@pytest.mark.parametrize(
    ("scope", "allowed", "period", "says"),
    [
        ("user", 1, "day", "You have asked 1 question this day,"),
        ("user", 2, "minute", "You have asked 2 questions this minute,"),
        ("team", 1, "minute", "Your workspace has asked 1 question this minute,"),
        ("team", 5000, "day", "Your workspace has asked 5,000 questions this day,"),
    ],
    ids=["one question", "two questions", "the workspace's one", "thousands, grouped"],
)
def test_over_quota_counts_the_questions_in_proper_grammar(
    scope: str, allowed: int, period: str, says: str
) -> None:
    assert says in messages.over_quota(scope, allowed, period, 30).text


@pytest.mark.parametrize(
    ("retry_after", "wording"),
    [
        (0.2, "1 s"),
        (1, "1 s"),
        (59.4, "59 s"),
        (59.6, "1 min"),
        (60, "1 min"),
        (61, "2 min"),
        (1799, "30 min"),
        (3600, "1 h"),
        (3601, "1 h 1 min"),
        (5400, "1 h 30 min"),
        (86_400, "24 h"),
    ],
    ids=[
        "under a second: never 0",
        "one second",
        "seconds, rounded",
        "rounds up to a minute",
        "one minute",
        "minutes round up: never too early",
        "half an hour",
        "one hour",
        "hours and minutes",
        "an hour and a half",
        "a day",
    ],
)
def test_the_wait_is_worded_in_the_largest_units_never_shorter_than_it_is(
    retry_after: float, wording: str
) -> None:
    assert messages.over_quota("user", 10, "minute", retry_after).text.endswith(
        f"You can ask again in {wording}."
    )


@pytest.mark.parametrize(
    ("ahead", "says"),
    [
        (0, "it is next in line"),
        (1, "queued behind 1 other question"),
        (3, "queued behind 3 other questions"),
    ],
    ids=["none ahead", "one ahead", "several ahead"],
)
def test_a_queued_notice_counts_the_questions_ahead_in_proper_grammar(ahead: int, says: str) -> None:
    assert says in messages.queued("what is a p99?", ahead).text
