"""Reading the structured (LOG_FORMAT=json) logs asklane's processes write."""

from __future__ import annotations

import json
from typing import Any


def log_events(log: str, name: str | None = None) -> list[dict[str, Any]]:
    """The JSON log lines (LOG_FORMAT=json) in ``log``, those whose event is ``name`` if given.

    Lines that are not JSON (a traceback, arq's own start-up output) are skipped.
    """
    found = []
    for line in log.splitlines():
        if name is not None and f'"{name}"' not in line:
            continue  # cheap: most lines of a long benchmark log are other events
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and (name is None or record.get("event") == name):
            found.append(record)
    return found
