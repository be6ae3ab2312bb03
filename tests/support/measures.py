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


def rss_bytes(pid: int) -> int:
    """Resident memory of process ``pid`` now (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")
