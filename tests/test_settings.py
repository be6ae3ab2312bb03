"""Configuration: validated once at start-up, with one clear line per bad start."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from app.contract.settings import Settings
from tests.support.deployment import ROOT, settings_from

REQUIRED = {
    "SLACK_SIGNING_SECRET": "fake-secret",
    "SLACK_BOT_TOKEN": "xoxb-fake",
    "ANTHROPIC_API_KEY": "fake-key",
}


def _start(command: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if k.upper() not in {name.upper() for name in Settings.model_fields}
    }
    return subprocess.run(command, env={**clean, **env}, cwd=cwd, capture_output=True, text=True, timeout=60)


def _load(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    # Run from an empty folder so a developer's .env cannot fill the gap.
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
        "from app.contract.settings import load_settings; load_settings()"
    )
    return _start([sys.executable, "-c", code], env, tmp_path)


def test_missing_required_setting_stops_with_one_line_naming_it(tmp_path: Path) -> None:
    env = {k: v for k, v in REQUIRED.items() if k != "SLACK_SIGNING_SECRET"}

    result = _load(env, tmp_path)

    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "SLACK_SIGNING_SECRET" in result.stderr
    assert "Traceback" not in result.stderr


def test_malformed_setting_stops_with_one_line_naming_it(tmp_path: Path) -> None:
    result = _load({**REQUIRED, "WORKER_CONCURRENCY": "five"}, tmp_path)

    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "WORKER_CONCURRENCY" in result.stderr
    assert "Traceback" not in result.stderr


def test_worker_with_missing_setting_exits_with_one_clear_line(tmp_path: Path) -> None:
    arq = Path(sys.executable).parent / "arq"
    env = {k: v for k, v in REQUIRED.items() if k != "ANTHROPIC_API_KEY"}
    env["PYTHONPATH"] = str(ROOT)

    result = _start([str(arq), "workers.WorkerSettings"], env, tmp_path)

    assert result.returncode == 2
    assert "ANTHROPIC_API_KEY" in result.stderr
    assert "Traceback" not in result.stderr


def test_defaults_match_the_documented_queue_semantics() -> None:
    settings = settings_from(REQUIRED)

    assert settings.worker_concurrency == 5
    assert settings.jobs_per_second == 10
    assert settings.job_max_retries == 3
    assert settings.job_retry_base_seconds == 2.0
    assert settings.shutdown_grace_seconds == 25
    assert settings.slack_command == "/ask"
    assert settings.slack_response_url_prefixes == ("https://hooks.slack.com/",)


def test_durations_accept_fractions_of_a_second() -> None:
    settings = settings_from({**REQUIRED, "JOB_RETRY_BASE_SECONDS": "0.25", "SHUTDOWN_GRACE_SECONDS": "1.5"})

    assert settings.job_retry_base_seconds == 0.25
    assert settings.shutdown_grace_seconds == 1.5


def test_response_url_prefixes_are_comma_separated() -> None:
    settings = settings_from(
        {**REQUIRED, "SLACK_RESPONSE_URL_PREFIXES": "https://a.example/x/, https://b.example/"}
    )

    assert settings.slack_response_url_prefixes == ("https://a.example/x/", "https://b.example/")


@pytest.mark.parametrize(
    "prefix",
    [
        "http://hooks.slack.com/",
        "https://hooks.slack.com",
        "ftp://hooks.slack.com/",
        "hooks.slack.com/",
        "https:///",
        "https://hooks.slack.com@evil.com/",
        "https://user:pass@hooks.slack.com/",
        "http://evil.com\\@localhost/",
        "https://hooks.slack.com\\/",
        "https://hooks.slack.com /",
        "https://hooks.slack.com/\x7f/",
        "https://:443/",
        "https://hooks.slack.com:99999/",
        "https://hooks.slack.com/commands",
        "https://hooks.slack.com/?x=/",
        "https://hooks.slack.com/#/",
        "https:/hooks.slack.com/",
        "https://[::1/",
    ],
)
def test_response_url_prefixes_must_be_https_urls_with_a_path(prefix: str) -> None:
    with pytest.raises(ValueError, match="slack_response_url_prefixes"):
        settings_from({**REQUIRED, "SLACK_RESPONSE_URL_PREFIXES": prefix})


@pytest.mark.parametrize(
    "prefix",
    [
        "https://hooks.slack.com/",
        "https://hooks.slack.com/commands/",
        "https://hooks.example:8443/slack/",
        "http://localhost:3001/response/",
        "http://[::1]:3001/response/",
    ],
)
def test_response_url_prefixes_of_scheme_host_and_path_are_accepted(prefix: str) -> None:
    settings = settings_from({**REQUIRED, "SLACK_RESPONSE_URL_PREFIXES": prefix})

    assert settings.slack_response_url_prefixes == (prefix,)


def test_plain_http_response_urls_are_allowed_only_on_this_machine() -> None:
    settings = settings_from({**REQUIRED, "SLACK_RESPONSE_URL_PREFIXES": "http://127.0.0.1:8765/response/"})

    assert settings.slack_response_url_prefixes == ("http://127.0.0.1:8765/response/",)


def test_ai_timeout_must_fit_inside_the_job_timeout() -> None:
    with pytest.raises(ValueError, match="AI_TIMEOUT_SECONDS"):
        settings_from({**REQUIRED, "AI_TIMEOUT_SECONDS": "60", "JOB_TIMEOUT_SECONDS": "30"})


def test_max_tokens_must_fit_in_a_minutes_output_token_limit() -> None:
    with pytest.raises(ValueError, match="AI_MAX_TOKENS must not exceed AI_OUTPUT_TOKENS_PER_MINUTE"):
        settings_from({**REQUIRED, "AI_MAX_TOKENS": "2000", "AI_OUTPUT_TOKENS_PER_MINUTE": "1000"})


@pytest.mark.parametrize("name", ["BUDGET_USER_PER_DAY_USD", "BUDGET_TEAM_PER_MONTH_USD"])
def test_a_budget_below_a_micro_dollar_is_refused_as_it_would_refuse_every_question(name: str) -> None:
    with pytest.raises(ValueError, match=name.lower()):
        settings_from({**REQUIRED, name: "0.0000004"})


def test_default_model_is_not_deprecated_in_the_sdk() -> None:
    from anthropic._data.deprecated_models import DEPRECATED_MODELS

    assert settings_from(REQUIRED).anthropic_model not in DEPRECATED_MODELS


def test_env_example_lists_every_setting_with_a_comment() -> None:
    lines = (ROOT / ".env.example").read_text().splitlines()
    documented = {}
    for index, line in enumerate(lines):
        match = re.match(r"^#?\s*([A-Z][A-Z0-9_]+)=", line)
        if match:
            comment = lines[index - 1] if index else ""
            documented[match.group(1)] = comment

    assert set(documented) == {name.upper() for name in Settings.model_fields}
    for name, comment in documented.items():
        assert comment.startswith("# ") and len(comment) > 10, f"{name} needs a one-line comment above it"


def test_env_example_values_load_as_the_defaults(tmp_path: Path) -> None:
    example = (ROOT / ".env.example").read_text()
    for name, value in REQUIRED.items():
        example = example.replace(f"{name}=\n", f"{name}={value}\n")
    (tmp_path / ".env").write_text(example)

    from_example = Settings(_env_file=tmp_path / ".env")
    # The one deliberate difference: .env is for reading logs locally.
    defaults = settings_from({**REQUIRED, "LOG_FORMAT": "console"})

    assert from_example == defaults
