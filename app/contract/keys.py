"""Every Redis key asklane reads or writes, in one place: what each holds and how long it lives.

Shared by the web process and the workers, so it imports neither side. Names here are part of the
deploy contract: during a rolling deploy old and new processes share these keys, so a renamed key
orphans what the previous release wrote. Key functions take ids, never pre-built strings.
"""

from __future__ import annotations

from typing import Literal

from arq.constants import (
    default_queue_name,
    health_check_key_suffix,
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)

# --- arq's own keys (workers/arq_reach.py checks their values) -----------------------------------

#: arq's one queue: a sorted set of job ids by due moment (ms); a job leaves it when it finishes.
QUEUE_KEY = default_queue_name
#: + job id: the serialized job, written by our enqueue script; expires a day after it is due.
JOB_KEY_PREFIX = job_key_prefix
#: + job id: a finished job's result, kept DEDUPE_WINDOW_SECONDS (app/contract/queue.py) so
#: re-deliveries are refused.
RESULT_KEY_PREFIX = result_key_prefix
#: + job id: arq's "running" marker; our lease (workers/lease.py) keeps it alive in short steps.
IN_PROGRESS_KEY_PREFIX = in_progress_key_prefix
#: Appended to the queue name by arq for its health-check string; we never write it ourselves.
HEALTH_CHECK_KEY_SUFFIX = health_check_key_suffix


def job_key(job_id: str) -> str:
    return JOB_KEY_PREFIX + job_id


def result_key(job_id: str) -> str:
    return RESULT_KEY_PREFIX + job_id


def in_progress_key(job_id: str) -> str:
    return IN_PROGRESS_KEY_PREFIX + job_id


# --- the queue (app/contract/queue.py) --------------------------------------------------------------------

#: A list of wake tokens idle workers block on; trimmed to WAKE_TOKENS on every push, no expiry.
WAKE_KEY = "asklane:wake"
#: + ":" + priority: the last score given within that level (ms text); expires a day after the last enqueue.
LAST_SCORE_PREFIX = "asklane:queue:last-score"
#: Sorted set of interactive jobs arq re-scored out of their lane, by due moment; each entry leaves when due.
RESCORED_INTERACTIVE_KEY = "asklane:queue:interactive-rescored"
#: Where older releases kept every queued interactive id; workers now expire it in a day.
LEGACY_INTERACTIVE_KEY = "asklane:queue:interactive"
#: + job id: the moment the job was queued, ms on Redis's clock; expires with the job key.
ENQUEUED_AT_PREFIX = "asklane:enqueued-at:"
#: Written by the readiness probe; expires at once (ENQUEUE_TIMEOUT_SECONDS), so it never outlives a probe.
READY_KEY = "asklane:ready-probe"


def last_score_key(priority: str) -> str:
    return f"{LAST_SCORE_PREFIX}:{priority}"


def enqueued_at_key(job_id: str) -> str:
    return ENQUEUED_AT_PREFIX + job_id


# --- fair use (app/web/quota.py) ---------------------------------------------------------------------


def quota_key(scope: Literal["user", "team"], period: str, team_id: str, user_id: str) -> str:
    """A fair-use counter: questions charged in the current window; expires when the window closes."""
    owner = f"{team_id}:{user_id}" if scope == "user" else team_id
    return f"asklane:quota:{scope}:{period}:{owner}"


# --- AI usage and budgets (app/contract/usage.py) ------------------------------------------------

UsagePeriod = Literal["day", "month"]
UsageScope = Literal["user", "team"]


def usage_owner(scope: UsageScope, team_id: str, user_id: str) -> str:
    """Who a usage total belongs to: ``team:user`` for a person, ``team`` for a workspace."""
    return f"{team_id}:{user_id}" if scope == "user" else team_id


def usage_key(period: UsagePeriod, bucket: str, scope: UsageScope, team_id: str, user_id: str = "") -> str:
    """Hash of one person's or workspace's AI usage in one UTC day (bucket ``2026-12-01``) or
    month (``2026-12``): calls, cost (micro-dollars) and tokens of each kind, in total and per
    model (``model|kind``); expires USAGE_DAYS_KEPT days after its day ends, or USAGE_MONTHS_KEPT
    months after its month ends. The ``cost`` field is what budgets (app/web/budget.py) read."""
    return f"asklane:usage:{period}:{bucket}:{scope}:{usage_owner(scope, team_id, user_id)}"


def usage_index_key(period: UsagePeriod, bucket: str, scope: UsageScope) -> str:
    """Sorted set of who spent in one day or month bucket (members as :func:`usage_owner`,
    scored by cost in micro-dollars), so a report reads the buckets without scanning the
    keyspace; expires with the bucket's hashes."""
    return f"asklane:usage:index:{period}:{bucket}:{scope}"


