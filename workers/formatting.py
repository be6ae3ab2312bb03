"""Turn Claude's Markdown into a Slack message that always posts.

Slack's ``markdown`` block renders standard Markdown (bold, italics, code, links, lists,
headings) as Claude writes it, so no lossy conversion to mrkdwn is needed. Its limit is 12,000
characters per message; longer answers are cut at a paragraph or line boundary with a visible
note, and an open code fence is closed so the rest of the message still renders.

A thread has no such cut: :func:`thread_answer` splits a long answer across as many messages as
it needs, at paragraphs, then lines (never inside a code block when a paragraph break outside one
will do), closing a code fence at the end of a message and reopening it at the start of the next
when a block must be split. Nothing is left out.
"""

from __future__ import annotations

from typing import Any

from app.contract import actions
from app.contract.messages import SlackMessage, escape_mrkdwn, quote

#: Slack rejects messages whose markdown blocks add up to more than this (msg_blocks_too_long).
MARKDOWN_LIMIT = 12_000

#: Characters of the answer in the plain-text resend used when Slack rejects the markdown block
#: (Slack's own limit on message text is 40,000; a section of mrkdwn shows well up to a few thousand).
PLAIN_LIMIT = 12_000

#: Slack truncates a message's ``text`` past this (the plain resend of one part must fit).
TEXT_LIMIT = 40_000

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
    """The thread replies carrying Claude's answer: one message, or as many as Slack's limits need
    (each part's markdown block within MARKDOWN_LIMIT); the "cut short" note goes on the last."""
    bodies = split_markdown(answer, MARKDOWN_LIMIT) if answer.strip() else ["…"]
    replies: list[SlackMessage] = []
    for index, body in enumerate(bodies):
        notes = [CUT_SHORT_NOTE] if cut_short and index == len(bodies) - 1 else []
        blocks: list[dict[str, Any]] = [{"type": "markdown", "text": body}]
        if notes:
            blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": "\n".join(notes)}]})
        # Escaping can lengthen a part (& becomes &amp;); only then is its plain resend cut.
        plain, _ = fit_markdown(escape_mrkdwn(body), TEXT_LIMIT - len(CUT_SHORT_NOTE) - 2)
        replies.append(
            SlackMessage(text=fallback_text(body), blocks=blocks, plain="\n\n".join([plain, *notes]))
        )
    return replies


def split_markdown(text: str, limit: int) -> list[str]:
    """``text`` in consecutive parts of at most ``limit`` characters, none empty, losing nothing
    but the blank lines between paragraphs where it is split.

    Paragraphs are packed whole; a code block counts as one paragraph, blank lines and all. Only a
    paragraph longer than ``limit`` is split, at lines, and a line longer than that at a space
    (else anywhere). A code block split so is closed at the end of a part and reopened, with its
    opening line, at the start of the next.
    """
    if len(text) <= limit:
        return [text]
    pieces = [piece for unit in _paragraphs(text) for piece in _split_paragraph(unit, limit)]
    parts: list[str] = []
    current = ""
    for piece in pieces:
        joined = f"{current}\n\n{piece}" if current else piece
        if len(joined) <= limit:
            current = joined
        else:
            parts.append(current)
            current = piece
    if current:
        parts.append(current)
    return parts


def _paragraphs(text: str) -> list[str]:
    """Paragraphs separated by blank lines; a code block is part of one, blank lines and all."""
    units: list[str] = []
    lines: list[str] = []
    in_fence = False
    for line in text.split("\n"):
        if _is_fence(line):
            in_fence = not in_fence
        if not line.strip() and not in_fence:
            if lines:
                units.append("\n".join(lines))
                lines = []
            continue
        lines.append(line)
    if lines:
        units.append("\n".join(lines))
    return units


def _split_paragraph(unit: str, limit: int) -> list[str]:
    """One paragraph in parts of at most ``limit``, split at lines, closing and reopening a code
    block that a split crosses."""
    if len(unit) <= limit:
        return [unit]
    close = "\n" + _FENCE
    parts: list[str] = []
    lines: list[str] = []
    opener: str | None = None  # the fence line open at the end of ``lines``
    for line in unit.split("\n"):
        room = limit - len(close) - (len(opener) + 1 if opener else 0)
        for segment in _segments(line, max(room, 1)):
            after = (None if opener else segment) if _is_fence(segment) else opener
            size = len("\n".join([*lines, segment])) + (len(close) if after else 0)
            if lines and size > limit:
                parts.append("\n".join(lines) + (close if opener else ""))
                lines = [opener] if opener else []
            lines.append(segment)
            opener = after
    if lines:
        parts.append("\n".join(lines))
    return parts


