"""``asklane chat``: a conversation with asklane in the terminal, through the sandbox.

Each line typed is sent to the web process as Slack sends a direct message to the app: a signed
Events API ``message`` event (``channel_type: "im"``) in the user's DM with the app. The first
line is a top-level message, so it starts a conversation; every later line is a reply in its
thread, so it continues it. The app's replies are read back from the sandbox's Slack stand-in
(app/sandbox/stand_ins.py), which records what the workers post (``chat.postMessage``) and the
thread's status (``assistant.threads.setStatus``), and are printed as they arrive. Opening a chat
also sends ``app_home_opened`` for the Messages tab, as Slack does when the user opens it, and
prints the suggested prompts the app offers.

Nothing is short-circuited: the web process checks the signature, the quota and queues the job;
a worker answers under the rate limit and posts to the stand-in as it would to Slack.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any
from urllib.error import HTTPError
from urllib.parse import quote
from urllib.request import Request, urlopen

from app.contract.settings import Settings
from app.sandbox import stand_ins
from app.web.gate import signature_of

JSON = "application/json"

#: Typed alone on a line, ends the chat (as EOF does).
QUIT = ":quit"

#: How long the chat waits for the Messages tab's suggested prompts before the first question.
PROMPTS_WAIT_SECONDS = 3.0


class StackUnreachable(Exception):
    """The web process or the sandbox's stand-in did not answer: the stack is not running."""

    def __init__(self, url: str, error: OSError) -> None:
        reason = getattr(error, "reason", None) or error
        super().__init__(f"nothing answers at {url} ({reason})")


class NotTheSandbox(Exception):
    """The settings point at real Slack: the terminal cannot play a Slack user there."""


def fetch_json(request: Request | str, timeout: float) -> Any:
    """The JSON a stand-in or the web process answers; StackUnreachable when nothing listens,
    HTTPError for a non-2xx answer."""
    url = request.full_url if isinstance(request, Request) else request
    try:
        with urlopen(request, timeout=timeout) as response:
            body = response.read()
            return json.loads(body) if body else None
    except HTTPError:
        raise
    except OSError as error:  # refused, reset, timed out: URLError and socket errors alike
        raise StackUnreachable(url.split("?")[0], error) from None


def deliver(request: Request, timeout: float) -> None:
    """POST an event as Slack does: any 2xx is an ack and its body is ignored; HTTPError for
    anything else, StackUnreachable when nothing listens."""
    try:
        with urlopen(request, timeout=timeout) as response:
            response.read()
    except HTTPError:
        raise
    except OSError as error:
        raise StackUnreachable(request.full_url, error) from None


def render(message: dict[str, Any]) -> str:
    """A message as a person reads it in Slack: its blocks' text (a ``markdown`` block's
    Markdown as written, a section's or context's text), else its ``text``."""
    parts = []
    for block in message.get("blocks") or []:
        if block.get("type") == "markdown":
            parts.append(str(block.get("text", "")))
        elif isinstance(block.get("text"), dict):
            parts.append(str(block["text"].get("text", "")))
        for element in block.get("elements") or []:
            if isinstance(element, dict) and "text" in element:
                parts.append(str(element.get("text", "")))
    return "\n".join(parts) or str(message.get("markdown_text") or message.get("text", ""))


def is_error(message: dict[str, Any]) -> bool:
    """Whether a reply is asklane's failure message (app/contract/messages.py ``failed``)."""
    return str(message.get("text", "")).startswith(":x:")