# --- metrics (app/contract/metrics.py) --------------------------------------------------------------------

#: Hash of counter name + labels -> count, shared by every process; no expiry (Prometheus counters).
COUNTERS_KEY = "asklane:metrics:counters"
#: Hash of histogram name + labels + bucket -> count and sum; no expiry.
HISTOGRAMS_KEY = "asklane:metrics:histograms"

# --- per-job state (workers/job_state.py) ------------------------------------------------------------


def answer_key(job_id: str) -> str:
    """The generated answer, kept so a delivery retry does not ask Claude again; STATE_TTL_SECONDS."""
    return f"asklane:answer:{job_id}"


def failure_key(job_id: str) -> str:
    """The stored failure whose message the user is owed; STATE_TTL_SECONDS."""
    return f"asklane:failure:{job_id}"


def delivered_key(job_id: str) -> str:
    """Set once the final message reached Slack, so no retry posts it twice; STATE_TTL_SECONDS."""
    return f"asklane:delivered:{job_id}"


def failures_key(job_id: str, phase: str) -> str:
    """Failed attempts (or stalls) of one phase of the job (workers/job_state.py Phase); STATE_TTL_SECONDS."""
    return f"asklane:failures:{phase}:{job_id}"


# --- the lease (workers/lease.py) ----------------------------------------------------------------


def running_key(job_id: str) -> str:
    """The run marker (JSON: owner token, worker, attempt) of the run holding the job; MARKER_SECONDS."""
    return f"asklane:running:{job_id}"


# --- delivery (workers/delivery.py) --------------------------------------------------------------


def uses_key(job_id: str) -> str:
    """Posts made to the job's response_url (Slack allows five); STATE_TTL_SECONDS."""
    return f"asklane:response_url:uses:{job_id}"


def failed_posts_key(job_id: str) -> str:
    """Failed posts of the final message to the response_url; STATE_TTL_SECONDS."""
    return f"asklane:response_url:failed:{job_id}"


def unusable_key(job_id: str) -> str:
    """Set once the response_url is given up, so every later post goes by the Web API; STATE_TTL_SECONDS."""
    return f"asklane:response_url:unusable:{job_id}"


# --- progress updates (workers/progress.py) ------------------------------------------------------

#: Held by the one worker sweeping the queue for progress updates; expires after one sweep.
PROGRESS_SWEEP_LOCK_KEY = "asklane:progress:sweep-lock"


def progress_count_key(job_id: str) -> str:
    """Interim updates sent for the job (at most MAX_INTERIM_UPDATES); STATE_TTL_SECONDS."""
    return f"asklane:progress:count:{job_id}"


def status_shown_key(job_id: str) -> str:
    """Set while a thread job's latest status is fresh (workers/progress.py
    STATUS_REFRESH_SECONDS): Slack clears a status after about two minutes."""
    return f"asklane:progress:status:{job_id}"


def progress_queued_key(job_id: str) -> str:
    """Set once the job's "queued" update was sent; STATE_TTL_SECONDS."""
    return f"asklane:progress:queued:{job_id}"


# --- the AI rate limiter (workers/ratelimit.py) --------------------------------------------------

#: Sorted set of booked AI-call moments (µs, Redis's clock); expires a window after the last booking.
RATE_WINDOW_KEY = "asklane:ratelimit:bookings"
#: Sorted set of booked AI calls' tokens, "<booking>:<input>:<output>" by moment (µs, Redis's clock),
#: when AI_INPUT/OUTPUT_TOKENS_PER_MINUTE is set; entries kept two windows, the key expires then.
RATE_TOKENS_KEY = "asklane:ratelimit:tokens"
#: The moment (µs, Redis's clock) before which no AI call starts, after a 429; expires with the pause.
RATE_PAUSE_KEY = "asklane:ratelimit:pause"
#: + job id: when Anthropic first refused the job for the organisation's rate limit; REFUSED_SINCE_TTL_MS.
REFUSED_SINCE_PREFIX = "asklane:ratelimit:refused-since:"


def refused_since_key(job_id: str) -> str:
    return REFUSED_SINCE_PREFIX + job_id


# --- operations (app/ops/operations.py, workers/retention.py) ------------------------------------

#: + worker id: that worker's health (JSON), rewritten every health check; expires if it stops.
WORKER_HEALTH_PREFIX = "asklane:workers:"
#: Recent completed jobs (a capped list of retention records); trimmed on every push.
COMPLETED_KEY = "asklane:jobs:completed"
#: Recent failed jobs (a capped list of retention records); trimmed on every push, purged by the CLI.
FAILED_KEY = "asklane:jobs:failed"


