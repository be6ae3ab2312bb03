"""Slash-command ack latency of the web process.

What is measured: the time the web process takes to answer a signed ``/ask`` POST to
``/slack/events`` -- signature check, Bolt dispatch, building the job and enqueueing it in Redis,
and the ephemeral "Working on it" reply. Slack gives the whole round trip 3 s.

How: a private redis-server and the fake Slack/Anthropic servers (only so the settings have URLs;
nothing calls them on the ack path) run on loopback, and the web process runs as a real
``python -m app.web.serve`` subprocess (the Procfile's web command). Every body and signature is built
before the clock starts. Requests go one at a time over one keep-alive HTTP/1.1 connection made with the
stdlib ``http.client``, so the figure is the server's time plus a loopback round trip, without
a client library's own overhead or a TCP handshake per request. Each request is timed with
``time.perf_counter`` from just before sending to the last byte of the response body read.
A warm-up (not counted) comes first. Then Redis is stopped and a few more requests measure the
"temporarily unavailable" ack, whose latency is bounded by the app's 1 s Redis timeout.

Run from the repo root: ``.venv/bin/python bench/ack_latency.py [--requests N]``.
Exits non-zero when any request errored (non-200, wrong body, connection failure) or the run
did not complete within its time budget.
"""

from __future__ import annotations

import argparse
import http.client
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from harness import (
    WebProcess,
    deployment_env,
    percentile,
    start_loopback,
)

from app.contract import keys
from tests.support.slack_requests import SlashCommands, signature_headers

WORKING = "Working on it"
UNAVAILABLE = "temporarily unavailable"


@dataclass(frozen=True)
class Prepared:
    body: bytes
    headers: dict[str, str]


@dataclass
class Outcome:
    latencies_ms: list[float]
    errors: list[str]


def prepare(commands: SlashCommands, count: int, start: int) -> list[Prepared]:
    """Bodies and signed headers, each with a fresh trigger_id (so no request is a duplicate)."""
    prepared = []
    for n in range(start, start + count):
        body = commands.body(f"bench question {n}")
        prepared.append(Prepared(body, signature_headers(body)))
    return prepared


def send_all(
    conn: http.client.HTTPConnection, requests: list[Prepared], expect: str, deadline: float
) -> Outcome:
    """Send the requests in order on ``conn``; time each and check the ack text."""
    outcome = Outcome([], [])
    for request in requests:
        if time.monotonic() > deadline:
            outcome.errors.append(f"time budget exhausted after {len(outcome.latencies_ms)} requests")
            break
        try:
            started = time.perf_counter()
            conn.request("POST", "/slack/events", body=request.body, headers=request.headers)
            response = conn.getresponse()
            payload = response.read()
            elapsed = time.perf_counter() - started
        except (OSError, http.client.HTTPException) as error:
            # The connection is unusable now; http.client reconnects on the next request.
            conn.close()
            outcome.errors.append(f"{type(error).__name__}: {error}")
            continue
        outcome.latencies_ms.append(elapsed * 1000)
        text = payload.decode(errors="replace")
        if response.status != 200 or expect not in text:
            outcome.errors.append(f"status {response.status}: {text[:200]}")
    return outcome


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=1000, help="measured requests (default 1000)")
    parser.add_argument("--warmup", type=int, default=50, help="uncounted warm-up requests (default 50)")
    parser.add_argument(
        "--down-requests", type=int, default=20, help="requests measured with Redis stopped (default 20)"
    )
    parser.add_argument(
        "--time-budget",
        type=float,
        default=100.0,
        help="seconds after which sending stops and the run counts as failed (default 100)",
    )
    args = parser.parse_args()
    if args.requests < 1 or args.warmup < 0 or args.down_requests < 0:
        parser.error("--requests must be positive; --warmup and --down-requests not negative")

    deadline = time.monotonic() + args.time_budget
    workdir = Path(tempfile.mkdtemp(prefix="asklane-bench-ack-"))
    # Each piece is stopped (in reverse order) only if it was started.
    with ExitStack() as running:
        redis, slack, anthropic = start_loopback(running, workdir)
        web = WebProcess(deployment_env(redis, slack, anthropic), workdir / "web.log")
        running.callback(web.stop)
        web.wait_listening()

        commands = SlashCommands(slack)
        warmup = prepare(commands, args.warmup, 0)
        measured = prepare(commands, args.requests, args.warmup)
        down = prepare(commands, args.down_requests, args.warmup + args.requests)

        conn = http.client.HTTPConnection("127.0.0.1", web.port, timeout=10)
        running.callback(conn.close)
        warm = send_all(conn, warmup, WORKING, deadline)
        normal = send_all(conn, measured, WORKING, deadline)
        # Proof the acks above were real enqueues, not early answers: one job per command.
        jobs_queued = int(redis.client().zcard(keys.QUEUE_KEY))

        redis.stop()
        outage = send_all(conn, down, UNAVAILABLE, deadline)

    lat = normal.latencies_ms
    print(f"web ack latency, one keep-alive connection, sequential (warm-up {args.warmup} not counted)")
    print()
    print(f"{'case':<12}{'requests':>9}{'errors':>8}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    print(
        f"{'redis up':<12}{len(lat):>9}{len(normal.errors):>8}{percentile(lat, 50):>9.2f}"
        f"{percentile(lat, 90):>9.2f}{percentile(lat, 99):>9.2f}{max(lat, default=float('nan')):>9.2f}"
    )
    down_lat = outage.latencies_ms
    print(
        f"{'redis down':<12}{len(down_lat):>9}{len(outage.errors):>8}{percentile(down_lat, 50):>9.2f}"
        f"{'-':>9}{'-':>9}{max(down_lat, default=float('nan')):>9.2f}"
    )

    print(f"jobs in the queue after the redis-up runs: {jobs_queued} (sent {args.warmup + args.requests})")

    errors = warm.errors + normal.errors + outage.errors
    if jobs_queued != args.warmup + args.requests:
        errors.append(f"expected {args.warmup + args.requests} queued jobs, found {jobs_queued}")
    if errors:
        print()
        print(f"logs kept in {workdir}")
        print(f"{len(errors)} error(s); first ones:")
        for error in errors[:5]:
            print(f"  {error}")
        return 1
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
