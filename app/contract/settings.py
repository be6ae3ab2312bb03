"""All configuration, read once from the environment (and `.env`) at start-up.

Both processes call :func:`load_settings` once and pass the result down explicitly.
"""

from __future__ import annotations

import sys
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.contract.prices import Price

PositiveSeconds = Annotated[float, Field(gt=0)]

_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})

#: Written by `make run` in sandbox mode, removed when it stops; absent everywhere else.
SANDBOX_ENV_FILE = ".local/sandbox.env"


class Settings(BaseSettings):
    """Every setting asklane reads; each field maps to the upper-case environment variable."""

    # An empty value (`SLACK_BOT_TOKEN=` in .env) counts as unset, so it is reported as missing.
    # `make run` without Slack credentials writes the sandbox's settings to SANDBOX_ENV_FILE
    # (scripts/run-local); they fill what .env leaves empty, and the environment beats both.
    model_config = SettingsConfigDict(
        env_file=(".env", SANDBOX_ENV_FILE), extra="ignore", frozen=True, env_ignore_empty=True
    )

    redis_url: str = "redis://localhost:6379/0"
    redis_tls_verify: bool = True

    slack_signing_secret: SecretStr
    slack_bot_token: SecretStr
    slack_api_url: str = "https://slack.com/api/"
    slack_command: str = "/ask"
    slack_response_url_prefixes: Annotated[tuple[str, ...], NoDecode] = ("https://hooks.slack.com/",)
    slack_app_token: SecretStr | None = None
    #: The app's id (A…); when set, events naming another app in ``api_app_id`` are ignored.
    slack_app_id: str | None = None
    #: Offered when a user opens the app's Messages tab (Slack shows at most four).
    suggested_prompts: Annotated[tuple[str, ...], Field(max_length=4)] = (
        "Summarise a long text for me",
        "Help me write a reply",
        "Explain a technical concept simply",
    )

    anthropic_api_key: SecretStr
    anthropic_base_url: str | None = None
    anthropic_model: str = "claude-haiku-5-5"
    ai_max_tokens: Annotated[int, Field(gt=0, le=64_000)] = 1024
    ai_system_prompt: str = (
        "You are a helpful assistant answering questions asked in Slack. "
        "Answer concisely and accurately; use Markdown sparingly."
    )
    ai_timeout_seconds: PositiveSeconds = 30.0
    ai_backpressure_max_wait_seconds: PositiveSeconds = 180.0
    #: Tokens per sliding minute for every worker together (workers/ratelimit.py), booked with
    #: each call's start beside JOBS_PER_SECOND; unset = no token limit.
    ai_input_tokens_per_minute: Annotated[int, Field(gt=0)] | None = None
    ai_output_tokens_per_minute: Annotated[int, Field(gt=0)] | None = None
    #: Tokens of conversation (system prompt, earlier turns, the question) sent with a thread
    #: question, estimated conservatively (workers/prompt.py); the oldest turns go first.
    ai_context_tokens: Annotated[int, Field(ge=1000, le=1_000_000)] = 20_000

    # Conversations in threads and DMs, kept in Redis (workers/memory.py).
    conversation_ttl_seconds: PositiveSeconds = 3 * 24 * 3600.0
    conversation_max_turns: Annotated[int, Field(ge=2, le=1000)] = 40
    conversation_max_chars: Annotated[int, Field(ge=1000, le=1_000_000)] = 60_000
    #: How long an answer's buttons keep working (app/contract/answers.py).
    answer_record_ttl_seconds: PositiveSeconds = 24 * 3600.0

    worker_concurrency: Annotated[int, Field(ge=1, le=1000)] = 5
    jobs_per_second: PositiveSeconds = 10.0
    job_max_retries: Annotated[int, Field(ge=0, le=20)] = 3
    job_retry_base_seconds: PositiveSeconds = 2.0
    job_retry_jitter: Annotated[float, Field(ge=0, le=1)] = 0.1
    job_timeout_seconds: PositiveSeconds = 60.0
    shutdown_grace_seconds: Annotated[float, Field(ge=0)] = 25.0
    progress_after_seconds: PositiveSeconds = 3.0
    retain_completed_jobs: Annotated[int, Field(ge=0, le=100_000)] = 100
    retain_failed_jobs: Annotated[int, Field(ge=0, le=100_000)] = 500

    # Fair use; 0 turns a limit off.
    quota_user_per_minute: Annotated[int, Field(ge=0)] = 10
    quota_user_per_day: Annotated[int, Field(ge=0)] = 200
    quota_team_per_minute: Annotated[int, Field(ge=0)] = 100
    quota_team_per_day: Annotated[int, Field(ge=0)] = 5000

    # AI spend (app/contract/usage.py), in US dollars, on UTC days and months; unset = no budget.
    # Spend is counted in whole micro-dollars: a smaller budget would round to nothing at all.
    budget_user_per_day_usd: Annotated[float, Field(ge=0.000001)] | None = None
    budget_team_per_month_usd: Annotated[float, Field(ge=0.000001)] | None = None
    #: Prices per model (USD per million tokens) over the shipped table (app/contract/prices.py),
    #: as JSON: {"model": {"input": 1, "output": 5, "cache_write": 1.25, "cache_read": 0.1}}.
    ai_prices: dict[str, Price] = {}
    #: How long the per-day and per-month usage totals are kept.
    usage_days_kept: Annotated[int, Field(ge=1, le=3660)] = 62
    usage_months_kept: Annotated[int, Field(ge=1, le=120)] = 13
    #: How long each job's trace (``asklane jobs show``) is kept.
    trace_ttl_seconds: PositiveSeconds = 7 * 24 * 3600.0

    metrics_token: SecretStr | None = None

    # The web process's HTTP edge (app/web/serve.py): open connections it keeps, and the time a client
    # gets to send a request's headers, and again its body.
    http_max_connections: Annotated[int, Field(ge=1, le=100_000)] = 100
    http_request_timeout_seconds: PositiveSeconds = 5.0

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] = "json"

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("slack_api_url")
    @classmethod
    def _api_url_slash(cls, value: str) -> str:
        # slack-sdk joins method names straight onto the base URL.
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return value if value.endswith("/") else value + "/"

    @field_validator("slack_app_token")
    @classmethod
    def _app_token_shape(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith("xapp-"):
            raise ValueError("must be an app-level token (xapp-…) with the connections:write scope")
        return value

    @field_validator("slack_command")
    @classmethod
    def _command_slash(cls, value: str) -> str:
        if not value.startswith("/") or len(value) < 2 or " " in value:
            raise ValueError("must look like /ask")
        return value

    @field_validator("slack_response_url_prefixes", mode="before")
    @classmethod
    def _split_prefixes(cls, value: object) -> object:
        if isinstance(value, str):
            value = tuple(part.strip() for part in value.split(",") if part.strip())
        if not value:
            raise ValueError("needs at least one URL prefix")
        return value

    @field_validator("slack_response_url_prefixes")
    @classmethod
    def _prefixes_are_urls(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for prefix in value:
            problem = _prefix_problem(prefix)
            if problem is not None:
                raise ValueError(f"{prefix!r} {problem}; a prefix looks like https://hooks.slack.com/")
        return value

    @model_validator(mode="after")
    def _ai_call_fits_in_job(self) -> Settings:
        # The job's own timeout is the backstop; an AI call that may outlive it would be cut
        # off without the user hearing why.
        if self.ai_timeout_seconds >= self.job_timeout_seconds:
            raise ValueError("AI_TIMEOUT_SECONDS must be shorter than JOB_TIMEOUT_SECONDS")
        # Every call reserves AI_MAX_TOKENS of output: a minute's budget smaller than that would
        # let no call through at all.
        limit = self.ai_output_tokens_per_minute
        if limit is not None and self.ai_max_tokens > limit:
            raise ValueError("AI_MAX_TOKENS must not exceed AI_OUTPUT_TOKENS_PER_MINUTE")
        return self


def _prefix_problem(prefix: str) -> str | None:
    """Why ``prefix`` cannot be a response_url prefix, or None when it can.

    Delivery admits a response_url by plain string prefix, so the prefix itself must be nothing
    but scheme, host and path: anything a URL parser reads differently from how it reads
    (userinfo before an "@", a backslash, whitespace) would admit another host.
    """
    if any(char == "\\" or char.isspace() or not char.isprintable() for char in prefix):
        return "must not contain backslashes, spaces or control characters"
    try:
        parts = urlsplit(prefix)
    except ValueError:  # an unbalanced "[" in the host
        return "must be an http(s) URL"
    if parts.scheme not in ("http", "https") or not prefix.startswith(f"{parts.scheme}://"):
        return "must be an http(s) URL"
    if "@" in parts.netloc:
        return "must not contain a user name or password (an @ before the host)"
    try:
        port_is_valid = parts.port is None or 0 < parts.port
    except ValueError:
        port_is_valid = False
    if not parts.hostname or not port_is_valid:
        return "must name a host (and a valid port, if any)"
    # The path's slash ends the host, so "https://hooks.slack.com" cannot also admit
    # "https://hooks.slack.com.attacker.example/".
    if not parts.path.endswith("/") or parts.query or parts.fragment or prefix.endswith(("?", "#")):
        return "must end in a path ending with '/', with no query or fragment"
    # Plain http only to this machine (a local Slack stand-in); anything else is https.
    if parts.scheme == "http" and parts.hostname not in _LOOPBACK:
        return "must be https (http is allowed only for localhost)"
    return None


def describe_errors(error: ValidationError) -> str:
    """Render a settings validation error as one line naming each bad variable."""
    parts = []
    for item in error.errors():
        name = str(item["loc"][0]).upper() if item["loc"] else "settings"
        message = str(item["msg"]).removeprefix("Value error, ")
        parts.append(f"{name}: {message}" if item["loc"] else message)
    return "; ".join(parts)


def load_settings() -> Settings:
    """Read and validate the settings, or stop the process with one clear line."""
    try:
        return Settings()  # required values come from the environment
    except ValidationError as error:
        print(f"asklane: invalid configuration: {describe_errors(error)}", file=sys.stderr)
        raise SystemExit(2) from None
