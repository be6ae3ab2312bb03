"""Streaming: how soon Claude's first token shows in Slack, what an answer costs in Slack calls,
and twenty answers streaming at once in one workspace under Slack's limits.

What is measured, in each run (a fresh deployment), then printed as the median over runs:
  * first token: ``--questions`` DMs, one at a time, each from its own person in their own DM
    (so Slack's per-channel pace does not pace the pipeline); for each, from the moment the fake
    Anthropic wrote the stream's first text delta until the fake Slack *received* the
    ``chat.startStream`` carrying the first text. Both clocks are the same ``time.monotonic`` (the
    fakes run in this process's threads): polling does not count. p50 and p99 are nearest-rank
    (bench/harness.py).
  * Slack calls per answer, by method, over those DMs (status, start, appends, stop, updates).
  * crowd: ``--streams`` DMs sent at once in another workspace, with the fake Slack enforcing
    Slack's tiers per method (``FakeSlack.limit_methods``: start and stop 20/min, append 100/min,
    update 50/min): the number of 429s Slack answered (target 0), and for each stream how much
    later its last text reached the fake Slack than the fake Anthropic wrote its last token
    (median over streams, and max).

How: a private redis-server, the fake Slack and Anthropic servers (tests/support), the web
process as a real uvicorn subprocess and ``--workers`` real worker processes, all on loopback.
The fake Anthropic streams each answer in ``--chunk``-character deltas, ``--token-gap`` seconds
apart; questions are long enough that each answer comes in many deltas.

Run from the repo root: ``.venv/bin/python bench/streaming.py [--runs R] [--questions N]
[--streams S] [--workers W]``. Exits non-zero when an event was not acked or a question was not
answered with its whole text.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from harness import (
    FakeAnthropic,
    FakeSlack,
    Sender,
    WebProcess,
    deployment_env,
    median,
    percentile,
    start_loopback,
    wait_for,
)

from app.ops.chat import Person
from tests.support.fakes.slack import APPEND_STREAM, START_STREAM, STOP_STREAM, UPDATE
from tests.support.processes import WorkerProcess

#: Slack's tiers per method, as the fake enforces them in the crowd phase (per minute).
SLACK_LIMITS = {"chat.startStream": 20, "chat.stopStream": 20, "chat.appendStream": 100, "chat.update": 50}
#: The calls that put answer text in a message.
TEXT_CALLS = (START_STREAM, APPEND_STREAM, STOP_STREAM, UPDATE)


@dataclass
class Run:
    """One run's figures."""

    first_text_ms: list[float] = field(default_factory=list)
    calls: Counter[str] = field(default_factory=Counter)
    answers: int = 0
    crowd_429s: int = 0
    last_text_lag_ms: list[float] = field(default_factory=list)
    crowd_calls: Counter[str] = field(default_factory=Counter)


def question(n: int, words: int, phase: str = "timed") -> str:
    """A question long enough that its fake answer ("Answer to: …") streams in many deltas, and
    unique (the phase and number come first): its stream is found by its text."""
    return f"{phase} q{n} " + " ".join(f"word{i}" for i in range(words))


def send_dm(sender: Sender, team: str, n: int, text: str) -> str | None:
    """A top-level DM from person ``n`` of ``team`` in their own DM; its channel, or None if not
    acked."""
    person = Person(team_id=team, user_id=f"U0S{n:07d}", channel_id=f"D{team}{n:05d}", app_id="A0APP")
    _, ack_ms = sender.dm(person, text, f"DM {n}")
    return None if ack_ms is None else person.channel_id


def text_calls(slack: FakeSlack, channel: str) -> list[float]:
    """When each accepted call putting answer text into ``channel`` reached the fake Slack."""
    times = []
    for path in TEXT_CALLS:
        for request in slack.received(path):
            body = request.body if isinstance(request.body, dict) else {}
            carries = body.get("markdown_text") or (path == UPDATE and body.get("blocks"))
            if request.accepted and body.get("channel") == channel and carries:
                times.append(request.at)
    return sorted(times)


