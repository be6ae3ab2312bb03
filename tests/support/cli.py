"""The operator CLI (``asklane``, app/ops/cli.py) run in the test's process, its output read back."""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.contract.settings import Settings
from app.ops.cli import main


def cli_text(capsys: pytest.CaptureFixture[str], settings: Settings, *argv: str) -> str:
    """What ``asklane ARGV`` prints, asserted to exit 0; the output captured before it (the
    workers' and web's log lines so far) is left out."""
    capsys.readouterr()
    assert main(list(argv), settings) == 0
    return capsys.readouterr().out


def cli_json(capsys: pytest.CaptureFixture[str], settings: Settings, *argv: str) -> Any:
    """``asklane ARGV --json``'s output, parsed, as :func:`cli_text` runs it."""
    return json.loads(cli_text(capsys, settings, *argv, "--json"))
