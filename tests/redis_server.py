"""A real `redis-server` on a free loopback port (a test fixture helper); skipped when not installed."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from tests.ports import free_port
from tests.waiting import wait_for


class RedisServer:
    """`redis-server` on 127.0.0.1 with its data in `dir`; `start()` again after `kill()` keeps the port and data.

    Redis cannot bind port 0: a free port is picked and the start retried when another process took it."""

    def __init__(self, dir: Path, *args: str) -> None:
        if shutil.which("redis-server") is None:
            pytest.skip("redis-server is not installed (.ci/install-tools installs it)")
        self.dir = dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.args = args
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        for _ in range(5):
            port = self.port or free_port()
            log = open(self.dir / "redis.log", "ab")  # noqa: SIM115 (the server holds it)
            self.proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                          "--dir", str(self.dir), "--save", "", *self.args],
                                         stdout=log, stderr=subprocess.STDOUT)
            log.close()
            try:
                wait_for(lambda p=port: self.proc.poll() is not None or self._pings(p), timeout=10)
            except AssertionError:
                self.kill()
                raise
            if self.proc.poll() is None:
                self.port = port
                return self
        raise AssertionError("redis-server did not start: " + (self.dir / "redis.log").read_text()[-2000:])

    @staticmethod
    def _pings(port: int) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64)[:1] in (b"+", b"-")  # PONG, or NOAUTH with --requirepass
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: what a crash looks like (no shutdown save)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
