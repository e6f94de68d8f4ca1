"""Loopback ports for tests: one where nothing listens, and a free one for the processes that cannot bind
port 0 and report theirs.

Servers a test starts bind port 0 and report the port they got (`GatewayProcess` reads the gateway's log,
the Python servers ask their socket). `free_port` stays only for those that cannot (see its docstring).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def closed_port() -> Iterator[int]:
    """A port on 127.0.0.1 where nothing listens, held for the block: bound but not listening, so a
    connection to it is refused, and no other socket (a server, an outgoing connection's own port) can
    take it meanwhile, as one could take a port that was only free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (another process may take it before use)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
