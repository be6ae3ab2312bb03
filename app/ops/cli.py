"""``asklane``: the command line for the people on call.

    asklane status                 queue depth by priority, running jobs, limiter, workers
    asklane jobs failed|completed  the most recent finished jobs (RETAIN_* of them are kept)
    asklane jobs show REF_OR_ID    one job's whole trace: question, asker, each run with its AI
                                   calls (tokens, cost, stop reason, request-id) and deliveries
    asklane retry JOB_ID           queue a failed job again (asklane retry --all-failed: all)
    asklane purge --failed         empty the failed-jobs list
    asklane usage                  AI spend and tokens by person, workspace, day and model, with
                                   the cache hit ratio: the last 7 UTC days (--days N), or one
                                   month (--month 2026-12)

    asklane ask "question"         in the sandbox (``make run`` without Slack credentials): send a
                                   signed /ask to the web process at $PORT (3000 by default, as
                                   ``make run`` starts it) and print what the asker sees; exits 0
                                   when the reply is complete, 1 when it is an error or does not
                                   come, 2 when it cannot ask (not the sandbox, stack not running)
    asklane ask "q" --then share   the same, then press a button of the answer (share, regenerate,
                                   dismiss; repeatable) and print what follows
    asklane chat                   in the sandbox: a conversation in the app's DM, each line a
                                   signed DM event to the web process, replies printed as they
                                   arrive (app/ops/chat.py); EOF or ``:quit`` ends it
    asklane chat --channel C0GENERAL  the same as mentions of the app in a channel (app_mention),
                                   the first line top-level, the next ones in its thread
    asklane sandbox                run the sandbox's Slack and Claude stand-ins (app/sandbox/stand_ins.py)

Tables for people by default; ``--json`` for scripts. Reads REDIS_URL and the rest of the
settings like the processes do (on Heroku: ``heroku run asklane status``).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.error import HTTPError
from urllib.parse import urlencode
from urllib.request import Request

import uvicorn
from pydantic import ValidationError

from app.contract import messages, usage
from app.contract.queue import open_redis
from app.contract.settings import SANDBOX_ENV_FILE, Settings, describe_errors
from app.ops import chat, job_trace, operations, usage_report
from app.ops.chat import StackUnreachable, fetch_json
from app.sandbox import stand_ins
from app.web.gate import FORM, signature_of
from workers import retention


def main(argv: Sequence[str] | None = None, settings: Settings | None = None) -> int:
    """Run one command; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "retry" and (args.job_id is None) == (not args.all_failed):
        _parser().error("retry takes a JOB_ID or --all-failed")
    if args.command == "jobs" and (args.state == "show") == (args.job is None):
        _parser().error("jobs show takes a REFERENCE_OR_JOB_ID; jobs failed|completed take none")
    if args.command == "sandbox":
        delay = args.stream_delay
        if delay is None:
            delay = float(os.environ.get(stand_ins.STREAM_DELAY_ENV) or stand_ins.STREAM_DELAY_SECONDS)
        uvicorn.run(stand_ins.create_app(delay), host="127.0.0.1", port=args.port, log_level="warning")
        return 0
    if args.command == "ask":
        return ask_in_sandbox(
            settings or _load_settings(), args.question, args.url or web_url(), args.timeout, args.then
        )
    if args.command == "chat":
        return chat_in_sandbox(
            settings or _load_settings(), args.url or web_url(), args.timeout, args.settle, args.channel
        )
    return asyncio.run(_run(args, settings or _load_settings()))


#: Where ``make run`` (scripts/run-local) and the Procfile put the web process without $PORT.
DEFAULT_WEB_PORT = 3000

#: What `make run` in sandbox mode provides when .env leaves them empty.
_SANDBOX_PROVIDES = frozenset(name.lower() for name in stand_ins.sandbox_settings(offline_model=True))

_START_HINT = "start it with `make run` (README, Quick start)"


def web_url() -> str:
    """The web process as ``make run`` starts it: on $PORT of this machine."""
    return f"http://127.0.0.1:{os.environ.get('PORT') or DEFAULT_WEB_PORT}"


