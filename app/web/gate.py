"""The gate in front of Bolt: size and time limits, Slack's request signature, content type.

Nothing of a request is parsed before it passes here; Bolt, which would parse the body before
checking the signature, gets only verified requests (its own check is turned off). Slash commands
arrive as forms, Events API requests as JSON, clicks on buttons (interactivity) as forms whose
``payload`` field is JSON; nothing else is served.
https://docs.slack.dev/authentication/verifying-requests-from-slack/
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request

#: Largest body accepted. A slash command is a few kilobytes of form fields; its text is capped
#: at 4,000 characters (app/web/ask.py), at most 36 KB percent-encoded. An Events API message
#: event is its text (Slack cuts messages at 40,000 characters, but a question past 4,000 is only
#: told it is too long, app/web/conversations.py) plus a few kilobytes of blocks and envelope. A
#: click (block_actions) carries the clicked message: a thread answer of up to 12,000 characters
#: of Markdown, as its blocks and as Slack's rendering of them, JSON then percent-encoded (three
#: bytes for each punctuation character, more for escaped non-ASCII): around 100 KB for a long
#: answer.
MAX_BODY_BYTES = 192 * 1024

#: Slack's advice: refuse requests signed more than five minutes ago, so a captured request
#: cannot be replayed later.
MAX_SKEW_SECONDS = 5 * 60

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"

#: Headers the gate decides on. A second copy of one would let the gate read one value and Bolt
#: another (a signed form checked, a JSON content type parsed), so a request repeating one is refused.
GATED_HEADERS = frozenset({"content-type", "x-slack-signature", "x-slack-request-timestamp"})


class Refused(Exception):
    """The request does not get past the gate; ``status`` and the message are the answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


async def read_body(request: Request, seconds: float, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit``, and with 408
    when it has not all arrived within ``seconds`` (a slow sender holds a connection and
    a task for as long as it is let).

    A client that goes away mid-body raises starlette's ClientDisconnect.
    """
    declared = request.headers.get("content-length")
    if declared is not None and (not _is_number(declared) or int(declared) > limit):
        raise Refused(413, "body too large")
    body = bytearray()
    try:
        async with asyncio.timeout(seconds):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise Refused(413, "body too large")
    except TimeoutError:
        raise Refused(408, "request body too slow") from None
    return bytes(body)


def single_valued(raw_headers: Sequence[tuple[bytes, bytes]]) -> dict[str, str]:
    """The request's headers with one value each (the first), for the gate and Bolt alike.

    Raises Refused (400) when one of GATED_HEADERS is repeated.
    """
    headers: dict[str, str] = {}
    for raw_name, raw_value in raw_headers:
        # As Starlette decodes them; servers hand header names over lower-cased.
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        if name in headers:
            if name in GATED_HEADERS:
                raise Refused(400, f"repeated {name} header")
            continue
        headers[name] = value
    return headers


def check_slack_request(body: bytes, headers: Mapping[str, str], signing_secret: str) -> str:
    """Raise Refused unless Slack signed this body within the last five minutes and sent a form
    or JSON; return which (FORM or JSON)."""
    timestamp = headers.get("x-slack-request-timestamp", "")
    signature = headers.get("x-slack-signature", "")
    if not _is_number(timestamp) or not signature:
        raise Refused(401, "missing or malformed signature headers")
    if abs(time.time() - int(timestamp)) > MAX_SKEW_SECONDS:
        raise Refused(401, "stale timestamp")
    expected = signature_of(body, timestamp, signing_secret)
    if not hmac.compare_digest(expected.encode(), signature.encode(errors="replace")):
        raise Refused(401, "invalid signature")
    # Slash commands arrive as forms, Events API requests as JSON; nothing else is served.
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in (FORM, JSON):
        raise Refused(415, "unsupported content type")
    return content_type


def check_body(body: bytes, content_type: str) -> None:
    """Raise Refused (400) unless Bolt will read the signed body as the gate did: a JSON body as
    the object every Events API request is, a form as a form.

    Bolt would answer a body it cannot parse with a 500, which Slack delivers again, and it reads
    any body starting with ``{`` as JSON, whatever its content type.
    """
    if content_type == FORM:
        if body.startswith(b"{"):
            raise Refused(400, "form body reads as JSON")
        # An interactivity request: its payload field is read as JSON, and Bolt would answer one
        # that is not with a 500.
        payload = _form(body).get("payload")
        if payload is not None:
            try:
                parsed_payload = json.loads(payload)
            except ValueError:
                raise Refused(400, "interactivity payload is not JSON") from None
            if not isinstance(parsed_payload, dict):
                raise Refused(400, "interactivity payload is not an object")
        return
    try:
        parsed = json.loads(body)
    except ValueError:  # UnicodeDecodeError included
        raise Refused(400, "malformed JSON body") from None
    if not isinstance(parsed, dict):
        raise Refused(400, "JSON body is not an object")


def parsed_body(body: bytes, content_type: str) -> dict[str, Any]:
    """The body as the listeners read it, for a body :func:`check_body` let through: a JSON
    object; a click's ``payload`` (JSON) for a form carrying one; any other form's fields.

    Bolt's own parser takes any form whose text contains "payload" for a click, so it would read
    ``/ask what is a JSON payload?`` as an empty request that no listener matches.
    """
    if content_type == JSON:
        parsed: dict[str, Any] = json.loads(body)
        return parsed
    fields = _form(body)
    if "payload" in fields:
        payload: dict[str, Any] = json.loads(fields["payload"])
        return payload
    return fields


def _form(body: bytes) -> dict[str, str]:
    # The last of repeated fields, as Bolt reads forms.
    return dict(parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True))


def signature_of(body: bytes, timestamp: str, signing_secret: str) -> str:
    """Slack's ``X-Slack-Signature`` for ``body`` sent at ``timestamp``."""
    signed = b"v0:" + timestamp.encode() + b":" + body
    return "v0=" + hmac.new(signing_secret.encode(), signed, hashlib.sha256).hexdigest()


def _is_number(value: str) -> bool:
    # ASCII digits only ("²".isdigit() is true, and int() refuses it), and short enough that
    # arithmetic on it cannot overflow a float.
    return value.isascii() and value.isdigit() and len(value) <= 15
