"""Jobs that run one at a time, in order, within a group (``JobBase.in_order``: a thread's
questions, by message ts), whichever worker picks each up.

The web's enqueue adds each such job to its group's sorted set at its position. Before a job's
steps run, :func:`ahead` asks Redis whether an earlier member is still alive (arq still holds its
job: queued, deferred or running), or another live member holds the group's turn (a later
message that started first, the earlier one's delivery having come late); if so, the runner
defers the job for :data:`WAIT_SECONDS`, uncounted; if not, the job takes the turn. When a job
ends (completed, failed, or found already done), :func:`let_next_run` frees the turn, removes the
job and brings the next member forward at once: re-scored to now in arq's queue if it was
deferred, and idle workers woken, so answers follow each other promptly. The short deferral is
only the fallback for a hand-over that was missed (a worker killed between the two steps, or the
next job deferring itself at the same moment).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from arq.connections import ArqRedis

from app.contract import keys, scripts
from app.contract.jobs import InOrder
from app.contract.queue import PRIORITY_OFFSET_MS, wake_workers

#: How long a job waiting for its turn is deferred before it looks again (when it is not brought
#: forward sooner by the job before it ending).
WAIT_SECONDS = 1.0

#: Most members of a group one check looks at; a thread has a handful of waiting questions.
MAX_LOOKED_AT = 100

#: Longest a job holds its group's turn without handing it over. The hand-over frees it when the
#: job ends, and a holder whose arq job is gone holds nothing; this bounds only the odd case in
#: between, and is longer than any job lives (MAX_JOB_AGE_SECONDS, 25 min).
TURN_SECONDS = 30 * 60


@dataclass(frozen=True)
class Ahead:
    """Earlier members of the group still alive, and the first of them."""

    count: int
    first: str | None


async def ahead(redis: ArqRedis, group: InOrder, job_id: str) -> Ahead:
    """The live jobs before ``job_id`` in its group (dead ones are dropped on the way)."""
    count, first = await scripts.in_order_ahead(
        redis,
        keys=[group.key, keys.in_order_turn_key(group.key)],
        args=[job_id, keys.JOB_KEY_PREFIX, MAX_LOOKED_AT, TURN_SECONDS * 1000],
    )
    return Ahead(int(count), _text(first) or None)


async def let_next_run(redis: ArqRedis, group: InOrder, job_id: str) -> str | None:
    """Remove the ended job from its group and bring the next one forward; returns its id."""
    following, _moved = await scripts.in_order_next(
        redis,
        keys=[group.key, keys.QUEUE_KEY, keys.RESCORED_INTERACTIVE_KEY, keys.in_order_turn_key(group.key)],
        args=[
            job_id,
            keys.JOB_KEY_PREFIX,
            f"{time.time() * 1000:.3f}",
            PRIORITY_OFFSET_MS["interactive"],
            MAX_LOOKED_AT,
        ],
    )
    following_id = _text(following) or None
    if following_id is not None:
        # Moved forward or already due: either way an idle worker should look now, not at its
        # next idle timeout.
        await wake_workers(redis, 1)
    return following_id


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
