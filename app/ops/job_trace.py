"""What ``asklane jobs show REFERENCE_OR_JOB_ID`` shows: one job's whole story, assembled.

A job is found by its job id or by the reference its user was shown (the index each run writes,
app/contract/trace.py; else the queue and the recent-jobs lists, for a job that has not run or
whose trace expired). Its question, asker and reply target come from its payload: the arq job
while it is queued or running, the retention record once it finished (workers/retention.py);
each run, with its AI calls and deliveries, from its trace.
"""

from __future__ import annotations

import re
import time
from datetime import datetime
from typing import Any

from arq.connections import ArqRedis
from pydantic import BaseModel

from app.contract import keys, trace
from app.contract.job import deserialize, reference_for
from app.contract.jobs import JobBase, parse_job
from app.contract.usage import CallRecord
from workers import retention

#: A reference as users are shown it: 8 hex digits (app/contract/job.py reference_for).
_REFERENCE = re.compile(r"[0-9A-Fa-f]{8}")


class RunView(BaseModel):
    """One run of the job: its start and end, its AI calls and deliveries in order."""

    #: arq's count of the job's runs (None when the trace lost the run's start and end).
    run: int | None = None
    worker: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    #: How it ended (app/contract/trace.py RunOutcome); None while it runs, or if its end was lost.
    outcome: str | None = None
    attempt: int | None = None
    duration_ms: float | None = None
    queued_ms: int | None = None
    ai_ms: float | None = None
    delivery_ms: float | None = None
    via: str | None = None
    reason: str | None = None
    delay_s: float | None = None
    request_id: str | None = None
    calls: list[CallRecord] = []
    deliveries: list[trace.Delivery] = []


class JobView(BaseModel):
    """Everything known about one job."""

    job_id: str
    reference: str
    #: queued, scheduled (to run again later), running, completed, failed, stopped, or unknown
    #: (only its trace is left).
    state: str
    kind: str | None = None
    team_id: str | None = None
    user_id: str | None = None
    reply_to: str | None = None
    #: The question, while the job's payload is kept (queued, running, or among the recent jobs).
    question: str | None = None
    question_chars: int | None = None
    #: The answer a button's job acts on (feedback, share, dismiss).
    answer_job_id: str | None = None
    enqueued_at: datetime | None = None
    finished_at: datetime | None = None
    #: The failure recorded for a failed job.
    error: str | None = None
    feedback: dict[str, str] = {}
    runs: list[RunView] = []
    ai_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    cost_usd: float = 0.0
    #: True when the trace holds TRACE_MAX_ENTRIES: its oldest entries were dropped.
    trace_capped: bool = False


async def resolve(redis: ArqRedis, reference_or_job_id: str) -> str | None:
    """The job id that ``reference_or_job_id`` names, or None when no trace of it is known."""
    wanted = reference_or_job_id.strip()
    if _REFERENCE.fullmatch(wanted):
        return await _by_reference(redis, wanted.upper())
    found = await redis.exists(
        keys.trace_key(wanted), keys.job_key(wanted), keys.result_key(wanted), keys.in_progress_key(wanted)
    )
    if found or await retention.find(redis, job_id=wanted) is not None:
        return wanted
    return None


async def show(redis: ArqRedis, reference_or_job_id: str) -> JobView | None:
    """The job ``reference_or_job_id`` names, with its trace; None when nothing of it is known."""
    job_id = await resolve(redis, reference_or_job_id)
    if job_id is None:
        return None
    entries = await trace.read(redis, job_id)
    record = await retention.find(redis, job_id=job_id)
    payload = await _queued_payload(redis, job_id)
    if payload is None and record is not None:
        payload = record.payload
    view = JobView(
        job_id=job_id,
        reference=reference_for(job_id),
        state=await _state(redis, job_id, record, entries),
        runs=_runs(entries),
        trace_capped=len(entries) >= trace.TRACE_MAX_ENTRIES,
    )
    _add_payload(view, payload)
    _add_started(view, entries)
    if record is not None:
        view.finished_at, view.feedback = record.finished_at, record.feedback
        view.error = record.error if record.state == "failed" else None
    for run in view.runs:
        for call in run.calls:
            view.ai_calls += 1
            view.cost_usd += call.cost_usd
            if call.usage is not None:
                view.input_tokens += call.usage.input_tokens
                view.output_tokens += call.usage.output_tokens
                view.cache_creation_input_tokens += call.usage.cache_creation_input_tokens
                view.cache_read_input_tokens += call.usage.cache_read_input_tokens
    return view


