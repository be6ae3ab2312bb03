"""manifest.yml, the Slack app's configuration, agrees with what the code serves and calls."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from starlette.routing import Route
from starlette.testclient import TestClient

from app.contract.settings import Settings
from app.web.main import create_app
from tests.support.deployment import ROOT

#: The bot scope each Web API method the code calls needs.
from tests.support.slack_requests import SlashCommands, ack_text, signature_headers

#: The bot scope each Web API method the code calls needs.
SCOPE_OF_METHOD = {"chat_postEphemeral": "chat:write"}


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "manifest.yml").read_text())
    return loaded


def test_the_slash_command_is_the_one_the_app_answers(manifest: dict[str, Any]) -> None:
    [command] = manifest["features"]["slash_commands"]

    assert command["command"] == Settings.model_fields["slack_command"].default


def test_the_request_url_is_the_path_the_web_process_serves(
    manifest: dict[str, Any], settings: Settings
) -> None:
    [command] = manifest["features"]["slash_commands"]
    paths = {route.path for route in create_app(settings).routes if isinstance(route, Route)}

    assert urlsplit(command["url"]).path in paths
    assert urlsplit(command["url"]).scheme == "https"


def test_a_command_sent_as_the_manifest_describes_it_is_answered(
    manifest: dict[str, Any], web: TestClient, commands: SlashCommands
) -> None:
    [command] = manifest["features"]["slash_commands"]
    body = commands.body("what is a p99?", command=command["command"])
    response = web.post(urlsplit(command["url"]).path, content=body, headers=signature_headers(body))

    assert "Working on it" in ack_text(response)


def test_the_bot_asks_for_exactly_the_scopes_the_code_uses(manifest: dict[str, Any]) -> None:
    sources = "\n".join(
        path.read_text() for folder in ("app", "workers") for path in (ROOT / folder).glob("*.py")
    )
    called = set(re.findall(r"\.(chat_\w+|conversations_\w+|users_\w+|views_\w+|reactions_\w+)\(", sources))

    assert called <= set(SCOPE_OF_METHOD), f"add the scope of {called - set(SCOPE_OF_METHOD)} to the manifest"
    needed = {"commands"} | {SCOPE_OF_METHOD[method] for method in called}
    assert set(manifest["oauth_config"]["scopes"]["bot"]) == needed
    assert "user" not in manifest["oauth_config"]["scopes"]


def test_the_app_is_set_up_for_http_requests_without_interactivity(manifest: dict[str, Any]) -> None:
    assert manifest["settings"]["socket_mode_enabled"] is False
    assert manifest["settings"]["interactivity"]["is_enabled"] is False
