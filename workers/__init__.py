"""asklane worker process. ``arq workers.WorkerSettings`` starts a worker.

WorkerSettings is built on first access rather than at import, so the job modules can be
imported (by tests, by tools) without a complete environment.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "WorkerSettings":
        from app.contract.settings import load_settings
        from workers import arq_reach
        from workers.loop import AsklaneWorker
        from workers.process import worker_settings

        arq_reach.install(AsklaneWorker)
        return worker_settings(load_settings())
    raise AttributeError(f"module 'workers' has no attribute {name!r}")
