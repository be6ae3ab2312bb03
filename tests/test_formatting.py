"""Claude's Markdown becomes a Slack message that always fits Slack's limits."""

from __future__ import annotations

import json

import pytest

from workers.formatting import (
    CUT_SHORT_NOTE,
    FALLBACK_CHARS,
    MARKDOWN_LIMIT,
    TEXT_LIMIT,
    TRUNCATED_NOTE,
    answer_message,
    fit_markdown,
    split_markdown,
    thread_answer,
)

SAMPLE = """# Rotating a key

1. **Create** a new key in the *console*.
2. Update `ANTHROPIC_API_KEY` — see [the docs](https://docs.example.com/keys).

```bash
heroku config:set ANTHROPIC_API_KEY=...
```
"""


def _markdown(message_blocks: list[dict]) -> str:
    return "".join(block["text"] for block in message_blocks if block["type"] == "markdown")


def test_markdown_is_passed_to_slacks_markdown_block_unchanged() -> None:
    message = answer_message(SAMPLE)

    assert message.blocks == [{"type": "markdown", "text": SAMPLE}]


def test_long_answer_is_cut_to_slacks_markdown_limit_with_a_visible_note() -> None:
    paragraph = "A sentence that repeats to make a long answer. " * 20
    answer = "\n\n".join(f"## Part {n}\n\n{paragraph}" for n in range(40))
    assert len(answer) > MARKDOWN_LIMIT

    message = answer_message(answer)

    body = _markdown(message.blocks)
    assert len(body) <= MARKDOWN_LIMIT
    assert answer.startswith(body.removesuffix("\n…"))
    assert TRUNCATED_NOTE in json.dumps(message.blocks, ensure_ascii=False)
    assert len(message.blocks) <= 50


def test_a_cut_inside_a_code_block_closes_the_fence() -> None:
    answer = "Here is the script:\n\n```python\n" + "print('hello')\n" * 2000 + "```\n"

    body = _markdown(answer_message(answer).blocks)

    assert len(body) <= MARKDOWN_LIMIT
    fences = [line for line in body.splitlines() if line.startswith("```")]
    assert len(fences) % 2 == 0


def test_an_answer_without_line_breaks_is_still_cut_to_the_limit() -> None:
    body = _markdown(answer_message("x" * 50_000).blocks)

    assert len(body) <= MARKDOWN_LIMIT


@pytest.mark.parametrize(
    ("text", "cut"),
    [
        ("short", "short"),
        ("x" * 40, "x" * 40),
        ("a" * 20 + "\n\n" + "b" * 30, "a" * 20 + "\n…"),
        ("a" * 5 + "\n\n" + "b" * 20 + "\n" + "c" * 30, "a" * 5 + "\n\n" + "b" * 20 + "\n…"),
        ("x" * 100, "x" * 34 + "\n…"),
        ("```\n" + "y" * 100, "```\n" + "y" * 30 + "\n…\n```"),
        ("```\nz\n```\n" + "w" * 100, "```\nz\n```\n" + "w" * 24 + "\n…"),
    ],
    ids=[
        "fits: unchanged",
        "exactly the limit: unchanged",
        "at a paragraph break",
        "at a line break when the last paragraph break is too early",
        "mid-line when there is no break",
        "an open code fence is closed",
        "a closed code fence is left alone",
    ],
)
def test_text_over_the_limit_is_cut_at_the_cleanest_boundary_and_marked(text: str, cut: str) -> None:
    fitted, truncated = fit_markdown(text, 40)

    assert (fitted, truncated) == (cut, cut != text)
    assert len(fitted) <= 40


def test_notification_text_is_a_short_preview() -> None:
    message = answer_message("A long answer.\n\n" * 100)

    assert len(message.text) <= FALLBACK_CHARS
    assert message.text.startswith("A long answer. A long answer.")


def test_notification_text_escapes_slack_markup() -> None:
    message = answer_message("Use <!channel> & friends.")

    assert message.text == "Use &lt;!channel&gt; &amp; friends."


