"""Every message a user sees, in Slack's message shape. Shared by the web and worker processes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Characters of the question echoed back in the notice; the full question is still answered.
ECHO_CHARS = 500


@dataclass(frozen=True)
class SlackMessage:
    """A Slack message: fallback ``text`` (notifications, screen readers) plus Block Kit ``blocks``."""

    text: str
    blocks: list[dict[str, Any]] = field(default_factory=list)
    #: The whole message as plain mrkdwn text, sent instead when Slack rejects the blocks.
    plain: str | None = None


def escape_mrkdwn(text: str) -> str:
    """Escape the three characters Slack's mrkdwn treats as control characters.

    This is what makes user-echoed ``<!channel>`` or ``<@U123>`` render as plain text.
    """
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def _context(text: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": text}]}


def quote(question: str) -> str:
    """The question as a Slack quote, escaped and cut at ECHO_CHARS."""
    return _quote(question)


def _quote(question: str) -> str:
    shown = question if len(question) <= ECHO_CHARS else question[:ECHO_CHARS] + "…"
    return "\n".join("> " + line for line in escape_mrkdwn(shown).splitlines() or [""])


def usage(command: str) -> SlackMessage:
    """Help text for an empty command or `help`."""
    text = f"Ask Claude anything: `{command} how do I rotate an API key?`\nThe answer is visible only to you."
    return SlackMessage(text=text, blocks=[_section(text)])


def unknown_command(command: str, ours: str) -> SlackMessage:
    """A command this app was not set up to answer (a misconfigured Slack app)."""
    text = f"Sorry, asklane does not know `{escape_mrkdwn(command[:40])}`. Try `{ours} your question`."
    return SlackMessage(text=text, blocks=[_section(text)])


def over_quota(scope: str, allowed: int, period: str, retry_after: float) -> SlackMessage:
    """The asker (or their workspace) has used up a fair-use limit; no job was queued."""
    who = "You have" if scope == "user" else "Your workspace has"
    asked = "1 question" if allowed == 1 else f"{allowed:,} questions"
    text = (
        f":raised_hand: {who} asked {asked} this {period}, the most asklane takes. "
        f"You can ask again in {_duration(retry_after)}."
    )
    return SlackMessage(text=text, blocks=[_section(text)])


def over_budget(scope: str, period: str, budget_usd: float, resets_in: float, reference: str) -> SlackMessage:
    """The asker (or their workspace) has spent its AI budget; no job was queued."""
    who = "You have" if scope == "user" else "Your workspace has"
    which = "today's" if period == "day" else "this month's"
    when = "at midnight UTC" if period == "day" else "on the 1st of next month (00:00 UTC)"
    text = (
        f":raised_hand: {who} used {which} AI budget of {dollars(budget_usd)}, so this question was "
        f"not asked. The budget resets {when}, in {_until(resets_in)}. (ref {reference})"
    )
    return SlackMessage(text=text, blocks=[_section(text)])


def dollars(usd: float) -> str:
    """An amount of US dollars as people read it: cents, or finer for amounts under a cent."""
    if usd == 0 or abs(usd) >= 0.01:
        return f"${usd:,.2f}"
    return f"${usd:.6f}".rstrip("0")


def _until(seconds: float) -> str:
    """A wait up to two days in hours and minutes, a longer one in days and hours."""
    whole_hours = int(seconds // 3600)
    if whole_hours < 48:
        return _duration(seconds)
    days, hours = divmod(whole_hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def _duration(seconds: float) -> str:
    whole = max(1, round(seconds))
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{-(-whole // 60)} min"
    hours, minutes = divmod(-(-whole // 60), 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def too_long(command: str, length: int, limit: int) -> SlackMessage:
    """The question is over the length limit."""
    text = (
        f":warning: Your question is {length:,} characters long; `{command}` takes up to {limit:,}. "
        "Please shorten it and try again."
    )
    return SlackMessage(text=text, blocks=[_section(text)])


def working_on_it(question: str) -> SlackMessage:
    """The immediate ephemeral notice, echoing the question."""
    text = ":hourglass_flowing_sand: Working on it…"
    return SlackMessage(text=text, blocks=[_section(text), _context(_quote(question))])


def queued(question: str, ahead: int) -> SlackMessage:
    """Interim update for a question still waiting for a worker."""
    if ahead == 0:
        where = "it is next in line"
    else:
        where = "it is queued behind " + ("1 other question" if ahead == 1 else f"{ahead} other questions")
    text = f":hourglass_flowing_sand: Busy right now: {where}."
    return SlackMessage(text=text, blocks=[_section(text), _context(_quote(question))])


def retrying(question: str, delay: float) -> SlackMessage:
    """Interim update for a question whose answer is being retried."""
    text = f":hourglass_flowing_sand: Claude is busy, retrying in {max(1, round(delay))} s…"
    return SlackMessage(text=text, blocks=[_section(text), _context(_quote(question))])


def unavailable(reference: str) -> SlackMessage:
    """Redis (the queue) did not take the job."""
    text = (
        ":warning: asklane is temporarily unavailable, so your question was not queued. "
        f"Please try again in a minute. (ref {reference})"
    )
    return SlackMessage(text=text, blocks=[_section(text)])


def malformed_request(reference: str) -> SlackMessage:
    """Slack sent a command we cannot use (missing fields)."""
    text = f":warning: Sorry, that request could not be read. Please try again. (ref {reference})"
    return SlackMessage(text=text, blocks=[_section(text)])


def failed(reason: str, reference: str) -> SlackMessage:
    """The final answer when a job could not produce one. ``reason`` is a short human sentence."""
    text = f":x: Sorry, I couldn't answer that: {reason} (ref {reference})"
    return SlackMessage(text=text, blocks=[_section(text)])


def event_usage(source: str) -> SlackMessage:
    """A mention or DM with no question in it; posted in its thread (an event's ack is not shown)."""
    how = (
        "Mention me with your question, e.g. `@asklane how do I rotate an API key?`"
        if source == "mention"
        else "Write your question here, e.g. _how do I rotate an API key?_"
    )
    text = (
        f":wave: Ask me anything. {how} I answer in the thread, "
        "and follow-ups in the thread continue the conversation."
    )
    return SlackMessage(text=text, blocks=[_section(text)])


def event_too_long(length: int, limit: int) -> SlackMessage:
    """A mention or DM over the length limit; posted in its thread."""
    text = (
        f":warning: Your question is {length:,} characters long; I take up to {limit:,}. "
        "Please shorten it and ask again."
    )
    return SlackMessage(text=text, blocks=[_section(text)])


# --- buttons on answers and Stop -----------------------------------------------------------------

#: What each button does, as a verb the messages below use.
ACTION_VERBS = {"share": "share", "regenerate": "regenerate", "dismiss": "dismiss", "feedback": "record"}


def feedback_thanks(value: str) -> SlackMessage:
    """Shown only to whoever clicked thumbs up or down on an answer."""
    text = (
        ":pray: Thanks, glad it helped."
        if value == "good"
        else ":pray: Thanks for telling us. Try Regenerate for another answer, or rephrase the question."
    )
    return SlackMessage(text=text, blocks=[_section(text)])


def not_your_answer(action: str) -> SlackMessage:
    """Someone clicked Share, Regenerate or Dismiss on another person's ``/ask`` answer."""
    verb = ACTION_VERBS.get(action, action)
    text = f":lock: Only the person who asked can {verb} this answer. Ask your own with `/ask`."
    return SlackMessage(text=text, blocks=[_section(text)])


def answer_expired(action: str) -> SlackMessage:
    """A click on an answer whose record expired (ANSWER_RECORD_TTL_SECONDS) or never was."""
    verb = ACTION_VERBS.get(action, action)
    text = f":hourglass: This answer is too old to {verb} now. Please ask the question again."
    return SlackMessage(text=text, blocks=[_section(text)])


def not_for_thread_answers(action: str) -> SlackMessage:
    """Share or Dismiss on a thread answer, which everyone in the thread already sees."""
    verb = ACTION_VERBS.get(action, action)
    text = f":information_source: Answers in threads cannot be {verb}d; only private `/ask` answers can."
    return SlackMessage(text=text, blocks=[_section(text)])


def action_failed(action: str, reason: str, reference: str) -> SlackMessage:
    """A button's job (share, dismiss, feedback) could not be done; ``reason`` says why."""
    verb = ACTION_VERBS.get(action, action)
    what = "your feedback" if action == "feedback" else "that answer"
    text = f":x: Sorry, I couldn't {verb} {what}: {reason} (ref {reference})"
    return SlackMessage(text=text, blocks=[_section(text)])


#: Why a shared answer could not be posted in its channel, and how to fix it.
SHARE_NOT_A_MEMBER = (
    "asklane isn't a member of this channel (or it is private or archived), so it cannot post there. "
    "Invite it with `/invite @asklane`, then press Share again."
)
