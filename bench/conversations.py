"""Conversations: a DM answered in its thread beside ``/ask`` answered ephemerally, and the Redis
memory a thousand stored conversations take.

What is measured, in each run (a fresh deployment), then printed as the median over runs:
  * latency: from just before a signed Events API ``message`` event (a top-level DM, as
    ``asklane chat`` sends it: app/ops/chat.py) is POSTed until the fake Slack *receives* the
    ``chat.postMessage`` reply in that message's thread; beside it, from just before a signed
    ``/ask`` is POSTed until the answer reaches its response_url (as bench/end_to_end.py). The two
    alternate, one at a time, in the same run, so they share the machine's state. Arrival times
    are the fake Slack's own (``time.monotonic`` in its server thread): polling does not count.
    p50 and p99 are nearest-rank (bench/harness.py). Each DM comes from its own person in their
    own DM channel, as in a workspace: Slack's ~1 message per second per channel, which the
    workers honour together, would otherwise pace one channel's answers instead of the pipeline.
  * memory: ``--conversations`` DMs (each a new conversation) are sent as fast as the web process
    acks them, with ``JOBS_PER_SECOND`` high; once every one is answered, the conversations'
    keys (app/contract/keys.py ``conversation_key``) are summed with ``MEMORY USAGE … SAMPLES 0``
    (exact for nested values), and ``INFO memory`` ``used_memory`` is read before and after (it
    also counts what the jobs leave for a while: arq's kept results, per-job state, order sets,
    retention lists). The same number of ``/ask`` commands, sent afterwards the same way, is the
    baseline for the ``used_memory`` delta: what a one-shot question leaves behind.

How: a private redis-server, the fake Slack and Anthropic servers (tests/support), the web
process as a real uvicorn subprocess (the Procfile's web command) and ``--workers`` real worker
processes (``arq workers.WorkerSettings``), all on loopback. The fake Anthropic answers every
question after ``--fake-ai-latency`` seconds.

Run from the repo root: ``.venv/bin/python bench/conversations.py [--runs R] [--dms N]
[--conversations M] [--workers W]``. Exits non-zero when any event or command was not acked,
any question was not answered exactly once, or a conversation was not stored.
"""

from __future__ import annotations

import argparse
import math
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from harness import (
    FakeSlack,
    RedisServer,
    Sender,
    WebProcess,
    deployment_env,
    median,
    percentile,
    start_loopback,
    wait_for,
)

from app.contract.keys import conversation_key
from app.ops.chat import Person
from tests.support.fakes.slack import RESPONSE
from tests.support.processes import WorkerProcess
from tests.support.slack_requests import SlashCommands

TEAM = "T0BENCH"


def team_of(n: int) -> str:
    """Person ``n``'s workspace: one each, as Slack allows only 20 chat.startStream calls a minute
    per workspace, and a thousand conversations in one would measure that limit, not asklane."""
    return f"T0B{n:07d}"


@dataclass
class Run:
    """One run's figures."""

    dm_ms: list[float] = field(default_factory=list)
    ask_ms: list[float] = field(default_factory=list)
    dm_ack_ms: list[float] = field(default_factory=list)
    ask_ack_ms: list[float] = field(default_factory=list)
    conversation_bytes: int = 0
    dm_used_memory: int = 0
    ask_used_memory: int = 0


def send_dm(sender: Sender, n: int, text: str) -> tuple[tuple[str, str], float | None]:
    """A top-level DM from person ``n`` in their own DM and workspace: (its thread as
    (channel, thread_ts), ack ms)."""
    person = Person(team_id=team_of(n), user_id=f"U0B{n:07d}", channel_id=f"D0B{n:07d}", app_id="A0APP")
    ts, ack_ms = sender.dm(person, text, f"DM {n}")
    return (person.channel_id, ts), ack_ms


def send_ask(sender: Sender, slack: FakeSlack, n: int, text: str) -> tuple[str, float | None]:
    """A ``/ask``: (its response_url path, ack ms)."""
    form = SlashCommands(slack).form(text, team_id=TEAM)
    return urlsplit(form["response_url"]).path, sender.command(form, f"/ask {n}")


def thread_replies(slack: FakeSlack) -> dict[tuple[str, str], list[float]]:
    """When each finished reply (posted, or streamed and stopped) reached the fake Slack, by
    (channel, thread_ts), on the fake's clock."""
    replies: dict[tuple[str, str], list[float]] = {}
    with slack._lock:
        shown = [m for m in slack.messages.values() if m.thread_ts and not m.streaming and not m.deleted]
    for message in shown:
        replies.setdefault((message.channel, str(message.thread_ts)), []).append(message.last_at)
    return replies


def used_memory(redis: RedisServer) -> int:
    with redis.client() as client:
        return int(client.info("memory")["used_memory"])


