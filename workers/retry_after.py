"""Reading how long a server asked us to wait, for the Anthropic and the Slack clients alike."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime


def retry_after_seconds(headers: object, now: datetime | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date).

    ``headers`` is any mapping with ``get`` (case-insensitive ones, as both SDKs hand us, or a
    plain dict with either spelling). None when no usable value is present; never negative: a
    date in the past means "now".
    """
    get = getattr(headers, "get", None)
    if get is None:
        return None
    millis = _number(get("retry-after-ms"))
    if millis is not None:
        return max(millis / 1000, 0.0)
    value = get("retry-after") or get("Retry-After")
    if not value:
        return None
    seconds = _number(value)
    if seconds is not None:
        return max(seconds, 0.0)
    try:
        when = parsedate_to_datetime(str(value))
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - (now or datetime.now(UTC))).total_seconds(), 0.0)


def _number(value: object) -> float | None:
    if value is None:
        return None
    try:
        number = float(str(value))
    except ValueError:
        return None
    return number if math.isfinite(number) else None
