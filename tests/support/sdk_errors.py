"""Anthropic's failures as the SDK raises them (an ``APIStatusError`` over a response to a Messages
request), for the table tests of what each one means to a job (workers/ai.py)."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx2

#: The request the failures answer.
REQUEST = httpx2.Request("POST", "https://api.anthropic.com/v1/messages")


def error_body(kind: str, error_code: str | None = None) -> dict[str, Any]:
    """An error body as Anthropic sends it."""
    body: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": f"fake {kind}"}}
    if error_code:
        body["error"]["details"] = {"error_code": error_code}
    return body


def status_error(
    status: int, body: object, headers: dict[str, str] | None = None, *, cls: type = anthropic.APIStatusError
) -> Any:
    """The SDK's error for a ``status`` answer with ``body`` and ``headers``."""
    response = httpx2.Response(status, headers=headers or {}, request=REQUEST)
    return cls(f"status {status}", response=response, body=body)
