"""A loopback deployment's credentials and environment, shared by the tests and the benchmarks."""

from __future__ import annotations

from pathlib import Path

from app.contract.settings import Settings
from tests.support.fakes.anthropic import FakeAnthropic
from tests.support.fakes.slack import FakeSlack

ROOT = Path(__file__).resolve().parent.parent.parent
SIGNING_SECRET = "fake-signing-secret-for-tests"
BOT_TOKEN = "xoxb-fake-bot-token-for-tests"
ANTHROPIC_KEY = "fake-anthropic-key-for-tests"


def loopback_env(redis_url: str, slack: FakeSlack, anthropic: FakeAnthropic) -> dict[str, str]:
    """The environment of a deployment whose every URL points at loopback, fair-use limits off
    (one test or bench user asks many questions; tests/test_quota.py turns them on)."""
    return {
        "REDIS_URL": redis_url,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_API_URL": slack.api_url,
        "SLACK_RESPONSE_URL_PREFIXES": slack.response_prefix,
        "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
        "ANTHROPIC_BASE_URL": anthropic.url,
        "QUOTA_USER_PER_MINUTE": "0",
        "QUOTA_USER_PER_DAY": "0",
        "QUOTA_TEAM_PER_MINUTE": "0",
        "QUOTA_TEAM_PER_DAY": "0",
    }


def settings_from(env: dict[str, str]) -> Settings:
    """The Settings a process started with ``env`` reads (no .env file)."""
    return Settings(_env_file=None, **{key.lower(): value for key, value in env.items()})
