"""A stand-in for systemd's $NOTIFY_SOCKET: collects the sd_notify messages real processes send."""

from __future__ import annotations

import os
import socket
import tempfile
import threading

from tests.waiting import wait_for

WAIT = 20  # seconds a message may take to arrive

class NotifySocket:
    """A bound AF_UNIX datagram socket collecting every message as a dict of fields."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="kt-n-")  # short: sun_path holds 108 bytes
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.messages: list[dict[str, str]] = []
        threading.Thread(target=self._collect, daemon=True).start()

    def _collect(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except OSError:
                return
            self.messages.append(dict(line.split("=", 1) for line in data.decode().split("\n") if "=" in line))

    def wait(self, predicate, what: str) -> dict[str, str]:
        """The first message (in order) matching `predicate`, waiting for it."""
        def find() -> dict[str, str] | None:
            return next((m for m in list(self.messages) if predicate(m)), None)
        return wait_for(find, timeout=WAIT, interval=0.02, message=f"no sd_notify message: {what}: {self.messages}")

    def index(self, message: dict[str, str]) -> int:
        return self.messages.index(message)

    def close(self) -> None:
        self.sock.close()
        os.unlink(self.path)
        os.rmdir(self.dir)
