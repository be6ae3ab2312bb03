"""A job kind only the tests know: it proves the runner is generic (tests/test_runner.py) and that
the AI limiter holds back only AI work (tests/test_ai_hold.py)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Literal

from app.contract import keys
from app.contract.jobs import Asker, JobBase
from app.contract.messages import SlackMessage
from app.contract.targets import Ephemeral
from tests.support.slack_requests import SlashCommands
from workers.answer import ASK
from workers.errors import PermanentError, StopRequested, TransientError
from workers.kinds import JobKind, Run

#: "stop": the run saw a Stop (raises StopRequested); "delivered_then_permanent": the final message
#: goes out, then the run fails (as a streamed answer Claude broke off mid-way).
Step = Literal["ok", "transient", "permanent", "stop", "delivered_then_permanent"]


class Chore(JobBase):
    """A job kind only these tests know: each run does the next step of its script."""

    kind: Literal["chore"] = "chore"
    script: list[Step]


class ChoreKind:
    model: type[JobBase] = Chore
    #: Chores post to Slack only: the AI limiter never holds them back.
    uses_ai = False

    async def perform(self, run: Run) -> str:
        assert isinstance(run.job, Chore)
        redis = run.deps.redis
        runs = int(await redis.incr(f"test:chore-runs:{run.job.job_id}"))
        # Held under the runner's lease: its run marker names this run.
        if await redis.exists(keys.running_key(run.job.job_id)):
            await redis.incr(f"test:chore-leased:{run.job.job_id}")
        step = run.job.script[min(runs, len(run.job.script)) - 1]
        if step == "transient":
            raise TransientError(f"chore run {runs} failed")
        if step == "permanent":
            raise PermanentError("chore refused", reason="the chore cannot be done.")
        if step == "stop":
            raise StopRequested()
        if step == "delivered_then_permanent":
            await run.deliver(SlackMessage(text=f"chore {run.job.dedupe_key} half done"))
            raise PermanentError("chore broke off", reason="the chore broke off.")
        return await run.deliver(SlackMessage(text=f"chore {run.job.dedupe_key} done"))

    def failure_message(self, job: JobBase, reason: str) -> SlackMessage:
        return SlackMessage(text=f"chore failed: {reason} (ref {job.reference})")

    def retrying_message(self, job: JobBase, delay: float) -> SlackMessage:
        return SlackMessage(text=f"chore retrying in {delay:.0f} s")

    def queued_message(self, job: JobBase, ahead: int) -> SlackMessage:
        return SlackMessage(text=f"chore queued behind {ahead}")


KINDS: Mapping[str, JobKind] = {"ask": ASK, "chore": ChoreKind()}


def chore(commands: SlashCommands, name: str, *script: Step) -> Chore:
    """A chore asked by a slash-command user, answered through its response_url."""
    form = commands.form(name)
    return Chore(
        asker=Asker(team_id=form["team_id"], user_id=form["user_id"]),
        reply_to=Ephemeral(
            response_url=form["response_url"], channel_id=form["channel_id"], user_id=form["user_id"]
        ),
        dedupe_key=f"{form['team_id']}:{name}",
        enqueued_at=datetime.now(UTC),
        script=list(script),
    )
