"""Redis time of one interactive-lane promotion (run by every worker poll), by backlog size.

Every poll of every worker runs the promotion script, and Redis runs one script at a time: its
cost is added to every web ack waiting behind it. This bench queues 1,000 and 50,000 interactive
jobs in a private redis-server and times the promotion as Redis sees it (INFO commandstats), for
the script before the fix (kept below as the baseline: it read every queued interactive id and
its score) and the one in app/contract/queue.py (it reads only re-scored jobs now due), in the same run.
A few re-scored jobs waiting out a retry delay are present, as in a deployment under transient
errors.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from app.contract import keys  # noqa: E402
from app.contract.keys import RESCORED_INTERACTIVE_KEY  # noqa: E402
from app.contract.queue import PRIORITY_OFFSET_MS, PROMOTE_BATCH  # noqa: E402
from app.contract.scripts import PROMOTE_DUE_INTERACTIVE  # noqa: E402
from bench.harness import RedisServer  # noqa: E402

QUEUE = keys.QUEUE_KEY
#: The set of every queued interactive id the old script scanned.
OLD_INTERACTIVE_KEY = keys.LEGACY_INTERACTIVE_KEY

# The promotion before the fix (app/contract/queue.py at 650806a), verbatim.
OLD_PROMOTE_DUE_INTERACTIVE = """
local offset = tonumber(ARGV[1])
local now = tonumber(ARGV[2])
for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local score = redis.call('ZSCORE', KEYS[1], id)
  if not score then
    redis.call('SREM', KEYS[2], id)
  else
    score = tonumber(score)
    if score > now - offset / 2 and score <= now then
      redis.call('ZADD', KEYS[1], 'XX', string.format('%.3f', score - offset), id)
    end
  end
end
return 0
"""

#: Re-scored jobs waiting out a retry delay (not yet due) beside the backlog.
RESCORED_WAITING = 20


def fill(client: redis.Redis, queued: int) -> None:
    """``queued`` interactive jobs in arq's queue, known to both scripts' bookkeeping."""
    client.flushall()
    now = time.time() * 1000
    offset = PRIORITY_OFFSET_MS["interactive"]
    batch = 1000
    for start in range(0, queued, batch):
        ids = [f"ask-{n:032x}" for n in range(start, min(start + batch, queued))]
        with client.pipeline(transaction=False) as pipe:
            pipe.zadd(QUEUE, {job_id: now - offset + n * 0.001 for n, job_id in enumerate(ids, start)})
            pipe.sadd(OLD_INTERACTIVE_KEY, *ids)
            pipe.execute()
    waiting = {f"ask-retry-{n}": now + 60_000 + n for n in range(RESCORED_WAITING)}
    client.zadd(QUEUE, waiting)
    client.zadd(RESCORED_INTERACTIVE_KEY, waiting)
    client.sadd(OLD_INTERACTIVE_KEY, *waiting)


def time_calls(client: redis.Redis, calls: int) -> tuple[list[float], list[float]]:
    """Redis-side microseconds of each call, of the old script and of the new.

    Read from INFO commandstats (EVALSHA's usec, reset before each call): SLOWLOG also logs every
    command a script runs, which would flood it with the old script's reads.
    """
    old = client.register_script(OLD_PROMOTE_DUE_INTERACTIVE)
    new = client.register_script(PROMOTE_DUE_INTERACTIVE)
    offset = PRIORITY_OFFSET_MS["interactive"]
    runs = {
        "old": lambda: old(keys=[QUEUE, OLD_INTERACTIVE_KEY], args=[offset, time.time() * 1000]),
        "new": lambda: new(
            keys=[QUEUE, RESCORED_INTERACTIVE_KEY], args=[offset, time.time() * 1000, PROMOTE_BATCH]
        ),
    }
    timings: dict[str, list[float]] = {"old": [], "new": []}
    for run in runs.values():
        run()  # loads the script
    # One script's calls after the other's: right after the old script, Lua's garbage collector
    # and cold CPU caches would be charged to the new one.
    for name, run in runs.items():
        for _ in range(calls):
            client.config_resetstat()
            run()
            timings[name].append(float(client.info("commandstats")["cmdstat_evalsha"]["usec"]))
    return timings["old"], timings["new"]


def summary(micros: list[float]) -> str:
    ordered = sorted(micros)
    p90 = ordered[int(0.9 * (len(ordered) - 1))]
    return (
        f"median {statistics.median(ordered) / 1000:8.3f} ms   p90 {p90 / 1000:8.3f} ms   (n={len(ordered)})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50, help="calls of each script per size (default 50)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 50_000])
    args = parser.parse_args()

    server = RedisServer(Path(tempfile.mkdtemp(prefix="asklane-bench-promotion-")))
    server.start()
    try:
        client = server.client()
        print("Redis time per promotion call (INFO commandstats), by interactive jobs queued:")
        for size in args.sizes:
            fill(client, size)
            old, new = time_calls(client, args.calls)
            print(f"{size:>7,} queued  old: {summary(old)}")
            print(f"{'':>7}         new: {summary(new)}")
        return 0
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