def _segments(line: str, width: int) -> list[str]:
    """``line`` in pieces of at most ``width``, cut at a space where one is in the second half."""
    segments: list[str] = []
    while len(line) > width:
        at = line.rfind(" ", width // 2, width + 1)
        if at <= 0:
            segments.append(line[:width])
            line = line[width:]
        else:
            segments.append(line[:at])
            line = line[at + 1 :]
    segments.append(line)
    return segments


def _is_fence(line: str) -> bool:
    return line.lstrip().startswith(_FENCE)


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
    fences = sum(1 for line in text.splitlines() if _is_fence(line))
    return fences % 2 == 1


# --- the ephemeral /ask answer's buttons, and sharing it ----------------------------------------


def ask_answer_actions(job_id: str) -> dict[str, Any]:
    """The actions block under an ephemeral ``/ask`` answer: Share, Regenerate, Dismiss. Each
    button's value is the answer's job id (app/contract/actions.py); only the asker may use them."""
    buttons = (
        (actions.SHARE, ":mega: Share to channel", "primary"),
        (actions.REGENERATE, ":arrows_counterclockwise: Regenerate", None),
        (actions.DISMISS, "Dismiss", None),
    )
    elements: list[dict[str, Any]] = []
    for action_id, label, style in buttons:
        button: dict[str, Any] = {
            "type": "button",
            "action_id": action_id,
            "text": {"type": "plain_text", "text": label, "emoji": True},
            "value": job_id,
        }
        if style is not None:
            button["style"] = style
        elements.append(button)
    return {"type": "actions", "block_id": "asklane_answer_actions", "elements": elements}


def ask_answer_message(answer: str, job_id: str, *, cut_short: bool = False) -> SlackMessage:
    """The ephemeral ``/ask`` answer with its Share / Regenerate / Dismiss buttons (the plain-text
    resend, used only when Slack rejects the blocks, has none)."""
    message = answer_message(answer, cut_short=cut_short)
    return SlackMessage(
        text=message.text, blocks=[*message.blocks, ask_answer_actions(job_id)], plain=message.plain
    )


#: Room left for the answer in a shared message's markdown block, after the heading.
SHARED_ANSWER_LIMIT = MARKDOWN_LIMIT - 1_000


def shared_answer(asker_id: str, question: str, answer: str, *, cut_short: bool = False) -> SlackMessage:
    """An ``/ask`` answer posted in its channel by the app, attributed to the asker who shared it:
    "<@asker> asked: …", then the answer."""
    heading = f"<@{asker_id}> asked:\n{quote(question)}"
    body, truncated = fit_markdown(answer, SHARED_ANSWER_LIMIT)
    notes = [CUT_SHORT_NOTE] if cut_short else []
    if truncated:
        notes.append(TRUNCATED_NOTE)
    notes.append("Shared from a private `/ask` answer.")
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": heading}},
        {"type": "markdown", "text": body},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": "\n".join(notes)}]},
    ]
    plain, _ = fit_markdown(escape_mrkdwn(answer), PLAIN_LIMIT)
    return SlackMessage(
        text=f"<@{asker_id}> shared an answer: {fallback_text(answer)}",
        blocks=blocks,
        plain="\n\n".join([heading, plain, *notes]),
    )


# --- Buttons on a streamed thread answer -------------------------------------------------------
# Slack's icon_button offers only a trash icon, so Regenerate and Retry are plain buttons in an
# actions block beside the feedback_buttons' context_actions block.


def answer_buttons(job_id: str) -> list[dict[str, Any]]:
    """The blocks ending a thread answer: Slack's feedback buttons (thumbs up / down) and
    Regenerate, each naming the answer's job (app/contract/actions.py)."""
    return [
        {
            "type": "context_actions",
            "elements": [
                {
                    "type": "feedback_buttons",
                    "action_id": actions.FEEDBACK,
                    "positive_button": {
                        "text": {"type": "plain_text", "text": "Good answer"},
                        "accessibility_label": "This answer was helpful",
                        "value": actions.feedback_value("good", job_id),
                    },
                    "negative_button": {
                        "text": {"type": "plain_text", "text": "Bad answer"},
                        "accessibility_label": "This answer was not helpful",
                        "value": actions.feedback_value("bad", job_id),
                    },
                }
            ],
        },
        _regenerate_block(job_id, "Regenerate"),
    ]


def stop_button(job_id: str) -> dict[str, Any]:
    """The block holding the Stop button a thread answer shows while it streams."""
    return {
        "type": "actions",
        "elements": [
            {
                "type": "button",
                "action_id": actions.STOP,
                "text": {"type": "plain_text", "text": "Stop"},
                "style": "danger",
                "value": job_id,
            }
        ],
    }


def retry_buttons(job_id: str) -> list[dict[str, Any]]:
    """The blocks ending an interrupted answer: a Retry button (Regenerate, by another name)."""
    return [_regenerate_block(job_id, "Retry")]


def _regenerate_block(job_id: str, label: str) -> dict[str, Any]:
    return {
        "type": "actions",
        "elements": [
            {
                "type": "button",
                "action_id": actions.REGENERATE,
                "text": {"type": "plain_text", "text": label},
                "value": job_id,
            }
        ],
    }
