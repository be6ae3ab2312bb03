"""The web process's HTTP edge, before any authentication: header size, time to send a request,
open connections. Against the real server process, as the Procfile starts it."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack

from tests.support.logs import log_events
from tests.support.measures import rss_bytes
from tests.support.processes import WebProcess, is_alive
from tests.support.slack_requests import flood_headers, signature_headers
from tests.support.waiting import wait_until

#: A budget for "the server closed it", far above the 1 s deadline the tests set.
CLOSED_WITHIN_SECONDS = 15.0

#: Header bytes each of four unsigned connections tries to send.
FLOOD_BYTES = 8 * 1024 * 1024


def _connect(web: WebProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", web.port), timeout=CLOSED_WITHIN_SECONDS)


def _read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a reset counts as closed)."""
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def _trickle_until_closed(sock: socket.socket, pieces: Iterator[bytes]) -> bytes:
    """Send ``pieces`` one at a time, each after the server has stayed quiet for a moment, until
    the server closes the connection; returns what it sent back. Fails if it never closes."""
    sock.settimeout(0.1)
    received = b""
    deadline = time.monotonic() + CLOSED_WITHIN_SECONDS
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            try:
                sock.sendall(next(pieces))
            except OSError:
                return received  # reset or broken pipe: closed
            continue
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk
    raise AssertionError(f"the server kept a trickling connection open {CLOSED_WITHIN_SECONDS} s")


def _forever(piece: bytes) -> Iterator[bytes]:
    while True:
        yield piece


def _refused_as_slow(web: WebProcess) -> list[str]:
    return [
        event["reason"]
        for event in log_events(web.log(), "security.request_refused")
        if event["status"] == 408
    ]


def test_oversized_headers_are_refused_and_memory_stays_bounded(
    start_web: Callable[..., WebProcess],
) -> None:
    web = start_web()
    before = rss_bytes(web.process.pid)
    peak = before
    flooding = True

    def sample() -> None:
        nonlocal peak
        while flooding:
            peak = max(peak, rss_bytes(web.process.pid))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    sent: list[int] = []
    try:
        floods = [
            threading.Thread(target=lambda: sent.append(flood_headers(web.port, FLOOD_BYTES)))
            for _ in range(4)
        ]
        for flood in floods:
            flood.start()
        for flood in floods:
            flood.join()
    finally:
        flooding = False
        sampler.join()

    # Each connection was cut off before its headers were all in.
    assert max(sent) < FLOOD_BYTES, sent
    assert peak - before < 20 * 1024 * 1024, f"RSS {before >> 20} MB -> {peak >> 20} MB"
    assert is_alive(web.url)


def test_headers_trickling_past_the_deadline_get_408_and_the_connection_closed(
    start_web: Callable[..., WebProcess],
) -> None:
    web = start_web(HTTP_REQUEST_TIMEOUT_SECONDS="1")

    with _connect(web) as sock:
        sock.sendall(b"POST /slack/events HTTP/1.1\r\nHost: asklane\r\n")
        answer = _trickle_until_closed(sock, _forever(b"X-Slow: 1\r\n"))

    # A reset may swallow the answer while the client is still sending; the log line is certain.
    assert answer in (b"", b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n")
    assert wait_until(lambda: _refused_as_slow(web)) == ["request headers too slow"]


def test_headers_that_stop_coming_get_408(start_web: Callable[..., WebProcess]) -> None:
    web = start_web(HTTP_REQUEST_TIMEOUT_SECONDS="1")

    with _connect(web) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: asklane\r\n")
        answer = _read_until_closed(sock)

    assert answer.startswith(b"HTTP/1.1 408 ")


def test_a_body_trickling_past_the_deadline_gets_408_and_the_connection_closed(
    start_web: Callable[..., WebProcess],
) -> None:
    web = start_web(HTTP_REQUEST_TIMEOUT_SECONDS="1")
    body = b"text=" + b"a" * 1000
    headers = {**signature_headers(body), "Content-Length": str(len(body)), "Host": "asklane"}
    head = "POST /slack/events HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())

    with _connect(web) as sock:
        sock.sendall(head.encode() + b"\r\n")
        answer = _trickle_until_closed(sock, iter([body[n : n + 1] for n in range(len(body))]))

    assert answer == b"" or answer.startswith(b"HTTP/1.1 408 ")
    assert wait_until(lambda: _refused_as_slow(web)) == ["request body too slow"]


def test_a_body_the_app_does_not_read_cannot_hold_the_connection_open(
    start_web: Callable[..., WebProcess],
) -> None:
    web = start_web(HTTP_REQUEST_TIMEOUT_SECONDS="1")

    with _connect(web) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: asklane\r\nContent-Length: 100000\r\n\r\n")
        answer = _trickle_until_closed(sock, _forever(b"a"))

    assert answer.startswith(b"HTTP/1.1 200 ")


def test_connections_beyond_the_limit_get_503_and_are_closed(
    start_web: Callable[..., WebProcess],
) -> None:
    web = start_web(HTTP_MAX_CONNECTIONS="3", HTTP_REQUEST_TIMEOUT_SECONDS="60")

    with ExitStack() as held:
        idle = [held.enter_context(_connect(web)) for _ in range(3)]
        with _connect(web) as extra:
            refused = _read_until_closed(extra)
        assert refused.startswith(b"HTTP/1.1 503 ")
        assert len(log_events(web.log(), "web.connections_refused")) == 1

        idle[0].close()
        # Once the server has seen one go, a new connection is served again.
        wait_until(lambda: is_alive(web.url))


def test_a_client_leaving_mid_body_is_one_log_line_and_no_traceback(
    start_web: Callable[..., WebProcess],
) -> None:
    web = start_web()
    body = b"text=" + b"a" * 1000
    headers = {**signature_headers(body), "Content-Length": str(len(body)), "Host": "asklane"}
    head = "POST /slack/events HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())

    with _connect(web) as sock:
        sock.sendall(head.encode() + b"\r\n" + body[:100])

    [disconnected] = wait_until(lambda: log_events(web.log(), "web.client_disconnected"))
    assert disconnected["level"] == "info"
    assert "Traceback" not in web.log()
    assert "Exception in ASGI application" not in web.log()
