"""Conversation memory: the questions and answers of a thread, kept in Redis.

Slack's ``conversations.replies`` is tightly rate-limited for apps outside the Marketplace, so
asklane keeps its own record. Each answered question is one :class:`Exchange` (the question, who
asked, the job, the answer) in a list under the thread's ``conversation_key``, oldest first.

* **When.** An exchange is written with the job's answer, in the same atomic step
  (:data:`app.contract.scripts.REMEMBER_ANSWER`), before the answer is posted: a re-run reuses the
  stored answer and never appends again, and a job's exchange is appended at most once (by job id).
* **Bounds.** At most CONVERSATION_MAX_TURNS turns, where a question and its answer are two
  turns (so 40 keeps the last 20 exchanges), and CONVERSATION_MAX_CHARS characters; the oldest
  exchanges go first. The newest is always kept, cut to the character cap if it is longer on its
  own.
* **Expiry.** CONVERSATION_TTL_SECONDS after the last exchange; each new one restarts it.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import cast

import structlog
from arq.connections import ArqRedis
from pydantic import BaseModel, Field, ValidationError

from app.contract import keys, scripts
from app.contract.jobs import ThreadQuestion
from app.contract.settings import Settings
from workers.job_state import STATE_TTL_SECONDS, StoredAnswer
from workers.prompt import Turn

log = structlog.get_logger(__name__)

#: Marks a text cut to fit CONVERSATION_MAX_CHARS.
CUT = "…"


class Exchange(BaseModel):
    """One answered question of a conversation."""

    job_id: str
    #: The Slack user who asked.
    user_id: str
    question: str
    answer: str
    #: Characters of question and answer, what CONVERSATION_MAX_CHARS counts (kept beside them,
    #: so the Lua script need not count UTF-8 characters).
    chars: int = Field(ge=0)

    def turns(self) -> tuple[Turn, Turn]:
        return Turn("user", self.question, self.user_id), Turn("assistant", self.answer)


@dataclass(frozen=True)
class Limits:
    """How much of a conversation is kept, and for how long."""

    ttl_seconds: float
    max_exchanges: int
    max_chars: int

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(
            ttl_seconds=settings.conversation_ttl_seconds,
            # A question and its answer are two turns.
            max_exchanges=max(settings.conversation_max_turns // 2, 1),
            max_chars=settings.conversation_max_chars,
        )


def exchange(job_id: str, user_id: str, question: str, answer: str, max_chars: int) -> Exchange:
    """The exchange to store, cut to ``max_chars`` (the answer's end first, then the question's)."""
    if len(question) + len(answer) > max_chars:
        question = _cut(question, max_chars)
        answer = _cut(answer, max_chars - len(question))
    return Exchange(
        job_id=job_id, user_id=user_id, question=question, answer=answer, chars=len(question) + len(answer)
    )


def _cut(text: str, room: int) -> str:
    if len(text) <= room:
        return text
    return text[: max(room - len(CUT), 0)] + CUT if room >= len(CUT) else ""


async def load(redis: ArqRedis, conversation_key: str) -> list[Exchange]:
    """The conversation's exchanges, oldest first; an entry that cannot be read is skipped."""
    raw = await cast(Awaitable[list[bytes]], redis.lrange(conversation_key, 0, -1))
    found = []
    for entry in raw:
        try:
            found.append(Exchange.model_validate_json(entry))
        except ValidationError as error:
            log.warning("memory.entry_unreadable", errors=error.error_count())
    return found


def turns(exchanges: list[Exchange]) -> list[Turn]:
    """The exchanges as alternating question and answer turns."""
    return [turn for item in exchanges for turn in item.turns()]


async def save_answer(
    redis: ArqRedis, job: ThreadQuestion, answer: StoredAnswer, limits: Limits
) -> StoredAnswer:
    """Store the job's answer (as job_state.save_answer does) and append its exchange to the
    conversation, atomically; returns the answer to post: this one, or the one another run of the
    job stored first."""
    item = exchange(job.job_id, job.asker.user_id, job.text, answer.text, limits.max_chars)
    stored, existing = await scripts.remember_answer(
        redis,
        keys=[keys.answer_key(job.job_id), job.conversation_key],
        args=[
            answer.model_dump_json(),
            STATE_TTL_SECONDS,
            job.job_id,
            item.model_dump_json(),
            item.chars,
            limits.max_exchanges,
            limits.max_chars,
            int(limits.ttl_seconds * 1000),
        ],
    )
    if int(stored):
        return answer
    if existing:
        log.info("memory.answer_already_stored")
        return StoredAnswer.model_validate_json(existing)
    log.info("memory.exchange_already_stored")
    return answer
