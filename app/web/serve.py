"""The web process's entry point (the Procfile's ``web``): uvicorn with a bounded HTTP edge.

uvicorn's defaults leave the edge open before any authentication: its httptools parser buffers
request headers without limit (four connections sending 130 MB of headers took the process to
565 MB), and nothing bounds how long a client may take to send a request, so slow senders hold
connections forever. Here:

- headers are parsed by h11, which refuses (400, connection closed) a request whose headers pass
  MAX_HEADER_BYTES;
- each request's headers, and then its body, must arrive within HTTP_REQUEST_TIMEOUT_SECONDS,
  else 408 and the connection is closed (the app refuses a slow body itself, with its usual log
  line; the server closes whatever the app does not read);
- at most HTTP_MAX_CONNECTIONS connections are open; one more is answered 503 and closed before
  a byte of it is read.

Run: ``python -m app.web.serve --host 0.0.0.0 --port $PORT``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import Any, ClassVar, Literal

import h11
import structlog
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from app.contract.settings import Settings, load_settings
from app.web.main import create_app

log = structlog.get_logger(__name__)

#: Request line plus headers. Slack's are about 1 KB; h11's own default is the same 16 KB.
MAX_HEADER_BYTES = 16 * 1024

#: Heroku sends SIGKILL 30 s after SIGTERM; requests in flight get this long to finish.
GRACEFUL_SHUTDOWN_SECONDS = 10

#: After answering, an idle connection is kept this long for the client's next request.
KEEP_ALIVE_SECONDS = 5

#: The server closes a body the app has not finished reading this long after the app's own
#: deadline, so the app's 408 goes out first.
BODY_BACKSTOP_SECONDS = 1.0

_TOO_MANY = b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
_TOO_SLOW = b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a connection limit and a deadline on reading each request.

    Configured through class attributes (uvicorn builds one protocol object per connection);
    :func:`bounded_protocol` makes a subclass holding a deployment's limits.
    """

    max_connections: ClassVar[int] = 100
    request_timeout: ClassVar[float] = 5.0
    #: True while connections are being refused, so a flood logs once, not once a connection.
    refusing: ClassVar[bool] = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._awaiting: Literal["headers", "body"] | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            # Out of the count at once: a burst of refused connections must not keep the count
            # up until their close callbacks run.
            self.connections.discard(self)
            if not BoundedH11Protocol.refusing:
                BoundedH11Protocol.refusing = True
                log.warning("web.connections_refused", max_connections=self.max_connections)
            transport.write(_TOO_MANY)
            transport.close()
            return
        BoundedH11Protocol.refusing = False
        self._follow_request()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._follow_request()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow_request()

    def _follow_request(self) -> None:
        """Keep one deadline for what the client owes now: the next request's headers, or the
        body of the current one. Data arriving does not extend it, so trickling does not help."""
        if self.transport.is_closing():
            self._disarm()
            return
        state = self.conn.their_state
        awaiting: Literal["headers", "body"] | None
        awaiting = "headers" if state is h11.IDLE else "body" if state is h11.SEND_BODY else None
        if awaiting == self._awaiting:
            return
        self._disarm()
        if awaiting is not None:
            delay = self.request_timeout + (BODY_BACKSTOP_SECONDS if awaiting == "body" else 0)
            self._deadline = self.loop.call_later(delay, self._overdue)
            self._awaiting = awaiting

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline, self._awaiting = None, None

    def _overdue(self) -> None:
        awaiting, self._deadline, self._awaiting = self._awaiting, None, None
        if self.transport.is_closing():
            return
        buffered, _ = self.conn.trailing_data
        if awaiting == "headers" and not buffered:
            # An idle connection between requests, not a slow one: close it without a word.
            self.transport.close()
            return
        log.warning(
            "security.request_refused",
            status=408,
            reason=f"request {awaiting} too slow",
            client=self.client[0] if self.client else None,
        )
        if awaiting == "headers":
            # No request was read, so h11 cannot frame a response; the bytes are fixed.
            self.transport.write(_TOO_SLOW)
        self.transport.close()


def bounded_protocol(settings: Settings) -> type[BoundedH11Protocol]:
    """BoundedH11Protocol with the limits of ``settings``."""

    class Configured(BoundedH11Protocol):
        max_connections = settings.http_max_connections
        request_timeout = settings.http_request_timeout_seconds

    return Configured


def server_config(settings: Settings, host: str, port: int) -> uvicorn.Config:
    """The uvicorn configuration of the web process."""
    return uvicorn.Config(
        create_app(settings),
        host=host,
        port=port,
        http=bounded_protocol(settings),
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        # Nothing here serves WebSockets (Socket Mode connects out); an upgrade stays plain HTTP.
        ws="none",
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        access_log=False,
        # create_app has set up logging (structlog, uvicorn's loggers included); uvicorn's own
        # dictConfig would replace it.
        log_config=None,
        lifespan="on",
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m app.web.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (Heroku: 0.0.0.0)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    args = parser.parse_args(argv)
    uvicorn.Server(server_config(load_settings(), args.host, args.port)).run()


if __name__ == "__main__":
    main()
