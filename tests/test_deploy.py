"""The files Heroku and a newcomer read agree with the code: app.json, Procfile, requirements.txt,
.python-version, .env.example and the README's Quick start and configuration table."""

from __future__ import annotations

import importlib
import json
import re
import tomllib
from typing import Any

import pytest
import setuptools
from pydantic_core import PydanticUndefined

from app.contract.settings import Settings
from tests.support.deployment import ROOT


@pytest.fixture(scope="module")
def app_json() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((ROOT / "app.json").read_text())
    return loaded


def _procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip() and not line.startswith("#"))


def test_app_json_asks_for_every_required_setting(app_json: dict[str, Any]) -> None:
    required = {
        name.upper() for name, field in Settings.model_fields.items() if field.default is PydanticUndefined
    }
    asked = {name for name, spec in app_json["env"].items() if spec.get("required")}

    assert asked == required
    assert set(app_json["env"]) <= {name.upper() for name in Settings.model_fields}


def test_app_json_provides_redis_over_tls_with_its_self_signed_certificate_accepted(
    app_json: dict[str, Any],
) -> None:
    [addon] = app_json["addons"]

    assert addon["plan"].startswith("heroku-redis:") and addon["as"] == "REDIS"  # sets REDIS_URL
    assert app_json["env"]["REDIS_TLS_VERIFY"]["value"] == "false"


def test_app_json_runs_the_procfile_processes(app_json: dict[str, Any]) -> None:
    assert set(app_json["formation"]) == set(_procfile()) == {"web", "worker"}
    assert "$PORT" in _procfile()["web"]
    assert _procfile()["worker"] == "arq workers.WorkerSettings"


def test_heroku_installs_the_package_with_the_python_the_project_requires() -> None:
    requirements = [
        line for line in (ROOT / "requirements.txt").read_text().splitlines() if not line.startswith("#")
    ]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    minimum = re.fullmatch(r">=(\d+\.\d+)", project["requires-python"])

    assert requirements == ["."]
    assert minimum is not None
    assert (ROOT / ".python-version").read_text().strip() == minimum.group(1)


def _readme_section(title: str) -> str:
    readme = (ROOT / "README.md").read_text()
    return readme.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_readme_configuration_table_lists_every_setting_and_the_local_ports() -> None:
    documented = set(re.findall(r"^\| `([A-Z][A-Z0-9_]+)` \|", _readme_section("Configuration"), re.M))

    # PORT and SANDBOX_PORT are read by the Procfile, make run and asklane ask, not by Settings.
    assert documented == {name.upper() for name in Settings.model_fields} | {"PORT", "SANDBOX_PORT"}


def test_env_example_logs_for_reading_locally_while_production_defaults_to_json() -> None:
    example = dict(
        line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines() if line[:1].isupper()
    )

    assert example["LOG_FORMAT"] == "console"
    assert Settings.model_fields["log_format"].default == "json"


def test_quick_start_installs_what_make_test_needs() -> None:
    [apt] = re.findall(r"`apt-get install ([^`]+)`", _readme_section("Quick start"))

    assert {"make", "redis-server", "openssl"} <= set(apt.split())


def test_the_asklane_script_names_the_cli_entry_point() -> None:
    from app.ops.cli import main

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, name = scripts["asklane"].partition(":")

    assert getattr(importlib.import_module(module), name) is main


def test_a_non_editable_install_packages_every_folder_of_code() -> None:
    """Heroku installs the package (requirements.txt is "."), so a folder setuptools does not find
    is missing on the dyno while every local run, from the checkout, still imports it."""
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    folders = {
        ".".join(path.parent.relative_to(ROOT).parts)
        for top in ("app", "workers")
        for path in (ROOT / top).rglob("*.py")
    }

    assert set(setuptools.find_packages(str(ROOT), include=include["include"])) == folders
