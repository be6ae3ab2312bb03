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
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any
from urllib.error import HTTPError
from urllib.parse import quote, urlencode
from urllib.request import Request, urlopen

from app.contract import actions
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
    """A message as a person reads it in Slack (app/sandbox/stand_ins.py ``shown_text``)."""
    return stand_ins.shown_text(message)


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


def stop_event(person: Person, thread_ts: str, streaming_ts: list[str], ts: str) -> dict[str, Any]:
    """Slack's own Stop pressed in an agent thread (``agent_session_stopped``)."""
    event = {
        "type": "agent_session_stopped",
        "user": person.user_id,
        "channel": person.channel_id,
        "thread_ts": thread_ts,
        "streaming_message_ts": streaming_ts,
        "event_ts": ts,
    }
    return _envelope(person, event, int(float(ts)))


def click_payload(
    person: Person,
    button: dict[str, str],
    *,
    response_url: str,
    action_ts: str,
    message_ts: str,
    thread_ts: str | None,
    ephemeral: bool = False,
) -> dict[str, Any]:
    """The ``block_actions`` payload Slack sends when ``person`` clicks ``button`` (as the stand-in
    lists it: ``action_id``, ``value``, ``label``) under the message ``message_ts``."""
    container: dict[str, Any] = {
        "type": "message",
        "message_ts": message_ts,
        "channel_id": person.channel_id,
        "is_ephemeral": ephemeral,
    }
    if thread_ts is not None:
        container["thread_ts"] = thread_ts
    payload: dict[str, Any] = {
        "type": "block_actions",
        "user": {"id": person.user_id, "username": "you", "name": "you", "team_id": person.team_id},
        "api_app_id": person.app_id,
        "token": "sandbox-verification-token",
        "container": container,
        "trigger_id": f"{time.time_ns()}.{uuid.uuid4().int % 10**9}.{uuid.uuid4().hex}",
        "team": {"id": person.team_id, "domain": "sandbox"},
        "enterprise": None,
        "is_enterprise_install": False,
        "channel": {"id": person.channel_id, "name": "sandbox"},
        "state": {"values": {}},
        "response_url": response_url,
        "actions": [
            {
                "action_id": button["action_id"],
                "block_id": "asklane_answer_actions",
                "text": {"type": "plain_text", "text": button.get("label") or button["action_id"]},
                "value": button["value"],
                "type": "button",
                "action_ts": action_ts,
            }
        ],
    }
    if not ephemeral:
        payload["message"] = {"type": "message", "ts": message_ts, "thread_ts": thread_ts}
    return payload


def signed_click(url: str, payload: dict[str, Any], signing_secret: str) -> Request:
    """The POST of an interactivity request: a form whose ``payload`` is JSON, signed."""
    body = urlencode({"payload": json.dumps(payload)}).encode()
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": timestamp,
        "X-Slack-Signature": signature_of(body, timestamp, signing_secret),
    }
    return Request(url, body, headers, method="POST")


#: The command that presses each button, by action_id (and label, for Slack's feedback buttons).
def command_of(button: dict[str, str]) -> str:
    """``:good``, ``:bad``, ``:regenerate``, ``:stop``, ``:share``, ``:dismiss``."""
    if button["action_id"] == actions.FEEDBACK:
        return f":{button.get('label')}"
    return ":" + button["action_id"].removeprefix("asklane_")


STOP_COMMAND = ":stop"

#: Where a reply's continuation lines start, under ``asklane> ``.
INDENT = " " * len("asklane> ")


class Lines:
    """Lines typed or piped, read by a thread of their own so that the chat reads stdin while an
    answer streams (a ``:stop`` is sent at once). ``None`` once EOF or :quit came."""

    def __init__(self, stream: IO[str]) -> None:
        self._lines: deque[str | None] = deque()
        self._arrived = threading.Condition()
        self.typing = stream is sys.stdin and stream.isatty()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in lines_from(stream):
            with self._arrived:
                self._lines.append(line)
                self._arrived.notify_all()
        with self._arrived:
            self._lines.append(None)
            self._arrived.notify_all()

    def peek(self) -> str | None:
        """The next line if one has arrived, else ""; None at the end."""
        with self._arrived:
            return self._lines[0] if self._lines else ""

    def next(self) -> str | None:
        """The next line, waiting for it; None at the end."""
        with self._arrived:
            self._arrived.wait_for(lambda: bool(self._lines))
            line = self._lines[0]
            if line is not None:
                self._lines.popleft()
            return line


@dataclass
class Shown:
    """What the chat printed of one message of the thread."""

    text: str = ""
    finished: bool = False


