"""Figures read off running processes: events per window, resident memory."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def max_in_window(times: Sequence[float], window: float = 1.0) -> int:
    """Most events in any half-open window ``[t, t + window)``; the worst one starts at an event."""
    ordered = sorted(times)
    best, first = 0, 0
    for last, at in enumerate(ordered):
        while at - ordered[first] >= window:
            first += 1
        best = max(best, last - first + 1)
    return best


def max_sum_in_window(amounts: Sequence[tuple[float, int]], window: float) -> int:
    """The largest total of ``(moment, amount)`` pairs in any half-open window ``[t, t + window)``;
    the worst one starts at a pair."""
    ordered = sorted(amounts)
    best, first, total = 0, 0, 0
    for at, amount in ordered:
        total += amount
        while at - ordered[first][0] >= window:
            total -= ordered[first][1]
            first += 1
        best = max(best, total)
    return best


def sliding_sums(amounts: Sequence[tuple[float, int]], window: float, start: float, end: float) -> list[int]:
    """The totals of ``(moment, amount)`` pairs in the windows ``[t, t + window)`` starting every
    tenth of a second from ``start`` while they end by ``end``."""
    sums = []
    at = start
    while at + window <= end:
        sums.append(sum(amount for moment, amount in amounts if at <= moment < at + window))
        at += 0.1
    return sums


def rss_bytes(pid: int) -> int:
    """Resident memory of process ``pid`` now (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")
