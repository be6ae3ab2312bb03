"""What each AI call used and cost, shared by the workers (who record it), the web process (which
checks budgets before queueing) and the operator tools (which report it).

Each call is charged (:func:`charge`, by the worker after the call, however it ended) to four
Redis hashes: its person's and its workspace's totals of the UTC day and of the UTC month, costs
in micro-dollars so that sums never drift. Each bucket also has an index of who spent in it, so
``asklane usage`` reads what it reports without scanning the keyspace.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field
from redis.asyncio import Redis

from app.contract import keys, scripts

if TYPE_CHECKING:  # settings import the price table, which imports this module
    from app.contract.settings import Settings

#: How an AI call ended: a whole answer; stopped by a user (the stream closed); failed (an error
#: before or during the answer; ``CallRecord.error`` says which).
CallOutcome = Literal["answered", "stopped", "failed"]


class CallUsage(BaseModel):
    """The tokens of one AI call, as Anthropic reported them."""

    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    #: True when Anthropic never reported the final output count (a stream closed by Stop or
    #: broken mid-answer): output_tokens is then estimated from the text received.
    estimated: bool = False


class CallRecord(BaseModel):
    """One AI call of one job run: what :meth:`workers.kinds.Run.ask_claude` and
    :meth:`~workers.kinds.Run.stream_claude` report for every call they make, whatever its end."""

    job_id: str
    attempt: int
    started_at: datetime
    #: From the request to the answer's end (or the failure).
    duration_ms: float
    outcome: CallOutcome
    #: None when the call failed before Anthropic answered (no tokens were used).
    usage: CallUsage | None = None
    stop_reason: str | None = None
    request_id: str | None = None
    #: The failure's type and detail, for a failed call.
    error: str | None = None
    #: What the call cost in US dollars (app/contract/prices.py), 0 without usage.
    cost_usd: float = Field(default=0.0, ge=0)


# --- totals per person and workspace, per UTC day and month, in Redis ------------------------------

#: The token kinds a total counts, as its hash fields name them, with the CallUsage field of each.
TOKEN_KINDS: dict[str, str] = {
    "input": "input_tokens",
    "output": "output_tokens",
    "cache_write": "cache_creation_input_tokens",
    "cache_read": "cache_read_input_tokens",
}

#: Every field kind of a total: calls, cost (micro-dollars), then tokens.
TOTAL_KINDS = ("calls", "cost", *TOKEN_KINDS)


def day_bucket(moment: datetime) -> str:
    """The UTC day ``moment`` falls in, as usage keys name it: ``2026-12-01``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d")


def month_bucket(moment: datetime) -> str:
    """The UTC month ``moment`` falls in: ``2026-12``."""
    return moment.astimezone(UTC).strftime("%Y-%m")


def next_day(moment: datetime) -> datetime:
    """The UTC midnight after ``moment``: when a day's totals (and budgets) start again."""
    start = moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return start + timedelta(days=1)


def next_month(moment: datetime, months: int = 1) -> datetime:
    """The first moment of the UTC month ``months`` after ``moment``'s."""
    at = moment.astimezone(UTC)
    index = at.year * 12 + at.month - 1 + months
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def parse_month(text: str) -> datetime:
    """The first moment of the UTC month ``YYYY-MM``. Raises ValueError."""
    return datetime.strptime(text, "%Y-%m").replace(tzinfo=UTC)


@dataclass(frozen=True)
class Retention:
    """How long totals are kept after their day or month ends (USAGE_DAYS_KEPT, USAGE_MONTHS_KEPT)."""

    days: int
    months: int

    @classmethod
    def of(cls, settings: Settings) -> Retention:
        return cls(settings.usage_days_kept, settings.usage_months_kept)

    def day_expires_at(self, moment: datetime) -> int:
        """Unix seconds at which the day bucket of ``moment`` expires."""
        return int((next_day(moment) + timedelta(days=self.days)).timestamp())

    def month_expires_at(self, moment: datetime) -> int:
        """Unix seconds at which the month bucket of ``moment`` expires."""
        return int(next_month(moment, 1 + self.months).timestamp())