@dataclass
class Conversation:
    """One thread of the DM: where its replies are read and what was printed of each."""

    stand_in: str
    person: Person
    thread_ts: str | None = None
    #: Messages before this index are finished and printed whole: reads start there.
    seen: int = 0
    version: int = -1
    shown: dict[int, Shown] = field(default_factory=dict)
    #: The last finished answer: its ts and buttons (what :good, :regenerate… press).
    last_ts: str | None = None
    buttons: list[dict[str, str]] = field(default_factory=list)

    def read(self, wait: float) -> dict[str, Any]:
        assert self.thread_ts is not None
        url = (
            f"{self.stand_in}{stand_ins.THREADS_PATH}{quote(self.person.channel_id)}/{quote(self.thread_ts)}"
            f"?after={self.seen}&version={self.version}&wait={wait:g}"
        )
        read: dict[str, Any] = fetch_json(url, timeout=wait + 10)
        self.version = read["version"]
        return read


class Chat:
    """The conversation loop: send a line (or press a button), print what comes back as it comes."""

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
        lines: Lines | None = None,
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
        self.lines = lines
        self.errors = 0
        self._line_start = True
        #: Private notes (chat.postEphemeral) already printed, in the person's box.
        self._ephemeral_seen = 0
        #: The thread's message still streaming, as last read.
        self._open: dict[str, Any] | None = None

    def say(self, text: str) -> None:
        self._end_line()
        print(text, file=self.out, flush=True)

    def _end_line(self) -> None:
        if not self._line_start:
            self.out.write("\n")
            self._line_start = True

    def _write(self, text: str) -> None:
        """Write a reply's text as it streams, continuation lines indented (blank ones not)."""
        for index, part in enumerate(text.split("\n")):
            if index:
                self.out.write("\n")
                self._line_start = True
            if part:
                if self._line_start:
                    self.out.write(INDENT)
                self.out.write(part)
                self._line_start = False
        self.out.flush()

    def _secret(self) -> str:
        return self.settings.slack_signing_secret.get_secret_value()

    def send(self, payload: dict[str, Any]) -> None:
        deliver(signed_event(self.events_url, payload, self._secret()), timeout=10)

    def _box(self, box: str, seen: int, wait: float) -> list[dict[str, Any]]:
        url = f"{self.conversation.stand_in}{stand_ins.MESSAGES_PATH}{quote(box)}?after={seen}&wait={wait:g}"
        arrived: list[dict[str, Any]] = fetch_json(url, timeout=wait + 10)
        return arrived

    @property
    def _ephemeral_box(self) -> str:
        return f"{self.person.channel_id}:{self.person.user_id}"

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
        self._ephemeral_seen = len(self._box(self._ephemeral_box, 0, 0))
        ts = self.clock.ts()
        event = mention_event if self.in_channel else dm_event
        self.send(event(self.person, line, ts, self.conversation.thread_ts))
        if self.conversation.thread_ts is None:
            self.conversation.thread_ts = ts  # the first message starts the thread
        return self._watch(hook=None)

    def press(self, command: str) -> bool:
        """Press the last answer's button named by ``command`` (``:good``, ``:regenerate``…) and
        print what follows: a private note, a new answer in the thread. False when there is no
        such button or nothing came."""
        conversation = self.conversation
        button = next((b for b in conversation.buttons if command_of(b) == command), None)
        if button is None or conversation.last_ts is None:
            offered = " ".join(command_of(b) for b in conversation.buttons) or "none"
            self.say(f"  (no {command} button on the last answer; buttons: {offered})")
            return False
        self._ephemeral_seen = len(self._box(self._ephemeral_box, 0, 0))
        hook = uuid.uuid4().hex
        payload = click_payload(
            self.person,
            button,
            response_url=f"{conversation.stand_in}{stand_ins.RESPONSE_PATH}{hook}",
            action_ts=self.clock.ts(),
            message_ts=conversation.last_ts,
            thread_ts=conversation.thread_ts,
        )
        deliver(signed_click(self.events_url, payload, self._secret()), timeout=10)
        return self._watch(hook=hook)

    def stop(self, streaming: dict[str, Any]) -> None:
        """Press Stop on the streaming message: its Stop button when it has one, else Slack's own
        Stop of the agent thread."""
        stop = next((b for b in streaming.get("buttons") or [] if b["action_id"] == actions.STOP), None)
        if stop is not None:
            payload = click_payload(
                self.person,
                stop,
                response_url=f"{self.conversation.stand_in}{stand_ins.RESPONSE_PATH}{uuid.uuid4().hex}",
                action_ts=self.clock.ts(),
                message_ts=str(streaming["ts"]),
                thread_ts=self.conversation.thread_ts,
            )
            deliver(signed_click(self.events_url, payload, self._secret()), timeout=10)
            return
        assert self.conversation.thread_ts is not None
        self.send(
            stop_event(self.person, self.conversation.thread_ts, [str(streaming["ts"])], self.clock.ts())
        )

    def _watch(self, hook: str | None) -> bool:
        """Print the thread's status and replies as they stream, and private notes (to ``hook``,
        or by chat.postEphemeral), until something came and nothing more followed within
        ``settle`` seconds with no reply still streaming. A ``:stop`` line waiting is sent as soon
        as a reply streams. False when nothing came within ``timeout``."""
        deadline = time.monotonic() + self.timeout
        came, shown_status, hook_seen = False, "", 0
        last_change = time.monotonic()
        while True:
            now = time.monotonic()
            if came and self._open is None and now - last_change >= self.settle:
                self._end_line()
                return True
            if now >= deadline:
                self._end_line()
                return came
            if hook is not None or self._open is not None:
                wait = 0.5
            elif came:
                wait = self.settle - (now - last_change)
            else:
                wait = min(deadline - now, 5.0)
            read = self.conversation.read(max(wait, 0.0))
            status = str(read.get("status") or "")
            if status and status != shown_status:
                shown_status = status
                self.say(f"  … asklane {status}")
            changed = self._show(read["messages"])
            notes = self._box(self._ephemeral_box, self._ephemeral_seen, 0)
            self._ephemeral_seen += len(notes)
            if hook is not None:
                arrived = self._box(hook, hook_seen, 0)
                hook_seen += len(arrived)
                notes += arrived
            for note in notes:
                self.errors += is_error(note)
                self.say(f"  (only you) {render(note)}")
            if changed or notes:
                came, last_change = True, time.monotonic()
            if self._open is not None and self.lines is not None and self.lines.peek() == STOP_COMMAND:
                self.lines.next()
                self.say(f"you> {STOP_COMMAND}")
                self.stop(self._open)

    def _show(self, messages: list[dict[str, Any]]) -> bool:
        """Print what changed in the messages read (from ``conversation.seen`` on); True when
        anything did."""
        conversation = self.conversation
        changed = False
        self._open = None
        for offset, message in enumerate(messages):
            index = conversation.seen + offset
            shown = conversation.shown.get(index)
            if shown is None:
                shown = conversation.shown[index] = Shown()
                if message.get("deleted"):
                    shown.finished = True
                    continue
                self._end_line()
                self.out.write("asklane> ")
                self._line_start = False
                changed = True
            if shown.finished and not message.get("deleted"):
                continue
            if message.get("deleted"):
                if not shown.finished:
                    self.say("  (asklane removed that message)")
                    shown.finished, changed = True, True
                continue
            text = str(message.get("shown", ""))
            if text != shown.text:
                if text.startswith(shown.text):
                    self._write(text[len(shown.text) :])
                else:
                    self.say("  (asklane rewrote it)")
                    self.out.write("asklane> ")
                    self._line_start = False
                    self._write(text)
                shown.text, changed = text, True
            # A message still showing Stop is still being finished: its stream has ended and the
            # update bringing its final buttons is on its way (workers/streaming.py).
            if message.get("streaming") or any(
                button["action_id"] == actions.STOP for button in message.get("buttons") or []
            ):
                self._open = message
                continue
            shown.finished, changed = True, True
            self.errors += is_error(message) or text.startswith(":x:")
            # The newest finished message's buttons are the ones a command presses (none after a
            # stopped answer: its earlier answer's buttons are not the last answer's).
            conversation.last_ts, conversation.buttons = (
                str(message["ts"]),
                list(message.get("buttons") or []),
            )
            if conversation.buttons:
                self.say("  buttons: " + "  ".join(command_of(b) for b in conversation.buttons))
        # Every message up to the first one still open is final: later reads start after them.
        while (done := conversation.shown.get(conversation.seen)) is not None and done.finished:
            conversation.seen += 1
        return changed