class Clock:
    """Slack message timestamps (``seconds.microseconds``), fresh and increasing: each message's
    ts is its identity (and the dedupe key of the job it becomes)."""

    def __init__(self) -> None:
        self._last = 0

    def ts(self) -> str:
        self._last = max(self._last + 1, time.time_ns() // 1000)
        return f"{self._last // 1_000_000}.{self._last % 1_000_000:06d}"


@dataclass(frozen=True)
class Person:
    """Who is typing and where, as Slack names them in an event."""

    team_id: str = stand_ins.TEAM_ID
    user_id: str = stand_ins.USER_ID
    #: Their DM with the app (its Messages tab).
    channel_id: str = stand_ins.DM_CHANNEL
    app_id: str = stand_ins.APP_ID
    bot_user_id: str = stand_ins.BOT_USER_ID


def _envelope(person: Person, event: dict[str, Any], event_time: int) -> dict[str, Any]:
    """The Events API's ``event_callback`` around ``event``, as Slack POSTs it."""
    return {
        "token": "sandbox-verification-token",
        "team_id": person.team_id,
        "api_app_id": person.app_id,
        "event": event,
        "type": "event_callback",
        "event_id": "Ev" + uuid.uuid4().hex[:12].upper(),
        "event_time": event_time,
        "authorizations": [
            {
                "enterprise_id": None,
                "team_id": person.team_id,
                "user_id": person.bot_user_id,
                "is_bot": True,
                "is_enterprise_install": False,
            }
        ],
        "is_ext_shared_channel": False,
        "event_context": "4-" + uuid.uuid4().hex,
    }


def dm_event(person: Person, text: str, ts: str, thread_ts: str | None = None) -> dict[str, Any]:
    """A direct message to the app (``message``, ``channel_type: "im"``): top-level, or a reply
    in the thread ``thread_ts``."""
    event: dict[str, Any] = {
        "type": "message",
        "channel": person.channel_id,
        "user": person.user_id,
        "text": text,
        "ts": ts,
        "event_ts": ts,
        "channel_type": "im",
        "client_msg_id": str(uuid.uuid4()),
        "team": person.team_id,
        "blocks": [
            {
                "type": "rich_text",
                "block_id": uuid.uuid4().hex[:5],
                "elements": [{"type": "rich_text_section", "elements": [{"type": "text", "text": text}]}],
            }
        ],
    }
    if thread_ts is not None:
        event |= {"thread_ts": thread_ts, "parent_user_id": person.user_id}
    return _envelope(person, event, int(float(ts)))


def mention_event(person: Person, text: str, ts: str, thread_ts: str | None = None) -> dict[str, Any]:
    """A message in a channel that mentions the app (``app_mention``): top-level, or a reply in
    the thread ``thread_ts``; Slack writes the mention first, as ``<@BOTID>``."""
    event: dict[str, Any] = {
        "type": "app_mention",
        "channel": person.channel_id,
        "user": person.user_id,
        "text": f"<@{person.bot_user_id}> {text}",
        "ts": ts,
        "event_ts": ts,
        "client_msg_id": str(uuid.uuid4()),
        "team": person.team_id,
    }
    if thread_ts is not None:
        event["thread_ts"] = thread_ts
    return _envelope(person, event, int(float(ts)))


def home_opened_event(person: Person, ts: str) -> dict[str, Any]:
    """The user opened the app's Messages tab (``app_home_opened``, ``tab: "messages"``)."""
    event = {
        "type": "app_home_opened",
        "user": person.user_id,
        "channel": person.channel_id,
        "tab": "messages",
        "event_ts": ts,
    }
    return _envelope(person, event, int(float(ts)))


def signed_event(url: str, payload: dict[str, Any], signing_secret: str) -> Request:
    """The POST Slack makes to the request URL: a JSON body, signed as app/web/gate.py checks."""
    body = json.dumps(payload).encode()
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": JSON,
        "X-Slack-Request-Timestamp": timestamp,
        "X-Slack-Signature": signature_of(body, timestamp, signing_secret),
    }
    return Request(url, body, headers, method="POST")


def stand_in_url(settings: Settings) -> str:
    """The sandbox's stand-in, where the workers post; NotTheSandbox when they post to Slack."""
    api = settings.slack_api_url
    if not api.endswith(stand_ins.API_PATH):
        raise NotTheSandbox(api)
    return api.removesuffix(stand_ins.API_PATH)


@dataclass
class Conversation:
    """One thread of the DM: where its replies are read and how far they were printed."""

    stand_in: str
    person: Person
    thread_ts: str | None = None
    seen: int = 0
    version: int = -1

    def read(self, wait: float) -> dict[str, Any]:
        assert self.thread_ts is not None
        url = (
            f"{self.stand_in}{stand_ins.THREADS_PATH}{quote(self.person.channel_id)}/{quote(self.thread_ts)}"
            f"?after={self.seen}&version={self.version}&wait={wait:g}"
        )
        read: dict[str, Any] = fetch_json(url, timeout=wait + 10)
        self.seen += len(read["messages"])
        self.version = read["version"]
        return read


