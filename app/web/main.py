"""The web process: a Starlette ASGI app serving Slack requests and a health check.

Served by ``python -m app.web.serve`` (the Procfile's web command), which bounds the HTTP edge.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from prometheus_client import CONTENT_TYPE_LATEST
from redis.exceptions import RedisError
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.adapter.starlette.async_handler import to_starlette_response
from slack_bolt.async_app import AsyncBoltRequest
from slack_bolt.context.async_context import AsyncBoltContext
from slack_bolt.request.async_internals import build_async_context
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from app.contract import metrics
from app.contract.events import JobEvents
from app.contract.logs import configure_logging
from app.contract.queue import ENQUEUE_TIMEOUT_SECONDS, open_redis, redis_accepts_writes
from app.contract.settings import Settings, load_settings
from app.web.gate import Refused, check_body, check_slack_request, parsed_body, read_body, single_valued
from app.web.slack_app import build_bolt_app

log = structlog.get_logger(__name__)

_CLOSE = {"connection": "close"}


def bearer_token(authorization: str) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None for any other header.

    As HTTP says: the scheme is case-insensitive and required, and one or more spaces part it
    from the token.
    """
    scheme, _, token = authorization.strip().partition(" ")
    token = token.lstrip(" ")
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token


def create_app(settings: Settings | None = None, events: JobEvents | None = None) -> Starlette:
    """Build the ASGI app; with no settings given, read them from the environment.

    ``events`` lets the caller subscribe hooks (``job.enqueued``) before requests arrive.
    """
    settings = settings or load_settings()
    configure_logging(settings)
    redis = open_redis(settings)
    bolt = build_bolt_app(settings, redis, events or JobEvents())
    signing_secret = settings.slack_signing_secret.get_secret_value()

    async def slack_events(request: Request) -> Response:
        try:
            # Bolt is handed exactly the headers the gate checked.
            headers = single_valued(request.headers.raw)
            body = await read_body(request, settings.http_request_timeout_seconds)
            content_type = check_slack_request(body, headers, signing_secret)
            check_body(body, content_type)
        except Refused as refused:
            log.warning(
                "security.request_refused",
                status=refused.status,
                reason=refused.reason,
                client=request.client.host if request.client else None,
            )
            metrics.count_soon(redis, "asklane_requests_refused", status=str(refused.status))
            # A refused body may still be arriving; closing is cheaper than reading it.
            return PlainTextResponse(refused.reason, status_code=refused.status, headers=_CLOSE)
        except ClientDisconnect:
            # The client went away mid-body: nobody is left to answer, and nothing was queued.
            log.info("web.client_disconnected", client=request.client.host if request.client else None)
            return Response(status_code=400)
        # Slack percent-encodes a form, so it is ASCII, and a JSON body was decoded above: stray
        # bytes cannot fail the decode. Bolt gets the content type as the gate read it (Bolt
        # compares it as written, "Application/JSON" included).
        verified = AsyncBoltRequest(
            body=body.decode("utf-8", errors="replace"),
            query=str(request.url.query),
            headers={key: [value] for key, value in {**headers, "content-type": content_type}.items()},
        )
        # The body as the gate read it (app/web/gate.py's parsed_body): Bolt's parser takes any
        # form mentioning "payload" for a click, even a command asking about one.
        verified.body = parsed_body(body, content_type)
        verified.context = build_async_context(AsyncBoltContext({}), verified.body)
        return to_starlette_response(await bolt.async_dispatch(verified))

    async def healthz(request: Request) -> Response:
        # Liveness: the process answers. A Redis outage must not get a healthy web process
        # restarted; it keeps acking with "temporarily unavailable".
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        # Readiness: a command sent now would be queued. A PING is answered by a Redis that
        # refuses every write (maxmemory reached with noeviction, a read-only replica), so the
        # probe writes.
        if await redis_accepts_writes(redis):
            return JSONResponse({"status": "ready", "redis": "ok"})
        return JSONResponse({"status": "unavailable", "redis": "refusing writes"}, status_code=503)

    metrics_token = settings.metrics_token.get_secret_value() if settings.metrics_token else None

    async def prometheus(request: Request) -> Response:
        if metrics_token is not None:
            given = bearer_token(request.headers.get("authorization", ""))
            if given is None or not hmac.compare_digest(given.encode(), metrics_token.encode()):
                return PlainTextResponse("unauthorized", status_code=401)
        # Every process's counts live in Redis (app/contract/metrics.py); without Redis there is nothing
        # true to report.
        try:
            async with asyncio.timeout(ENQUEUE_TIMEOUT_SECONDS):
                body = await metrics.render(redis)
        except (RedisError, OSError, TimeoutError):
            return PlainTextResponse("redis unreachable", status_code=503)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # With an app-level token, Slack sends commands over a WebSocket this process opens (no
        # public URL needed); the HTTP endpoint stays up beside it. Built here: its aiohttp
        # session needs the running loop.
        socket_mode = None
        if settings.slack_app_token is not None:
            socket_mode = AsyncSocketModeHandler(bolt, settings.slack_app_token.get_secret_value())
            await socket_mode.connect_async()  # type: ignore[no-untyped-call]
        log.info("web.started", command=settings.slack_command, socket_mode=socket_mode is not None)
        yield
        if socket_mode is not None:
            await socket_mode.close_async()  # type: ignore[no-untyped-call]
        await redis.aclose()
        log.info("web.stopped")

    return Starlette(
        routes=[
            Route("/slack/events", slack_events, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", prometheus, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
