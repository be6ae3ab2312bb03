"""AI budgets: what a person may spend on Claude per UTC day, and a workspace per UTC month.

Checked on the web side before a question is queued, as fair-use quotas are (app/web/quota.py),
against the totals the workers charge after every AI call (app/contract/usage.py): one pipelined
Redis read on the ack path, and none when no budget is set. A question over budget is refused
with the budget's name and when it resets; a job already queued or running is never cut off,
so a person may end a little over their budget, by at most the questions in flight.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime

from arq.connections import ArqRedis
from redis.exceptions import RedisError

from app.contract import keys, messages, usage
from app.contract.jobs import Asker
from app.contract.messages import SlackMessage
from app.contract.queue import ENQUEUE_TIMEOUT_SECONDS, QueueUnavailable
from app.contract.settings import Settings


@dataclass(frozen=True)
class Budget:
    """At most ``usd`` US dollars of AI calls per UTC ``period`` for each person or workspace."""

    scope: keys.UsageScope
    period: keys.UsagePeriod
    usd: float

    @property
    def micro_usd(self) -> int:
        return round(self.usd * 1_000_000)

    def key(self, asker: Asker, now: datetime) -> str:
        bucket = usage.day_bucket(now) if self.period == "day" else usage.month_bucket(now)
        return keys.usage_key(self.period, bucket, self.scope, asker.team_id, asker.user_id)

    def resets_at(self, now: datetime) -> datetime:
        """The next UTC midnight for a daily budget; the first of next month for a monthly one."""
        return usage.next_day(now) if self.period == "day" else usage.next_month(now)


@dataclass(frozen=True)
class OverBudget:
    """The budget a question ran into, what was spent, and when it resets."""

    budget: Budget
    spent_usd: float
    #: Seconds until the budget resets.
    retry_after: float

    def log_fields(self) -> dict[str, object]:
        """What the refusal's log line says (``command.over_budget``, ``event.over_budget``…)."""
        return {
            "scope": self.budget.scope,
            "period": self.budget.period,
            "budget_usd": self.budget.usd,
            "spent_usd": self.spent_usd,
            "resets_in_s": round(self.retry_after),
        }

    def message(self, reference: str) -> SlackMessage:
        """What the asker is told: which budget, and when it resets."""
        return messages.over_budget(
            self.budget.scope, self.budget.period, self.budget.usd, self.retry_after, reference
        )


def budgets_from(settings: Settings) -> tuple[Budget, ...]:
    """The configured budgets, leaving out those unset."""
    configured = (
        Budget("user", "day", settings.budget_user_per_day_usd or 0.0),
        Budget("team", "month", settings.budget_team_per_month_usd or 0.0),
    )
    # Unset is None and a set budget is over 0 (validated): 0 here is "no budget".
    return tuple(budget for budget in configured if budget.usd > 0)


async def over_budget(
    redis: ArqRedis, budgets: tuple[Budget, ...], asker: Asker, now: datetime
) -> OverBudget | None:
    """The budget ``asker`` has used up (the one that resets last, when both are), or None.

    Raises QueueUnavailable when Redis does not answer within ENQUEUE_TIMEOUT_SECONDS, as the
    enqueue itself does: the question is then not queued.
    """
    if not budgets:
        return None
    try:
        async with asyncio.timeout(ENQUEUE_TIMEOUT_SECONDS):
            async with redis.pipeline(transaction=False) as pipe:
                for budget in budgets:
                    pipe.hget(budget.key(asker, now), "cost")
                spent = await pipe.execute()
    except (RedisError, OSError, TimeoutError) as error:
        raise QueueUnavailable(type(error).__name__) from error
    worst: OverBudget | None = None
    for budget, raw in zip(budgets, spent, strict=True):
        micro = int(raw or 0)
        if micro < budget.micro_usd:
            continue
        found = OverBudget(budget, micro / 1_000_000, (budget.resets_at(now) - now).total_seconds())
        if worst is None or found.retry_after > worst.retry_after:
            worst = found
    return worst