def arrival(find: Callable[[], float | None], timeout: float) -> float | None:
    """When the awaited post reached the fake Slack (its clock), or None if not within ``timeout``."""
    deadline = time.monotonic() + timeout
    while (at := find()) is None and time.monotonic() < deadline:
        time.sleep(0.002)
    return at


def measure_latency(
    args: argparse.Namespace, sender: Sender, slack: FakeSlack, run: Run, errors: list[str]
) -> None:
    pauses = random.Random(0)  # two runs with the same flags pause the same way
    timeout = args.fake_ai_latency + args.answer_timeout

    def dm(n: int) -> None:
        sent_at = time.monotonic()
        thread, ack_ms = send_dm(sender, n, f"bench DM {n}")
        if ack_ms is None:
            return
        if (at := arrival(lambda: thread_replies(slack).get(thread, [None])[0], timeout)) is None:
            errors.append(f"DM {n}: no reply in its thread within {timeout:g} s")
            return
        run.dm_ack_ms.append(ack_ms)
        run.dm_ms.append((at - sent_at) * 1000)

    def ask(n: int) -> None:
        sent_at = time.monotonic()
        hook, ack_ms = send_ask(sender, slack, n, f"bench question {n}")
        if ack_ms is None:
            return
        if (at := arrival(lambda: next((r.at for r in slack.received(hook)), None), timeout)) is None:
            errors.append(f"/ask {n}: no answer on {hook} within {timeout:g} s")
            return
        run.ask_ack_ms.append(ack_ms)
        run.ask_ms.append((at - sent_at) * 1000)

    for n in range(args.dms):
        for measure in (dm, ask):
            if args.gap:
                time.sleep(pauses.uniform(0, args.gap))
            measure(n)


def fill_conversations(
    args: argparse.Namespace,
    sender: Sender,
    slack: FakeSlack,
    redis: RedisServer,
    run: Run,
    errors: list[str],
) -> None:
    before = used_memory(redis)
    first = args.dms  # people the latency phase did not use: every DM starts a new conversation
    threads = []
    teams = {}
    for n in range(first, first + args.conversations):
        thread, ack_ms = send_dm(sender, n, f"remember me {n}")
        if ack_ms is not None:
            threads.append(thread)
            teams[thread] = team_of(n)
    if not threads:
        return  # every ack failed, and said so

    def unanswered() -> int:
        replies = thread_replies(slack)
        return sum(thread not in replies for thread in threads)

    if not wait_for(lambda: unanswered() == 0, args.fill_timeout, 0.2):
        errors.append(f"{unanswered()} of {len(threads)} DMs unanswered")
        return
    with redis.client() as client:
        keys = [conversation_key(teams[thread], *thread) for thread in threads]
        sizes = [client.memory_usage(key, samples=0) for key in keys]
    if missing := sum(size is None for size in sizes):
        errors.append(f"{missing} of {len(threads)} answered conversations have no stored key")
    run.conversation_bytes = sum(size or 0 for size in sizes) * 1000 // len(threads)
    run.dm_used_memory = (used_memory(redis) - before) * 1000 // len(threads)


def fill_asks(
    args: argparse.Namespace,
    sender: Sender,
    slack: FakeSlack,
    redis: RedisServer,
    run: Run,
    errors: list[str],
) -> None:
    before = used_memory(redis)
    hooks = set()
    for n in range(args.conversations):
        hook, ack_ms = send_ask(sender, slack, n, f"one-shot {n}")
        if ack_ms is not None:
            hooks.add(hook)
    if not hooks:
        return

    def unanswered() -> int:
        # Answers only: a question waiting long enough gets a progress notice on the same URL.
        answered = {
            r.path for r in slack.received(RESPONSE) if str(r.body.get("text", "")).startswith("Answer")
        }
        return len(hooks - answered)

    if not wait_for(lambda: unanswered() == 0, args.fill_timeout, 0.2):
        errors.append(f"{unanswered()} of {len(hooks)} /ask unanswered")
        return
    run.ask_used_memory = (used_memory(redis) - before) * 1000 // len(hooks)