def lines_from(stream: IO[str]) -> Iterator[str]:
    """Lines typed at a terminal (after a prompt) or piped, without blank ones; EOF or :quit
    ends them."""
    typing = stream is sys.stdin and stream.isatty()
    while True:
        if typing:
            try:
                line = input()
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
    ``channel``. A line starting with ``:`` presses a button of the last answer (``:good``,
    ``:bad``, ``:regenerate``; ``:stop`` while one streams). Exit 0 when every line was answered,
    1 when one was not (within ``timeout``), a button was missing, or an answer was an error
    message. Raises NotTheSandbox, StackUnreachable, HTTPError for the caller to report."""
    if channel is None:
        session = Chat(settings, web_url, timeout=timeout, settle=settle, out=sys.stdout)
        session.open()
    else:
        person = Person(app_id=settings.slack_app_id or stand_ins.APP_ID, channel_id=channel)
        session = Chat(
            settings,
            web_url,
            timeout=timeout,
            settle=settle,
            out=sys.stdout,
            person=person,
            in_channel=True,
        )
    # Read only once the stack answered: a chat that cannot start leaves stdin alone.
    lines = session.lines = Lines(stream)
    if lines.typing:
        session.say(
            "(type a message; :good :bad :regenerate press the last answer's buttons, :stop while it streams)"
        )
    while True:
        if lines.typing and lines.peek() == "":
            print("you> ", end="", flush=True)
        line = lines.next()
        if line is None:
            break
        if not lines.typing:
            session.say(f"you> {line}")
        if line == STOP_COMMAND:
            session.say("  (nothing is streaming: :stop works while an answer arrives)")
            continue
        if line.startswith(":"):
            if not session.press(line):
                session.errors += 1
            continue
        if not session.ask(line):
            print(f"asklane: no reply within {timeout:g} s", file=sys.stderr)
            return 1
    return 1 if session.errors else 0
