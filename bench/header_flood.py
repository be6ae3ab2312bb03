"""Memory of the web process under a pre-authentication header flood, before and after the bounds.

What is measured: the resident memory (RSS, from /proc) of the web process while 4 unsigned
connections each send one request whose headers go on for ``--megabytes`` MB (default 32), as
fast as the server takes them. Before: the process at rest, having answered one GET /healthz.
Peak: the highest RSS sampled every 5 ms while the flood runs. After: once every flood
connection has ended (sent all, or was cut off by the server), and 0.5 s more for the server to
close its side.

Two commands, each started fresh for every run against the same private Redis and fake
Slack/Anthropic on loopback:

- old: uvicorn's CLI as the Procfile ran it before (httptools parser, no limits);
- new: the Procfile's web command now (``python -m app.web.serve``: h11 with a 16 KB header limit,
  request deadlines, a connection limit).

Prints the median of ``--runs`` runs (default 3) of each, and how many header bytes each
connection got out before the server closed it (kernel buffers included).

Run from the repo root: ``.venv/bin/python bench/header_flood.py [--runs N] [--megabytes M]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from harness import WebProcess, deployment_env, start_loopback

from tests.support.measures import rss_bytes
from tests.support.processes import free_port
from tests.support.slack_requests import flood_headers

CONNECTIONS = 4
MB = 1024 * 1024


def old_command(port: int) -> list[str]:
    """The Procfile's web command before the HTTP edge was bounded, bound to loopback."""
    uvicorn = str(Path(sys.executable).parent / "uvicorn")
    listen = ["--host", "127.0.0.1", "--port", str(port)]
    return [
        uvicorn,
        "app.web.main:create_app",
        "--factory",
        *listen,
        "--timeout-graceful-shutdown",
        "10",
        "--no-access-log",
    ]


@dataclass(frozen=True)
class Run:
    before: int
    peak: int
    after: int
    sent_per_connection: int


def flood_once(web: WebProcess, total: int) -> Run:
    pid = web.process.pid
    before = rss_bytes(pid)
    peak = before
    flooding = True

    def sample() -> None:
        nonlocal peak
        while flooding:
            peak = max(peak, rss_bytes(pid))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    sent: list[int] = []
    floods = [
        threading.Thread(target=lambda: sent.append(flood_headers(web.port, total)))
        for _ in range(CONNECTIONS)
    ]
    try:
        for flood in floods:
            flood.start()
        for flood in floods:
            flood.join()
        time.sleep(0.5)
    finally:
        flooding = False
        sampler.join()
    return Run(before, peak, rss_bytes(pid), max(sent))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3, help="runs of each command (default 3)")
    parser.add_argument("--megabytes", type=int, default=32, help="header MB per connection (default 32)")
    args = parser.parse_args()
    if args.runs < 1 or args.megabytes < 1:
        parser.error("--runs and --megabytes must be positive")

    workdir = Path(tempfile.mkdtemp(prefix="asklane-bench-flood-"))
    results: dict[str, list[Run]] = {"old": [], "new": []}
    with ExitStack() as running:
        redis, slack, anthropic = start_loopback(running, workdir)
        env = {**deployment_env(redis, slack, anthropic), "LOG_LEVEL": "ERROR"}
        for n in range(args.runs):
            for name in results:
                port = free_port()
                command = old_command(port) if name == "old" else None
                web = WebProcess(env, workdir / f"web-{name}-{n}.log", port, command)
                try:
                    web.wait_listening()
                    results[name].append(flood_once(web, args.megabytes * MB))
                finally:
                    web.stop()

    print(
        f"web process RSS, {CONNECTIONS} unsigned connections each sending {args.megabytes} MB of headers; "
        f"median of {args.runs} runs"
    )
    print()
    print(f"{'command':<44}{'before MB':>10}{'peak MB':>9}{'after MB':>9}{'sent MB/conn':>14}")
    labels = {
        "old": "old: uvicorn CLI (httptools, no limits)",
        "new": "new: python -m app.web.serve (h11, bounded)",
    }
    for name, runs in results.items():

        def median(values: list[int]) -> float:
            return statistics.median(values) / MB

        before, peak, after = (
            median([getattr(r, field) for r in runs]) for field in ("before", "peak", "after")
        )
        sent = median([r.sent_per_connection for r in runs])
        print(f"{labels[name]:<44}{before:>10.1f}{peak:>9.1f}{after:>9.1f}{sent:>14.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