def calls_in(slack: FakeSlack, channel: str) -> Counter[str]:
    """The Web API calls about ``channel``, by method."""
    methods: Counter[str] = Counter()
    for request in slack.received("/api/"):
        body = request.body if isinstance(request.body, dict) else {}
        if channel in (body.get("channel"), body.get("channel_id")):
            methods[request.path.removeprefix("/api/")] += 1
    return methods


def whole(slack: FakeSlack, channel: str, text: str) -> bool:
    """The channel shows the whole answer ``text`` and its stream has ended."""
    with slack._lock:
        messages = [m for m in slack.messages.values() if m.channel == channel and not m.deleted]
    return any(text in m.text and not m.streaming for m in messages)


def stream_of(anthropic: FakeAnthropic, text: str) -> tuple[list[float], str]:
    """The send times of the completed stream that wrote ``text``, and its text."""
    with anthropic._lock:
        streams = list(anthropic.streams)
    for log in streams:
        written = "".join(log.sent)
        if log.completed and written == text:
            return list(log.sent_at), written
    return [], ""


def first_tokens(
    args: argparse.Namespace,
    sender: Sender,
    slack: FakeSlack,
    anthropic: FakeAnthropic,
    run: Run,
    errors: list[str],
) -> None:
    for n in range(args.questions):
        # Each in a workspace of its own: Slack allows a workspace 20 stream starts a minute,
        # which would pace this phase (the crowd measures that limit).
        text = question(n, args.words)
        channel = send_dm(sender, f"T0B{n:05d}", n, text)
        if channel is None:
            continue
        answer = f"Answer to: {text}"
        if not wait_for(partial(whole, slack, channel, answer), args.answer_timeout):
            errors.append(f"DM {n}: the whole answer was not shown within {args.answer_timeout:g} s")
            continue
        sent_at, _ = stream_of(anthropic, answer)
        shown = text_calls(slack, channel)
        if not sent_at or not shown:
            errors.append(f"DM {n}: no stream or no text call recorded")
            continue
        run.first_text_ms.append((shown[0] - sent_at[0]) * 1000)
        run.answers += 1
        run.calls.update(calls_in(slack, channel))


def crowd(
    args: argparse.Namespace,
    sender: Sender,
    slack: FakeSlack,
    anthropic: FakeAnthropic,
    run: Run,
    errors: list[str],
) -> None:
    # Another workspace: its tier buckets (in Redis and in the fake) start empty.
    slack.limit_methods(SLACK_LIMITS, window=60.0)
    asked = {}
    for n in range(args.streams):
        text = question(n, args.words, "crowd")
        channel = send_dm(sender, "T0CROWD", n, text)
        if channel is not None:
            asked[channel] = f"Answer to: {text}"
    if not wait_for(lambda: all(whole(slack, c, a) for c, a in asked.items()), args.crowd_timeout):
        missing = sum(not whole(slack, c, a) for c, a in asked.items())
        errors.append(f"crowd: {missing} of {len(asked)} answers not whole within {args.crowd_timeout:g} s")
    for channel, answer in asked.items():
        sent_at, _ = stream_of(anthropic, answer)
        shown = text_calls(slack, channel)
        if sent_at and shown:
            run.last_text_lag_ms.append((shown[-1] - sent_at[-1]) * 1000)
    run.crowd_429s = slack.ratelimited_count()
    for channel in asked:
        run.crowd_calls.update(calls_in(slack, channel))


