"""What each AI call used and cost, shared by the workers (who record it), the web process (which
checks budgets before queueing) and the operator tools (which report it)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

#: How an AI call ended: a whole answer; stopped by a user (the stream closed); failed (an error
#: before or during the answer; ``CallRecord.error`` says which).
CallOutcome = Literal["answered", "stopped", "failed"]


class CallUsage(BaseModel):
    """The tokens of one AI call, as Anthropic reported them."""

    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    #: True when Anthropic never reported the final output count (a stream closed by Stop or
    #: broken mid-answer): output_tokens is then estimated from the text received.
    estimated: bool = False


class CallRecord(BaseModel):
    """One AI call of one job run: what :meth:`workers.kinds.Run.ask_claude` and
    :meth:`~workers.kinds.Run.stream_claude` report for every call they make, whatever its end."""

    job_id: str
    attempt: int
    started_at: datetime
    #: From the request to the answer's end (or the failure).
    duration_ms: float
    outcome: CallOutcome
    #: None when the call failed before Anthropic answered (no tokens were used).
    usage: CallUsage | None = None
    stop_reason: str | None = None
    request_id: str | None = None
    #: The failure's type and detail, for a failed call.
    error: str | None = None
    #: What the call cost in US dollars (app/contract/prices.py), 0 without usage.
    cost_usd: float = Field(default=0.0, ge=0)
