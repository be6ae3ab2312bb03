"""Prometheus metrics for ``GET /metrics``, kept in Redis so that every process's counts reach it.

Heroku routes a scrape to any one web dyno, and worker dynos take no inbound HTTP at all, so a
registry inside each process would show one process's share. Instead every process adds to two
Redis hashes (one pipelined round trip per event) and ``/metrics`` on any web dyno renders their
sums, plus the queue depth read at scrape time. A Redis restart resets the counters, which
Prometheus treats as any counter reset.

Workers feed it from their job lifecycle events (:class:`Recorder`, a JobEvents hook); the web
process counts each command's outcome and each refused request.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Awaitable, Coroutine, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

import structlog
from arq.connections import ArqRedis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString
from redis.exceptions import RedisError

from app.contract.keys import COUNTERS_KEY, HISTOGRAMS_KEY
from app.contract.queue import QueueDepth, queue_depth, redis_accepts_writes

log = structlog.get_logger(__name__)


#: Writes from the ack path are fire-and-forget, bounded by this; a metric never delays a user.
WRITE_TIMEOUT_SECONDS = 1.0

COUNTERS: dict[str, str] = {
    "asklane_commands": "Slash commands answered by the web process, by outcome.",
    "asklane_events": "Events API requests answered by the web process, by outcome.",
    "asklane_clicks": "Clicks on answers' buttons answered by the web process, by outcome.",
    "asklane_requests_refused": "Requests to /slack/events refused before Bolt, by HTTP status.",
    "asklane_jobs_started": "Job runs started by workers.",
    "asklane_jobs_finished": "Jobs finished, by state (completed, failed, stopped).",
    "asklane_feedback": "Feedback clicks on answers, by value (good, bad).",
    "asklane_job_retries": "Retries scheduled, by phase (ai, delivery, notice).",
    "asklane_delivery_failures": "Posts to Slack that failed and were retried or given up.",
    "asklane_ratelimit_deferrals": "Jobs deferred because the global rate limit had no slot soon.",
    "asklane_jobs_stalled": "Jobs re-run after their worker died.",
    "asklane_ai_tokens": "Tokens used, by kind (input, output).",
    "asklane_ai_cache_tokens": (
        "Input tokens written to (write) or read from (read) Anthropic's prompt cache, by model and job kind."
    ),
    "asklane_ai_calls": "AI calls charged, by model and outcome (answered, stopped, failed).",
    "asklane_ai_cost_usd": "What AI calls cost in US dollars at the price table, by model and outcome.",
    "asklane_ai_call_tokens": (
        "Tokens of AI calls, by model, kind (input, output, cache_write, cache_read) and outcome."
    ),
}


@dataclass(frozen=True)
class HistogramSpec:
    help: str
    buckets: tuple[float, ...]


HISTOGRAMS: dict[str, HistogramSpec] = {
    "asklane_ai_latency_seconds": HistogramSpec(
        "Anthropic call latency of completed jobs.", (0.25, 0.5, 1, 2, 4, 8, 16, 32, 64)
    ),
    "asklane_queued_seconds": HistogramSpec(
        "Time from enqueue to the start of the run that completed.", (0.01, 0.05, 0.25, 1, 5, 30, 120, 600)
    ),
    "asklane_delivery_seconds": HistogramSpec(
        "Time to post a completed job's answer to Slack.", (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10)
    ),
    "asklane_input_tokens": HistogramSpec(
        "Input tokens per completed job.", (16, 64, 256, 512, 1024, 2048, 4096, 8192)
    ),
    "asklane_output_tokens": HistogramSpec(
        "Output tokens per completed job.", (16, 64, 256, 512, 1024, 2048, 4096, 8192)
    ),
    "asklane_ratelimit_wait_seconds": HistogramSpec(
        "How long jobs were deferred for a rate-limit slot.", (0.1, 0.25, 0.5, 1, 2, 5, 10, 30)
    ),
}


def _labels(labels: Mapping[str, str]) -> str:
    return ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))


async def add(
    redis: ArqRedis,
    counts: Mapping[tuple[str, str], float] = {},
    observations: Mapping[tuple[str, str], float] = {},
) -> None:
    """Add to counters and observe histogram values, keyed by (name, rendered labels)."""
    async with redis.pipeline(transaction=False) as pipe:
        for (name, labels), amount in counts.items():
            pipe.hincrbyfloat(COUNTERS_KEY, f"{name}|{labels}", amount)
        for (name, labels), value in observations.items():
            spec = HISTOGRAMS[name]
            for bound in (*spec.buckets, math.inf):
                if value <= bound:
                    pipe.hincrby(HISTOGRAMS_KEY, f"{name}|{labels}|{bound}", 1)
            pipe.hincrbyfloat(HISTOGRAMS_KEY, f"{name}|{labels}|sum", value)
        await pipe.execute()


def call_counts(
    model: str, outcome: str, cost_micro_usd: int, tokens: Mapping[str, int]
) -> dict[tuple[str, str], float]:
    """The counters one charged AI call adds to: its model and outcome only, never who asked
    (a label per person or workspace would grow the series without bound)."""
    labels = {"model": model, "outcome": outcome}
    counts: dict[tuple[str, str], float] = {
        ("asklane_ai_calls", _labels(labels)): 1,
        ("asklane_ai_cost_usd", _labels(labels)): cost_micro_usd / 1_000_000,
    }
    for kind, amount in tokens.items():
        if amount:
            counts["asklane_ai_call_tokens", _labels({**labels, "kind": kind})] = amount
    return counts


_pending: set[asyncio.Task[None]] = set()


def count_soon(redis: ArqRedis, name: str, **labels: str) -> None:
    """Count one ``name`` event in the background, so the caller (the ack path) never waits."""

    async def write() -> None:
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(WRITE_TIMEOUT_SECONDS):
                await add(redis, {(name, _labels(labels)): 1})

    _spawn(write())


async def flush() -> None:
    """Wait (at most WRITE_TIMEOUT_SECONDS) for background writes still running; called as a
    process stops."""
    if _pending:
        await asyncio.wait(list(_pending), timeout=WRITE_TIMEOUT_SECONDS)


def _spawn(write: Coroutine[Any, Any, None]) -> None:
    task = asyncio.create_task(write)
    _pending.add(task)  # the loop holds tasks weakly
    task.add_done_callback(_pending.discard)


class Recorder:
    """A JobEvents hook: turns a worker's job lifecycle events into metrics."""

    def __init__(self, redis: ArqRedis) -> None:
        self._redis = redis

    async def __call__(self, event: str, fields: dict[str, Any]) -> None:
        counts: dict[tuple[str, str], float] = {}
        observed: dict[tuple[str, str], float] = {}
        if event == "job.started":
            counts["asklane_jobs_started", ""] = 1
        elif event == "job.completed":
            counts["asklane_jobs_finished", _labels({"state": "completed"})] = 1
            for kind in ("input", "output"):
                if fields.get(f"{kind}_tokens") is not None:
                    counts["asklane_ai_tokens", _labels({"kind": kind})] = fields[f"{kind}_tokens"]
            for use, field in (("write", "cache_creation_input_tokens"), ("read", "cache_read_input_tokens")):
                if fields.get(field):
                    # Bounded labels only: the model that answered and the job kind, never who asked
                    # ("job_kind": Prometheus sets "job" on every scraped series itself).
                    labels = {
                        "cache": use,
                        "model": str(fields.get("model")),
                        "job_kind": str(fields.get("kind")),
                    }
                    counts["asklane_ai_cache_tokens", _labels(labels)] = fields[field]
            for name, field, scale in (
                ("asklane_ai_latency_seconds", "ai_ms", 1000),
                ("asklane_queued_seconds", "queued_ms", 1000),
                ("asklane_delivery_seconds", "delivery_ms", 1000),
                ("asklane_input_tokens", "input_tokens", 1),
                ("asklane_output_tokens", "output_tokens", 1),
            ):
                if fields.get(field) is not None:
                    observed[name, ""] = float(fields[field]) / scale
        elif event == "job.failed":
            counts["asklane_jobs_finished", _labels({"state": "failed"})] = 1
            if fields.get("error") == "DeliveryFailed":
                counts["asklane_delivery_failures", ""] = 1
        elif event == "job.retrying":
            phase = str(fields.get("phase", "ai"))
            counts["asklane_job_retries", _labels({"phase": phase})] = 1
            if phase in ("delivery", "notice"):
                counts["asklane_delivery_failures", ""] = 1
        elif event == "job.deferred":
            counts["asklane_ratelimit_deferrals", ""] = 1
            observed["asklane_ratelimit_wait_seconds", ""] = float(fields.get("delay_s", 0.0))
        elif event == "job.stopped":
            counts["asklane_jobs_finished", _labels({"state": "stopped"})] = 1
        elif event == "feedback.recorded":
            # A bounded label: the value is checked by the contract (good or bad).
            counts["asklane_feedback", _labels({"value": str(fields.get("value"))})] = 1
        elif event == "job.stalled":
            counts["asklane_jobs_stalled", ""] = 1
        if counts or observed:
            # In the background: a job's next step (its AI call, its post) must not wait on it.
            _spawn(self._write(event, counts, observed))

    async def _write(
        self, event: str, counts: dict[tuple[str, str], float], observed: dict[tuple[str, str], float]
    ) -> None:
        try:
            await add(self._redis, counts, observed)
        except (RedisError, OSError) as error:
            # Metrics are worth less than the job: note it and go on.
            log.warning("metrics.unrecorded", metrics_event=event, error=type(error).__name__)


