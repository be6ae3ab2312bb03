"""A real redis-server on a free loopback port, started and stopped by a test or a benchmark."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import redis

from tests.support.processes import free_port


class RedisServer:
    """A real redis-server on a free loopback port; ``start`` again after ``stop`` or ``kill``
    restarts it on the same port and directory."""

    def __init__(self, workdir: Path, *, tls: bool = False, appendonly: bool = False) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.tls = tls
        #: AOF persistence on, as a production Redis has it: stored jobs survive a restart.
        self.appendonly = appendonly
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def _listen_args(self) -> list[str]:
        if not self.tls:
            return ["--port", str(self.port)]
        # A self-signed certificate, as Heroku Redis presents.
        cert, key = self.workdir / "cert.pem", self.workdir / "key.pem"
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                str(key),
                "-out",
                str(cert),
                "-days",
                "1",
                "-subj",
                "/CN=self-signed-redis",
            ],
            check=True,
            capture_output=True,
        )
        return [
            "--port",
            "0",
            "--tls-port",
            str(self.port),
            "--tls-cert-file",
            str(cert),
            "--tls-key-file",
            str(key),
            "--tls-auth-clients",
            "no",
        ]

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install -y redis-server)")
        self.process = subprocess.Popen(
            [
                binary,
                *self._listen_args(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes" if self.appendonly else "no",
                # With the default everysec, a write acked just before a SIGKILL can be lost.
                "--appendfsync",
                "always" if self.appendonly else "everysec",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = self.client()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def kill(self) -> None:
        """SIGKILL, as a crashed or OOM-killed Redis dies."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_connect_timeout=0.2, ssl=self.tls, ssl_cert_reqs="none")

    def fill(self) -> None:
        """Fill this Redis to its maxmemory with noeviction: it still answers PING and reads, and
        refuses every write ("OOM command not allowed"), until it is restarted."""
        client = self.client()
        for n in range(200):
            client.set(f"filler:{n}", b"x" * 10_000)
        # Below what is used, as after a burst of writes: a write just under the limit would still
        # pass and make the probe's answer depend on its size.
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", int(client.info("memory")["used_memory"]) - 1024 * 1024)
        try:
            client.set("probe", b"1")
        except redis.exceptions.OutOfMemoryError:
            return
        raise RuntimeError("Redis still takes writes past its maxmemory")
