"""Token limits under a backlog: tokens per sliding minute against AI_INPUT/OUTPUT_TOKENS_PER_MINUTE,
and calls per second, beside the call-limit-only configuration, in one run.

What is measured: three loopback deployments side by side, each its own redis-server, fake Slack,
fake Anthropic and ``--workers`` real worker processes (``arq workers.WorkerSettings``), each given
a backlog of ``/ask`` jobs queued straight into Redis (enough for the whole run) at once:

calls only     JOBS_PER_SECOND ``--calls-per-second``, no token limit (issue 13's "before").
output binds   the same, with AI_OUTPUT_TOKENS_PER_MINUTE ``--output-limit`` and an input limit
               far enough above what those calls send that it does not bind.
input binds    the same, with AI_INPUT_TOKENS_PER_MINUTE ``--input-limit`` and a roomy output limit.

Every question is ``--question-chars`` characters (the fake counts characters / 4 of it and the
system prompt as input; asklane reserves its own estimate, bytes / 3 plus framing, and gives the
difference back after the call); every answer writes ``--answer-tokens`` of AI_MAX_TOKENS
``--max-tokens`` and takes ``--latency`` seconds. The fake Anthropic of a token configuration
enforces the same limits as the organisation's (token buckets, as Anthropic does): its 429s are
counted. Figures come from the fake's own log of each answered request (arrival time, input
tokens counted, output tokens written): tokens in every sliding minute [t, t + 60 s) starting
each 0.1 s from the first call while the minute ends within the ``--seconds`` measured (mean and
max), and the most in any minute at all; calls per second over the run. The ``>= 95 %`` target
is the issue's, for the limit that binds.

Run from the repo root: ``.venv/bin/python bench/token_limits.py`` (about 2.5 minutes with the
defaults, the three at once; ``--repeat 2`` for medians, twice as long). Exits 1 when a
configuration could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from statistics import mean, median

from harness import deployment_env, start_loopback

from app.contract.queue import enqueue_ask, open_redis
from tests.support.deployment import settings_from
from tests.support.measures import max_sum_in_window, sliding_sums
from tests.support.processes import WorkerProcess
from tests.support.slack_requests import SlashCommands

MINUTE = 60.0


@dataclass(frozen=True)
class Config:
    name: str
    input_limit: int | None
    output_limit: int | None


@dataclass
class Result:
    config: Config
    calls: int
    calls_per_second: float
    refused: int
    #: Per kind ("input", "output"): mean and max over the grid of sliding minutes, and the max
    #: over any minute.
    minutes: dict[str, tuple[float, int, int]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--seconds", type=float, default=120.0, help="measured per configuration (default 120)"
    )
    parser.add_argument("--workers", type=int, default=2, help="worker processes each (default 2)")
    parser.add_argument("--calls-per-second", type=float, default=4.0, help="JOBS_PER_SECOND (default 4)")
    parser.add_argument("--input-limit", type=int, default=40_000, help="input tokens/min (default 40,000)")
    parser.add_argument("--output-limit", type=int, default=30_000, help="output tokens/min (default 30,000)")
    parser.add_argument("--question-chars", type=int, default=2_000, help="(default 2,000)")
    parser.add_argument("--answer-tokens", type=int, default=300, help="output per answer (default 300)")
    parser.add_argument("--max-tokens", type=int, default=600, help="AI_MAX_TOKENS (default 600)")
    parser.add_argument("--latency", type=float, default=0.5, help="seconds per answer (default 0.5)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds; medians printed (default 1)")
    args = parser.parse_args()

    configs = [
        Config("calls only", None, None),
        # The other limit of each is four times the binding one's: it never binds.
        Config("output binds", args.input_limit * 4, args.output_limit),
        Config("input binds", args.input_limit, args.output_limit * 4),
    ]
    workdir = Path(tempfile.mkdtemp(prefix="asklane-bench-tokens-"))
    rounds: list[list[Result]] = [[] for _ in configs]
    failed = False
    for number in range(args.repeat):
        with ThreadPoolExecutor(len(configs)) as pool:
            runs = [
                pool.submit(_run, config, args, workdir / f"{number}-{config.name.replace(' ', '-')}")
                for config in configs
            ]
            for index, (config, run) in enumerate(zip(configs, runs, strict=True)):
                try:
                    rounds[index].append(run.result())
                except Exception:
                    print(f"{config.name}: could not run", file=sys.stderr)
                    traceback.print_exc()
                    failed = True
    _print(
        args, [_median(config, results) for config, results in zip(configs, rounds, strict=True) if results]
    )
    if failed:
        print(f"worker logs kept in {workdir}")
        return 1
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _median(config: Config, results: Sequence[Result]) -> Result:
    """One line for several rounds: the median of the rates and mean minutes, the most of every
    maximum and of the 429s (what "never over" is about)."""
    minutes = {
        kind: (
            median(result.minutes[kind][0] for result in results),
            max(result.minutes[kind][1] for result in results),
            max(result.minutes[kind][2] for result in results),
        )
        for kind in ("input", "output")
    }
    return Result(
        config,
        round(median(result.calls for result in results)),
        median(result.calls_per_second for result in results),
        max(result.refused for result in results),
        minutes,
    )


def _run(config: Config, args: argparse.Namespace, workdir: Path) -> Result:
    workdir.mkdir(parents=True)
    with ExitStack() as running:
        redis, slack, anthropic = start_loopback(running, workdir)
        anthropic.output_tokens = args.answer_tokens
        anthropic.default_delay = args.latency
        if config.input_limit is not None or config.output_limit is not None:
            # The organisation's limits, as Anthropic enforces them: asklane should meet no 429.
            anthropic.rate_limit(input_tokens=config.input_limit, output_tokens=config.output_limit)
        env = {
            **deployment_env(redis, slack, anthropic),
            "JOBS_PER_SECOND": str(args.calls_per_second),
            "AI_MAX_TOKENS": str(args.max_tokens),
        }
        if config.input_limit is not None:
            env["AI_INPUT_TOKENS_PER_MINUTE"] = str(config.input_limit)
        if config.output_limit is not None:
            env["AI_OUTPUT_TOKENS_PER_MINUTE"] = str(config.output_limit)
        # INFO for worker.started; what the jobs log costs far less than the calls they wait for.
        workers = [
            WorkerProcess({**env, "LOG_LEVEL": "INFO"}, workdir / f"worker-{n}.log")
            for n in range(args.workers)
        ]
        for worker in workers:
            running.callback(worker.stop)
        for worker in workers:
            worker.wait_for_log("worker.started", timeout=60)

        backlog = int(args.calls_per_second * (args.seconds + 30))
        asyncio.run(_enqueue(env, SlashCommands(slack), backlog, args.question_chars))
        deadline = time.monotonic() + args.seconds + 30
        while not anthropic.token_log and time.monotonic() < deadline:
            time.sleep(0.05)
        if not anthropic.token_log:
            raise RuntimeError("no AI call arrived")
        start = anthropic.token_log[0].at
        time.sleep(max(0.0, start + args.seconds - time.monotonic()))
        end = start + args.seconds
        # Let the calls in flight at the end write their real output before reading the log.
        time.sleep(args.latency + 1.0)
        log = [use for use in anthropic.token_log if use.at < end]
        refused = anthropic.refused

    minutes = {}
    for kind in ("input", "output"):
        amounts = [(use.at, use.input_tokens if kind == "input" else use.output_tokens) for use in log]
        grid = sliding_sums(amounts, MINUTE, start, end)
        minutes[kind] = (
            mean(grid) if grid else float("nan"),
            max(grid, default=0),
            max_sum_in_window(amounts, MINUTE),
        )
    return Result(config, len(log), len(log) / args.seconds, refused, minutes)


async def _enqueue(env: dict[str, str], commands: SlashCommands, count: int, chars: int) -> None:
    """Queue ``count`` jobs as the web process would, each a distinct question of ``chars``."""
    settings = settings_from(env)
    redis = open_redis(settings, timeout=10)
    try:
        for n in range(count):
            job = commands.job(f"{n:06d} " + "how does the sliding window log work? " * (chars // 38))
            if not await enqueue_ask(redis, job):
                raise RuntimeError(f"job {job.job_id} refused as a duplicate")
    finally:
        await redis.aclose()


def _print(args: argparse.Namespace, results: Sequence[Result]) -> None:
    print(
        f"token limits: {args.workers} workers per configuration, JOBS_PER_SECOND {args.calls_per_second:g}, "
        f"questions of {args.question_chars} characters, answers of {args.answer_tokens} tokens "
        f"(AI_MAX_TOKENS {args.max_tokens}) in {args.latency:g} s, {args.seconds:g} s measured, "
        f"all three at once; {args.repeat} round(s): medians of calls/s and mean/min, the most of the rest"
    )
    print(
        f"{'configuration':<14} {'calls/s':>7} {'429s':>5}  {'kind':<6} {'limit/min':>9} "
        f"{'mean/min':>9} {'max/min':>9} {'max any':>9} {'mean %':>7}  target"
    )
    for result in results:
        for kind in ("input", "output"):
            limit = result.config.input_limit if kind == "input" else result.config.output_limit
            average, most, worst = result.minutes[kind]
            binds = result.config.name.startswith(kind)
            share = f"{100 * average / limit:6.1f}%" if limit else "      -"
            target = ""
            if binds and limit:
                met = average >= 0.95 * limit and worst <= limit
                target = f">= 95 %, never over: {'met' if met else 'NOT met'}"
            elif limit:
                target = f"never over: {'met' if worst <= limit else 'NOT met'}"
            first = kind == "input"
            print(
                f"{result.config.name if first else '':<14} "
                f"{f'{result.calls_per_second:.2f}' if first else '':>7} "
                f"{str(result.refused) if first else '':>5}  {kind:<6} "
                f"{f'{limit:,}' if limit else 'off':>9} {average:>9,.0f} {most:>9,} {worst:>9,} "
                f"{share}  {target}"
            )


if __name__ == "__main__":
    sys.exit(main())
