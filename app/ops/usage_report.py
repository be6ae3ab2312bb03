"""``asklane usage``: AI spend and tokens by person, by workspace, and by day and model, with the
prompt cache's hit ratio, over the last days or one UTC month.

Reads the totals the workers charge after every AI call (app/contract/usage.py) through each
bucket's index of who spent, never by scanning the keyspace. Costs are at the price table of the
release that made each call (app/contract/prices.py); the header says when its prices were checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from arq.connections import ArqRedis

from app.contract import usage
from app.contract.prices import PRICES_CHECKED
from app.contract.usage import Totals


@dataclass
class UsageReport:
    """What was used in a period: in all, by workspace, by person, and by day and model."""

    #: How the period is named: "2026-11-25 to 2026-12-01" or "2026-12".
    period: str
    days: list[str]
    total: Totals = field(default_factory=Totals)
    by_workspace: dict[str, Totals] = field(default_factory=dict)
    by_person: dict[str, Totals] = field(default_factory=dict)
    #: By day, then by model.
    by_day: dict[str, dict[str, Totals]] = field(default_factory=dict)


def last_days(count: int, today: datetime) -> list[str]:
    """The day buckets of the ``count`` UTC days up to and including ``today``'s, oldest first."""
    return [usage.day_bucket(today - timedelta(days=back)) for back in range(count - 1, -1, -1)]


def days_of_month(month: str, today: datetime) -> list[str]:
    """The day buckets of UTC month ``month`` (``YYYY-MM``) up to ``today``. Raises ValueError."""
    start = usage.parse_month(month)
    end = min(usage.next_month(start), usage.next_day(today))
    days = []
    moment = start
    while moment < end:
        days.append(usage.day_bucket(moment))
        moment += timedelta(days=1)
    return days


async def report_days(redis: ArqRedis, count: int, today: datetime) -> UsageReport:
    """Usage over the last ``count`` UTC days, today's included."""
    days = last_days(count, today)
    report = UsageReport(period=f"{days[0]} to {days[-1]}", days=days)
    for day in days:
        _merge(report.by_person, await usage.read_bucket(redis, "day", day, "user"))
        teams = await usage.read_bucket(redis, "day", day, "team")
        _merge(report.by_workspace, teams)
        _by_model(report, day, teams)
    _sum(report)
    return report


async def report_month(redis: ArqRedis, month: str, today: datetime) -> UsageReport:
    """Usage in UTC month ``month`` (``YYYY-MM``): people and workspaces from the month's totals
    (kept USAGE_MONTHS_KEPT), days and models from its days' (kept USAGE_DAYS_KEPT). Raises
    ValueError for a month that is not ``YYYY-MM``."""
    report = UsageReport(period=month, days=days_of_month(month, today))
    report.by_person = await usage.read_bucket(redis, "month", month, "user")
    report.by_workspace = await usage.read_bucket(redis, "month", month, "team")
    for day in report.days:
        _by_model(report, day, await usage.read_bucket(redis, "day", day, "team"))
    _sum(report)
    return report


def _merge(into: dict[str, Totals], found: dict[str, Totals]) -> None:
    for owner, totals in found.items():
        into.setdefault(owner, Totals()).add(totals)


def _by_model(report: UsageReport, day: str, teams: dict[str, Totals]) -> None:
    for totals in teams.values():
        for model, of_model in totals.by_model.items():
            report.by_day.setdefault(day, {}).setdefault(model, Totals()).add(of_model)


def _sum(report: UsageReport) -> None:
    for totals in report.by_workspace.values():
        report.total.add(totals)


def _row(totals: Totals) -> dict[str, Any]:
    ratio = totals.cache_hit_ratio
    return {
        "cost_usd": totals.cost_usd,
        "calls": totals.calls,
        "input_tokens": totals.input,
        "output_tokens": totals.output,
        "cache_write_tokens": totals.cache_write,
        "cache_read_tokens": totals.cache_read,
        "cache_hit_ratio": None if ratio is None else round(ratio, 4),
    }


def _by_spend(rows: dict[str, Totals]) -> list[tuple[str, Totals]]:
    return sorted(rows.items(), key=lambda item: (-item[1].cost, item[0]))


def as_json(report: UsageReport) -> dict[str, Any]:
    """The report for scripts: every row with its cost in US dollars and its tokens."""
    return {
        "period": report.period,
        "days": report.days,
        "prices_checked": PRICES_CHECKED.isoformat(),
        "total": _row(report.total),
        "workspaces": [{"team": owner, **_row(totals)} for owner, totals in _by_spend(report.by_workspace)],
        "people": [
            {"team": owner.partition(":")[0], "user": owner.partition(":")[2], **_row(totals)}
            for owner, totals in _by_spend(report.by_person)
        ],
        "days_and_models": [
            {"day": day, "model": model, **_row(totals)}
            for day in report.days
            for model, totals in sorted(report.by_day.get(day, {}).items())
        ],
    }


_COLUMNS = f"{'cost':>14}{'calls':>8}{'input':>12}{'output':>12}" + (
    f"{'cache write':>13}{'cache read':>12}{'cache hits':>12}"
)


def _line(name: str, width: int, totals: Totals) -> str:
    ratio = totals.cache_hit_ratio
    hits = "-" if ratio is None else f"{ratio:.1%}"
    return (
        f"{name:<{width}}{'$' + format(totals.cost_usd, ',.6f'):>14}{totals.calls:>8,}{totals.input:>12,}"
        f"{totals.output:>12,}{totals.cache_write:>13,}{totals.cache_read:>12,}{hits:>12}"
    )


def as_text(report: UsageReport) -> str:
    """The report for people: a header, then one table each by workspace, person, and day and model."""
    people = [(owner.replace(":", " "), totals) for owner, totals in _by_spend(report.by_person)]
    workspaces = _by_spend(report.by_workspace)
    days = [
        (f"{day} {model}", totals)
        for day in report.days
        for model, totals in sorted(report.by_day.get(day, {}).items())
    ]
    width = max([len("by day and model"), *(len(name) + 2 for name, _ in people + workspaces + days)]) + 2
    lines = [
        f"AI usage {report.period} (UTC) · prices checked {PRICES_CHECKED.isoformat()} "
        "· cache hits: cache reads / all input tokens",
        f"{'':<{width}}{_COLUMNS}",
        _line("total", width, report.total),
    ]
    for title, rows in (("by workspace", workspaces), ("by person", people), ("by day and model", days)):
        lines.append(title)
        lines += [_line("  " + name, width, totals) for name, totals in rows] or ["  none"]
    return "\n".join(lines)
