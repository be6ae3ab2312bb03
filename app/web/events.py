"""What an incoming Events API request asks of asklane: a question, suggested prompts, a stop
(Slack's own Stop in an agent thread), or nothing.

Pure: a JSON body in, a decision out, no Redis and no Slack, so every rule is table-tested
(tests/test_events.py). The handler (app/web/conversations.py) acts on the decision.

Slack sends one ``event_callback`` per event, ``{"team_id", "api_app_id", "event_id",
"authorizations": [{"user_id": <the bot's user id>}], "event": {...}}``. A mention in a channel
the app also reads arrives twice, as ``app_mention`` and as ``message``: both decide the same
question (same channel and ts), and the job's dedupe key makes them one job.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeGuard

#: The manifest's bot events (manifest.yml) and the event type each one delivers. The Bolt app
#: listens to exactly these types; tests/test_manifest.py keeps the two in step.
SUBSCRIBED_EVENTS: Mapping[str, str] = {
    "app_mention": "app_mention",
    "message.im": "message",
    "app_home_opened": "app_home_opened",
    # Slack's native Stop in an agent thread: stop the thread's running question.
    "agent_session_stopped": "agent_session_stopped",
}

#: Event types a listener is registered for.
HANDLED_TYPES = frozenset(SUBSCRIBED_EVENTS.values())

#: Why an event is left alone. A bounded set: it is logged and may label metrics.
Reason = Literal[
    "not_an_event",  # a callback other than event_callback (app_rate_limited, …)
    "other_app",  # api_app_id is not SLACK_APP_ID
    "unhandled_type",  # an event type asklane has no use for
    "own_message",  # posted by asklane itself
    "other_bot",  # posted by another bot or app
    "subtype",  # an edit, deletion, join, file share… anything but a plain new message
    "no_mention",  # a channel message that does not mention asklane
    "home_tab",  # app_home_opened on the Home tab, not the Messages tab
    "missing_fields",  # a field the decision needs is absent or not a string
]

# C0/C1 control characters other than tab and newline carry no meaning in a question (as
# app/web/ask.py's clean_question).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class Message:
    """Where a message was written and by whom; every delivery of it has the same ones."""

    team_id: str
    enterprise_id: str | None
    user_id: str
    channel_id: str
    ts: str
    #: The thread the message is a reply in; None for a top-level message (it starts its own).
    thread_ts: str | None


@dataclass(frozen=True)
class Question:
    """A message asking asklane something: a mention in a channel, or a message in its DM."""

    source: Literal["mention", "dm"]
    message: Message
    #: As the user wrote it, asklane's own mention removed and control characters stripped; may
    #: be empty (the user only mentioned the app).
    text: str


@dataclass(frozen=True)
class Prompts:
    """A user opened the app's Messages tab: offer suggested prompts in that DM."""

    team_id: str
    enterprise_id: str | None
    user_id: str
    channel_id: str
    event_id: str


@dataclass(frozen=True)
class StopThread:
    """Someone pressed Slack's native Stop in an agent thread (``agent_session_stopped``): stop
    the question the thread is answering, if any."""

    team_id: str
    channel_id: str
    thread_ts: str


@dataclass(frozen=True)
class Ignored:
    """Nothing to do for this event, and why."""

    reason: Reason


Decision = Question | Prompts | StopThread | Ignored


def question_text(text: str, bot_user_id: str) -> str:
    """``text`` without asklane's own mention (``<@BOT>`` or ``<@BOT|name>``) and control
    characters. Other mentions stay as Slack wrote them: they name people the question is about."""
    # With the space before it, so "thanks <@BOT>!" reads "thanks!" and "ask <@BOT> why" "ask why".
    own_mention = re.compile(rf"[ \t]*<@{re.escape(bot_user_id)}(?:\|[^>]*)?>")
    return _CONTROL.sub("", own_mention.sub("", text)).strip()


def mentions(text: str, bot_user_id: str) -> bool:
    """True when ``text`` mentions the bot user."""
    return re.search(rf"<@{re.escape(bot_user_id)}(?:\|[^>]*)?>", text) is not None


