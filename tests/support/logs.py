"""Reading the structured logs asklane writes: the JSON lines (LOG_FORMAT=json) of its processes,
and the events pytest's ``caplog`` captured in the test's own process."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the benches read logs too, and run without pytest's import
    import pytest


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


def caplog_events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, Any]]:
    """The structlog events named ``name`` that ``caplog`` captured, in order, each as its dict."""
    return [
        record.msg
        for record in caplog.records
        if isinstance(record.msg, dict) and record.msg.get("event") == name
    ]