def worker_health_key(worker_id: str) -> str:
    return WORKER_HEALTH_PREFIX + worker_id


#: + job id: arq's count of tries of the job; asklane never writes it (tests set it to stage a last try).
RETRY_KEY_PREFIX = retry_key_prefix


def retry_key(job_id: str) -> str:
    return RETRY_KEY_PREFIX + job_id


# --- conversations (threads and DMs) ---------------------------------------------------------------


def _thread(team_id: str, channel_id: str, thread_ts: str) -> str:
    return f"{team_id}:{channel_id}:{thread_ts}"


def conversation_key(team_id: str, channel_id: str, thread_ts: str) -> str:
    """One conversation's stored turns (questions and answers); expires CONVERSATION_TTL_SECONDS
    after its last turn, and is capped in turns and characters (workers/memory.py)."""
    return "asklane:conversation:" + _thread(team_id, channel_id, thread_ts)


def thread_order_key(team_id: str, channel_id: str, thread_ts: str) -> str:
    """Sorted set of a thread's unanswered question jobs by message ts: only the first may run
    (one question at a time per thread, in the order they were asked). Written by the enqueue
    script, emptied by the runner as each finishes; expires THREAD_ORDER_TTL_SECONDS
    (app/contract/queue.py) after the last question queued into it."""
    return "asklane:thread-order:" + _thread(team_id, channel_id, thread_ts)


def in_order_turn_key(group_key: str) -> str:
    """Which job of an in-order group (a thread's questions, keyed by thread_order_key) holds the
    turn now; freed when it ends, and by expiry (workers/in_order.py TURN_SECONDS) at the latest."""
    return group_key + ":turn"


def part_delivered_key(job_id: str, part: int) -> str:
    """Set once Slack accepted part ``part`` of a multi-message answer: a re-run posts only the
    parts not yet marked (STATE_TTL_SECONDS, as the job's other state)."""
    return f"asklane:delivered:{job_id}:{part}"


#: + team id: Slack's Retry-After for chat.* calls in that workspace, honoured by every worker.
SLACK_PAUSE_PREFIX = "asklane:slack:pause:"


def slack_pause_key(team_id: str) -> str:
    return SLACK_PAUSE_PREFIX + team_id


def slack_post_slot_key(team_id: str, channel_id: str) -> str:
    """The next moment (Redis clock, ms) a message may be posted in a channel of a workspace:
    Slack allows about one message per second per channel, across all workers."""
    return f"asklane:slack:post-slot:{team_id}:{channel_id}"


# --- streaming, Stop and buttons ---------------------------------------------------------------


def stop_key(job_id: str) -> str:
    """Set by the web process when someone presses Stop (the button, or Slack's agent Stop) for a
    job; the worker running it, or the first to pick it up, ends it as stopped. STOP_TTL_SECONDS
    (app/contract/stops.py)."""
    return f"asklane:stop:{job_id}"


def stream_key(job_id: str) -> str:
    """The Slack messages a job's streamed answer has been written into (their ts, in order) and
    how much of the answer reached Slack: a run that finds it after a crash completes those
    messages instead of posting a second copy. STATE_TTL_SECONDS, as the job's other state."""
    return f"asklane:stream:{job_id}"


def answer_record_key(job_id: str) -> str:
    """What an answer's buttons need once the job is gone: who asked what, where, and the answer
    (app/contract/answers.py); ANSWER_RECORD_TTL_SECONDS, after which a click is told it expired.
    Apart from :func:`answer_key` (the generated answer, cleared when the job ends)."""
    return f"asklane:answer-record:{job_id}"


def slack_method_bucket_key(team_id: str, tier: str) -> str:
    """Calls made to one of Slack's rate-limit tiers in a workspace, in a sliding window, shared by
    every worker (workers/slack_rate.py): chat.appendStream is Tier 4, start/stopStream Tier 2,
    chat.update Tier 3."""
    return f"asklane:slack:tier:{team_id}:{tier}"


# --- traces (app/contract/trace.py, ``asklane jobs show``) --------------------------------------


def trace_key(job_id: str) -> str:
    """The job's trace: a list of entries (runs' starts and ends, AI calls, deliveries), oldest
    first, capped at the newest TRACE_MAX_ENTRIES; expires TRACE_TTL_SECONDS after its last entry."""
    return f"asklane:trace:{job_id}"


def trace_reference_key(reference: str) -> str:
    """The job id of the job with this user-facing reference (app/contract/job.py reference_for),
    written with each run's first trace entry so ``asklane jobs show REFERENCE`` resolves it;
    expires with the trace."""
    return f"asklane:trace-ref:{reference.upper()}"