def classify(body: Mapping[str, Any], app_id: str | None = None) -> Decision:
    """What the Events API request ``body`` asks of asklane. ``app_id`` is SLACK_APP_ID: when set,
    events sent for another app are ignored."""
    if body.get("type") != "event_callback":
        return Ignored("not_an_event")
    if app_id is not None and body.get("api_app_id") != app_id:
        return Ignored("other_app")
    event = body.get("event")
    if not isinstance(event, Mapping):
        return Ignored("missing_fields")
    kind = event.get("type")
    if kind not in HANDLED_TYPES:
        return Ignored("unhandled_type")
    team_id = body.get("team_id")
    if not _is_text(team_id):
        return Ignored("missing_fields")
    enterprise_id = body.get("enterprise_id") if _is_text(body.get("enterprise_id")) else None
    if kind == "app_home_opened":
        return _home_opened(event, team_id, enterprise_id, body.get("event_id"))
    if kind == "agent_session_stopped":
        # {"channel", "thread_ts", "user", "streaming_message_ts": [...], "event_ts"}; the streams
        # Slack already stopped are not needed: the thread names its job.
        channel_id, thread_ts = event.get("channel"), event.get("thread_ts")
        if not (_is_text(channel_id) and _is_text(thread_ts)):
            return Ignored("missing_fields")
        return StopThread(team_id, channel_id, thread_ts)
    return _message(body, event, team_id, enterprise_id, mention_event=kind == "app_mention")


def _home_opened(
    event: Mapping[str, Any], team_id: str, enterprise_id: str | None, event_id: object
) -> Decision:
    if event.get("tab") != "messages":
        return Ignored("home_tab")
    user_id, channel_id = event.get("user"), event.get("channel")
    if not (_is_text(user_id) and _is_text(channel_id) and _is_text(event_id)):
        return Ignored("missing_fields")
    return Prompts(team_id, enterprise_id, user_id, channel_id, event_id)


def _message(
    body: Mapping[str, Any],
    event: Mapping[str, Any],
    team_id: str,
    enterprise_id: str | None,
    *,
    mention_event: bool,
) -> Decision:
    bot_user_id = _bot_user_id(body)
    user_id = event.get("user")
    # asklane's own posts carry its app id, and its bot user as the author.
    if (bot_user_id is not None and user_id == bot_user_id) or (
        event.get("app_id") is not None and event.get("app_id") == body.get("api_app_id")
    ):
        return Ignored("own_message")
    if event.get("bot_id") is not None or event.get("subtype") == "bot_message":
        return Ignored("other_bot")
    if event.get("subtype") is not None:
        return Ignored("subtype")
    channel_id, ts, thread_ts, text = (
        event.get("channel"),
        event.get("ts"),
        event.get("thread_ts"),
        event.get("text"),
    )
    if not (_is_text(user_id) and _is_text(channel_id) and _is_text(ts) and _is_text(bot_user_id)):
        return Ignored("missing_fields")
    if thread_ts is not None and not _is_text(thread_ts):
        return Ignored("missing_fields")
    if text is None:
        text = ""
    if not isinstance(text, str):
        return Ignored("missing_fields")
    if mention_event:
        source: Literal["mention", "dm"] = "mention"
    elif event.get("channel_type") == "im":
        source = "dm"
    elif mentions(text, bot_user_id):
        # The message twin of an app_mention (the app also reads that channel): the same question.
        source = "mention"
    else:
        return Ignored("no_mention")
    message = Message(team_id, enterprise_id, user_id, channel_id, ts, thread_ts if thread_ts != ts else None)
    return Question(source, message, question_text(text, bot_user_id))


def _bot_user_id(body: Mapping[str, Any]) -> str | None:
    authorizations = body.get("authorizations")
    if isinstance(authorizations, list) and authorizations and isinstance(authorizations[0], Mapping):
        user_id = authorizations[0].get("user_id")
        return user_id if _is_text(user_id) else None
    return None


def _is_text(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and value != ""
