"""A small pooled HTTP/1.1 client on asyncio and httptools: the gateway's only way upstream.

`Pool.request(url, headers, body, stream)` POSTs `body` and answers a `Response` whose status
and headers have arrived; without `stream` the whole body has too (`Response.body`) and the
connection is already back in the pool. A streamed response is read with `read_chunk()` (the
bytes as they arrive, `b""` at the end) and must be `release()`d.

- http and https (certificate verification with the system CAs and SNI by default); DNS
  through the loop's getaddrinfo; `Host` with the port when it is not the scheme's default.
- https upstreams through an HTTP proxy (`HTTPS_PROXY`, see `Proxy`): a `CONNECT` tunnel per
  connection, TLS to the upstream inside it; `NO_PROXY` and loopback hosts go direct.
- One keep-alive pool per (scheme, host, port); at most `max_connections` in use at once (a
  request beyond that waits for a free one, within the connect timeout). A connection goes
  back to the pool only after a complete response that allows keep-alive; after
  `Connection: close`, an error, a timeout or a stream released before its end it is closed
  (one released at its logical end with `release(finished=True)` is pooled if the rest of its
  body follows soon).
  An idle connection the server closed is noticed (EOF/loss, and a non-blocking peek at the
  socket when it sat idle for more than `PEEK_AFTER_S`) and dropped before reuse: that is the
  only case where a request goes to another connection, because it provably never left. Once
  a request was written, no failure resends it (a POST that reached the upstream may have
  been billed); the caller's fallback decides. Idle connections older than `KEEPALIVE_S` are
  closed rather than reused.
- Bodies framed by Content-Length, chunked, or read until the server closes; gzip/deflate
  content encodings are decoded (inflated in bounded steps).
- Limits: a response head of at most `MAX_HEAD_SIZE`; a whole (non-streamed) body, and the
  unread bytes of a stream, of at most `max_response_size` after decoding. Past a limit the
  request fails with `ProtocolError` and the connection is dropped.
- Per attempt: a connect timeout (pool wait, DNS, TCP and TLS handshake) and a read timeout
  (the longest silence while an answer is awaited; not a total time, streams may last minutes).
- A stream's unread bytes are bounded: reading from the socket pauses above `HIGH_WATER`
  and resumes when the consumer takes them.

Errors: `TimeoutError`, `ConnectionError` (`ServerDisconnected` among them), `ssl.SSLError`
and other `OSError`s from the socket, `ProtocolError` for an answer that is not HTTP/1.1, and
`ValueError` for a URL or header we cannot send. Messages never carry header values.

The parts: this module holds the pool and what a request goes through (`Pool`, `Response`, the
request's bytes); one connection reading one response is `UpstreamConnection`
(upstream_connection.py); the proxy and its CONNECT tunnel are in https_proxy.py.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from functools import lru_cache
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from gateway.http.https_proxy import Proxy, open_tunnel
from gateway.http.phases import IDLE, OFF, PARSED, USABLE
from gateway.http.upstream_connection import UpstreamConnection, still_open

# An idle connection older than this is closed rather than reused: below the shortest idle
# timeouts of common upstream servers (uvicorn and Node.js close after 5 s, gunicorn 2 s with
# keep-alive off by default, nginx 75 s, AWS ALB 60 s), so kt does not write a request into a
# connection the server is closing at that moment.
KEEPALIVE_S = 4.0
PEEK_AFTER_S = 1.0  # an idle connection reused after longer is first checked for EOF with a peek
DEFAULT_MAX_RESPONSE_SIZE = 64 * 1024 * 1024


class Destination(NamedTuple):
    key: tuple[str, str, int]  # (scheme, host, port): one pool each
    host: str
    port: int
    tls: bool
    head: str  # request line and Host header


@lru_cache(maxsize=1024)
def destination(url: str, method: str = "POST") -> Destination:
    """Where `url` goes and the start of its request head (cached: a target's URLs repeat)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError("invalid upstream URL") from None
    scheme, host = parts.scheme.lower(), parts.hostname
    if scheme not in ("http", "https") or not host:
        raise ValueError("upstream URL must be http:// or https:// with a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("upstream URL must not carry credentials (use secret_key_ref)")
    tls = scheme == "https"
    port = port or (443 if tls else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if not path.isascii() or any(c in path for c in " \r\n\t"):
        raise ValueError("upstream URL path must be ASCII without spaces")
    authority = f"[{host}]" if ":" in host else host
    if port != (443 if tls else 80):
        authority += f":{port}"
    return Destination((scheme, host, port), host, port, tls, f"{method} {path} HTTP/1.1\r\nHost: {authority}\r\n")


def request_bytes(dest: Destination, headers: dict[str, str], body: bytes) -> bytes:
    """The whole request (head and body) as one buffer for one write."""
    lines = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
    if lines.count("\n") != len(headers) or lines.count("\r") != len(headers):
        raise ValueError("a request header contains a line break")
    try:
        head = f"{dest.head}{lines}Content-Length: {len(body)}\r\n\r\n".encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError("a request header is not Latin-1 text") from None
    return head + body


class Response:
    """A response whose status and headers have arrived; `body` when it was not streamed."""

    __slots__ = ("_conn", "_headers", "_pool", "body", "raw_headers", "status")

    def __init__(self, pool: Pool, conn: UpstreamConnection) -> None:
        self._pool = pool
        self._conn: UpstreamConnection | None = conn
        self._headers: dict[str, str] | None = None
        self.status = conn.status
        self.raw_headers = conn.raw_headers
        self.body = b""

    @property
    def headers(self) -> dict[str, str]:
        """The response headers with lower-case names (repeated ones joined by `, `)."""
        if self._headers is None:
            headers: dict[str, str] = {}
            for name, value in self.raw_headers:
                key, text = name.decode("latin-1").lower(), value.decode("latin-1")
                headers[key] = f"{headers[key]}, {text}" if key in headers else text
            self._headers = headers
        return self._headers

    @property
    def unread(self) -> int:
        """Bytes of a streamed body that arrived and were not read yet (0 once released)."""
        return self._conn.buffered if self._conn is not None else 0

    @property
    def reading_paused(self) -> bool:
        """Whether the socket is not read because `unread` passed `HIGH_WATER` (until the consumer reads)."""
        return self._conn is not None and self._conn.paused

    @property
    def body_received(self) -> bool:
        """Whether the whole body has arrived (a stream's last bytes may still be unread); True once released."""
        return self._conn is None or self._conn.reading is PARSED

    async def read_chunk(self) -> bytes:
        """The next bytes of a streamed body as they arrived, `b""` at its end."""
        if self._conn is None:
            return b""
        return await self._conn.read_chunk()

    async def read(self, limit: int | None = None) -> bytes:
        """The rest of a streamed body (at most about `limit` bytes)."""
        parts: list[bytes] = []
        size = 0
        while (limit is None or size < limit) and (data := await self.read_chunk()):
            parts.append(data)
            size += len(data)
        return b"".join(parts)

    def release(self, finished: bool = False) -> None:
        """Give the connection back: pooled if the response ended cleanly, else closed.

        `finished`: the caller saw the stream's logical end (an SSE `[DONE]`); the last bytes of
        the HTTP body may still be on their way, so they are awaited in the background (at most
        `DRAIN_S` of silence, `DRAIN_BYTES`) and the connection pooled after them.
        """
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool.done(conn, finished)


class Pool:
    """Keep-alive connections per (scheme, host, port), at most `max_connections` in use."""

    def __init__(self, connect_s: float, read_s: float, max_connections: int = 1000,
                 ssl_context: ssl.SSLContext | None = None, proxy: Proxy | None = None,
                 max_response_size: int = DEFAULT_MAX_RESPONSE_SIZE) -> None:
        self.proxy = proxy  # for https upstreams
        self.max_response_size = max_response_size
        self.connect_s = connect_s
        self.read_s = read_s
        self.max_connections = max_connections
        self._ssl = ssl_context
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # bound at the first request
        self.idle: dict[tuple[str, str, int], deque[UpstreamConnection]] = {}
        self.conns: set[UpstreamConnection] = set()
        self.opened = 0  # connections ever opened (tests, diagnostics)
        self._active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def in_use(self) -> int:
        """Connections handed out now (a request in flight, or a streamed answer not yet released)."""
        return self._active

    @property
    def waiting(self) -> int:
        """Requests waiting for a connection because `max_connections` are in use."""
        return len(self._waiters)

    @property
    def ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
            self._ssl.set_alpn_protocols(["http/1.1"])
        return self._ssl

    async def request(self, url: str, headers: dict[str, str], body: bytes, stream: bool = False) -> Response:
        """POST `body` to `url`; the response (its body read unless `stream`: then release it)."""
        dest = destination(url)
        data = request_bytes(dest, headers, body)
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
        conn = None
        if self._active < self.max_connections:
            self._active += 1
            conn = self._idle(dest.key)
        else:
            try:
                async with asyncio.timeout(self.connect_s):
                    await self._wait_slot()
            except TimeoutError:
                raise TimeoutError(f"all {self.max_connections} upstream connections stayed busy") from None
            conn = self._idle(dest.key)
        try:
            if conn is None:
                conn = await self._connect(dest)
            conn.send(data, stream)  # from here on, never sent again (it may have reached the upstream)
            await conn.wait()
        except BaseException:
            if conn is not None:
                conn.duty = OFF
                conn.close()
            self._release_slot()
            raise
        resp = Response(self, conn)  # type: ignore[arg-type]
        if not stream:
            resp.body = conn.chunks[0] if len(conn.chunks) == 1 else b"".join(conn.chunks)  # type: ignore[union-attr]
            resp.release()
        return resp

    def done(self, conn: UpstreamConnection, finished: bool = False) -> None:
        """The exchange on `conn` is over: pool it if it may carry another request, else close it."""
        if finished and conn.reading is not PARSED and conn.error is None and conn.link is USABLE:
            conn.drain()  # back here at the body's end (pooled) or on error/timeout (closed)
            return
        conn.duty = OFF
        conn.waiter = None
        transport = conn.transport
        if conn.reading is PARSED and conn.keep_alive and conn.link is USABLE and not transport.is_closing() \
                and not transport.get_write_buffer_size():
            conn.chunks = []
            conn.idle_since = now = self.loop.time()
            idle = self.idle.get(conn.key)
            if idle is None:
                idle = self.idle[conn.key] = deque()
            while idle and now - idle[0].idle_since > KEEPALIVE_S:
                old = idle.popleft()
                old.duty = OFF
                old.close()
            conn.duty = IDLE
            idle.append(conn)
        else:
            conn.close()
        self._release_slot()

    def forget(self, conn: UpstreamConnection) -> None:
        """Drop an idle connection the server closed."""
        conn.duty = OFF
        self.idle[conn.key].remove(conn)

    async def close(self) -> None:
        """Close every connection, idle or in use."""
        for conn in list(self.conns):
            if conn.duty is IDLE:
                conn.duty = OFF
            conn.close()
        self.idle.clear()
        await asyncio.sleep(0)  # let the transports report their loss

    def _idle(self, key: tuple[str, str, int]) -> UpstreamConnection | None:
        """The most recently pooled connection to `key` that is still open, else None (closed ones dropped)."""
        idle = self.idle.get(key)
        now = self.loop.time()
        while idle:
            conn = idle.pop()
            conn.duty = OFF
            age = now - conn.idle_since
            if conn.link is USABLE and not conn.transport.is_closing() and age < KEEPALIVE_S \
                    and (age < PEEK_AFTER_S or still_open(conn.transport)):
                return conn
            conn.close()
        return None

    async def _connect(self, dest: Destination) -> UpstreamConnection:
        conn = UpstreamConnection(self, dest.key)
        proxy = self.proxy if dest.tls and self.proxy is not None and self.proxy.serves(dest.host) else None
        tls: dict[str, Any] = {"ssl": self.ssl_context, "server_hostname": dest.host} if dest.tls else {}
        try:
            async with asyncio.timeout(self.connect_s):
                if proxy is None:
                    await self.loop.create_connection(lambda: conn, dest.host, dest.port, **tls)
                else:
                    await open_tunnel(self.loop, conn, dest.host, dest.port, proxy, self.ssl_context)
        except TimeoutError:
            raise TimeoutError("no connection within the connect timeout") from None
        self.opened += 1
        return conn

    async def _wait_slot(self) -> None:
        waiter = self.loop.create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._release_slot()  # handed a slot just as we gave up: pass it on
            raise

    def _release_slot(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._active -= 1
