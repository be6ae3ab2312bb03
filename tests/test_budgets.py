"""AI budgets: a person's per UTC day, a workspace's per UTC month. Checked before a question is
queued, on every surface that queues one (/ask, mentions and DMs, Regenerate), against what the
workers charged after each call; over budget, the asker is told which budget and when it resets,
with a reference. Nothing already queued or running is cut off."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest
import redis
from starlette.testclient import TestClient

from app.contract import actions, answers, keys, messages, usage
from app.contract.answers import AnswerRecord
from app.contract.jobs import Asker, AskQuestion, ThreadNotice, ThreadQuestion
from app.contract.settings import Settings
from app.contract.targets import PrivateNote
from app.contract.usage import CallUsage, Retention
from app.web import budget
from app.web.main import create_app
from tests.support.deployment import settings_from
from tests.support.jobs import drain, in_redis, queued_jobs
from tests.support.processes import free_port
from tests.support.slack_requests import TEAM_ID, Clicks, SlackEvents, SlashCommands, ack_text, send_event

MakeWeb = Callable[..., TestClient]

USER = "U0ASKER"
ANSWER_JOB_ID = "ask-0123456789abcdef0123456789abcdef"


@pytest.fixture
def web_with(env: dict[str, str]) -> Iterator[MakeWeb]:
    """The web app with some budget settings turned on."""
    clients: list[TestClient] = []

    def make(**budgets: str) -> TestClient:
        settings = settings_from({**env, **{name.upper(): value for name, value in budgets.items()}})
        client = TestClient(create_app(settings))
        clients.append(client.__enter__())
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def _spend(settings: Settings, micro_usd: int, *, team_id: str = TEAM_ID, user_id: str = USER) -> None:
    """Charge an AI call of ``micro_usd`` to a person, as a worker does after the call."""
    retention = Retention.of(settings)
    call = CallUsage(model="claude-haiku-5-5", input_tokens=100, output_tokens=10)
    in_redis(
        settings,
        lambda client: usage.charge(client, team_id, user_id, call, micro_usd, datetime.now(UTC), retention),
    )


def test_no_budget_is_set_unless_configured(settings: Settings) -> None:
    assert budget.budgets_from(settings) == ()


def test_an_ask_over_the_persons_daily_budget_is_refused_with_when_it_resets_and_nothing_is_queued(
    web_with: MakeWeb, commands: SlashCommands, settings: Settings, redis_client: redis.Redis
) -> None:
    web = web_with(budget_user_per_day_usd="0.50")
    _spend(settings, 500_000)

    refused = commands.send(web, "one more?")

    text = ack_text(refused)
    assert "You have used today's AI budget of $0.50" in text
    assert "resets at midnight UTC, in " in text and "(ref " in text
    assert queued_jobs(redis_client) == []


def test_an_ask_under_budget_is_queued(
    web_with: MakeWeb, commands: SlashCommands, settings: Settings, redis_client: redis.Redis
) -> None:
    web = web_with(budget_user_per_day_usd="0.50")
    _spend(settings, 499_999)

    assert "Working on it" in ack_text(commands.send(web, "still within?"))
    assert len(queued_jobs(redis_client)) == 1


def test_the_workspaces_monthly_budget_counts_everyone_in_it_and_no_other_workspace(
    web_with: MakeWeb, commands: SlashCommands, settings: Settings, redis_client: redis.Redis
) -> None:
    web = web_with(budget_team_per_month_usd="10")
    _spend(settings, 6_000_000, user_id="U1")
    _spend(settings, 4_000_000, user_id="U2")

    refused = commands.send(web, "mine?", user_id="U3")
    elsewhere = commands.send(web, "ours?", user_id="U3", team_id="T0OTHER")

    assert "Your workspace has used this month's AI budget of $10.00" in ack_text(refused)
    assert "resets on the 1st of next month (00:00 UTC)" in ack_text(refused)
    assert "Working on it" in ack_text(elsewhere)
    assert [job.asker.team_id for job in queued_jobs(redis_client)] == ["T0OTHER"]


def test_a_mention_over_budget_is_told_so_in_its_thread_and_never_queued_as_a_question(
    web_with: MakeWeb, settings: Settings, redis_client: redis.Redis
) -> None:
    web = web_with(budget_user_per_day_usd="0.01")
    _spend(settings, 10_000)
    mention = SlackEvents().mention("what is a p99?")

    send_event(web, mention)
    send_event(web, mention, retry_num=1)

    [notice] = queued_jobs(redis_client)
    assert isinstance(notice, ThreadNotice)
    assert "You have used today's AI budget of $0.01" in notice.text and "(ref " in notice.text
    assert not any(isinstance(job, ThreadQuestion) for job in queued_jobs(redis_client))


def test_a_direct_message_over_budget_is_told_so_too(
    web_with: MakeWeb, settings: Settings, redis_client: redis.Redis
) -> None:
    web = web_with(budget_team_per_month_usd="1")
    _spend(settings, 1_000_000, user_id="U0SOMEONE")

    send_event(web, SlackEvents().message("and the p999?"))

    [notice] = queued_jobs(redis_client)
    assert isinstance(notice, ThreadNotice) and "Your workspace has used" in notice.text


@pytest.mark.parametrize(
    ("kind", "thread_ts", "ephemeral"),
    [("ask", None, True), ("thread", "1700000000.000100", False)],
    ids=["regenerate-an-ask-answer", "regenerate-or-retry-a-thread-answer"],
)
def test_regenerate_over_budget_queues_only_a_private_note(
    kind: str,
    thread_ts: str | None,
    ephemeral: bool,
    web_with: MakeWeb,
    settings: Settings,
    fake_slack_clicks: Clicks,
    redis_client: redis.Redis,
) -> None:
    web = web_with(budget_user_per_day_usd="0.02")
    record = AnswerRecord(
        job_id=ANSWER_JOB_ID,
        kind=kind,
        asker=Asker(team_id=TEAM_ID, user_id=USER),
        channel_id="C0CHANNEL",
        thread_ts=thread_ts,
        question="what is a p99?",
        answer="Answer to: what is a p99?",
        answered_at=datetime.now(UTC),
    )
    in_redis(settings, lambda client: answers.save(client, record, 60))
    _spend(settings, 20_000)

    response = fake_slack_clicks.click(web, actions.REGENERATE, ANSWER_JOB_ID, ephemeral=ephemeral)

    assert (response.status_code, response.text) == (200, "")
    [notice] = queued_jobs(redis_client)
    assert isinstance(notice, ThreadNotice) and isinstance(notice.reply_to, PrivateNote)
    assert "today's AI budget of $0.02" in notice.text
    assert not any(isinstance(job, (AskQuestion, ThreadQuestion)) for job in queued_jobs(redis_client))


@pytest.fixture
def fake_slack_clicks(commands: SlashCommands) -> Clicks:
    return Clicks(commands.fake_slack)


def test_questions_already_queued_are_answered_even_when_the_first_answer_spends_the_budget(
    web_with: MakeWeb, commands: SlashCommands, env: dict[str, str], redis_client: redis.Redis
) -> None:
    # A micro-dollar: the first answer alone (18 micro-dollars of Haiku 5.5) spends it.
    web = web_with(budget_user_per_day_usd="0.000001")
    for n in range(2):
        assert "Working on it" in ack_text(commands.send(web, f"question {n}"))

    drain(settings_from(env))

    assert redis_client.llen(keys.COMPLETED_KEY) == 2
    refused = commands.send(web, "a third")
    assert "You have used today's AI budget of $0.000001" in ack_text(refused)


def test_a_budget_check_with_redis_down_answers_unavailable_as_the_queue_does(
    env: dict[str, str], commands: SlashCommands
) -> None:
    settings = settings_from(
        {**env, "BUDGET_USER_PER_DAY_USD": "1", "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    )

    with TestClient(create_app(settings)) as web:
        response = commands.send(web, "anyone there?")

    assert response.status_code == 200
    assert "temporarily unavailable" in ack_text(response)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("user", "day", 5.0, 3 * 3600 + 12 * 60, "R1"), "You have used today's AI budget of $5.00"),
        (("user", "day", 5.0, 3 * 3600 + 12 * 60, "R1"), "resets at midnight UTC, in 3 h 12 min. (ref R1)"),
        (("team", "month", 500.0, 47 * 3600, "R2"), "in 47 h. (ref R2)"),
        (
            ("team", "month", 500.0, 9 * 86_400 + 3 * 3600 + 60, "R3"),
            "1st of next month (00:00 UTC), in 9 d 3 h.",
        ),
        (("team", "month", 1234.5, 60, "R4"), "Your workspace has used this month's AI budget of $1,234.50"),
    ],
    ids=["who-and-which", "when-today", "hours-under-two-days", "days-beyond", "thousands"],
)
def test_the_over_budget_message_names_the_budget_and_when_it_resets(
    args: tuple[str, str, float, float, str], says: str
) -> None:
    assert says in messages.over_budget(*args).text


def test_when_both_budgets_are_spent_the_one_that_resets_last_is_named(settings: Settings) -> None:
    _spend(settings, 2_000_000)
    budgets = (budget.Budget("user", "day", 1.0), budget.Budget("team", "month", 1.0))
    now = datetime.now(UTC)

    over = in_redis(
        settings,
        lambda client: budget.over_budget(client, budgets, Asker(team_id=TEAM_ID, user_id=USER), now),
    )

    assert over is not None and over.budget.period == "month"
    assert over.retry_after == (usage.next_month(now) - now).total_seconds() and over.spent_usd == 2.0