async def _by_reference(redis: ArqRedis, reference: str) -> str | None:
    indexed = await trace.job_id_for_reference(redis, reference)
    if indexed is not None:
        return indexed
    # Not run yet (queued), or its trace expired while its record is kept: look where it may be.
    async for member, _ in redis.zscan_iter(keys.QUEUE_KEY, count=1000):
        job_id = bytes(member).decode()
        if reference_for(job_id) == reference:
            return job_id
    record = await retention.find(redis, reference=reference)
    return None if record is None else record.job_id


async def _queued_payload(redis: ArqRedis, job_id: str) -> Any:
    """The payload of the job while arq holds it (queued, running, or to run again)."""
    raw = await redis.get(keys.job_key(job_id))
    if raw is None:
        return None
    try:
        envelope = deserialize(raw)
    except ValueError:
        return None
    args = envelope.get("a") if isinstance(envelope, dict) else None
    return args[0] if isinstance(args, list) and len(args) == 1 else None


async def _state(
    redis: ArqRedis, job_id: str, record: retention.JobRecord | None, entries: list[trace.TraceEntry]
) -> str:
    if await redis.exists(keys.in_progress_key(job_id)):
        return "running"
    score = await redis.zscore(keys.QUEUE_KEY, job_id)
    if score is not None:
        return "scheduled" if score > time.time() * 1000 else "queued"
    if record is not None:
        return record.state
    ends = [entry.outcome for entry in entries if isinstance(entry, trace.RunEnded)]
    if ends and ends[-1] in ("completed", "failed", "stopped", "already-delivered"):
        return "completed" if ends[-1] == "already-delivered" else ends[-1]
    return "unknown"


def _add_payload(view: JobView, payload: Any) -> None:
    """Who asked what, where, from the job's payload (when it is kept and this version reads it)."""
    if payload is None:
        return
    try:
        job: JobBase = parse_job(payload)
    except ValueError:
        return
    view.kind, view.team_id, view.user_id = job.kind, job.asker.team_id, job.asker.user_id
    view.reply_to, view.enqueued_at = trace.describe_target(job), job.enqueued_at
    question = trace.question_of(job)
    if question is not None:
        view.question, view.question_chars = question, len(question)
    answer_job_id = getattr(job, "answer_job_id", None)
    view.answer_job_id = answer_job_id if isinstance(answer_job_id, str) else None


def _add_started(view: JobView, entries: list[trace.TraceEntry]) -> None:
    """What the runs' starts say, for what the payload (gone) could not."""
    starts = [entry for entry in entries if isinstance(entry, trace.RunStarted)]
    if not starts:
        return
    first = starts[0]
    view.kind = view.kind or first.kind
    view.team_id = view.team_id or first.team_id
    view.user_id = view.user_id or first.user_id
    view.reply_to = view.reply_to or first.reply_to
    if view.question_chars is None:
        view.question_chars = first.question_chars


def _runs(entries: list[trace.TraceEntry]) -> list[RunView]:
    """The trace's entries grouped by run, in order: a run begins at its start (or, when the trace
    lost that, at the first entry after the previous run's end)."""
    runs: list[RunView] = []
    current: RunView | None = None
    for entry in entries:
        if isinstance(entry, trace.RunStarted):
            current = RunView(run=entry.run, worker=entry.worker, started_at=entry.at)
            runs.append(current)
            continue
        if current is None:
            current = RunView()
            runs.append(current)
        if isinstance(entry, trace.AiCall):
            current.calls.append(entry.call)
        elif isinstance(entry, trace.Delivery):
            current.deliveries.append(entry)
        else:
            for name, value in entry.model_dump(exclude={"event", "at"}).items():
                setattr(current, name, value)
            current.ended_at = entry.at
            current = None
    return runs


# --- the text an operator reads -----------------------------------------------------------------