def one_run(args: argparse.Namespace, index: int, errors: list[str]) -> Run:
    run = Run()
    workdir = Path(tempfile.mkdtemp(prefix=f"asklane-bench-conversations-{index}-"))
    failed_before = len(errors)
    with ExitStack() as running:
        redis, slack, anthropic = start_loopback(running, workdir)
        anthropic.default_delay = args.fake_ai_latency
        env = deployment_env(redis, slack, anthropic) | {
            "JOBS_PER_SECOND": str(args.jobs_per_second),
            "WORKER_CONCURRENCY": str(args.concurrency),
        }
        web = WebProcess(env, workdir / "web.log")
        running.callback(web.stop)
        workers = []
        for n in range(args.workers):
            # INFO, so "worker.started" is logged; a few lines per job in a file cost next to nothing.
            workers.append(WorkerProcess({**env, "LOG_LEVEL": "INFO"}, workdir / f"worker{n}.log"))
            running.callback(workers[-1].stop)
        web.wait_listening()
        for worker in workers:
            worker.wait_for_log("worker.started")
        sender = Sender(web.port, errors)
        running.callback(sender.close)

        measure_latency(args, sender, slack, run, errors)
        fill_conversations(args, sender, slack, redis, run, errors)
        fill_asks(args, sender, slack, redis, run, errors)

        time.sleep(0.5)  # a late duplicate would land here
        doubled = sum(len(times) > 1 for times in thread_replies(slack).values())
        if doubled:
            errors.append(f"{doubled} thread(s) got more than one reply to one question")
    if len(errors) == failed_before:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        errors.append(f"run {index}: logs kept in {workdir}")
    return run


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b and not (math.isnan(a) or math.isnan(b)) else "-"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3, help="fresh deployments measured (default 3)")
    parser.add_argument("--dms", type=int, default=50, help="DMs and as many /ask per run, alternating (50)")
    parser.add_argument("--conversations", type=int, default=1000, help="conversations stored per run (1000)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--concurrency", type=int, default=10, help="WORKER_CONCURRENCY (default 10)")
    parser.add_argument("--jobs-per-second", type=float, default=1000, help="JOBS_PER_SECOND (default 1000)")
    parser.add_argument("--fake-ai-latency", type=float, default=0.0, help="seconds per fake answer (0)")
    parser.add_argument("--gap", type=float, default=0.1, help="longest random pause before each send (0.1)")
    parser.add_argument("--answer-timeout", type=float, default=10.0, help="seconds per answer (10)")
    parser.add_argument("--fill-timeout", type=float, default=300.0, help="seconds for a whole fill (300)")
    args = parser.parse_args()
    if min(args.runs, args.dms, args.conversations, args.workers) < 1:
        parser.error("--runs, --dms, --conversations and --workers must be positive")

    errors: list[str] = []
    runs = [one_run(args, index, errors) for index in range(args.runs)]

    print(
        f"conversations: {args.runs} run(s); per run {args.dms} DMs and {args.dms} /ask alternating, "
        f"one at a time, then {args.conversations:,} DMs and {args.conversations:,} /ask as fast as acked; "
        f"{args.workers} worker(s) x {args.concurrency}, fake AI latency {args.fake_ai_latency:g} s"
    )
    print()
    print(f"{'ms, median of runs':<40}{'p50':>9}{'p99':>9}{'ack p50':>9}")
    rows = {
        "DM event -> thread reply posted": ([r.dm_ms for r in runs], [r.dm_ack_ms for r in runs]),
        "/ask -> ephemeral answer (baseline)": ([r.ask_ms for r in runs], [r.ask_ack_ms for r in runs]),
    }
    figures = {}
    for label, (samples, acks) in rows.items():
        p50 = median([percentile(s, 50) for s in samples if s])
        p99 = median([percentile(s, 99) for s in samples if s])
        ack = median([percentile(s, 50) for s in acks if s])
        figures[label] = (p50, p99, ack)
        print(f"{label:<40}{p50:>9.1f}{p99:>9.1f}{ack:>9.1f}")
    (dm50, dm99, dm_ack), (ask50, ask99, ask_ack) = figures.values()
    ratios = (_ratio(dm50, ask50), _ratio(dm99, ask99), _ratio(dm_ack, ask_ack))
    print(f"{'ratio (DM / ask)':<40}" + "".join(f"{r:>9}" for r in ratios))
    print()
    conversation = median([r.conversation_bytes for r in runs])
    dm_memory = median([r.dm_used_memory for r in runs])
    ask_memory = median([r.ask_used_memory for r in runs])
    print(f"{'Redis bytes per 1,000, median of runs':<48}{'bytes':>12}{'per item':>10}")
    for label, value in (
        ("conversation keys (sum of MEMORY USAGE)", conversation),
        ("used_memory delta, 1,000 DMs", dm_memory),
        ("used_memory delta, 1,000 /ask (baseline)", ask_memory),
    ):
        print(f"{label:<48}{value:>12,.0f}{value / 1000:>10,.0f}")
    print(f"{'ratio (DMs / ask, used_memory)':<48}{_ratio(dm_memory, ask_memory):>12}")
    print()
    answered = sum(len(r.dm_ms) + len(r.ask_ms) for r in runs)
    print(f"answered {answered}/{2 * args.dms * args.runs} timed questions, errors {len(errors)}")
    for problem in errors[:10]:
        print(f"error: {problem}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
