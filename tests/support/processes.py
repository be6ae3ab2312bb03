"""asklane's own processes as Heroku runs them (the Procfile's commands), and ports to run them on."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.support.deployment import ROOT
from tests.support.logs import log_events

#: The ``asklane`` command, run as its module: the console script the venv holds was generated
#: when the package was installed, so it may name an older module path than this checkout's
#: (``test_the_asklane_script_names_the_cli_entry_point`` checks pyproject.toml's instead).
ASKLANE = [sys.executable, "-m", "app.ops.cli"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def is_alive(base_url: str) -> bool:
    """True when a web process at ``base_url`` answers its liveness check."""
    try:
        return httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


class WorkerProcess:
    """``arq workers.WorkerSettings`` as its own process group, as Heroku runs it."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        arq = Path(sys.executable).parent / "arq"
        self.process = subprocess.Popen(
            [str(arq), "workers.WorkerSettings"],
            # Outside the checkout, so a developer's .env cannot change what the test runs.
            cwd=log_path.parent,
            env={**os.environ, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def signal_group(self, signum: signal.Signals) -> None:
        os.killpg(self.process.pid, signum)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The worker's structured log lines so far, those named ``name`` if given."""
        return log_events(self.log(), name)

    def wait_for_log(self, text: str, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not in worker log:\n{self.log()[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self._log.close()


def procfile_command(process: str, port: int) -> list[str]:
    """The Procfile's command for ``process`` as it runs here: this venv's python, ``port`` for
    ``$PORT``, bound to loopback instead of every interface. Read, not copied, so tests and
    benches run exactly what Heroku runs."""
    lines = (ROOT / "Procfile").read_text().splitlines()
    [line] = [line for line in lines if line.startswith(f"{process}:")]
    replacements = {"python": sys.executable, "$PORT": str(port), "0.0.0.0": "127.0.0.1"}
    return [replacements.get(word, word) for word in shlex.split(line.split(":", 1)[1])]


class WebProcess:
    """The web dyno: the Procfile's ``web`` command, bound to loopback."""

    def __init__(
        self, env: dict[str, str], log_path: Path, port: int | None = None, command: list[str] | None = None
    ) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            command or procfile_command("web", self.port),
            # Outside the checkout, so a developer's .env cannot change what runs.
            cwd=log_path.parent,
            env={**os.environ, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_listening(self, timeout: float = 20.0) -> None:
        """Block until uvicorn answers GET /healthz (liveness: Redis may be down)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            if is_alive(self.url):
                return
            time.sleep(0.05)
        raise RuntimeError(f"web process is not listening; its log:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM, as Heroku stops a dyno; SIGKILL if it does not exit in 10 s."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self._log.close()
