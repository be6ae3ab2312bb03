"""The web process: a Starlette ASGI app serving Slack requests and a health check.

Run with ``uvicorn app.main:create_app --factory``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from slack_bolt.adapter.starlette.async_handler import AsyncSlackRequestHandler
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.events import JobEvents
from app.logs import configure_logging
from app.queue import open_redis, redis_answers
from app.settings import Settings, load_settings
from app.slack_app import build_bolt_app

log = structlog.get_logger(__name__)


def create_app(settings: Settings | None = None, events: JobEvents | None = None) -> Starlette:
    """Build the ASGI app; with no settings given, read them from the environment.

    ``events`` lets the caller subscribe hooks (``job.enqueued``) before requests arrive.
    """
    settings = settings or load_settings()
    configure_logging(settings)
    redis = open_redis(settings)
    slack = AsyncSlackRequestHandler(build_bolt_app(settings, redis, events or JobEvents()))

    async def slack_events(request: Request) -> Response:
        return await slack.handle(request)

    async def healthz(request: Request) -> Response:
        if await redis_answers(redis):
            return JSONResponse({"status": "ok", "redis": "ok"})
        return JSONResponse({"status": "unavailable", "redis": "unreachable"}, status_code=503)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        log.info("web.started", command=settings.slack_command)
        yield
        await redis.aclose()
        log.info("web.stopped")

    return Starlette(
        routes=[
            Route("/slack/events", slack_events, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
