"""The arq internals the worker relies on (workers/arq_reach.py) are still what we expect, and
``arq workers.WorkerSettings`` builds our worker without replacing arq's Worker class."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import arq.cli
import arq.constants
import arq.worker
import pytest

import workers
from workers import arq_reach
from workers.loop import AsklaneWorker


def test_every_arq_internal_the_worker_relies_on_is_still_there() -> None:
    # On failure, each line names the member and what changed: upgrade arq only after fixing it.
    assert arq_reach.problems() == []


def test_every_arq_method_the_worker_overrides_is_listed() -> None:
    listed = {reach.name for reach in arq_reach.WORKER}
    overridden = {
        name
        for name, member in vars(AsklaneWorker).items()
        if callable(member) and hasattr(arq.worker.Worker, name) and name != "__init__"
    }
    assert overridden - listed == set()


def _renamed(name: str) -> Callable[[pytest.MonkeyPatch], None]:
    return lambda monkeypatch: monkeypatch.delattr(arq.worker.Worker, name)


def _made_sync(name: str) -> Callable[[pytest.MonkeyPatch], None]:
    return lambda monkeypatch: monkeypatch.setattr(arq.worker.Worker, name, lambda self: None)


def _resigned(name: str) -> Callable[[pytest.MonkeyPatch], None]:
    async def changed(self: Any, job_ids: list[bytes], extra: int = 0) -> None:
        return None

    return lambda monkeypatch: monkeypatch.setattr(arq.worker.Worker, name, changed)


def _cli_function_gone(name: str) -> Callable[[pytest.MonkeyPatch], None]:
    return lambda monkeypatch: monkeypatch.delattr(arq.cli, name)


@pytest.mark.parametrize(
    ("change", "member", "complaint"),
    [
        (_renamed("_poll_iteration"), "arq.worker.Worker._poll_iteration", "missing"),
        (_made_sync("record_health"), "arq.worker.Worker.record_health", "no longer a coroutine method"),
        (_resigned("start_jobs"), "arq.worker.Worker.start_jobs", "signature is now"),
        (_cli_function_gone("run_worker"), "arq.cli.run_worker", "missing"),
        (
            lambda monkeypatch: monkeypatch.setattr(arq.constants, "in_progress_key_prefix", "arq:running:"),
            "arq.constants.in_progress_key_prefix",
            "is now 'arq:running:'",
        ),
    ],
)
def test_a_changed_arq_internal_is_reported_by_name(
    monkeypatch: pytest.MonkeyPatch,
    change: Callable[[pytest.MonkeyPatch], None],
    member: str,
    complaint: str,
) -> None:
    change(monkeypatch)

    [problem] = arq_reach.problems()

    assert problem.startswith(f"{member}: {complaint}")


def test_the_arq_command_builds_our_worker_and_leaves_arqs_class_alone(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # install() rebinds these two names; put arq's back after the test.
    monkeypatch.setattr(arq.cli, "run_worker", arq.cli.run_worker)
    monkeypatch.setattr(arq.cli, "create_worker", arq.cli.create_worker)
    original = arq.worker.Worker

    settings = workers.WorkerSettings
    worker = arq.cli.create_worker(settings, burst=True, handle_signals=False)

    assert type(worker) is AsklaneWorker
    assert worker.burst
    assert arq.worker.Worker is original
    assert "job_completion_wait" in inspect.signature(arq.worker.Worker).parameters
