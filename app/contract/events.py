"""Job lifecycle events: each is one structlog line and a call to any subscribed hooks.

The web process emits ``job.enqueued``; workers emit ``job.started``, ``job.deferred`` (waiting
for the rate limiter; not a failure), ``job.retrying`` (attempt, delay, reason),
``job.waiting_turn`` (an earlier job of its group, such as a thread's previous question, is
unfinished; not a failure), ``job.completed`` (queued/AI/delivery durations, tokens, prompt-cache
tokens), ``job.failed``, ``job.stopped`` (someone pressed Stop; not a failure), ``job.stalled``
(re-run after its worker died), and ``feedback.recorded`` (a thumbs up or down on an answer).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

log = structlog.get_logger("app.contract.events")

#: A subscriber: called with the event name and its fields (job_id always among them).
Hook = Callable[[str, dict[str, Any]], Awaitable[None]]

ALL = "*"


class JobEvents:
    """Emits events; code subscribes with :meth:`subscribe`. One instance per worker process."""

    def __init__(self) -> None:
        self._hooks: dict[str, list[Hook]] = defaultdict(list)

    def subscribe(self, event: str, hook: Hook) -> None:
        """Call ``hook`` on every ``event`` (or on every event, with ``"*"``)."""
        self._hooks[event].append(hook)

    async def emit(self, event: str, *, level: str = "info", **fields: Any) -> None:
        """Log the event and call its hooks. A failing hook is logged, never propagated."""
        getattr(log, level)(event, **fields)
        for hook in (*self._hooks[event], *self._hooks[ALL]):
            try:
                await hook(event, fields)
            except Exception:
                log.exception("events.hook_failed", hook_event=event)
