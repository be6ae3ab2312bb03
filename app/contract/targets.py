"""Where a job's reply goes: a union of reply targets, discriminated by ``type``.

A target names a place in Slack and nothing about how to post there: delivery routes by it
(workers/delivery.py). Today there is one, ``ephemeral``: the slash command's response_url,
with ``chat.postEphemeral`` to the same person in the same channel as the fallback. A ``thread``
target (channel + thread_ts, posted or streamed as a message) is one more model here, added to
:data:`ReplyTarget`, and one more route in workers/delivery.py; the runner never looks inside.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field


class Ephemeral(BaseModel):
    """A message only the asker sees: through the command's response_url (it replaces the
    "Working on it" notice), else by ``chat.postEphemeral`` in the channel it came from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["ephemeral"] = "ephemeral"
    response_url: str = Field(min_length=1)
    channel_id: str = Field(min_length=1)
    user_id: str = Field(min_length=1)


#: Every reply target a job may carry. A union of one for now; pydantic picks the model by ``type``.
ReplyTarget = Annotated[Union[Ephemeral], Field(discriminator="type")]  # noqa: UP007
