"""Redis growth after many jobs: key counts by kind, which of them expire, and memory.

Runs N jobs (default 10,000) through a real worker (in this process, arq burst mode, the
limiter set far above the load) against a private redis-server and the fake Slack and
Anthropic servers, a tenth of them failing permanently, then lists every key Redis holds.
What should hold: the retention lists stay at their caps, and every per-job key has a TTL
(arq's results for the dedupe hour, our delivered markers), so nothing grows without bound.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from app.contract.queue import enqueue_ask, open_redis  # noqa: E402
from bench.harness import FakeAnthropic, FakeSlack, RedisServer, deployment_env  # noqa: E402
from tests.support.deployment import settings_from  # noqa: E402
from tests.support.fakes.anthropic import MESSAGES, error  # noqa: E402
from tests.support.slack_requests import SlashCommands  # noqa: E402
from workers.loop import AsklaneWorker  # noqa: E402
from workers.process import worker_settings  # noqa: E402


def kind_of(key: str) -> str:
    """Group keys by what they are: the id-free prefix."""
    parts = key.split(":")
    if key.startswith("arq:") and len(parts) >= 3:
        return ":".join(parts[:2]) + ":*"
    if key.startswith("asklane:") and len(parts) >= 3 and parts[-1].startswith("ask-"):
        return ":".join(parts[:-1]) + ":*"
    return key


async def enqueue(settings_env: dict[str, str], commands: SlashCommands, count: int) -> None:
    client = open_redis(settings_from(settings_env))
    for n in range(count):
        job = commands.job(f"question {n}")
        await enqueue_ask(client, job)
    await client.aclose()


async def drain(settings_env: dict[str, str]) -> None:
    worker = AsklaneWorker(**worker_settings(settings_from(settings_env)), burst=True, handle_signals=False)
    try:
        await worker.async_run()
    finally:
        await worker.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs to run (default 10,000)")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="asklane-bench-keys-"))
    redis = RedisServer(workdir)
    redis.start()
    slack, anthropic = FakeSlack().start(), FakeAnthropic().start()
    try:
        env = {
            **deployment_env(redis, slack, anthropic),
            "JOBS_PER_SECOND": "100000",
            "WORKER_CONCURRENCY": "50",
            "LOG_LEVEL": "ERROR",
        }
        failing = args.jobs // 10
        anthropic.script(MESSAGES, *[error(400, "invalid_request_error")] * failing)
        started = time.monotonic()
        asyncio.run(enqueue(env, SlashCommands(slack), args.jobs))
        asyncio.run(drain(env))
        elapsed = time.monotonic() - started

        client = redis.client()
        kinds: Counter[str] = Counter()
        without_ttl: Counter[str] = Counter()
        for raw in client.scan_iter(count=1000):
            key = raw.decode()
            kinds[kind_of(key)] += 1
            if client.ttl(key) < 0:
                without_ttl[kind_of(key)] += 1
        answered = len(slack.delivered())
        memory = client.info("memory")["used_memory_human"]

        print(f"{args.jobs:,} jobs ({failing:,} failing permanently) in {elapsed:.1f} s")
        print(f"{answered:,} messages posted")
        print(f"redis: {sum(kinds.values()):,} keys, used_memory {memory}")
        print()
        print(f"{'key kind':<40}{'keys':>10}{'no TTL':>10}  size")
        for kind, count in sorted(kinds.items(), key=lambda item: -item[1]):
            size = ""
            if client.type(kind) == b"list":
                size = f"list of {client.llen(kind)}"
            print(f"{kind:<40}{count:>10,}{without_ttl[kind]:>10,}  {size}")
        unbounded = {kind: n for kind, n in without_ttl.items() if n > 1}
        if unbounded:
            print(f"\nper-job keys that never expire: {unbounded}")
            return 1
        return 0 if answered == args.jobs else 1
    finally:
        slack.stop()
        anthropic.stop()
        redis.stop()


if __name__ == "__main__":
    sys.exit(main())
