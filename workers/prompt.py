"""The Anthropic request for a question: the conversation so far and the new question, as
alternating ``user`` / ``assistant`` messages within the context budget, marked for prompt caching.

Pure: no I/O, so every rule here is table-tested (tests/test_prompt.py).

* **Alternation.** Messages alternate, start with ``user`` and end with the new question;
  consecutive turns of one role are merged into one message (as separate text blocks).
* **Budget.** The whole request (system prompt, earlier turns, the question) must fit
  ``AI_CONTEXT_TOKENS``. Earlier turns are left out from the oldest; the newest question is always
  kept. A question that does not fit beside the system prompt on its own is refused
  (:data:`TOO_LONG_REASON`, a PermanentError): trimming it would answer something other than
  what was asked. The web edge limits questions to 4,000 characters, far inside the smallest
  budget allowed (1,000 tokens), so only an unusually long AI_SYSTEM_PROMPT can cause it.
* **Who asked.** When more than one person has asked in the conversation, each user turn starts
  with its asker, ``<@U123>: …``, so Claude can tell them apart; with one person it is left out.
* **Caching.** The system prompt and the block just before the new question (the end of the
  stable prefix: the previous answer) carry ``cache_control: {"type": "ephemeral"}``, so a
  follow-up pays full input price only for what is new since the previous call. Anthropic caches
  only prefixes above a model-dependent minimum length (about a thousand tokens or more) and
  ignores the mark below it; a trimmed conversation starts a new prefix.

**Token estimate.** Tokens are estimated, not counted: UTF-8 bytes / 3, rounded up, plus
:data:`MESSAGE_OVERHEAD_TOKENS` per turn. Anthropic's ``count_tokens`` would be exact but costs a
second API call per question, with its own rate limit and failure modes, before the answer can
even start. Claude's tokenizer averages about 4 bytes per token for English text and rarely
fewer than 3 for other scripts (a CJK character is 3 bytes and usually at most one token), so the
estimate errs high: the request sent is at most the budget, usually well under it. The budget
itself (20,000 by default) sits far below the model's context window, so the rare text that
tokenizes denser than the estimate (long runs of emoji, say) cannot overflow the model either.

The estimate is also what the rate limiter reserves of AI_INPUT_TOKENS_PER_MINUTE before the call
(workers/ratelimit.py), given back to the real count after it; so a conversation is trimmed to fit
a whole minute's input limit too (:func:`input_budget`), and only a question that does not fit it
on its own is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from anthropic.types import AssistantMessageParam, MessageParam, TextBlockParam, UserMessageParam

from workers.errors import PermanentError

#: UTF-8 bytes per token assumed by the estimate (Claude averages about 4 for English).
BYTES_PER_TOKEN = 3

#: Tokens added per turn for the role markers and framing around its text, rounded up.
MESSAGE_OVERHEAD_TOKENS = 8

TOO_LONG_REASON = "the question is too long for me to answer here. Please shorten it."

Role = Literal["user", "assistant"]


@dataclass(frozen=True)
class Turn:
    """One message of a conversation: a question (``user``, with who asked) or an answer."""

    role: Role
    text: str
    #: The Slack user who asked (user turns only).
    user_id: str | None = None


@dataclass(frozen=True)
class Prompt:
    """What Claude is sent: the system prompt and the messages."""

    system: str | list[TextBlockParam]
    messages: list[MessageParam]
    #: The estimate of the whole request, in tokens (see the module docstring).
    estimated_tokens: int = 0
    #: Earlier turns left out to fit the budget.
    turns_left_out: int = 0


def estimate_tokens(text: str) -> int:
    """The conservative token estimate of one turn (or the system prompt)."""
    return -(-len(text.encode()) // BYTES_PER_TOKEN) + MESSAGE_OVERHEAD_TOKENS


def input_budget(context_tokens: int, input_tokens_per_minute: int | None) -> int:
    """The budget a request is built within: AI_CONTEXT_TOKENS, or a whole minute's input limit
    when that is smaller (a request over it could never be booked)."""
    if input_tokens_per_minute is None:
        return context_tokens
    return min(context_tokens, input_tokens_per_minute)


def single_question(system_prompt: str, question: str) -> Prompt:
    """One question with no conversation (``/ask``): the system prompt and one user turn."""
    return Prompt(
        system=system_prompt,
        messages=[{"role": "user", "content": question}],
        estimated_tokens=estimate_tokens(system_prompt) + estimate_tokens(question),
    )


def build(system_prompt: str, history: Sequence[Turn], question: Turn, budget_tokens: int) -> Prompt:
    """The request for ``question`` after ``history`` (oldest first), within ``budget_tokens``.

    Raises PermanentError (:data:`TOO_LONG_REASON`) when the question alone does not fit beside
    the system prompt.
    """
    history = [turn for turn in history if turn.text.strip()]
    askers = {turn.user_id for turn in (*history, question) if turn.role == "user" and turn.user_id}
    attribute = len(askers) > 1

    used = estimate_tokens(system_prompt) + estimate_tokens(_text(question, attribute))
    if used > budget_tokens:
        raise PermanentError(
            f"question of ~{used} tokens with the system prompt, over AI_CONTEXT_TOKENS {budget_tokens}",
            reason=TOO_LONG_REASON,
        )
    # Keep the newest turns that fit: a contiguous tail, so no answer loses its question.
    kept = 0
    for turn in reversed(history):
        cost = estimate_tokens(_text(turn, attribute))
        if used + cost > budget_tokens:
            break
        used += cost
        kept += 1
    tail = history[len(history) - kept :]
    # The messages must start with a question: an answer whose question was left out goes too.
    while tail and tail[0].role != "user":
        used -= estimate_tokens(_text(tail[0], attribute))
        tail = tail[1:]

    grouped: list[tuple[Role, list[str]]] = []
    for turn in (*tail, question):
        text = _text(turn, attribute)
        if grouped and grouped[-1][0] == turn.role:
            grouped[-1][1].append(text)
        else:
            grouped.append((turn.role, [text]))
    system: str | list[TextBlockParam] = system_prompt
    if system_prompt.strip():  # Anthropic refuses an empty text block
        system = [{"type": "text", "text": system_prompt, "cache_control": {"type": "ephemeral"}}]
    return Prompt(
        system=system,
        messages=_with_cache_mark(grouped),
        estimated_tokens=used,
        turns_left_out=len(history) - len(tail),
    )


def _text(turn: Turn, attribute: bool) -> str:
    if attribute and turn.role == "user" and turn.user_id:
        return f"<@{turn.user_id}>: {turn.text}"
    return turn.text


def _with_cache_mark(grouped: list[tuple[Role, list[str]]]) -> list[MessageParam]:
    """The messages, the block just before the new question (the last one) marked for caching.

    A message of one unmarked block is sent as a plain string, as ``/ask`` sends its question.
    """
    total = sum(len(texts) for _, texts in grouped)
    mark_at = total - 2  # index of the block before the question; -1 when there is none
    messages: list[MessageParam] = []
    index = 0
    for role, texts in grouped:
        blocks: list[TextBlockParam] = []
        for text in texts:
            block: TextBlockParam = {"type": "text", "text": text}
            if index == mark_at:
                block["cache_control"] = {"type": "ephemeral"}
            blocks.append(block)
            index += 1
        content: str | list[TextBlockParam] = blocks
        if len(blocks) == 1 and "cache_control" not in blocks[0]:
            content = blocks[0]["text"]
        if role == "user":
            messages.append(UserMessageParam(role="user", content=content))
        else:
            messages.append(AssistantMessageParam(role="assistant", content=content))
    return messages
