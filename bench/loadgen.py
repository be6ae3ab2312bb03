"""Open-loop load generator for bench/load.py, run as its own process.

It builds every signed slash-command request (raw HTTP/1.1 bytes) before the clock starts, then
sends request ``i`` at ``start + i / rate`` over a pool of keep-alive connections, whatever the
answers before it are doing, and reads each answer. Latency is measured from the moment a request
is written to the last byte of its answer; how late each request went out (the client waking
late, or all connections busy with slow answers) is reported beside it, so neither hides in the
other. Bounded: it stops sending after ``--seconds`` and waits at most 30 s for answers.

Prints one JSON object: sent, answered, errors, unavailable, latencies and lateness (ms), achieved
rate.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import sys
import time
import uuid
from urllib.parse import urlencode

WORKING = b"Working on it"
UNAVAILABLE = b"temporarily unavailable"


def build_requests(args: argparse.Namespace, count: int) -> list[bytes]:
    """Raw signed requests, each a distinct command (its own trigger_id and user)."""
    timestamp = str(int(time.time()))
    requests = []
    for n in range(count):
        body = urlencode(
            {
                "token": "deprecated-verification-token",
                "team_id": "T0LOAD",
                "channel_id": "C0LOAD",
                "user_id": f"U{n % 5000:05d}",
                "command": "/ask",
                "text": f"{args.label} question {n}",
                "api_app_id": "A0APP",
                "response_url": f"{args.response_prefix}{args.label}-{n}",
                "trigger_id": f"{time.time_ns()}.{n}.{uuid.uuid4().hex}",
            }
        ).encode()
        signed = f"v0:{timestamp}:".encode() + body
        digest = hmac.new(args.secret.encode(), signed, hashlib.sha256).hexdigest()
        head = (
            f"POST /slack/events HTTP/1.1\r\nHost: 127.0.0.1:{args.port}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(body)}\r\nX-Slack-Request-Timestamp: {timestamp}\r\n"
            f"X-Slack-Signature: v0={digest}\r\n\r\n"
        )
        requests.append(head.encode() + body)
    return requests


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    return status, await reader.readexactly(length)


async def run(args: argparse.Namespace) -> dict[str, object]:
    count = int(args.rate * args.seconds)
    requests = build_requests(args, count)
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(args.connections):
        pool.put_nowait(await asyncio.open_connection("127.0.0.1", args.port))

    latencies: list[float] = []
    lateness: list[float] = []
    errors: list[str] = []
    unavailable = 0
    # perf_counter, not loop.time(): uvloop's clock moves in whole milliseconds.
    clock = time.perf_counter

    async def one(request: bytes, scheduled: float) -> None:
        nonlocal unavailable
        reader, writer = await pool.get()
        started = clock()
        # How late the request went out: the client waking late, or every connection busy
        # with slower answers. Reported apart, so neither hides in the other.
        lateness.append((started - scheduled) * 1000)
        try:
            writer.write(request)
            status, body = await read_response(reader)
        except (OSError, asyncio.IncompleteReadError, ValueError) as error:
            errors.append(f"{type(error).__name__}: {error}")
            writer.close()
            pool.put_nowait(await asyncio.open_connection("127.0.0.1", args.port))
            return
        latencies.append((clock() - started) * 1000)
        pool.put_nowait((reader, writer))
        if UNAVAILABLE in body:
            unavailable += 1
        if status != 200 or WORKING not in body:
            errors.append(f"status {status}: {body[:120]!r}")

    tasks = []
    start = clock() + 0.2
    for n, request in enumerate(requests):
        scheduled = start + n / args.rate
        delay = scheduled - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(request, scheduled)))
    sending_took = clock() - start
    _, pending = await asyncio.wait(tasks, timeout=30)
    for task in pending:
        task.cancel()
    return {
        "sent": count,
        "answered": len(latencies),
        "errors": len(errors) + len(pending),
        "first_errors": errors[:5],
        "unavailable": unavailable,
        "achieved_rate": count / sending_took if sending_took > 0 else 0.0,
        "latencies_ms": latencies,
        "lateness_ms": lateness,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--response-prefix", required=True)
    parser.add_argument("--label", default="load")
    args = parser.parse_args()
    try:
        import uvloop  # the client must not be the bottleneck

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(run(args))
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