def _load_settings() -> Settings:
    """The settings, or exit 2 with one line: how to start the stack when that is what is missing,
    the settings error otherwise."""
    try:
        return Settings()
    except ValidationError as error:
        missing = {str(e["loc"][0]) for e in error.errors() if e["type"] == "missing" and e["loc"]}
        # Sandbox mode is Slack credentials absent; make run then provides these in the file.
        only_sandbox_missing = (
            len(missing) == len(error.errors())
            and {"slack_signing_secret", "slack_bot_token"} <= missing <= _SANDBOX_PROVIDES
        )
        if only_sandbox_missing and not Path(SANDBOX_ENV_FILE).exists():
            # Credentials absent and no sandbox settings: the sandbox stack is not running,
            # which is what a newcomer needs to hear, not a settings error.
            print(
                f"asklane: the stack is not running (no {SANDBOX_ENV_FILE}) and "
                f"{', '.join(sorted(name.upper() for name in missing))} are not set: {_START_HINT}",
                file=sys.stderr,
            )
        else:
            print(f"asklane: invalid configuration: {describe_errors(error)}", file=sys.stderr)
        raise SystemExit(2) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asklane", description="Inspect and operate the asklane queue.")
    commands = parser.add_subparsers(dest="command", required=True)
    status = commands.add_parser("status", help="queue depth, running jobs, limiter, workers")
    jobs = commands.add_parser(
        "jobs",
        help="recent finished jobs, or one job's whole trace",
        epilog="jobs show exits 1 when no job is known by that reference or id",
    )
    jobs.add_argument("state", choices=["failed", "completed", "show"])
    jobs.add_argument(
        "job",
        nargs="?",
        metavar="REFERENCE_OR_JOB_ID",
        help="for show: the reference a user was shown (8 characters), or the job id",
    )
    jobs.add_argument("--limit", type=int, default=20, help="how many, newest first (default 20)")
    retry = commands.add_parser("retry", help="queue failed jobs again")
    retry.add_argument("job_id", nargs="?", help="the failed job to retry")
    retry.add_argument("--all-failed", action="store_true", help="retry every failed job")
    purge = commands.add_parser("purge", help="empty the failed-jobs list")
    purge.add_argument("--failed", action="store_true", required=True, help="the failed-jobs list")
    usage_command = commands.add_parser(
        "usage", help="AI spend and tokens by person, workspace, day and model, with the cache hit ratio"
    )
    period = usage_command.add_mutually_exclusive_group()
    period.add_argument(
        "--days", type=_positive, help=f"the last N UTC days, today's included (default {USAGE_DAYS})"
    )
    period.add_argument("--month", type=_month, help="one UTC month, as YYYY-MM")
    for sub in (status, jobs, retry, purge, usage_command):
        sub.add_argument("--json", action="store_true", help="machine-readable output")
    ask = commands.add_parser(
        "ask",
        help="ask a question in the sandbox and print the replies",
        epilog="exit status: 0 the reply is complete (an answer, or an ack that is the whole reply); "
        "1 an error message, or no answer within --timeout; 2 cannot ask (stack down, not the sandbox)",
    )
    ask.add_argument("question")
    ask.add_argument("--url", help="the web process (default: http://127.0.0.1:$PORT, $PORT 3000 by default)")
    ask.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the answer")
    ask.add_argument(
        "--then",
        action="append",
        choices=THEN,
        default=[],
        help="press this button of the answer and print what follows (repeatable: --then regenerate "
        "--then dismiss)",
    )
    chat_command = commands.add_parser(
        "chat",
        help="talk to asklane in its DM in the sandbox: each line a message, replies in its thread",
        epilog="Lines come from the terminal or a pipe (printf 'hi\\nmore\\n' | asklane chat); EOF or "
        f"{chat.QUIT} ends. exit status: 0 every line answered; 1 an error message, or no reply within "
        "--timeout; 2 cannot chat (stack down, not the sandbox)",
    )
    chat_command.add_argument(
        "--url", help="the web process (default: http://127.0.0.1:$PORT, $PORT 3000 by default)"
    )
    chat_command.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each reply")
    chat_command.add_argument(
        "--channel",
        help="mention the app in this channel (e.g. C0GENERAL) instead of talking in its DM",
    )
    chat_command.add_argument(
        "--settle",
        type=float,
        default=1.5,
        help="seconds to wait for more parts of a reply before reading the next line (default 1.5)",
    )
    sandbox_command = commands.add_parser("sandbox", help="run the local Slack and Claude stand-ins")
    sandbox_command.add_argument("--port", type=int, default=stand_ins.DEFAULT_PORT)
    sandbox_command.add_argument(
        "--stream-delay",
        type=float,
        help=f"seconds between the offline model's streamed pieces (default ${stand_ins.STREAM_DELAY_ENV} "
        f"or {stand_ins.STREAM_DELAY_SECONDS:g})",
    )
    return parser


