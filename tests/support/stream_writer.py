"""A stand-in for the thread kind's streaming side: feed an answer, piece by piece, to the stream
writer a worker uses (workers/delivery.py ``open_stream``), as Claude's tokens would arrive; and
:func:`stop_buttons`, the Stop button a streaming message shows."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from arq.connections import ArqRedis

from app.contract import actions
from app.contract.jobs import JobBase
from workers.delivery import SlackDelivery
from workers.streaming import SlackStream

#: What an answer's buttons look like to the stream writer: blocks it puts under the text.
BUTTONS: list[dict[str, Any]] = [
    {"type": "context_actions", "elements": [{"type": "feedback_buttons", "action_id": "asklane_feedback"}]}
]


def stop_buttons(blocks: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Stop buttons among a message's blocks (in any block that holds elements)."""
    return [
        element
        for block in blocks
        for element in block.get("elements", [])
        if element.get("action_id") == actions.STOP
    ]


def words(count: int, width: int = 6) -> list[str]:
    """``count`` distinct tokens of ``width`` characters (a space included), in order."""
    return [f"{n:0{width - 1}d} " for n in range(count)]


async def stream(
    delivery: SlackDelivery,
    redis: ArqRedis,
    job: JobBase,
    pieces: Sequence[str],
    *,
    blocks: list[dict[str, Any]] | None = None,
    finish: bool = True,
    gap: float = 0.0,
) -> SlackStream:
    """Append ``pieces`` in order (``gap`` seconds apart, as tokens arrive), then finish with
    ``blocks`` (BUTTONS by default) unless ``finish`` is False (a run that died mid-stream)."""
    writer = delivery.open_stream(redis, job)
    for piece in pieces:
        await writer.append(piece)
        if gap:
            await asyncio.sleep(gap)
    if finish:
        await writer.finish(BUTTONS if blocks is None else blocks)
    return writer
