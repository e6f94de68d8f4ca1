"""sd_notify client: messages on a real AF_UNIX datagram socket, path and abstract namespace."""

from __future__ import annotations

import os
import socket
import tempfile
import time
from collections.abc import Iterator

import pytest

from gateway.control import sdnotify


def _receiver(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    return sock


@pytest.fixture
def notify_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    with tempfile.TemporaryDirectory(prefix="kt-sd-") as tmp:  # short path: sun_path is 108 bytes
        path = os.path.join(tmp, "notify")
        sock = _receiver(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        yield sock
        sock.close()


def _fields(sock: socket.socket) -> dict[str, str]:
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.split("\n"))


def test_ready_with_status(notify_socket: socket.socket) -> None:
    assert sdnotify.ready("serving revision abc123")
    assert _fields(notify_socket) == {"READY": "1", "STATUS": "serving revision abc123"}


def test_reloading_carries_monotonic_usec(notify_socket: socket.socket) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert sdnotify.reloading()
    fields = _fields(notify_socket)
    assert fields["RELOADING"] == "1"
    assert before <= int(fields["MONOTONIC_USEC"]) <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def test_stopping_status_watchdog(notify_socket: socket.socket) -> None:
    assert sdnotify.stopping("draining")
    assert _fields(notify_socket) == {"STOPPING": "1", "STATUS": "draining"}
    assert sdnotify.status("line one\nline two")  # a status is one line
    assert _fields(notify_socket) == {"STATUS": "line one line two"}
    assert sdnotify.watchdog()
    assert _fields(notify_socket) == {"WATCHDOG": "1"}


def test_abstract_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"kt-test-{os.getpid()}-{time.monotonic_ns()}"
    with _receiver(b"\0" + name.encode()) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.ready()
        assert _fields(sock) == {"READY": "1"}


def test_noop_without_socket_and_never_raises(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.ready("x") is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert sdnotify.watchdog() is False


def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert sdnotify.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert sdnotify.watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert sdnotify.watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_PID")
    for bad in ("0", "abc", "-5"):
        monkeypatch.setenv("WATCHDOG_USEC", bad)
        assert sdnotify.watchdog_interval() is None
