"""Where a job's reply goes: a union of reply targets, discriminated by ``type``.

A target names a place in Slack and nothing about how to post there: delivery routes by it
(workers/delivery.py), and the runner never looks inside.

* ``ephemeral``: the slash command's response_url, with ``chat.postEphemeral`` to the same person
  in the same channel as the fallback.
* ``thread``: replies in a thread of a channel or of the app's DM (``chat.postMessage`` with
  ``thread_ts``), seen by everyone in it.
* ``direct_message``: a top-level message in the user's DM with the app (the Messages tab),
  for what belongs to no thread.
* ``private_note``: a message only the person who clicked a button sees, beside (never
  replacing) the message clicked.
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


class PrivateNote(BaseModel):
    """A message only ``user_id`` sees, added beside the message they clicked a button on (thanks
    for the feedback, not your answer, …), never replacing it: through the click's response_url
    (``replace_original`` false), else by ``chat.postEphemeral`` in the channel."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["private_note"] = "private_note"
    response_url: str = Field(min_length=1)
    channel_id: str = Field(min_length=1)
    user_id: str = Field(min_length=1)


class Thread(BaseModel):
    """Replies in one thread: under the message ``thread_ts`` in ``channel_id`` (a channel, or the
    DM with the app). A top-level message starts its own thread: its ``ts`` is the thread_ts."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["thread"] = "thread"
    channel_id: str = Field(min_length=1)
    thread_ts: str = Field(min_length=1)


class DirectMessage(BaseModel):
    """The user's DM with the app, outside any thread (its Messages tab)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["direct_message"] = "direct_message"
    channel_id: str = Field(min_length=1)
    user_id: str = Field(min_length=1)


#: Every reply target a job may carry; pydantic picks the model by ``type``.
ReplyTarget = Annotated[Union[Ephemeral, Thread, DirectMessage, PrivateNote], Field(discriminator="type")]  # noqa: UP007
