"""What each AI call is charged: the person's and workspace's usage totals (which budgets read),
and the cost and token metrics.

Called once per call from :meth:`workers.kinds.Run._finish_call`, whatever the call's end: an
answer, a Stop, or a failure after Anthropic had started answering (a call that failed before
any usage was reported used no tokens and is charged nothing). The charge comes after the call,
so a budget never cuts a running job short: it only refuses the next question (app/web/budget.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime

import structlog
from arq.connections import ArqRedis
from redis.exceptions import RedisError

from app.contract import metrics, prices, usage
from app.contract.jobs import JobBase
from app.contract.prices import Price
from app.contract.settings import Settings
from app.contract.usage import CallRecord

log = structlog.get_logger(__name__)

#: A charge waits at most this long for Redis: the job's next step (its post) must not hang on it.
CHARGE_TIMEOUT_SECONDS = 2.0

#: Models already logged as missing from the price table, so each is logged once per process.
_unpriced: set[str] = set()


def price(record: CallRecord, table: Mapping[str, Price]) -> int:
    """What ``record``'s call cost, in micro-dollars (0 without usage), set on the record in
    dollars too. A model missing from ``table`` is priced at its dearest rates, logged once."""
    call = record.usage
    if call is None:
        record.cost_usd = 0.0
        return 0
    if not prices.is_priced(call.model, table) and call.model not in _unpriced:
        _unpriced.add(call.model)
        log.warning("usage.price_unknown", model=call.model, priced_as="the table's dearest rates")
    cost = prices.cost_micro_usd(call, table)
    record.cost_usd = cost / 1_000_000
    return cost


async def charge_call(
    redis: ArqRedis, settings: Settings, job: JobBase, record: CallRecord, cost: int
) -> None:
    """Charge ``record``'s call, which cost ``cost`` micro-dollars (:func:`price`), to its asker's
    and workspace's totals and to the metrics. A Redis error is logged (``usage.uncharged``) and
    swallowed: the answer matters more than its tally."""
    call = record.usage
    if call is None:
        return
    tokens = {kind: getattr(call, name) for kind, name in usage.TOKEN_KINDS.items()}
    asker = job.asker
    retention = usage.Retention.of(settings)
    try:
        async with asyncio.timeout(CHARGE_TIMEOUT_SECONDS):
            await asyncio.gather(
                usage.charge(redis, asker.team_id, asker.user_id, call, cost, charged_at(record), retention),
                metrics.add(redis, metrics.call_counts(call.model, record.outcome, cost, tokens)),
            )
    except (RedisError, OSError, TimeoutError) as error:
        log.error(
            "usage.uncharged",
            job_id=record.job_id,
            model=call.model,
            cost_micro_usd=cost,
            error=type(error).__name__,
        )
        return
    log.info(
        "usage.charged",
        job_id=record.job_id,
        team=asker.team_id,
        user=asker.user_id,
        model=call.model,
        outcome=record.outcome,
        cost_usd=cost / 1_000_000,
        estimated=call.estimated,
        **{f"{kind}_tokens": amount for kind, amount in tokens.items()},
    )


def charged_at(record: CallRecord) -> datetime:
    """The moment a call is charged at: its start, so a call that spans midnight counts on the
    day it was made."""
    return record.started_at.astimezone(UTC)
