"""The gateway's HTTP/1.1 server: httptools parses, the unchanged Tornado application answers.

Tornado's HTTP1Connection and IOStream cost about 150 us of CPU per request on the benchmark
machine, more than the rest of a proxied request (docs/benchmarks.md). This server reads and
writes on an asyncio transport (uvloop in production) with httptools' C parser (llhttp, what
Node.js and uvicorn use) and hands every request to the `tornado.web.Application` through
Tornado's documented interfaces: `HTTPServerConnectionDelegate.start_request` gets a `ServerExchange`
(exchange.py), which implements `tornado.httputil.HTTPConnection` (`write_headers`, `write`,
`finish`, plus the `set_close_callback`, `set_max_body_size`, `set_body_timeout` and `context`
that handlers use). This module holds the server: listening sockets, the connection cap, the
sweep of timeouts and the drain; one client connection is `ServerConnection` (connection.py),
the rules a request head must follow are in request_head.py.

What clients get: keep-alive (HTTP/1.1 by default, HTTP/1.0 when asked), `Connection: close`
honoured both ways, pipelined requests answered one at a time in order, Content-Length and
chunked request bodies, `Expect: 100-continue`, a Content-Length response when a handler
finishes in one go and a chunked one when it flushes first (each flush written at once), no
body for HEAD/204/304, write flow control (a write's future resolves once the transport's
buffer is below its high-water mark), on_connection_close when the client goes away, 431 for
oversized heads, 413 and close for a Content-Length beyond the hard body cap (a chunked body
crossing it drops the connection), 400 with the JSON error envelope for malformed requests.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
from collections.abc import Iterable

from tornado import httputil

from gateway.http.connection import ServerConnection
from gateway.http.request_head import MAX_HEADER_SIZE, error_response

log = logging.getLogger("kt.gateway")

IDLE_TIMEOUT = 75.0  # seconds a keep-alive connection may wait for (the head of) its next request
CLIENT_TIMEOUT = 30.0  # seconds a client may stay silent while sending a request, or not read a response
_SWEEP_INTERVAL = 1.0  # seconds between checks for idle connections and body timeouts (at most)
_FD_RESERVE = 128  # open files kept for what is not a client connection (listeners, event store, logs, git)


def default_max_connections() -> int:
    """Client connections the open-file limit allows: each may hold an upstream connection too, and a
    reserve of files stays for the rest of the process."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(16, (soft - _FD_RESERVE) // 2)



class HTTP1Server:
    """Serves `delegate` (a `tornado.web.Application`) on listening sockets.

    `max_body_size` is the hard cap: a Content-Length beyond it is answered 413 and the
    connection closed without reading the body; a chunked body crossing it drops the connection."""

    def __init__(self, delegate: httputil.HTTPServerConnectionDelegate, *, max_body_size: int,
                 idle_timeout: float = IDLE_TIMEOUT, max_header_size: int = MAX_HEADER_SIZE,
                 client_timeout: float = CLIENT_TIMEOUT, max_connections: int | None = None) -> None:
        self.delegate = delegate
        self.max_connections = max_connections or default_max_connections()
        self.refused = 0  # connections answered 503 over max_connections
        self.host_seen = ""  # the last valid Host value: most requests repeat it, so it is checked once
        self._refused_logged = -60.0
        self._unavailable = error_response(
            503, "too_many_connections", f"the gateway serves at most {self.max_connections} connections at once "
            "(--max-connections); retry shortly", "unavailable", "Retry-After: 1\r\n")
        self.max_body_size = max_body_size
        self.idle_timeout = idle_timeout
        self.max_header_size = max_header_size
        self.client_timeout = client_timeout
        self.connections: set[ServerConnection] = set()
        self.draining = False
        self._servers: list[asyncio.AbstractServer] = []
        self._sweeper: asyncio.TimerHandle | None = None
        self._empty: asyncio.Future[None] | None = None
        self._sweep_interval = min(_SWEEP_INTERVAL, idle_timeout / 2, client_timeout / 2)

    async def add_sockets(self, sockets: Iterable[socket.socket]) -> None:
        """Accept connections on these bound, listening sockets (`tornado.netutil.bind_sockets`)."""
        loop = asyncio.get_running_loop()
        for sock in sockets:
            self._servers.append(await loop.create_server(lambda: ServerConnection(self), sock=sock))
        if self._sweeper is None:
            self._sweeper = loop.call_later(self._sweep_interval, self._sweep)

    def stop(self) -> None:
        """Stop accepting. Idle connections close now; busy ones after their current response."""
        self.draining = True
        for server in self._servers:
            server.close()
        self._servers.clear()
        for conn in list(self.connections):
            if conn.idle_since:
                conn.close()

    async def close_all_connections(self) -> None:
        """Close every connection (a handler still answering sees on_connection_close); wait until all are gone."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in list(self.connections):
            if conn.idle_since:
                conn.close()  # flushes what a finished response left in the buffer
            else:
                conn.abort()
        if self.connections:
            self._empty = asyncio.get_running_loop().create_future()
            await self._empty

    def refused_one(self) -> bytes:
        """Count a connection refused over --max-connections (logged at most every 10 s); the 503 to send it."""
        self.refused += 1
        now = asyncio.get_running_loop().time()
        if now - self._refused_logged >= 10:
            self._refused_logged = now
            log.warning("refusing connections with 503: %d open, --max-connections %d (%d refused so far)",
                        len(self.connections), self.max_connections, self.refused)
        return self._unavailable

    def _lost(self, conn: ServerConnection) -> None:
        self.connections.discard(conn)
        if not self.connections and self._empty is not None and not self._empty.done():
            self._empty.set_result(None)

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for conn in list(self.connections):
            conn.check_timeouts(now)
        self._sweeper = loop.call_later(self._sweep_interval, self._sweep)
