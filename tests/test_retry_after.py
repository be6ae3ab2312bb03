"""One Retry-After reading for the Anthropic and the Slack clients."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from workers.retry_after import retry_after_seconds

NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after": "7"}, 7.0),
        ({"Retry-After": "7"}, 7.0),
        ({"retry-after": "0.25"}, 0.25),
        ({"retry-after": "Tue, 01 Dec 2026 12:00:30 GMT"}, 30.0),
        ({"retry-after": "Tue, 01 Dec 2026 11:59:00 GMT"}, 0.0),
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
        ({"retry-after-ms": "soon", "retry-after": "9"}, 9.0),
        ({"retry-after": "soon"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "inf"}, None),
        ({"retry-after": "-5"}, 0.0),
        ({"retry-after": ""}, None),
        ({}, None),
    ],
    ids=[
        "seconds",
        "seconds, capitalised name",
        "fractional",
        "http-date ahead",
        "http-date past",
        "retry-after-ms first",
        "garbage retry-after-ms",
        "garbage",
        "nan",
        "infinity",
        "negative",
        "empty",
        "missing",
    ],
)
def test_retry_after_is_read_from_every_form_servers_send(
    headers: dict[str, str], seconds: float | None
) -> None:
    assert retry_after_seconds(headers, now=NOW) == seconds


def test_headers_that_are_not_a_mapping_give_no_wait() -> None:
    assert retry_after_seconds(None) is None
