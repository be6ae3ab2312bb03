"""End-to-end answer time: from sending a signed ``/ask`` to the answer reaching the response_url.

What is measured, per command:
  * ack: the web process's reply to the slash-command POST (``time.perf_counter``, send to last
    byte read), as in ack_latency.py;
  * end-to-end: from just before the POST is sent until the fake Slack *receives* the answer on
    that command's response_url. The arrival time is the one the fake Slack records itself
    (``time.monotonic`` in its server thread), so how often this script polls does not matter;
  * queue wait: enqueue to ``job.started``, as the worker logs it (``queued_ms``), which shows
    where the end-to-end time goes.

How: a private redis-server, the fake Slack and fake Anthropic servers, the web process as a real
``python -m app.web.serve`` subprocess (the Procfile's web command) and one real worker process,
``arq workers.WorkerSettings``, all on loopback. Commands go one at a time: send, wait for that
command's answer (matched on its response_url, unique per command), then the next. The fake
Anthropic is scripted with one reply per command, delayed by ``--fake-ai-latency`` seconds.

Workers are woken by every enqueue (workers/loop.py) rather than polling, so queue wait is a
millisecond or two. A random pause of up to ``--gap`` seconds before each command spreads arrivals
as real users' are; it mattered when arq polled on a fixed 0.5 s cycle and is kept for comparison.

Run from the repo root: ``.venv/bin/python bench/end_to_end.py [--commands M] [--fake-ai-latency S]``.
Exits non-zero when any ack was wrong or any answer was lost, wrong, or arrived more than once.
"""

from __future__ import annotations

import argparse
import http.client
import random
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from harness import (
    WebProcess,
    deployment_env,
    percentile,
    start_loopback,
)

from app.contract.jobs import job_id_for, team_scoped
from tests.support.fakes.anthropic import MESSAGES, message
from tests.support.fakes.server import Reply
from tests.support.fakes.slack import POST_EPHEMERAL, RESPONSE
from tests.support.logs import log_events
from tests.support.processes import WorkerProcess
from tests.support.slack_requests import SlashCommands, signature_headers

WORKING = "Working on it"


@dataclass
class Sample:
    job_id: str
    ack_ms: float
    end_to_end_ms: float


