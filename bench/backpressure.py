"""Back-pressure: questions queued against an Anthropic organisation limit, answered or failed.

What is measured: ``--questions`` commands sent at once to the web process (a real uvicorn
subprocess), answered by ``--workers`` real worker processes (``arq workers.WorkerSettings``)
against the fake Anthropic enforcing an output-token limit (``--output-token-limit`` tokens
per ``--window`` seconds, refilled continuously; each answer ``--answer-tokens`` tokens), which
refuses calls over it with 429 ``rate_limit_error`` and a ``retry-after``, as Anthropic does.
Printed: calls refused, questions answered and failed (an error message), and the time from
sending to the last final message.

Measured on the 2-core shared machine, defaults (40 questions, 2 workers, 1,500 output tokens a
minute, 100 per answer, JOB_MAX_RETRIES 3): before back-pressure stopped spending retries, 61 of
92 calls refused and 9 questions failed (31 answered, last final message at 62 s); after, 108 of
148 calls refused and all 40 answered, none failed (last at 97 s). Issue 9 reported 111 refused
and 24 of 40 failed within 75 s with its own fake. Since issue 13 the fake charges a call's
``max_tokens`` of output when it starts and gives back the unused part at its end, as Anthropic
does: 212 of 252 calls refused, all 40 answered, last at 138 s. With AI_OUTPUT_TOKENS_PER_MINUTE
set, asklane books the tokens itself and meets no refusals (bench/token_limits.py).

Run from the repo root: ``.venv/bin/python bench/backpressure.py [--questions N] [--window S]``.
Exits non-zero when any question got no final message at all.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
from harness import WebProcess, deployment_env, start_loopback

from tests.support.fakes.slack import POST_EPHEMERAL, RESPONSE
from tests.support.processes import WorkerProcess
from tests.support.slack_requests import SlashCommands


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--questions", type=int, default=40, help="questions sent at once (default 40)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--output-token-limit", type=int, default=1500, help="per window (default 1500)")
    parser.add_argument("--window", type=float, default=60.0, help="limit window, seconds (default 60)")
    parser.add_argument(
        "--answer-tokens", type=int, default=100, help="output tokens per answer (default 100)"
    )
    parser.add_argument("--max-retries", type=int, default=3, help="JOB_MAX_RETRIES (default 3)")
    parser.add_argument(
        "--time-budget",
        type=float,
        default=400.0,
        help="seconds to wait for every final message (default 400)",
    )
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="asklane-bench-backpressure-"))
    with ExitStack() as running:
        redis, slack, anthropic = start_loopback(running, workdir)
        anthropic.output_tokens = args.answer_tokens
        anthropic.rate_limit(output_tokens=args.output_token_limit, window=args.window)
        env = {**deployment_env(redis, slack, anthropic), "JOB_MAX_RETRIES": str(args.max_retries)}
        web = WebProcess(env, workdir / "web.log")
        running.callback(web.stop)
        workers = [
            WorkerProcess({**env, "LOG_LEVEL": "INFO"}, workdir / f"worker-{n}.log")
            for n in range(args.workers)
        ]
        for worker in workers:
            running.callback(worker.stop)
        web.wait_listening()
        for worker in workers:
            worker.wait_for_log("worker.started", timeout=60)

        commands = SlashCommands(slack)
        forms = [commands.form(f"bench question {n}") for n in range(args.questions)]
        hooks = {form["response_url"].removeprefix(slack.response_prefix) for form in forms}
        started = time.monotonic()
        with httpx.Client(base_url=web.url, timeout=10) as client:
            for form in forms:
                commands.send(client, form=form)

        def finals() -> list[str]:
            """The last message each question's user saw, if it is an answer or an error."""
            last: dict[str, str] = {}
            for request in slack.received(RESPONSE):
                hook = request.path.removeprefix(RESPONSE).lstrip("/")
                text = str(request.body.get("text", ""))
                if request.accepted and text.startswith(("Answer to:", ":x:")):
                    last[hook] = text
            return [last[hook] for hook in hooks if hook in last]

        while len(finals()) < args.questions and time.monotonic() - started < args.time_budget:
            time.sleep(0.1)
        elapsed = time.monotonic() - started
        texts = finals()
        answered = sum(text.startswith("Answer to:") for text in texts)
        failed = sum(text.startswith(":x:") for text in texts)
        fallbacks = len(slack.received(POST_EPHEMERAL))
        refused = anthropic.refused
        calls = len(anthropic.received("/v1/messages"))

    shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"back-pressure: {args.questions} questions at once, {args.workers} workers, "
        f"{args.output_token_limit} output tokens per {args.window:g} s, {args.answer_tokens} per answer, "
        f"JOB_MAX_RETRIES {args.max_retries}"
    )
    print(f"calls to Anthropic      {calls:>6}")
    print(f"  refused (429)         {refused:>6}")
    print(f"answered                {answered:>6}")
    print(f"failed (error message)  {failed:>6}")
    print(f"no final message        {args.questions - answered - failed:>6}")
    print(f"chat.postEphemeral      {fallbacks:>6}")
    print(f"last final message at   {elapsed:>6.1f} s")
    return 0 if answered + failed == args.questions else 1


if __name__ == "__main__":
    sys.exit(main())
