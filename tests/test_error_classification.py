"""What each Anthropic failure means for the job: wait, retry, or tell the user now."""

from __future__ import annotations

import anthropic
import httpx2
import pytest

from tests.support.sdk_errors import REQUEST, error_body, status_error
from workers.ai import classify, model_not_found
from workers.errors import BackPressure, JobError, PermanentError, TransientError


@pytest.mark.parametrize(
    ("status", "body", "headers", "kind", "retry_after", "throttled"),
    [
        (429, error_body("rate_limit_error"), {"retry-after": "7"}, BackPressure, 7.0, True),
        (429, error_body("rate_limit_error"), {}, BackPressure, None, True),
        (529, error_body("overloaded_error"), {"retry-after": "3"}, TransientError, 3.0, True),
        (500, error_body("api_error"), {}, TransientError, None, False),
        (503, "<html>bad gateway</html>", {}, TransientError, None, False),
        (408, error_body("timeout_error"), {}, TransientError, None, False),
        (409, error_body("conflict_error"), {"retry-after": "2"}, TransientError, 2.0, False),
    ],
    ids=[
        "rate limit 429",
        "rate limit 429 without retry-after",
        "overloaded 529",
        "500",
        "503 from a proxy",
        "408",
        "409",
    ],
)
def test_throttling_and_server_errors_are_worth_another_try(
    status: int,
    body: object,
    headers: dict[str, str],
    kind: type[TransientError],
    retry_after: float | None,
    throttled: bool,
) -> None:
    decided = classify(status_error(status, body, headers))

    assert type(decided) is kind
    assert isinstance(decided, TransientError)
    assert (decided.retry_after, decided.throttled) == (retry_after, throttled)


@pytest.mark.parametrize(
    ("status", "body", "told"),
    [
        (400, error_body("invalid_request_error"), "Claude could not process this request."),
        (401, error_body("authentication_error"), "an admin needs to check its API key"),
        (403, error_body("permission_error"), "an admin needs to check its API key"),
        (404, error_body("not_found_error"), "Claude could not process this request."),
        (413, error_body("request_too_large"), "the question is too large for Claude."),
        (422, error_body("invalid_request_error"), "Claude could not process this request."),
        (
            429,
            error_body("rate_limit_error", "enforced_spend_limit_reached"),
            "the team's Claude usage limit has been reached.",
        ),
    ],
    ids=["400", "401", "403", "404", "413", "422", "spend limit 429"],
)
def test_requests_that_cannot_succeed_fail_now_with_a_reason_for_the_user(
    status: int, body: object, told: str
) -> None:
    decided = classify(status_error(status, body))

    assert type(decided) is PermanentError
    assert told in decided.reason


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (anthropic.APIConnectionError(request=REQUEST), TransientError),
        (anthropic.APITimeoutError(request=REQUEST), TransientError),
        (
            anthropic.APIResponseValidationError(httpx2.Response(200, request=REQUEST), body={}),
            PermanentError,
        ),
    ],
    ids=["connection error", "timeout", "unexpected response shape"],
)
def test_errors_without_a_status_are_decided_by_their_type(
    error: anthropic.APIError, kind: type[JobError]
) -> None:
    assert type(classify(error)) is kind


@pytest.mark.parametrize(
    ("body", "told"),
    [
        (error_body("not_found_error"), "an admin needs to fix ANTHROPIC_MODEL"),
        ("<html>no such path</html>", "Claude could not process this request."),
    ],
    ids=["anthropic's 404: the model", "someone else's 404: not the model"],
)
def test_a_404_names_the_model_only_when_anthropic_sent_it(body: object, told: str) -> None:
    decided = model_not_found(status_error(404, body, cls=anthropic.NotFoundError), "claude-nope")

    assert type(decided) is PermanentError
    assert told in decided.reason
