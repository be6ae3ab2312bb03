"""Claude's Markdown becomes a Slack message that always fits Slack's limits."""

from __future__ import annotations

import json

import pytest

from workers.formatting import (
    FALLBACK_CHARS,
    MARKDOWN_LIMIT,
    TRUNCATED_NOTE,
    answer_message,
    fit_markdown,
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