def worker_queue_waits(log: str) -> dict[str, int]:
    """``queued_ms`` of each job.started line in the worker's JSON log, by job id."""
    return {event["job_id"]: int(event["queued_ms"]) for event in log_events(log, "job.started")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--commands", type=int, default=30, help="commands sent, one at a time (default 30)")
    parser.add_argument(
        "--fake-ai-latency",
        type=float,
        default=0.0,
        help="seconds the fake Anthropic waits before each answer (default 0)",
    )
    parser.add_argument(
        "--gap",
        type=float,
        default=0.5,
        help="longest random pause before each command, seconds (default 0.5; 0 = none)",
    )
    parser.add_argument(
        "--answer-timeout",
        type=float,
        default=10.0,
        help="seconds to wait for an answer beyond the fake AI latency (default 10)",
    )
    parser.add_argument(
        "--time-budget",
        type=float,
        default=100.0,
        help="seconds after which sending stops and the run counts as failed (default 100)",
    )
    args = parser.parse_args()
    if args.commands < 1 or args.fake_ai_latency < 0 or args.gap < 0:
        parser.error("--commands must be positive; --fake-ai-latency and --gap not negative")

    deadline = time.monotonic() + args.time_budget
    # Fixed seed: two runs with the same flags pause the same way.
    pauses = random.Random(0)
    samples: list[Sample] = []
    errors: list[str] = []
    workdir = Path(tempfile.mkdtemp(prefix="asklane-bench-e2e-"))
    with ExitStack() as running:
        redis, slack, anthropic = start_loopback(running, workdir)
        env = deployment_env(redis, slack, anthropic)
        web = WebProcess(env, workdir / "web.log")
        running.callback(web.stop)
        # The worker logs "worker.started" (and each job's queue wait) at INFO; at WARNING it
        # would print neither. Its log goes to a file; a few lines per job cost next to nothing.
        worker = WorkerProcess({**env, "LOG_LEVEL": "INFO"}, workdir / "worker.log")
        running.callback(worker.stop)
        web.wait_listening()
        worker.wait_for_log("worker.started")

        commands = SlashCommands(slack)
        conn = http.client.HTTPConnection("127.0.0.1", web.port, timeout=10)
        running.callback(conn.close)
        for n in range(args.commands):
            if time.monotonic() > deadline:
                errors.append(f"time budget exhausted after {n} commands")
                break
            question = f"bench question {n}"
            form = commands.form(question)
            body = urlencode(form).encode()
            headers = signature_headers(body)
            hook = urlsplit(form["response_url"]).path
            expected = f"Answer to: {question}"
            anthropic.script(
                MESSAGES,
                Reply(
                    json=message(expected),
                    headers={"request-id": f"req_bench_{n}"},
                    delay=args.fake_ai_latency,
                ),
            )
            if args.gap:
                time.sleep(pauses.uniform(0, args.gap))

            sent_at = time.monotonic()
            started = time.perf_counter()
            try:
                conn.request("POST", "/slack/events", body=body, headers=headers)
                response = conn.getresponse()
                ack_body = response.read().decode(errors="replace")
            except (OSError, http.client.HTTPException) as error:
                conn.close()
                errors.append(f"command {n}: ack failed: {type(error).__name__}: {error}")
                continue
            ack_ms = (time.perf_counter() - started) * 1000
            if response.status != 200 or WORKING not in ack_body:
                errors.append(f"command {n}: ack status {response.status}: {ack_body[:200]}")
                continue

            wait_until = time.monotonic() + args.fake_ai_latency + args.answer_timeout
            while not (answers := slack.received(hook)) and time.monotonic() < wait_until:
                time.sleep(0.002)
            if not answers:
                errors.append(
                    f"command {n}: no answer on {hook} within "
                    f"{args.fake_ai_latency + args.answer_timeout:.1f} s"
                )
                continue
            answer = answers[0]
            if answer.body.get("text") != expected:
                errors.append(f"command {n}: answer was {str(answer.body.get('text'))[:200]!r}")
            samples.append(
                Sample(
                    job_id_for("ask", team_scoped(form["team_id"], form["trigger_id"])),
                    ack_ms,
                    (answer.at - sent_at) * 1000,
                )
            )

        # Late duplicates or fallback posts would show up here rather than per command.
        time.sleep(0.2)
        responses = slack.received(RESPONSE)
        if len(responses) != len(samples):
            errors.append(f"{len(responses)} posts to response_urls for {len(samples)} answered commands")
        if fallbacks := slack.received(POST_EPHEMERAL):
            errors.append(f"{len(fallbacks)} unexpected chat.postEphemeral call(s)")
        queue_waits = worker_queue_waits(worker.log())

    acks = [s.ack_ms for s in samples]
    e2e = [s.end_to_end_ms for s in samples]
    waits = [float(queue_waits[s.job_id]) for s in samples if s.job_id in queue_waits]
    print(
        f"end-to-end, {args.commands} commands one at a time, fake AI latency {args.fake_ai_latency:g} s, "
        f"random pause up to {args.gap:g} s before each"
    )
    print()
    print(f"{'ms':<36}{'n':>5}{'p50':>9}{'p90':>9}{'max':>9}")
    for label, values in (
        ("ack (web reply)", acks),
        ("end-to-end (send -> answer posted)", e2e),
        ("queue wait (worker log queued_ms)", waits),
    ):
        print(
            f"{label:<36}{len(values):>5}{percentile(values, 50):>9.1f}{percentile(values, 90):>9.1f}"
            f"{max(values, default=float('nan')):>9.1f}"
        )
    print()
    print(f"answered {len(samples)}/{args.commands}, errors {len(errors)}")
    if errors:
        print()
        print(f"logs kept in {workdir}")
        for problem in errors[:10]:
            print(f"error: {problem}")
        return 1
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
