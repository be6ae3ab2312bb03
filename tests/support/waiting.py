"""Waiting for a state instead of for a fixed time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_until(
    condition: Callable[[], Any],
    timeout: float = 15,
    interval: float = 0.02,
    explain: Callable[[], str] | None = None,
) -> Any:
    """Poll ``condition`` until it is truthy; on timeout fail with what ``explain`` says."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met in {timeout} s" + (f": {explain()}" if explain else ""))
