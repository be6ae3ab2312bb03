"""Interim updates while a question waits, within Slack's response_url budget."""

from __future__ import annotations

from collections.abc import Callable

from starlette.testclient import TestClient

from tests.conftest import SlashCommands, WorkerProcess, drain, settings_from, wait_until
from tests.fakes.anthropic import MESSAGES, FakeAnthropic, error
from tests.fakes.slack import FakeSlack
from workers.progress import MAX_INTERIM_UPDATES


def _posts_to(fake_slack: FakeSlack, response_url: str) -> list[str]:
    path = response_url.removeprefix(fake_slack.url)
    return [request.body["text"] for request in fake_slack.received(path) if request.accepted]


def test_a_long_retry_tells_the_user_before_the_answer(
    env: dict[str, str],
    web: TestClient,
    commands: SlashCommands,
    fake_anthropic: FakeAnthropic,
    fake_slack: FakeSlack,
) -> None:
    # Long enough that a slow worker start-up cannot make the queue sweep speak first.
    settings = settings_from({**env, "PROGRESS_AFTER_SECONDS": "1.5"})
    fake_anthropic.script(MESSAGES, error(529, "overloaded_error", retry_after=2))
    form = commands.form("what is a p99?")
    commands.send(web, form=form)

    drain(settings)

    posts = _posts_to(fake_slack, form["response_url"])
    assert len(posts) == 2
    assert "Claude is busy, retrying in 2 s" in posts[0]
    assert posts[1] == "Answer to: what is a p99?"


def test_interim_updates_never_exceed_two_per_question(
    env: dict[str, str],
    web: TestClient,
    commands: SlashCommands,
    fake_anthropic: FakeAnthropic,
    fake_slack: FakeSlack,
) -> None:
    settings = settings_from({**env, "PROGRESS_AFTER_SECONDS": "0.1", "JOB_RETRY_BASE_SECONDS": "0.1"})
    fake_anthropic.script(MESSAGES, *[error(500, "api_error")] * 3)
    form = commands.form("what is a p99?")
    commands.send(web, form=form)

    drain(settings)

    posts = _posts_to(fake_slack, form["response_url"])
    # Three retries, each worth an update, but only two are spent: Slack allows five posts to a
    # response_url, and the answer must still have room for a retry of its own post.
    assert len(posts) == MAX_INTERIM_UPDATES + 1
    assert posts[-1] == "Answer to: what is a p99?"


def test_a_question_waiting_in_the_queue_is_told_where_it_stands(
    web: TestClient,
    commands: SlashCommands,
    start_worker: Callable[..., WorkerProcess],
    fake_anthropic: FakeAnthropic,
    fake_slack: FakeSlack,
) -> None:
    # Each answer takes 2.5 s, so several queue sweeps (one a second) see question 2 behind 1.
    fake_anthropic.default_delay = 2.5
    start_worker(WORKER_CONCURRENCY="1", PROGRESS_AFTER_SECONDS="0.5", AI_TIMEOUT_SECONDS="4")
    forms = [commands.form(f"question {n}") for n in range(3)]
    for form in forms:
        commands.send(web, form=form)

    wait_until(lambda: len(fake_slack.answers()) == 3, timeout=30)

    last = _posts_to(fake_slack, forms[2]["response_url"])
    assert "queued behind 1 other question" in last[0]
    assert last[-1] == "Answer to: question 2"
    assert all(len(_posts_to(fake_slack, form["response_url"])) <= MAX_INTERIM_UPDATES + 1 for form in forms)
