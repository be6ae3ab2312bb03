"""Sustained slash-command load on the web process, beside a bare Bolt app, and every answer checked.

Phases, each ``--rate`` commands/s for ``--seconds`` from bench/loadgen.py in its own process:

1. a bare Bolt app that verifies and only acks (bench/bare_bolt.py), Bolt's default runner;
2. the same with the listener inline (``process_before_response=True``);
3. asklane's web process (the Procfile command on loopback) while two worker processes answer
   the same commands as they arrive, through the fake Anthropic and Slack servers;
4. asklane's web process with no worker running: the commands wait in Redis.

Then workers start again, and it waits until every command queued in phases 3 and 4 has been
answered and counts answers delivered once, twice, or never. Redis's key count and memory are
sampled every second from phase 3 on.

Everything is on loopback: a private redis-server, the fake Slack and Anthropic servers of the
test suite (threads of this process), uvicorn and arq as subprocesses. The global rate limit is
raised (``JOBS_PER_SECOND``) so that workers can keep up, and quotas are off: what is measured is
the web process and the queue, not the limits.

Run from the repo root: ``.venv/bin/python bench/load.py [--rate 200] [--seconds 60]``.
Exits non-zero when a command errored or was refused, or an answer was lost or doubled.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from harness import (
    ROOT,
    FakeSlack,
    RedisServer,
    WebProcess,
    deployment_env,
    percentile,
    start_loopback,
)

from app.contract import keys
from tests.support.deployment import SIGNING_SECRET
from tests.support.processes import WorkerProcess, free_port

VENV_BIN = Path(sys.executable).parent
TARGETS = {"asklane, workers draining": (None, 25.0), "asklane, workers idle": (3.0, 10.0)}


class BareBolt:
    """bench/bare_bolt.py under uvicorn, configured like the web process."""

    def __init__(self, env: dict[str, str], log_path: Path, *, inline: bool) -> None:
        self.port = free_port()
        self._log = log_path.open("wb")
        command = [str(VENV_BIN / "uvicorn"), "--app-dir", str(ROOT / "bench"), "bare_bolt:create_app"]
        command += ["--factory", "--host", "127.0.0.1", "--port", str(self.port), "--no-access-log"]
        self.process = subprocess.Popen(
            command,
            env={**os.environ, **env, "BARE_BOLT_INLINE": "1" if inline else "0"},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("bare Bolt app did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        self._log.close()


class RedisSampler(threading.Thread):
    """Samples DBSIZE and used_memory every second while a phase runs."""

    def __init__(self, redis: RedisServer) -> None:
        super().__init__(daemon=True)
        self._client = redis.client()
        self._finished = threading.Event()
        self.max_keys = 0
        self.max_memory = 0

    def run(self) -> None:
        while not self._finished.wait(1.0):
            self.max_keys = max(self.max_keys, int(self._client.dbsize()))
            self.max_memory = max(self.max_memory, int(self._client.info("memory")["used_memory"]))

    def stop(self) -> None:
        self._finished.set()
        self.join(5)


def run_load(port: int, label: str, args: argparse.Namespace, slack: FakeSlack) -> dict[str, Any]:
    command = [sys.executable, str(ROOT / "bench" / "loadgen.py"), "--port", str(port), "--label", label]
    command += ["--rate", str(args.rate), "--seconds", str(args.seconds), "--secret", SIGNING_SECRET]
    command += ["--response-prefix", slack.response_prefix, "--connections", str(args.connections)]
    done = subprocess.run(command, capture_output=True, timeout=args.seconds + 90, check=True)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def answers_by_question(slack: FakeSlack) -> Counter[str]:
    """How many times each question's answer was delivered (progress updates not counted)."""
    seen: Counter[str] = Counter()
    for body in slack.delivered():
        text = str(body.get("text", ""))
        match = re.match(r"Answer to: (\S+ question \d+)", text)
        if match:
            seen[match.group(1)] += 1
    return seen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rate", type=float, default=200.0, help="commands per second (default 200)")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each phase (default 60)")
    parser.add_argument("--connections", type=int, default=16, help="keep-alive connections (default 16)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes in phase 4 (default 2)")
    parser.add_argument("--drain-timeout", type=float, default=600.0, help="seconds to wait for answers")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="asklane-bench-load-"))
    results: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    with ExitStack() as running:
        redis, slack, anthropic = start_loopback(running, workdir)
        env = deployment_env(redis, slack, anthropic) | {"JOBS_PER_SECOND": "5000"}

        for name, inline in (("bare Bolt, default runner", False), ("bare Bolt, inline", True)):
            bare = BareBolt(env, workdir / f"bare-{int(inline)}.log", inline=inline)
            try:
                results[name] = run_load(bare.port, f"bare{int(inline)}", args, slack)
            finally:
                bare.stop()

        web = WebProcess(env, workdir / "web.log")
        running.callback(web.stop)
        web.wait_listening()
        sampler = RedisSampler(redis)
        sampler.start()

        def start_workers(generation: str) -> list[WorkerProcess]:
            logs = [workdir / f"worker-{generation}{n}.log" for n in range(args.workers)]
            workers = [WorkerProcess(env, log) for log in logs]
            for worker in workers:  # all stopped at exit, even if one fails to start
                running.callback(worker.stop)
            for worker in workers:
                # At LOG_LEVEL=WARNING there is no worker.started line: arq prints its own first.
                worker.wait_for_log("Starting worker", timeout=30)
            time.sleep(1.0)  # start-up (warm-up call, first poll) done
            return workers

        # Workers keep up with the load as it arrives: the steady state of a busy deployment.
        workers = start_workers("a")
        results["asklane, workers draining"] = run_load(web.port, "draining", args, slack)
        for worker in workers:
            worker.signal_group(signal.SIGTERM)
        for worker in workers:
            worker.wait(timeout=40)

        # No worker: only the web process runs; the commands wait in Redis.
        results["asklane, workers idle"] = run_load(web.port, "idle", args, slack)
        backlog = int(redis.client().zcard(keys.QUEUE_KEY))
        start_workers("b")

        queued = sum(results[phase]["answered"] - results[phase]["errors"] for phase in TARGETS)
        started = time.monotonic()
        while time.monotonic() - started < args.drain_timeout:
            if sum(answers_by_question(slack).values()) >= queued and not redis.client().zcard(
                keys.QUEUE_KEY
            ):
                break
            time.sleep(1.0)
        drained_in = time.monotonic() - started
        time.sleep(2.0)  # anything still arriving now would be a second answer
        sampler.stop()
        answers = answers_by_question(slack)
        keys_after = int(redis.client().dbsize())
        memory_after = int(redis.client().info("memory")["used_memory"])

    print(
        f"load: {args.rate:g} slash commands/s for {args.seconds:g} s per phase, {args.connections} "
        "keep-alive connections, load generator in its own process"
    )
    print()
    header = f"{'phase':<28}{'sent':>7}{'errors':>7}{'unavail':>8}{'rate/s':>8}"
    print(header + f"{'p50 ms':>8}{'p90 ms':>8}{'p99 ms':>8}{'max ms':>8}{'late p99':>9}")
    for name, result in results.items():
        lat, late = result["latencies_ms"], result["lateness_ms"]
        print(
            f"{name:<28}{result['sent']:>7}{result['errors']:>7}{result['unavailable']:>8}"
            f"{result['achieved_rate']:>8.1f}{percentile(lat, 50):>8.2f}{percentile(lat, 90):>8.2f}"
            f"{percentile(lat, 99):>8.2f}{max(lat, default=float('nan')):>8.2f}{percentile(late, 99):>9.2f}"
        )
        for error in result["first_errors"][:3]:
            print(f"    {error}")
    print()
    for name, (p50_target, p99_target) in TARGETS.items():
        lat = results[name]["latencies_ms"]
        verdicts = []
        if p50_target is not None:
            verdicts.append(f"p50 {percentile(lat, 50):.2f} ms (target <= {p50_target:g})")
        verdicts.append(f"p99 {percentile(lat, 99):.2f} ms (target <= {p99_target:g})")
        met = (p50_target is None or percentile(lat, 50) <= p50_target) and percentile(lat, 99) <= p99_target
        print(f"{name}: {', '.join(verdicts)}: {'met' if met else 'NOT MET'}")
    doubled = sum(1 for count in answers.values() if count > 1)
    once = sum(1 for count in answers.values() if count == 1)
    print(
        f"answers: {queued} queued ({backlog} while no worker ran), {once} delivered once, "
        f"{doubled} doubled, {queued - len(answers)} missing; drained {drained_in:.0f} s after the last phase"
    )
    print(
        f"redis: at most {sampler.max_keys} keys and {sampler.max_memory / 2**20:.1f} MB during phases 3-4 "
        f"and the drain; {keys_after} keys, {memory_after / 2**20:.1f} MB after"
    )

    for name, result in results.items():
        if result["errors"] or result["unavailable"]:
            problems.append(f"{name}: {result['errors']} errors, {result['unavailable']} unavailable")
    if doubled or queued != len(answers):
        problems.append(f"{doubled} answers doubled, {queued - len(answers)} missing")
    if problems:
        print(f"\nFAILED ({'; '.join(problems)}); logs kept in {workdir}")
        return 1
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
