"""``asklane``: the command line for the people on call.

    asklane status                 queue depth by priority, running jobs, limiter, workers
    asklane jobs failed|completed  the most recent finished jobs (RETAIN_* of them are kept)
    asklane retry JOB_ID           queue a failed job again (asklane retry --all-failed: all)
    asklane purge --failed         empty the failed-jobs list

Tables for people by default; ``--json`` for scripts. Reads REDIS_URL and the rest of the
settings like the processes do (on Heroku: ``heroku run asklane status``).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from app.queue import open_redis
from app.settings import Settings, load_settings
from workers import operations, retention


def main(argv: Sequence[str] | None = None, settings: Settings | None = None) -> int:
    """Run one command; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "retry" and (args.job_id is None) == (not args.all_failed):
        _parser().error("retry takes a JOB_ID or --all-failed")
    return asyncio.run(_run(args, settings or load_settings()))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asklane", description="Inspect and operate the asklane queue.")
    commands = parser.add_subparsers(dest="command", required=True)
    status = commands.add_parser("status", help="queue depth, running jobs, limiter, workers")
    jobs = commands.add_parser("jobs", help="recent finished jobs")
    jobs.add_argument("state", choices=["failed", "completed"])
    jobs.add_argument("--limit", type=int, default=20, help="how many, newest first (default 20)")
    retry = commands.add_parser("retry", help="queue failed jobs again")
    retry.add_argument("job_id", nargs="?", help="the failed job to retry")
    retry.add_argument("--all-failed", action="store_true", help="retry every failed job")
    purge = commands.add_parser("purge", help="empty the failed-jobs list")
    purge.add_argument("--failed", action="store_true", required=True, help="the failed-jobs list")
    for sub in (status, jobs, retry, purge):
        sub.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    redis = open_redis(settings, timeout=5.0)
    try:
        if args.command == "status":
            current = await operations.status(redis)
            _print(args, dataclasses.asdict(current), _status_text(current, settings))
        elif args.command == "jobs":
            records = await operations.recent(redis, args.state, args.limit)
            _print(args, [record.model_dump(mode="json") for record in records], _jobs_text(records))
        elif args.command == "retry":
            retried = await operations.retry(redis, None if args.all_failed else args.job_id)
            lines = [f"{r.failed_job_id} -> {r.job_id} (ref {r.reference})" for r in retried]
            _print(args, [dataclasses.asdict(r) for r in retried], "\n".join(lines) or "nothing to retry")
            if args.job_id and not retried:
                return 1
        else:
            count = await operations.purge_failed(redis)
            _print(args, {"purged": count}, f"purged {count} failed job record(s)")
    finally:
        await redis.aclose()
    return 0


def _print(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2) if args.json else text)


def _status_text(status: operations.Status, settings: Settings) -> str:
    now = time.time()
    pause = f"paused for {status.paused_for_s:.1f} s" if status.paused_for_s else "not paused"
    lines = [
        f"queued      {status.queue.interactive} interactive, {status.queue.background} background, "
        f"{status.queue.scheduled} scheduled (retries and rate-limit waits)",
        f"running     {len(status.running)}" + (f": {', '.join(status.running)}" if status.running else ""),
        f"limiter     {status.ai_calls_last_second} AI calls in the last second "
        f"(limit {settings.jobs_per_second:g}/s), {pause}",
        f"workers     {len(status.workers)} reporting",
    ]
    for worker in status.workers:
        lines.append(
            f"  {worker.worker:<30} {now - worker.reported_at:>4.0f} s ago  running {worker.running}  "
            f"completed {worker.completed}  failed {worker.failed}  retried {worker.retried}"
        )
    lines.append(f"arq health  {status.arq_health or 'no report (no worker has run recently)'}")
    return "\n".join(lines)


def _jobs_text(records: list[retention.JobRecord]) -> str:
    if not records:
        return "none"
    lines = [f"{'finished (UTC)':<20}{'job id':<38}{'ref':<10}{'tries':>5}  {'queued ms':>9}  outcome"]
    for record in records:
        outcome = record.error if record.state == "failed" else f"via {record.via}, AI {record.ai_ms} ms"
        lines.append(
            f"{record.finished_at:%Y-%m-%d %H:%M:%S} {record.job_id:<38}{record.reference or '-':<10}"
            f"{record.attempts:>5}  {record.queued_ms if record.queued_ms is not None else '-':>9}  {outcome}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
