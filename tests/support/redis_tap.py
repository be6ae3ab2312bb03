"""A TCP proxy in front of a real redis-server that can act between a command and its reply.

It makes a race deterministic: "another client writes after Redis ran this command and before
its caller saw the answer" is exactly the window a read-then-write leaves open.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Self


class RedisTap:
    """Forwards loopback connections to Redis on ``upstream_port``."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._armed: tuple[Callable[[bytes], bool], Callable[[], None]] | None = None
        self._lock = threading.Lock()
        self.fired = threading.Event()

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("tap did not start")
        return self

    def stop(self) -> None:
        """Close every proxied connection, then the loop, so no task is left pending."""

        async def close_connections() -> None:
            others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in others:
                task.cancel()
            if others:
                await asyncio.wait(others, timeout=5)

        asyncio.run_coroutine_threadsafe(close_connections(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def before_reply(self, matches: Callable[[bytes], bool], action: Callable[[], None]) -> None:
        """Once: when a command sent through the tap ``matches``, run ``action`` after Redis has
        answered it and before its caller gets the answer."""
        with self._lock:
            self._armed = (matches, action)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        pending: list[Callable[[], None]] = []

        async def commands() -> None:
            while chunk := await reader.read(65536):
                with self._lock:
                    if self._armed is not None and self._armed[0](chunk):
                        pending.append(self._armed[1])
                        self._armed = None
                upstream_writer.write(chunk)
                await upstream_writer.drain()
            upstream_writer.close()

        async def replies() -> None:
            while chunk := await upstream_reader.read(65536):
                while pending:
                    pending.pop()()
                    self.fired.set()
                writer.write(chunk)
                await writer.drain()
            writer.close()

        await asyncio.gather(commands(), replies(), return_exceptions=True)
