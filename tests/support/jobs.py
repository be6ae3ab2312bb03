"""Jobs in this process: queue one as the web would, look at the queue, and drain it with a real
worker (the same AsklaneWorker ``arq workers.WorkerSettings`` runs)."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TypeVar

import pytest
import redis
from arq.connections import ArqRedis
from arq.worker import Worker

from app.contract import keys
from app.contract.events import ALL, Hook, JobEvents
from app.contract.job import AskJob
from app.contract.jobs import JobBase, parse_job
from app.contract.queue import enqueue_ask, open_redis
from app.contract.settings import Settings
from workers.kinds import JobKind
from workers.loop import AsklaneWorker
from workers.process import worker_settings

DRAIN_TIMEOUT_SECONDS = 90

T = TypeVar("T")


def in_redis(settings: Settings, work: Callable[[ArqRedis], Awaitable[T]]) -> T:
    """Run ``work`` with the client a process opens (app/contract/queue.py), from sync test code;
    returns what it returns."""

    async def run() -> T:
        client = open_redis(settings)
        try:
            return await work(client)
        finally:
            await client.aclose()

    return asyncio.run(run())


def enqueue(settings: Settings, *jobs: JobBase) -> None:
    """Queue ``jobs`` in this order as the web process does (the contract's enqueue, which also
    enters a job in its in-order group)."""

    async def run(redis: ArqRedis) -> None:
        for job in jobs:
            assert await enqueue_ask(redis, job)

    in_redis(settings, run)


def enqueue_stamped(settings: Settings, client: redis.Redis, job: AskJob, *, redis_age: float | None) -> None:
    """Queue ``job`` as the web would, stamped ``redis_age`` seconds ago on Redis's clock (no
    stamp at all when None, as a release before the stamp queued it)."""

    async def enqueue() -> None:
        arq_redis = open_redis(settings)
        assert await enqueue_ask(arq_redis, job)
        await arq_redis.aclose()

    asyncio.run(enqueue())
    key = keys.enqueued_at_key(job.job_id)
    if redis_age is None:
        client.delete(key)
    else:
        seconds, micros = client.time()
        client.set(key, int(seconds * 1000 + micros // 1000 - redis_age * 1000), px=3_600_000)


def queued_job_ids(client: redis.Redis) -> list[str]:
    """Ids of the jobs waiting in arq's default queue."""
    return [member.decode() for member in client.zrange(keys.QUEUE_KEY, 0, -1)]


def queued_jobs(client: redis.Redis) -> list[JobBase]:
    """The jobs waiting in arq's default queue, as the contract reads them, in queue order."""
    return [
        parse_job(json.loads(client.get(keys.job_key(job_id)) or b"{}")["a"][0])
        for job_id in queued_job_ids(client)
    ]


#: Longest a test waits for running jobs to end before closing their worker.
SETTLE_SECONDS = 15.0


def drain(
    settings: Settings, *, events: JobEvents | None = None, kinds: Mapping[str, JobKind] | None = None
) -> Worker:
    """Run a real worker in this process until the queue (retries included) is empty.

    Bounded, so a worker that never drains fails the test instead of hanging the whole run, and
    the failure shows where every task of the loop was waiting.
    """
    return drain_together(settings, [events or JobEvents()], kinds=kinds)[0]


def drain_together(
    settings: Settings,
    events: Sequence[JobEvents],
    *,
    kinds: Mapping[str, JobKind] | None = None,
) -> list[Worker]:
    """Run one real worker per JobEvents in ``events``, side by side on one event loop in this
    process, until the queue (retries included) is empty; bounded as :func:`drain` is.

    Each worker has its own events (its start-up subscribes its metrics recorder to them), its
    own rate limiter and WORKER_CONCURRENCY slots, as separate worker processes would.
    """

    async def run() -> list[Worker]:
        workers = [
            AsklaneWorker(**worker_settings(settings, each, kinds), burst=True, handle_signals=False)
            for each in events
        ]
        try:
            await asyncio.wait_for(
                asyncio.gather(*(worker.async_run() for worker in workers)), DRAIN_TIMEOUT_SECONDS
            )
        except TimeoutError:
            pytest.fail(f"workers did not drain in {DRAIN_TIMEOUT_SECONDS} s; tasks:\n{task_stacks()}")
        finally:
            for worker in workers:
                await asyncio.wait_for(worker.close(), 10)
        return workers

    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(run())
    finally:
        # asyncio.run would wait unboundedly for leftover tasks to take their cancellation.
        leftovers = [task for task in asyncio.all_tasks(loop) if not task.done()]
        for task in leftovers:
            task.cancel()
        if leftovers:
            _, stuck = loop.run_until_complete(asyncio.wait(leftovers, timeout=10))
            assert not stuck, f"tasks ignored cancellation:\n{task_stacks(loop)}"
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def recording(hook: Hook, count: int = 1) -> list[JobEvents]:
    """``count`` JobEvents (one per worker) that each pass every event to ``hook``."""
    events = [JobEvents() for _ in range(count)]
    for each in events:
        each.subscribe(ALL, hook)
    return events


async def until_jobs_settle(*workers: Worker) -> None:
    """Wait (at most SETTLE_SECONDS) until the jobs ``workers`` are running end. Closing a worker
    cancels its running jobs, so a test that closes one as soon as it saw the answer could cut the
    job off while arq records it finished."""
    running = [task for worker in workers for task in worker.tasks.values() if not task.done()]
    if running:
        await asyncio.wait(running, timeout=SETTLE_SECONDS)


def task_stacks(loop: asyncio.AbstractEventLoop | None = None) -> str:
    out = io.StringIO()
    for task in asyncio.all_tasks(loop):
        task.print_stack(file=out)
    return out.getvalue()