#: Days ``asklane usage`` covers without --days or --month.
USAGE_DAYS = 7


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of days, 1 or more")
    return value


def _month(text: str) -> str:
    try:
        usage.parse_month(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a month as YYYY-MM (e.g. 2026-12)") from None
    return text


def awaits_more(ack: dict[str, Any]) -> bool:
    """Whether another message follows ``ack``. The web acks a queued question with the "Working
    on it" notice and nothing else; any other ack (help, too long, over quota, unavailable) is the
    whole reply."""
    return ack.get("text") == messages.working_on_it("").text


def ask_in_sandbox(
    settings: Settings, question: str, web_url: str, timeout: float, then: Sequence[str] = ()
) -> int:
    """Send ``question`` as a signed slash command and print each message its asker would see,
    until the reply is complete (exit 0: the answer, or an ack that is the whole reply) or failed
    (exit 1: an error message, or nothing within ``timeout``); exit 2 when it cannot ask."""
    prefix = settings.slack_response_url_prefixes[0]
    if not prefix.endswith(stand_ins.RESPONSE_PATH):
        print("asklane ask works in the sandbox: `make run` without Slack credentials", file=sys.stderr)
        return 2
    try:
        return _converse(settings, prefix, question, web_url, timeout, then)
    except StackUnreachable as error:
        print(f"asklane: {error}: the stack is not running; {_START_HINT}", file=sys.stderr)
        return 2
    except HTTPError as error:
        print(f"asklane: {error.url} answered HTTP {error.code} {error.reason}", file=sys.stderr)
        return 1


def chat_in_sandbox(
    settings: Settings, web_url: str, timeout: float, settle: float, channel: str | None = None
) -> int:
    """``asklane chat``: lines from stdin, each a DM event (or a mention in ``channel``); exit 0
    when every line was answered, 1 when one was not or got an error message, 2 when it cannot chat."""
    try:
        return chat.chat(settings, web_url, sys.stdin, timeout=timeout, settle=settle, channel=channel)
    except chat.NotTheSandbox:
        print("asklane chat works in the sandbox: `make run` without Slack credentials", file=sys.stderr)
        return 2
    except StackUnreachable as error:
        print(f"asklane: {error}: the stack is not running; {_START_HINT}", file=sys.stderr)
        return 2
    except HTTPError as error:
        print(f"asklane: {error.url} answered HTTP {error.code} {error.reason}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


#: The /ask answer's buttons ``--then`` presses.
THEN = ("share", "regenerate", "dismiss")


def _converse(
    settings: Settings, prefix: str, question: str, web_url: str, timeout: float, then: Sequence[str] = ()
) -> int:
    base = prefix.removesuffix(stand_ins.RESPONSE_PATH)
    person = chat.Person(channel_id="C0SANDBOX")
    hook = uuid.uuid4().hex
    form = {
        "team_id": person.team_id,
        "channel_id": person.channel_id,
        "user_id": person.user_id,
        "command": settings.slack_command,
        "text": question,
        "response_url": prefix + hook,
        "trigger_id": f"{time.time_ns()}.{hook}",
        "api_app_id": person.app_id,
    }
    body = urlencode(form).encode()
    timestamp = str(int(time.time()))
    secret = settings.slack_signing_secret.get_secret_value()
    headers = {
        "Content-Type": FORM,
        "X-Slack-Request-Timestamp": timestamp,
        "X-Slack-Signature": signature_of(body, timestamp, secret),
    }
    ack = fetch_json(Request(web_url + "/slack/events", body, headers), timeout=10)
    print(shown_to_asker({"via": "ack", **ack}))
    if not awaits_more(ack):
        return 0
    replies = _Replies(base, f"{person.channel_id}:{person.user_id}", hook)
    answer = replies.final(time.monotonic() + timeout)
    if answer is None:
        print(f"no answer within {timeout:g} s", file=sys.stderr)
        return 1
    if _failed(answer):
        return 1
    for action in then:
        button = next(
            (b for b in stand_ins.buttons_of(answer) if b["action_id"] == f"asklane_{action}"), None
        )
        if button is None:
            print(f"asklane: the answer has no {action} button", file=sys.stderr)
            return 1
        print(f"--- you press {button['label'] or action}")
        click_hook = uuid.uuid4().hex
        # Slack gives each click its own response_url, acting on the same ephemeral message.
        payload = chat.click_payload(
            person,
            button,
            response_url=prefix + click_hook,
            action_ts=chat.Clock().ts(),
            message_ts=chat.Clock().ts(),
            thread_ts=None,
            ephemeral=True,
        )
        shared_before = len(_channel_threads(base, person.channel_id))
        chat.deliver(chat.signed_click(web_url + "/slack/events", payload, secret), timeout=10)
        replies.watch(click_hook)
        deadline = time.monotonic() + timeout
        if action == "share":
            outcome = _shared(base, person.channel_id, shared_before, replies, deadline)
        else:
            outcome = replies.final(deadline)
        if outcome is None:
            print(f"no reply to {action} within {timeout:g} s", file=sys.stderr)
            return 1
        if _failed(outcome):
            return 1
        answer = (
            outcome if outcome.get("via") == "response_url" and not outcome.get("delete_original") else answer
        )
    return 0


class _Replies:
    """What reaches the asker privately: posts to response_urls (the command's, each click's) and
    chat.postEphemeral in the channel, printed as they arrive."""

    def __init__(self, base: str, ephemeral_box: str, hook: str) -> None:
        self.base = base
        self.seen = {hook: 0, ephemeral_box: 0}
        self.hooks = [hook]

    def watch(self, hook: str) -> None:
        self.seen[hook] = 0
        self.hooks.append(hook)

    def arrived(self, wait: float) -> list[dict[str, Any]]:
        """Messages come since the last call, printed; waits up to ``wait`` s on the newest hook."""
        came = []
        for box in list(self.seen):
            pause = wait if box == self.hooks[-1] else 0.0
            messages = fetch_json(
                f"{self.base}{stand_ins.MESSAGES_PATH}{box}?after={self.seen[box]}&wait={pause:g}", timeout=15
            )
            self.seen[box] += len(messages)
            for message in messages:
                message.setdefault("via", "response_url")
                print(shown_to_asker(message))
                came.append(message)
        return came

    def final(self, deadline: float) -> dict[str, Any] | None:
        """The first message that is not an interim notice, or None by ``deadline``."""
        while time.monotonic() < deadline:
            for message in self.arrived(1.0):
                if not str(message.get("text", "")).startswith(":hourglass"):
                    return message
        return None


def _channel_threads(base: str, channel: str) -> list[dict[str, Any]]:
    threads: list[dict[str, Any]] = fetch_json(f"{base}{stand_ins.THREADS_PATH}{channel}", timeout=10)
    return threads


def _shared(
    base: str, channel: str, before: int, replies: _Replies, deadline: float
) -> dict[str, Any] | None:
    """The answer shared in ``channel`` (a new top-level message), printed; or a private note
    saying why it was not."""
    while time.monotonic() < deadline:
        threads = _channel_threads(base, channel)
        if len(threads) > before:
            read = fetch_json(
                f"{base}{stand_ins.THREADS_PATH}{channel}/{threads[-1]['thread_ts']}?wait=0", timeout=10
            )
            message: dict[str, Any] = read["messages"][0]
            print(f"--- chat.postMessage in {channel} (everyone there sees it)\n{chat.render(message)}")
            return message
        for note in replies.arrived(0.5):
            return note
    return None


def _failed(message: dict[str, Any]) -> bool:
    return str(message.get("text", "")).startswith(":x:")


def shown_to_asker(message: dict[str, Any]) -> str:
    """A message as the asker would read it, under the way it came (and what it did to the answer
    shown: a response_url post replaces it unless ``replace_original`` is false, or removes it
    with ``delete_original``)."""
    via = message.get("via", "response_url")
    if message.get("delete_original"):
        return f"--- {via}: delete_original\n(the answer is removed)"
    if via == "response_url" and message.get("replace_original") is False:
        via += " (a new message beside the answer)"
    shown = chat.render(message)
    buttons = stand_ins.buttons_of(message)
    if buttons:
        shown += "\n[" + "] [".join(b["label"] for b in buttons) + "]"
    return f"--- {via}\n{shown}"


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    redis = open_redis(settings, timeout=5.0)
    try:
        if args.command == "status":
            current = await operations.status(redis)
            _print(args, dataclasses.asdict(current), _status_text(current, settings))
        elif args.command == "jobs" and args.state == "show":
            view = await job_trace.show(redis, args.job)
            if view is None:
                print(f"asklane: no job known by {args.job!r} (nor a trace of one)", file=sys.stderr)
                return 1
            _print(args, view.model_dump(mode="json"), job_trace.render(view))
        elif args.command == "jobs":
            records = await retention.recent(redis, args.state, args.limit)
            _print(args, [record.model_dump(mode="json") for record in records], _jobs_text(records))
        elif args.command == "usage":
            today = datetime.now(UTC)
            if args.month:
                report = await usage_report.report_month(redis, args.month, today)
            else:
                report = await usage_report.report_days(redis, args.days or USAGE_DAYS, today)
            _print(args, usage_report.as_json(report), usage_report.as_text(report))
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


def _per_minute(limit: int | None) -> str:
    return f"{limit:,}/min" if limit is not None else "off"


def _status_text(status: operations.Status, settings: Settings) -> str:
    now = time.time()
    pause = f"paused for {status.paused_for_s:.1f} s" if status.paused_for_s else "not paused"
    lines = [
        f"queued      {status.queue.interactive} interactive, {status.queue.background} background, "
        f"{status.queue.scheduled} scheduled (retries and rate-limit waits)",
        f"running     {len(status.running)}" + (f": {', '.join(status.running)}" if status.running else ""),
        f"limiter     {status.ai_calls_last_second} AI calls in the last second "
        f"(limit {settings.jobs_per_second:g}/s), {pause}",
        f"tokens      {status.ai_input_tokens_last_minute:,} input"
        f" (limit {_per_minute(settings.ai_input_tokens_per_minute)}),"
        f" {status.ai_output_tokens_last_minute:,} output"
        f" (limit {_per_minute(settings.ai_output_tokens_per_minute)}) booked in the last minute",
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
    # Wide enough for the longest kind's ids ("feedback-" and 32 hex digits) and a space.
    lines = [f"{'finished (UTC)':<20}{'job id':<43}{'ref':<10}{'tries':>5}  {'queued ms':>9}  outcome"]
    for record in records:
        ai = "" if record.ai_ms is None else f", AI {record.ai_ms} ms"  # no AI call: a button's job
        outcome = record.error if record.state == "failed" else f"via {record.via}{ai}"
        lines.append(
            f"{record.finished_at:%Y-%m-%d %H:%M:%S} {record.job_id:<43}{record.reference or '-':<10}"
            f"{record.attempts:>5}  {record.queued_ms if record.queued_ms is not None else '-':>9}  {outcome}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
