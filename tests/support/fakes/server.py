"""Run an aiohttp application on a free loopback port in a background thread."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Self

from aiohttp import web


@dataclass
class Reply:
    """One scripted answer. ``action`` "drop" closes the connection; "hang" never answers; "hold"
    answers once the test calls :meth:`FakeServer.release`."""

    status: int = 200
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    action: str = "reply"


@dataclass
class Request:
    """A request the fake received."""

    path: str
    #: Header names lower-cased.
    headers: dict[str, str]
    body: Any
    at: float
    reply: Reply

    @property
    def accepted(self) -> bool:
        """True when the fake answered 2xx (and, for Slack's Web API, ``ok: true``)."""
        if self.reply.action != "reply" or not 200 <= self.reply.status < 300:
            return False
        return not isinstance(self.reply.json, dict) or self.reply.json.get("ok", True) is True


class FakeServer:
    """Base class: subclasses add routes in ``routes`` and record what arrives."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        #: Requests being answered right now, and the most there ever were at once.
        self.in_flight = 0
        self.max_in_flight = 0
        self._scripts: dict[str, list[Reply]] = {}
        self._faults: dict[str, tuple[float, tuple[Reply, ...]]] = {}
        self._rng = random.Random(0)
        self._released = asyncio.Event()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.port = 0

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake server did not start")
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self._scripts.clear()
            self._faults.clear()
            self.in_flight = self.max_in_flight = 0
            self._released = asyncio.Event()

    def release(self) -> None:
        """Let every "hold" reply, now and later, answer."""
        self._loop.call_soon_threadsafe(self._released.set)

    def script(self, kind: str, *replies: Reply) -> None:
        """Queue replies for requests of ``kind``; once used up, the default reply applies."""
        with self._lock:
            self._scripts.setdefault(kind, []).extend(replies)

    def inject_faults(self, kind: str, rate: float, faults: Sequence[Reply], *, seed: int = 0) -> None:
        """Answer this fraction of unscripted requests of ``kind`` with one of ``faults``, picked at
        random from a seeded generator, so a failing run can be repeated."""
        with self._lock:
            self._faults[kind] = (rate, tuple(faults))
            self._rng = random.Random(seed)

    def next_reply(self, kind: str) -> Reply | None:
        with self._lock:
            queue = self._scripts.get(kind)
            if queue:
                return queue.pop(0)
            rate, faults = self._faults.get(kind, (0.0, ()))
            if faults and self._rng.random() < rate:
                return self._rng.choice(faults)
            return None

    def record(self, path: str, headers: Any, body: Any, reply: Reply) -> None:
        with self._lock:
            self.requests.append(
                Request(path, {k.lower(): v for k, v in headers.items()}, body, time.monotonic(), reply)
            )

    def received(self, prefix: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.path.startswith(prefix)]

    def wait_for(self, prefix: str, count: int = 1, timeout: float = 20.0) -> list[Request]:
        """Block until at least ``count`` requests under ``prefix`` arrived; return them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.received(prefix)
            if len(got) >= count:
                return got
            time.sleep(0.02)
        raise AssertionError(f"expected {count} request(s) to {prefix}, got {len(self.received(prefix))}")

    async def respond(self, request: web.Request, reply: Reply) -> web.StreamResponse:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if reply.delay:
                await asyncio.sleep(reply.delay)
            if reply.action == "hold":
                await self._released.wait()
            if reply.action == "hang":
                await asyncio.sleep(3600)
            if reply.action == "drop":
                assert request.transport is not None
                request.transport.abort()
                raise asyncio.CancelledError
            return web.json_response(reply.json, status=reply.status, headers=reply.headers)
        finally:
            self.in_flight -= 1

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        self.routes(app)
        runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())