def charge_keys(team_id: str, user_id: str, moment: datetime) -> list[str]:
    """The keys one charge writes, in :data:`app.contract.scripts.USAGE_CHARGE`'s KEYS order."""
    day, month = day_bucket(moment), month_bucket(moment)
    return [
        keys.usage_key("day", day, "user", team_id, user_id),
        keys.usage_key("day", day, "team", team_id),
        keys.usage_key("month", month, "user", team_id, user_id),
        keys.usage_key("month", month, "team", team_id),
        keys.usage_index_key("day", day, "user"),
        keys.usage_index_key("day", day, "team"),
        keys.usage_index_key("month", month, "user"),
        keys.usage_index_key("month", month, "team"),
    ]


async def charge(
    redis: Redis,
    team_id: str,
    user_id: str,
    usage: CallUsage,
    cost_micro_usd: int,
    moment: datetime,
    retention: Retention,
) -> None:
    """Add one AI call to its person's and workspace's day and month totals (and to each bucket's
    index of who spent), in one atomic step: a crash never leaves a person charged and their
    workspace not."""
    args: list[Any] = [usage.model, cost_micro_usd]
    args += [getattr(usage, name) for name in TOKEN_KINDS.values()]
    args += [
        keys.usage_owner("user", team_id, user_id),
        keys.usage_owner("team", team_id, user_id),
        retention.day_expires_at(moment),
        retention.month_expires_at(moment),
    ]
    await scripts.usage_charge(redis, charge_keys(team_id, user_id, moment), args)


@dataclass
class Totals:
    """What one owner (a person or a workspace) used in one bucket: calls, cost in micro-dollars and
    tokens of each kind, in all and by model."""

    calls: int = 0
    cost: int = 0
    input: int = 0
    output: int = 0
    cache_write: int = 0
    cache_read: int = 0
    by_model: dict[str, Totals] = field(default_factory=dict)

    @classmethod
    def from_hash(cls, fields: Mapping[bytes | str, bytes | str]) -> Totals:
        """Read a usage hash (keys.usage_key)."""
        totals = cls()
        for raw_name, raw_value in fields.items():
            name = raw_name.decode() if isinstance(raw_name, bytes) else raw_name
            model, _, kind = name.rpartition("|")
            if kind not in TOTAL_KINDS:
                continue
            target = totals.by_model.setdefault(model, Totals()) if model else totals
            setattr(target, kind, getattr(target, kind) + int(raw_value))
        return totals

    def add(self, other: Totals) -> None:
        for kind in TOTAL_KINDS:
            setattr(self, kind, getattr(self, kind) + getattr(other, kind))
        for model, totals in other.by_model.items():
            self.by_model.setdefault(model, Totals()).add(totals)

    @property
    def cost_usd(self) -> float:
        return self.cost / 1_000_000

    @property
    def cache_hit_ratio(self) -> float | None:
        """Cache reads over all input tokens (uncached input, cache writes, cache reads); None
        when there were none."""
        prompt = self.input + self.cache_write + self.cache_read
        return self.cache_read / prompt if prompt else None


async def read_bucket(
    redis: Redis, period: keys.UsagePeriod, bucket: str, scope: keys.UsageScope
) -> dict[str, Totals]:
    """Every owner's totals in one bucket, by owner (``team:user`` or ``team``): the bucket's
    index names them, one pipelined read fetches them."""
    owners = [
        owner.decode() if isinstance(owner, bytes) else str(owner)
        for owner in await redis.zrange(keys.usage_index_key(period, bucket, scope), 0, -1)
    ]
    if not owners:
        return {}
    async with redis.pipeline(transaction=False) as pipe:
        for owner in owners:
            team_id, _, user_id = owner.partition(":")
            pipe.hgetall(keys.usage_key(period, bucket, scope, team_id, user_id))
        found = await pipe.execute()
    return {owner: Totals.from_hash(fields) for owner, fields in zip(owners, found, strict=True) if fields}