async def render(redis: ArqRedis) -> bytes:
    """The Prometheus text exposition of everything recorded, plus the queue depth now and
    whether Redis takes writes now."""
    counters = await cast(Awaitable[dict[bytes, bytes]], redis.hgetall(COUNTERS_KEY))
    histograms = await cast(Awaitable[dict[bytes, bytes]], redis.hgetall(HISTOGRAMS_KEY))
    depth = await queue_depth(redis)
    writable = await redis_accepts_writes(redis)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(counters, histograms, depth, writable))
    return generate_latest(registry)


class _Snapshot:
    """A prometheus-client collector over values already read from Redis."""

    def __init__(
        self,
        counters: dict[bytes, bytes],
        histograms: dict[bytes, bytes],
        depth: QueueDepth,
        writable: bool,
    ) -> None:
        self._counters = {key.decode(): float(value) for key, value in counters.items()}
        self._histograms = {key.decode(): float(value) for key, value in histograms.items()}
        self._depth = depth
        self._writable = writable

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily("asklane_queue_depth", "Jobs in the queue now, by kind.", labels=["kind"])
        for kind in ("interactive", "background", "scheduled"):
            gauge.add_metric([kind], getattr(self._depth, kind))
        yield gauge
        # The counters above stay readable while Redis refuses writes, and that is when an
        # operator needs them; this says whether commands can be queued at all.
        yield GaugeMetricFamily(
            "asklane_redis_accepts_writes",
            "1 when Redis took a write at scrape time (commands can be queued), else 0.",
            value=int(self._writable),
        )
        for name, help_text in COUNTERS.items():
            series = self._series(name)
            label_names = sorted({label for labels, _ in series for label in labels})
            counter = CounterMetricFamily(name, help_text, labels=label_names)
            for labels, value in series:
                counter.add_metric([labels.get(label, "") for label in label_names], value)
            yield counter
        for name, spec in HISTOGRAMS.items():
            histogram = HistogramMetricFamily(name, spec.help)
            bounds = (*spec.buckets, math.inf)
            buckets = [(_le(bound), self._histograms.get(f"{name}||{bound}", 0.0)) for bound in bounds]
            histogram.add_metric([], buckets, self._histograms.get(f"{name}||sum", 0.0))
            yield histogram

    def _series(self, name: str) -> list[tuple[dict[str, str], float]]:
        """The recorded series of counter ``name``: label values and count."""
        found = []
        for key, value in self._counters.items():
            counter, _, rendered = key.partition("|")
            if counter == name:
                pairs = (part.split("=", 1) for part in rendered.split(",") if part)
                found.append(({label: quoted.strip('"') for label, quoted in pairs}, value))
        return found


def _le(bound: float) -> str:
    # As prometheus-client renders its own buckets: "0.25", "64.0", "+Inf".
    return str(floatToGoString(bound))  # type: ignore[no-untyped-call]