def test_short_answer_has_no_notes() -> None:
    assert len(answer_message("Yes.").blocks) == 1


# --- thread answers: split across messages, never cut ------------------------------------------

FENCED_15 = "```py\n{}\n```"


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("short", ["short"]),
        ("a" * 20 + "\n\n" + "b" * 30, ["a" * 20, "b" * 30]),
        ("a" * 10 + "\n\n" + "b" * 10 + "\n\n" + "c" * 30, ["a" * 10 + "\n\n" + "b" * 10, "c" * 30]),
        (
            "p" * 10 + "\n\n```\n" + "x" * 10 + "\n\n" + "y" * 10 + "\n```",
            ["p" * 10, "```\n" + "x" * 10 + "\n\n" + "y" * 10 + "\n```"],
        ),
        ("a" * 15 + "\n" + "b" * 15 + "\n" + "c" * 15, ["a" * 15 + "\n" + "b" * 15, "c" * 15]),
        ("word " * 12, ["word word word word word word word", "word word word word word "]),
        ("x" * 100, ["x" * 36, "x" * 36, "x" * 28]),
        (
            "```py\n" + "x" * 15 + "\n" + "y" * 15 + "\n" + "z" * 15 + "\n```",
            [FENCED_15.format("x" * 15), FENCED_15.format("y" * 15), FENCED_15.format("z" * 15)],
        ),
    ],
    ids=[
        "fits: one part, unchanged",
        "at a paragraph break",
        "paragraphs packed while they fit",
        "a code block with a blank line is kept whole",
        "a paragraph longer than the limit: at lines",
        "a line longer than the limit: at a space",
        "no space at all: anywhere",
        "a code block longer than the limit: closed and reopened with its language",
    ],
)
def test_a_long_answer_is_split_into_parts_that_each_fit(text: str, parts: list[str]) -> None:
    split = split_markdown(text, 40)

    assert split == parts
    assert all(len(part) <= 40 for part in split)


def _words(text: str) -> list[str]:
    return [word for word in text.split() if not word.startswith("```")]


LONG_CODE = "Run this:\n\n```python\n" + "\n".join(f"print({n})" for n in range(3000)) + "\n```\n\nDone."
LONG_PROSE = "\n\n".join(f"## Part {n}\n\n" + "A sentence that repeats. " * 60 for n in range(30))
ONE_PARAGRAPH = "word " * 10_000


@pytest.mark.parametrize(
    "answer", [LONG_CODE, LONG_PROSE, ONE_PARAGRAPH], ids=["code", "prose", "one paragraph"]
)
def test_every_part_of_a_thread_answer_fits_slack_and_nothing_is_left_out(answer: str) -> None:
    replies = thread_answer(answer, cut_short=False)

    bodies = [_markdown(reply.blocks) for reply in replies]
    assert len(replies) > 1
    assert all(len(body) <= MARKDOWN_LIMIT for body in bodies)
    assert all(len(reply.text) <= FALLBACK_CHARS for reply in replies)
    assert all(reply.plain is not None and len(reply.plain) <= TEXT_LIMIT for reply in replies)
    assert _words("\n".join(bodies)) == _words(answer)
    assert all(sum(line.startswith("```") for line in body.splitlines()) % 2 == 0 for body in bodies)


def test_a_code_block_split_across_messages_reopens_with_its_language() -> None:
    bodies = [_markdown(reply.blocks) for reply in thread_answer(LONG_CODE, cut_short=False)]

    assert all(body.startswith("```python\n") for body in bodies[1:])


def test_a_short_thread_answer_is_one_markdown_message_unchanged() -> None:
    assert [reply.blocks for reply in thread_answer(SAMPLE, cut_short=False)] == [
        [{"type": "markdown", "text": SAMPLE}]
    ]


def test_the_cut_short_note_is_on_the_last_part_only() -> None:
    replies = thread_answer(LONG_PROSE, cut_short=True)

    notes = [CUT_SHORT_NOTE in json.dumps(reply.blocks, ensure_ascii=False) for reply in replies]
    assert notes == [False] * (len(replies) - 1) + [True]