def render(view: JobView) -> str:
    """The job as lines for a terminal."""
    lines = [
        f"job         {view.job_id} (ref {view.reference})",
        f"state       {view.state}",
        f"kind        {view.kind or 'unknown'}",
        f"asked by    {_who(view)}",
        f"reply to    {view.reply_to or 'unknown'}",
    ]
    if view.question is not None:
        lines.append(f"question    {_quoted(view.question)}")
    elif view.kind in ("ask", "thread", None):
        length = f" ({view.question_chars:,} characters)" if view.question_chars is not None else ""
        lines.append(f"question    not kept any more{length}")
    if view.answer_job_id:
        lines.append(f"acts on     the answer of {view.answer_job_id}")
    if view.enqueued_at is not None:
        lines.append(f"queued at   {_moment(view.enqueued_at)}")
    if view.finished_at is not None:
        lines.append(f"finished    {_moment(view.finished_at)}")
    if view.error:
        lines.append(f"error       {view.error}")
    if view.feedback:
        lines.append("feedback    " + ", ".join(f"{user} {value}" for user, value in view.feedback.items()))
    lines.append(
        f"AI          {view.ai_calls} call(s), {_tokens(view.input_tokens, view.output_tokens)}, "
        f"cache {view.cache_creation_input_tokens:,} written / {view.cache_read_input_tokens:,} read, "
        f"{_usd(view.cost_usd)}"
    )
    if view.trace_capped:
        lines.append(
            f"trace       only its newest {trace.TRACE_MAX_ENTRIES} entries are kept: older runs are left out"
        )
    if not view.runs:
        lines.append("runs        none traced yet")
    for run in view.runs:
        lines += ["", *_run_lines(run)]
    return "\n".join(lines)


def _who(view: JobView) -> str:
    if view.user_id is None:
        return "unknown"
    return f"{view.user_id} in workspace {view.team_id}"


def _quoted(text: str, limit: int = 500) -> str:
    shown = text if len(text) <= limit else text[:limit] + "…"
    return '"' + shown.replace("\n", "\n             ") + '"'


def _moment(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S.%f}"[:-3] + " UTC"


def _tokens(input_tokens: int, output_tokens: int) -> str:
    return f"{input_tokens:,} in / {output_tokens:,} out tokens"


def _usd(amount: float) -> str:
    return f"${amount:.6f}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} ms"


def _run_lines(run: RunView) -> list[str]:
    head = f"run {run.run if run.run is not None else '?'}"
    if run.attempt is not None:
        head += f", attempt {run.attempt}"
    if run.worker:
        head += f", worker {run.worker}"
    when = _moment(run.started_at) if run.started_at else "start not traced"
    if run.ended_at is not None:
        when += f" → {run.ended_at:%H:%M:%S.%f}"[:-3] + f" ({_ms(run.duration_ms)})"
    lines = [head, f"  time      {when}"]
    if run.queued_ms is not None:
        lines.append(
            f"  timings   queued {_ms(run.queued_ms)}, AI {_ms(run.ai_ms)}, delivery {_ms(run.delivery_ms)}"
        )
    for call in run.calls:
        lines.append("  AI call   " + _call(call))
    for delivery in run.deliveries:
        message = "final message" if delivery.message == "final" else "failure message"
        line = f"  delivery  {message}: {delivery.outcome}"
        if delivery.via:
            line += f" via {delivery.via}"
        if delivery.duration_ms is not None:
            line += f" ({_ms(delivery.duration_ms)})"
        if delivery.error:
            line += f": {delivery.error}"
        lines.append(line)
    lines.append("  ended     " + _ending(run))
    return lines


def _call(call: CallRecord) -> str:
    parts = [f"{call.outcome} in {_ms(call.duration_ms)}"]
    if call.usage is not None:
        usage = call.usage
        estimated = " (output estimated)" if usage.estimated else ""
        parts.append(f"{usage.model}, {_tokens(usage.input_tokens, usage.output_tokens)}{estimated}")
        if usage.cache_creation_input_tokens or usage.cache_read_input_tokens:
            written, read = usage.cache_creation_input_tokens, usage.cache_read_input_tokens
            parts.append(f"cache {written:,} written / {read:,} read")
    parts.append(_usd(call.cost_usd))
    if call.stop_reason:
        parts.append(f"stop reason {call.stop_reason}")
    parts.append(f"request-id {call.request_id or '-'}")
    if call.error:
        parts.append(f"error {call.error}")
    return ", ".join(parts)


def _ending(run: RunView) -> str:
    if run.outcome is None:
        return "not yet (running, or its end was not traced)"
    text = run.outcome
    if run.via:
        text += f" via {run.via}"
    if run.delay_s is not None:
        text += f", runs again in {run.delay_s:g} s"
    if run.reason:
        text += f": {run.reason}"
    if run.request_id:
        text += f" (request-id {run.request_id})"
    return text
