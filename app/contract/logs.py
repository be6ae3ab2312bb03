"""structlog set-up shared by both processes: JSON lines in production, console locally.

Standard-library loggers (arq, uvicorn, Bolt) are routed through the same processors so an
operator reads one format.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any

import structlog

from app.contract.settings import Settings

_HANDLER_NAME = "asklane"

REDACTED = "[redacted]"

#: Credentials recognisable by their shape, wherever they come from: Slack bot, user and app
#: tokens, Anthropic keys, and the password in a redis:// (or any scheme's) URL.
_SECRET_SHAPES = re.compile(
    r"(?:xox(?:e\.xox)?[a-z]-[0-9A-Za-z-]+)|(?:xapp-[0-9A-Za-z-]+)|(?:sk-ant-[0-9A-Za-z_-]+)"
)
_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s/]+@", re.IGNORECASE)


class SecretRedactor:
    """structlog processor: removes credentials from every string in an event, tracebacks included.

    Our own secrets are removed by value (a signing secret has no recognisable shape); any other
    token, key or URL password by its shape.
    """

    def __init__(self, secrets: Iterable[str]) -> None:
        # Short values would redact ordinary words; real secrets are long.
        self._secrets = sorted((s for s in secrets if len(s) >= 8), key=len, reverse=True)

    def __call__(self, logger: Any, method: str, event: MutableMapping[str, Any]) -> dict[str, Any]:
        return {key: self._clean(value) for key, value in event.items()}

    def _clean(self, value: Any) -> Any:
        if isinstance(value, str):
            for secret in self._secrets:
                value = value.replace(secret, REDACTED)
            value = _SECRET_SHAPES.sub(REDACTED, value)
            return _URL_PASSWORD.sub(rf"\1{REDACTED}@", value)
        if isinstance(value, dict):
            return {key: self._clean(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [self._clean(item) for item in value]
        return value


def _secrets_of(settings: Settings) -> list[str]:
    secrets = [
        settings.slack_signing_secret.get_secret_value(),
        settings.slack_bot_token.get_secret_value(),
        settings.anthropic_api_key.get_secret_value(),
    ]
    password = re.search(r"://[^:/@]*:([^@/]+)@", settings.redis_url)
    if password:
        secrets.append(password.group(1))
    return secrets


def configure_logging(settings: Settings) -> None:
    """Install structlog and the stdlib bridge according to LOG_LEVEL and LOG_FORMAT."""
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        # Tracebacks become text here, so the redactor below sees them too.
        structlog.processors.format_exc_info,
        SecretRedactor(_secrets_of(settings)),
    ]
    renderer: structlog.types.Processor
    if settings.log_format == "json":
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
