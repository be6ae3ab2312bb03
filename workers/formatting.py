"""Turn Claude's Markdown into a Slack message that always posts.

Slack's ``markdown`` block renders standard Markdown (bold, italics, code, links, lists,
headings) as Claude writes it, so no lossy conversion to mrkdwn is needed. Its limit is 12,000
characters per message; longer answers are cut at a paragraph or line boundary with a visible
note, and an open code fence is closed so the rest of the message still renders.
"""

from __future__ import annotations

from typing import Any

from app.contract.messages import SlackMessage, escape_mrkdwn

#: Slack rejects messages whose markdown blocks add up to more than this (msg_blocks_too_long).
MARKDOWN_LIMIT = 12_000

#: Characters of the answer in the plain-text resend used when Slack rejects the markdown block
#: (Slack's own limit on message text is 40,000; a section of mrkdwn shows well up to a few thousand).
PLAIN_LIMIT = 12_000

#: Characters of the answer in the top-level ``text``, which Slack shows in notifications.
FALLBACK_CHARS = 300

CUT_SHORT_NOTE = ":scissors: Claude's answer was cut short because it reached its length limit."
TRUNCATED_NOTE = ":scissors: The answer was too long for Slack, so the end of it is not shown."

_FENCE = "```"


def answer_message(answer: str, *, cut_short: bool = False) -> SlackMessage:
    """The ephemeral message carrying Claude's answer."""
    body, truncated = fit_markdown(answer, MARKDOWN_LIMIT)
    notes = [CUT_SHORT_NOTE] if cut_short else []
    if truncated:
        notes.append(TRUNCATED_NOTE)
    blocks: list[dict[str, Any]] = [{"type": "markdown", "text": body}]
    if notes:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": "\n".join(notes)}]})
    plain, _ = fit_markdown(escape_mrkdwn(answer), PLAIN_LIMIT)
    return SlackMessage(
        text=fallback_text(answer), blocks=blocks, plain="\n\n".join([plain, *notes]) if notes else plain
    )


def thread_answer(answer: str, *, cut_short: bool) -> list[SlackMessage]:
    """The messages of an answer posted in a thread."""
    return [answer_message(answer, cut_short=cut_short)]  # replaced by the thread delivery branch


def fallback_text(answer: str) -> str:
    """A short plain preview of the answer for notifications."""
    preview = " ".join(answer.split())
    if len(preview) > FALLBACK_CHARS:
        preview = preview[: FALLBACK_CHARS - 1] + "…"
    return escape_mrkdwn(preview)


def fit_markdown(text: str, limit: int) -> tuple[str, bool]:
    """Cut ``text`` to at most ``limit`` characters at a clean boundary. Returns (text, truncated)."""
    if len(text) <= limit:
        return text, False
    room = limit - len("\n" + _FENCE) - len("\n…")
    cut = text[:room]
    # Prefer a paragraph break, then a line break, if one is reasonably close to the limit.
    for separator in ("\n\n", "\n"):
        at = cut.rfind(separator)
        if at >= room // 2:
            cut = cut[:at]
            break
    cut = cut.rstrip() + "\n…"
    if _open_fence(cut):
        cut += "\n" + _FENCE
    return cut, True


def _open_fence(text: str) -> bool:
    fences = sum(1 for line in text.splitlines() if line.lstrip().startswith(_FENCE))
    return fences % 2 == 1
