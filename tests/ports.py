"""Loopback ports for tests: one where nothing listens, and a free one for the processes that cannot bind
port 0 and report theirs.

Servers a test starts bind port 0 and report the port they got: `kt gateway run --listen 127.0.0.1:0`
says it in its log (`GatewayProcess` reads the `port` field), the Python servers ask their socket,
`GitDaemon` binds its own socket and runs `git daemon --inetd` per connection (`git daemon --port=0`
listens on 9418). A port picked "free" first can be taken before the bind (an outgoing connection's
ephemeral port, another server), which fails a test for no bug.

`free_port` remains for one caller, `tests/redis_server.py`: `redis-server --port 0` turns TCP off and
the tests need `redis://` URLs; it retries on another port when the start fails, and a restart after
`kill()` reuses the port it had. For "a port where nothing listens" use `closed_port` (the fixture too).
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