class Chat:
    """The conversation loop: send a line, print what comes back, read the next line."""

    def __init__(
        self,
        settings: Settings,
        web_url: str,
        *,
        timeout: float,
        settle: float,
        out: IO[str],
        person: Person | None = None,
        in_channel: bool = False,
    ) -> None:
        self.settings = settings
        self.events_url = web_url + "/slack/events"
        self.timeout = timeout
        self.settle = settle
        self.out = out
        self.clock = Clock()
        self.person = person or Person(app_id=settings.slack_app_id or stand_ins.APP_ID)
        self.conversation = Conversation(stand_in_url(settings), self.person)
        #: Mentions in a channel rather than messages in the app's DM.
        self.in_channel = in_channel
        self.errors = 0

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def send(self, payload: dict[str, Any]) -> None:
        secret = self.settings.slack_signing_secret.get_secret_value()
        deliver(signed_event(self.events_url, payload, secret), timeout=10)

    def open(self) -> None:
        """Open the Messages tab, as the user does in Slack, and show the prompts offered."""
        base = f"{self.conversation.stand_in}{stand_ins.PROMPTS_PATH}{quote(self.person.channel_id)}"
        offered_before = len(fetch_json(f"{base}?after=0&wait=0", timeout=10))
        self.send(home_opened_event(self.person, self.clock.ts()))
        wait = PROMPTS_WAIT_SECONDS
        for offered in fetch_json(f"{base}?after={offered_before}&wait={wait:g}", timeout=wait + 10)[:1]:
            titles = [str(p.get("title") or p.get("message")) for p in offered.get("prompts") or []]
            self.say("suggested: " + " | ".join(titles))

    def ask(self, line: str) -> bool:
        """Send ``line`` into the conversation and print the replies; False when none came."""
        ts = self.clock.ts()
        event = mention_event if self.in_channel else dm_event
        self.send(event(self.person, line, ts, self.conversation.thread_ts))
        if self.conversation.thread_ts is None:
            self.conversation.thread_ts = ts  # the first message starts the thread
        return self._print_replies()

    def _print_replies(self) -> bool:
        """Print status changes and replies until a reply came and no further part followed
        within ``settle`` seconds (a long answer arrives as several messages)."""
        deadline = time.monotonic() + self.timeout
        replied, shown_status = False, ""
        while True:
            left = deadline - time.monotonic()
            wait = self.settle if replied else min(left, 5.0)
            if wait <= 0:
                return replied
            read = self.conversation.read(wait)
            status = str(read.get("status") or "")
            if status and status != shown_status:
                shown_status = status
                self.say(f"  … asklane {status}")
            for message in read["messages"]:
                replied = True
                self.errors += is_error(message)
                first, *rest = render(message).split("\n")
                self.say(
                    "\n".join([f"asklane> {first}", *(f"         {line}" if line else "" for line in rest)])
                )
            if replied and not read["messages"]:
                return True


def lines_from(stream: IO[str]) -> Iterator[str]:
    """Lines typed at a terminal (after a prompt) or piped (echoed, so the transcript reads as a
    conversation), without blank ones; EOF or :quit ends them."""
    typing = stream is sys.stdin and stream.isatty()
    while True:
        if typing:
            try:
                line = input("you> ")
            except EOFError:
                return
        else:
            line = stream.readline()
            if not line:
                return
        line = line.strip()
        if line == QUIT:
            return
        if line:
            if not typing:
                print(f"you> {line}", flush=True)
            yield line


def chat(
    settings: Settings,
    web_url: str,
    stream: IO[str],
    *,
    timeout: float,
    settle: float,
    channel: str | None = None,
) -> int:
    """Run a conversation from ``stream``: in the app's DM, or as mentions of the app in
    ``channel``. Exit 0 when every line was answered, 1 when one was not (within ``timeout``) or
    an answer was an error message. Raises NotTheSandbox, StackUnreachable, HTTPError for the
    caller to report."""
    if channel is None:
        session = Chat(settings, web_url, timeout=timeout, settle=settle, out=sys.stdout)
        session.open()
    else:
        person = Person(app_id=settings.slack_app_id or stand_ins.APP_ID, channel_id=channel)
        session = Chat(
            settings, web_url, timeout=timeout, settle=settle, out=sys.stdout, person=person, in_channel=True
        )
    for line in lines_from(stream):
        if not session.ask(line):
            print(f"asklane: no reply within {timeout:g} s", file=sys.stderr)
            return 1
    return 1 if session.errors else 0
