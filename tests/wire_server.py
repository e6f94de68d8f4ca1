"""The gateway's HTTP/1.1 server (`HTTP1Server`) serving a small Tornado app in a thread, for tests of the wire."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import tornado.web

from gateway.http.http1 import HTTP1Server


@contextlib.contextmanager
def serve_app(app: tornado.web.Application, loop_kind: str, **settings: Any,
              ) -> Iterator[tuple[int, HTTP1Server, asyncio.AbstractEventLoop]]:
    """`app` on a loopback port (port 0) on asyncio's loop or on uvloop (what production runs); stopped after."""
    loop = asyncio.new_event_loop() if loop_kind == "asyncio" else pytest.importorskip("uvloop").new_event_loop()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    settings.setdefault("max_body_size", 2**20)
    server = HTTP1Server(app, **settings)
    loop.run_until_complete(server.add_sockets([sock]))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1], server, loop
    finally:
        async def shutdown() -> None:  # on the loop's own thread: closing a uvloop server from another one can crash
            server.stop()
            await server.close_all_connections()

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
