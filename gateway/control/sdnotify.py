"""A tiny sd_notify(3) client: tell systemd (Type=notify) what the process is doing.

Messages go as one AF_UNIX datagram to `$NOTIFY_SOCKET` (a path, or `@name` for the
abstract namespace). Without `$NOTIFY_SOCKET` every call is a no-op returning False, so
callers never need to check whether they run under systemd. Sending never raises.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger(__name__)


def _address(value: str) -> str | bytes:
    # '@name' is Linux's abstract namespace: the address starts with a NUL byte.
    return b"\0" + value[1:].encode() if value.startswith("@") else value


def notify(*fields: str) -> bool:
    """Send `fields` (e.g. "READY=1", "STATUS=...") as one message; True when sent."""
    target = os.environ.get("NOTIFY_SOCKET")
    if not target or not fields:
        return False
    message = "\n".join(fields).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message, _address(target))
    except OSError as exc:
        log.debug("sd_notify to %s failed: %s", target, exc)
        return False
    return True


def _status(text: str | None) -> list[str]:
    return [f"STATUS={' '.join(text.split())}"] if text else []


def ready(status: str | None = None) -> bool:
    """READY=1: startup (or a reload) finished; the service is serving."""
    return notify("READY=1", *_status(status))


def reloading(status: str | None = None) -> bool:
    """RELOADING=1 with MONOTONIC_USEC (systemd 253+ needs it); follow with `ready()`."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}", *_status(status))


def stopping(status: str | None = None) -> bool:
    """STOPPING=1: the service began draining and will exit."""
    return notify("STOPPING=1", *_status(status))


def status(text: str) -> bool:
    """STATUS=<text>: a one-line description shown by `systemctl status`."""
    return notify(*_status(text))


def watchdog() -> bool:
    """WATCHDOG=1: a keep-alive ping; send every `watchdog_interval()` seconds."""
    return notify("WATCHDOG=1")


def watchdog_interval() -> float | None:
    """Seconds between watchdog pings (half of `$WATCHDOG_USEC`), or None when disabled.

    None too when `$WATCHDOG_PID` names another process (the setting is not for us).
    """
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2_000_000 if usec > 0 else None
