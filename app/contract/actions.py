"""The buttons on an answer: their ``action_id``s, shared by the worker that draws them and the web
process that reads the clicks (``block_actions``). Every button's ``value`` is the job id of the
answer it acts on, so a click names its answer without anything else stored in the message.
"""

from __future__ import annotations

from typing import Literal

#: On a streaming thread answer, while it streams.
STOP = "asklane_stop"
#: On every finished answer (a thread's, and an ephemeral /ask one), and on an interrupted one
#: (as "Retry").
REGENERATE = "asklane_regenerate"
#: Slack's feedback_buttons on a thread answer; the clicked button's value is FEEDBACK_GOOD or
#: FEEDBACK_BAD, followed by ":" and the answer's job id.
FEEDBACK = "asklane_feedback"
#: On an ephemeral /ask answer.
SHARE = "asklane_share"
DISMISS = "asklane_dismiss"

FEEDBACK_GOOD = "good"
FEEDBACK_BAD = "bad"

Action = Literal["asklane_stop", "asklane_regenerate", "asklane_feedback", "asklane_share", "asklane_dismiss"]
ACTIONS: frozenset[str] = frozenset({STOP, REGENERATE, FEEDBACK, SHARE, DISMISS})


def feedback_value(value: Literal["good", "bad"], job_id: str) -> str:
    """The value of one of the feedback buttons of the answer ``job_id``."""
    return f"{value}:{job_id}"
