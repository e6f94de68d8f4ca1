"""sd_notify from real processes: what systemd (Type=notify) would receive on $NOTIFY_SOCKET."""

from __future__ import annotations

import hashlib
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gitserve import INVALID_YAML, Upstream, config_yaml
from tests.kt_process import clean_env
from tests.notify_socket import WAIT, NotifySocket


@pytest.fixture
def notify() -> Iterator[NotifySocket]:
    sock = NotifySocket()
    yield sock
    sock.close()


def _env(notify: NotifySocket, watchdog_usec: int) -> dict[str, str]:
    return clean_env(NOTIFY_SOCKET=notify.path, WATCHDOG_USEC=str(watchdog_usec))


def test_sync_agent_notifies(tmp_path: Path, notify: NotifySocket) -> None:
    upstream = Upstream(tmp_path / "server")
    first = upstream.commit({"policy-config.yaml": config_yaml("1.0.0")})
    proc = subprocess.Popen(
        [sys.executable, "-m", "kt", "sync", "run", "--repo", upstream.url, "--state-dir", str(tmp_path / "state"),
         "--interval", "60"], env=_env(notify, 400_000), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        ready = notify.wait(lambda m: m.get("READY") == "1", "READY=1 after the first sync")
        assert f"applied {first[:12]}" in ready["STATUS"]
        notify.wait(lambda m: m.get("WATCHDOG") == "1", "WATCHDOG=1 while WATCHDOG_USEC is set")
        second = upstream.commit({"policy-config.yaml": config_yaml("1.0.1")})
        proc.send_signal(signal.SIGHUP)  # what `systemctl reload kt-sync` does: sync now
        notify.wait(lambda m: f"applied {second[:12]}" in m.get("STATUS", ""), "STATUS with the new revision")
        proc.terminate()
        notify.wait(lambda m: m.get("STOPPING") == "1", "STOPPING=1 on SIGTERM")
        assert proc.wait(timeout=WAIT) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_gateway_notifies(tmp_path: Path, notify: NotifySocket, gateway_process) -> None:
    config = tmp_path / "policy-config.yaml"
    config.write_text(config_yaml("1.0.0"))
    first = hashlib.sha256(config.read_bytes()).hexdigest()
    gw = gateway_process(config, "--no-watch", clean=True, wait=False,
                         env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "400000"})
    proc, port = gw.proc, gw.port
    ready = notify.wait(lambda m: m.get("READY") == "1", "READY=1 once loaded and listening")
    assert f"revision {first[:12]}" in ready["STATUS"]
    socket.create_connection(("127.0.0.1", port), timeout=5).close()  # READY=1 means the port listens
    notify.wait(lambda m: m.get("WATCHDOG") == "1", "WATCHDOG=1 while WATCHDOG_USEC is set")

    config.write_text(config_yaml("1.0.1"))
    second = hashlib.sha256(config.read_bytes()).hexdigest()
    proc.send_signal(signal.SIGHUP)  # `systemctl reload kt-gateway`
    reloading = notify.wait(lambda m: m.get("RELOADING") == "1", "RELOADING=1 on SIGHUP")
    assert int(reloading["MONOTONIC_USEC"]) > 0
    again = notify.wait(lambda m: f"revision {second[:12]}" in m.get("STATUS", ""), "READY=1 after")
    assert again.get("READY") == "1" and notify.index(again) > notify.index(reloading)

    config.write_text(INVALID_YAML)
    proc.send_signal(signal.SIGHUP)
    refused = notify.wait(lambda m: "last reload refused" in m.get("STATUS", ""), "a refused reload in STATUS")
    assert refused.get("READY") == "1" and f"revision {second[:12]}" in refused["STATUS"]

    proc.terminate()
    notify.wait(lambda m: m.get("STOPPING") == "1", "STOPPING=1 on drain")
    assert proc.wait(timeout=WAIT) == 0, gw.logs()