def one_run(args: argparse.Namespace, index: int, errors: list[str]) -> Run:
    run = Run()
    workdir = Path(tempfile.mkdtemp(prefix=f"asklane-bench-streaming-{index}-"))
    failed_before = len(errors)
    with ExitStack() as running:
        redis, slack, anthropic = start_loopback(running, workdir)
        anthropic.stream_chunk = args.chunk
        anthropic.stream_delay = args.token_gap
        env = deployment_env(redis, slack, anthropic) | {
            "JOBS_PER_SECOND": "1000",
            "WORKER_CONCURRENCY": str(args.concurrency),
            # Every person asks once per phase; the crowd is one workspace asking at once.
            "QUOTA_TEAM_PER_MINUTE": "0",
        }
        web = WebProcess(env, workdir / "web.log")
        running.callback(web.stop)
        workers = []
        for n in range(args.workers):
            workers.append(WorkerProcess({**env, "LOG_LEVEL": "INFO"}, workdir / f"worker{n}.log"))
            running.callback(workers[-1].stop)
        web.wait_listening()
        for worker in workers:
            worker.wait_for_log("worker.started")
        sender = Sender(web.port, errors)
        running.callback(sender.close)
        first_tokens(args, sender, slack, anthropic, run, errors)
        crowd(args, sender, slack, anthropic, run, errors)
    if len(errors) == failed_before:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        errors.append(f"run {index}: logs kept in {workdir}")
    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3, help="fresh deployments measured (default 3)")
    parser.add_argument("--questions", type=int, default=30, help="DMs timed one at a time per run (30)")
    parser.add_argument("--streams", type=int, default=20, help="DMs streaming at once in the crowd (20)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--concurrency", type=int, default=10, help="WORKER_CONCURRENCY (default 10)")
    parser.add_argument("--words", type=int, default=60, help="words per question, echoed in its answer (60)")
    parser.add_argument("--chunk", type=int, default=8, help="characters per fake token delta (8)")
    parser.add_argument("--token-gap", type=float, default=0.01, help="seconds between fake deltas (0.01)")
    parser.add_argument("--answer-timeout", type=float, default=15.0, help="seconds per timed answer (15)")
    parser.add_argument("--crowd-timeout", type=float, default=60.0, help="seconds for the crowd (60)")
    args = parser.parse_args()
    if min(args.runs, args.questions, args.streams, args.workers) < 1:
        parser.error("--runs, --questions, --streams and --workers must be positive")

    errors: list[str] = []
    started = time.monotonic()
    runs = [one_run(args, index, errors) for index in range(args.runs)]

    answer_chars = len(f"Answer to: {question(0, args.words)}")
    print(
        f"streaming: {args.runs} run(s) in {time.monotonic() - started:.0f} s; per run {args.questions} DMs "
        f"one at a time, then {args.streams} at once under Slack's tiers; {args.workers} worker(s) x "
        f"{args.concurrency}; answers of ~{answer_chars} chars in {args.chunk}-char deltas "
        f"{args.token_gap * 1000:g} ms apart"
    )
    print()
    first = [r.first_text_ms for r in runs if r.first_text_ms]
    print(f"{'ms, median of runs':<52}{'p50':>9}{'p99':>9}")
    p50, p99 = (median([percentile(s, p) for s in first]) for p in (50, 99))
    print(f"{'first token (fake Claude) -> first text (fake Slack)':<52}{p50:>9.1f}{p99:>9.1f}")
    print()
    print("Slack calls per answer (median of runs)")
    methods = sorted({method for r in runs for method in r.calls})
    for method in methods:
        per_answer = median([r.calls[method] / r.answers for r in runs if r.answers])
        print(f"  {method:<40}{per_answer:>8.2f}")
    print()
    lags = [r.last_text_lag_ms for r in runs if r.last_text_lag_ms]
    print(f"{args.streams} concurrent streams in one workspace (median of runs)")
    print(f"  {'Slack 429s (target 0)':<48}{median([float(r.crowd_429s) for r in runs]):>8.0f}")
    print(f"  {'last token -> last text in Slack, median ms':<48}{median([median(s) for s in lags]):>8.0f}")
    print(f"  {'last token -> last text in Slack, max ms':<48}{median([max(s) for s in lags]):>8.0f}")
    for method in sorted({method for r in runs for method in r.crowd_calls}):
        calls = median([float(r.crowd_calls[method]) for r in runs])
        print(f"  {'calls: ' + method:<48}{calls:>8.0f}")
    print()
    timed = args.questions * args.runs
    print(f"answered {sum(r.answers for r in runs)}/{timed} timed DMs, errors {len(errors)}")
    for problem in errors[:10]:
        print(f"error: {problem}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
