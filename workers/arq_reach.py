"""Every arq 0.28 internal the worker relies on, in one place.

arq has no setting for the worker class and no hooks for the loop between polls, so
:class:`workers.loop.AsklaneWorker` subclasses ``arq.worker.Worker``. This module names
each member of arq that the subclass overrides or reads beyond arq's documented settings, and
says why; :func:`problems` checks them against the installed arq, and tests/test_arq_reach.py
fails naming the member if a new release renames one, turns it into another kind, or changes
the signature of a method we override and call through ``super()``. pyproject.toml pins arq to
0.28.x for the same reason.

How ``arq workers.WorkerSettings`` reaches our class: arq's ``cli`` looks up ``run_worker`` (and,
under ``--watch``, ``create_worker``) as globals of ``arq.cli`` when it runs, after importing the
settings. :func:`install`, called when ``workers.WorkerSettings`` is first read, points those two
names at functions that build an AsklaneWorker from the same settings. ``arq.worker.Worker``
itself is left as it is, and ``--check`` (which only reads the settings) is arq's own.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import arq.cli
import arq.constants
import arq.worker

Kind = Literal["coroutine method", "method", "attribute", "module function"]


@dataclass(frozen=True)
class Reach:
    """One arq member we depend on."""

    name: str
    kind: Kind
    why: str
    #: For a method we override and call through super(): arq's signature, as ``str(signature)``.
    signature: str | None = None


#: Members of ``arq.worker.Worker``.
WORKER: tuple[Reach, ...] = (
    Reach(
        "_poll_iteration",
        "coroutine method",
        "private; arq's loop calls it once per look at the queue (poll_delay is 0). Ours promotes due "
        "interactive jobs, waits for a wake-up instead of sleeping, and survives a Redis outage",
        "(self) -> None",
    ),
    Reach(
        "start_jobs",
        "coroutine method",
        "holds back jobs that would call the AI while the limiter has no slot; gives back the one slot "
        "arq takes (sem.acquire, job_counter += 1) before a Redis transaction that then fails",
        "(self, job_ids: list[bytes]) -> None",
    ),
    Reach(
        "run_job",
        "coroutine method",
        "after a job deferred itself (jobs_retried grew): keep its lane, wake an idle worker",
        "(self, job_id: str, score: int) -> None",
    ),
    Reach(
        "finish_failed_job",
        "coroutine method",
        "arq fails some jobs before any of our code runs, with no hook: we report them to the user",
        "(self, job_id: str, result_data: Optional[bytes]) -> None",
    ),
    Reach(
        "record_health",
        "coroutine method",
        "called every poll by heart_beat: writes this worker's own report for `asklane status`",
        "(self) -> None",
    ),
    Reach("close", "coroutine method", "stops our wake-up listener first", "(self) -> None"),
    Reach(
        "handle_sig_wait_for_completion",
        "method",
        "SIGTERM handler when job_completion_wait is set: ignore repeats, force exit before SIGKILL",
        "(self, signum: signal.Signals) -> None",
    ),
    Reach("sem", "attribute", "the slot semaphore start_jobs acquires; released for a slot arq leaked"),
    Reach("job_counter", "attribute", "running jobs as arq counts them: a free slot is < max_jobs"),
    Reach("max_jobs", "attribute", "the concurrency"),
    Reach("tasks", "attribute", "job id -> run_job task: what is running, what to wait for"),
    Reach("allow_pick_jobs", "attribute", "False once SIGTERM arrived: stop waiting for work"),
    Reach("burst", "attribute", "`--burst` and the tests: do not linger once the queue is empty"),
    Reach("queue_name", "attribute", "the sorted set our wait reads the next due time from"),
    Reach("pool", "attribute", "the worker's Redis connection (a property)"),
    Reach("ctx", "attribute", "the dict every job gets: our dependencies (ctx['deps'])"),
    Reach("loop", "attribute", "for the forced-exit timer"),
    Reach("jobs_retried", "attribute", "grows when a job deferred itself (arq's Retry)"),
    Reach("jobs_complete", "attribute", "reported in the worker's health"),
    Reach("jobs_failed", "attribute", "reported in the worker's health"),
)

#: Members of ``arq.cli``: the names its command looks up when it runs.
CLI: tuple[Reach, ...] = (
    Reach("run_worker", "module function", "what `arq <settings>` calls; install() points it at ours"),
    Reach("create_worker", "module function", "what `arq --watch` calls; install() points it at ours"),
)


#: arq's Redis layout, re-exported by app/contract/keys.py, which app/contract/scripts.py (the
#: enqueue script), workers/lease.py (renewing the in-progress key), workers/progress.py,
#: workers/in_order.py (a job's liveness by its job key; re-scoring the next job of a thread in the
#: queue) and app/ops/operations.py read or write directly:
#: ``arq.constants`` name -> the value queued jobs were written with. A new value would orphan
#: jobs queued by the previous release during a rolling deploy.
REDIS_LAYOUT: dict[str, object] = {
    "default_queue_name": "arq:queue",
    "job_key_prefix": "arq:job:",
    "in_progress_key_prefix": "arq:in-progress:",
    "result_key_prefix": "arq:result:",
    "health_check_key_suffix": ":health-check",
    "expires_extra_ms": 86_400_000,
}


def _instance() -> arq.worker.Worker:
    """An arq Worker as its CLI would build one (no connection is made until it runs)."""

    async def noop(ctx: dict[str, Any]) -> None:
        return None

    return arq.worker.Worker(functions=[arq.worker.func(noop, name="noop")], handle_signals=False)


def problems() -> list[str]:
    """What in the installed arq no longer matches :data:`WORKER` and :data:`CLI`, one line per member."""
    found: list[str] = []
    worker = _instance()
    for reach in WORKER:
        where = f"arq.worker.Worker.{reach.name}"
        if reach.kind == "attribute":
            if not hasattr(worker, reach.name):
                found.append(f"{where}: missing ({reach.why})")
            continue
        member = getattr(arq.worker.Worker, reach.name, None)
        if member is None:
            found.append(f"{where}: missing ({reach.why})")
            continue
        is_coroutine = inspect.iscoroutinefunction(member)
        if not callable(member) or is_coroutine != (reach.kind == "coroutine method"):
            found.append(f"{where}: no longer a {reach.kind}")
            continue
        if reach.signature is not None and str(inspect.signature(member)) != reach.signature:
            found.append(
                f"{where}: signature is now {inspect.signature(member)}, we override {reach.signature}"
            )
    for reach in CLI:
        where = f"arq.cli.{reach.name}"
        member = getattr(arq.cli, reach.name, None)
        if not inspect.isfunction(member):
            found.append(f"{where}: missing or not a function ({reach.why})")
            continue
        if list(inspect.signature(member).parameters) != ["settings_cls", "kwargs"]:
            found.append(f"{where}: signature is now {inspect.signature(member)}")
    for name, value in REDIS_LAYOUT.items():
        actual = getattr(arq.constants, name, None)
        if actual != value:
            found.append(f"arq.constants.{name}: is now {actual!r}, queued jobs use {value!r}")
    # The command must look the names up when it runs, not hold references taken at import.
    command: Any = arq.cli.cli.callback
    looked_up = set(command.__code__.co_names) | set(arq.cli.watch_reload.__code__.co_names)
    for reach in CLI:
        if reach.name not in looked_up:
            found.append(f"arq.cli.{reach.name}: the arq command no longer calls it")
    return found


def install(build: Callable[..., arq.worker.Worker]) -> None:
    """Make the ``arq`` command build its worker with ``build(**settings)`` (see the module doc)."""

    def create_worker(settings_cls: Mapping[str, Any], **kwargs: Any) -> arq.worker.Worker:
        # Our WorkerSettings is a dict of Worker's keyword arguments (workers/process.py).
        return build(**{**settings_cls, **kwargs})

    def run_worker(settings_cls: Mapping[str, Any], **kwargs: Any) -> arq.worker.Worker:
        worker = create_worker(settings_cls, **kwargs)
        worker.run()
        return worker

    # By name: the replacement stands for whatever arq.cli imported under it.
    for reach, replacement in zip(CLI, (run_worker, create_worker), strict=True):
        setattr(arq.cli, reach.name, replacement)
