"""structlog set-up shared by both processes: JSON lines in production, console locally.

Standard-library loggers (arq, uvicorn, Bolt) are routed through the same processors so an
operator reads one format.
"""

from __future__ import annotations

import logging
import sys

import structlog

from app.settings import Settings

_HANDLER_NAME = "asklane"


def configure_logging(settings: Settings) -> None:
    """Install structlog and the stdlib bridge according to LOG_LEVEL and LOG_FORMAT."""
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: structlog.types.Processor
    if settings.log_format == "json":
        shared.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer()

    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    handler.set_name(_HANDLER_NAME)
    root = logging.getLogger()
    # Replace only our own handler, so calling this twice (or beside pytest's capture) is safe.
    root.handlers[:] = [h for h in root.handlers if h.get_name() != _HANDLER_NAME] + [handler]
    root.setLevel(settings.log_level)
    # Libraries that log every request at INFO would drown the job events.
    # arq.worker logs each job's arguments (the user's question) at INFO; our job.* events replace it.
    for noisy in (
        "httpx",
        "httpx2",
        "anthropic",
        "slack_sdk",
        "aiohttp.access",
        "uvicorn.access",
        "arq.worker",
    ):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # arq's CLI runs logging.config.dictConfig after import, which disables existing loggers.
    for existing in logging.root.manager.loggerDict.values():
        if isinstance(existing, logging.Logger):
            existing.disabled = False
    for owned in ("arq", "uvicorn", "uvicorn.error", "slack_bolt"):
        lib_logger = logging.getLogger(owned)
        lib_logger.handlers[:] = []
        lib_logger.propagate = True
        # uvicorn and arq set their own levels; LOG_LEVEL (on the root) decides instead.
        lib_logger.setLevel(logging.NOTSET)
