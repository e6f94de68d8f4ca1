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
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import os
import socket
import ssl
import urllib.request
import zlib
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, NamedTuple
from urllib.parse import unquote, urlsplit

import httptools

# An idle connection older than this is closed rather than reused: below the shortest idle
# timeouts of common upstream servers (uvicorn and Node.js close after 5 s, gunicorn 2 s with
# keep-alive off by default, nginx 75 s, AWS ALB 60 s), so kt does not write a request into a
# connection the server is closing at that moment.
KEEPALIVE_S = 4.0
PEEK_AFTER_S = 1.0  # an idle connection reused after longer is first checked for EOF with a peek
MAX_HEAD_SIZE = 64 * 1024  # status line and headers of one response (interim 1xx answers included)
DEFAULT_MAX_RESPONSE_SIZE = 64 * 1024 * 1024
HIGH_WATER = 256 * 1024  # unread bytes of a stream above which the socket is not read
STREAM_ROOM = 4 * HIGH_WATER  # the least room a stream's unread (decoded) bytes get, whatever the body limit
DRAIN_S, DRAIN_BYTES = 5.0, 64 * 1024  # the most silence / bytes awaited after a stream's logical end
_FRAMING = (b"content-length", b"transfer-encoding")


class ServerDisconnected(ConnectionError):
    """The server closed the connection before the response ended."""


class ProtocolError(Exception):
    """The server's answer is not valid HTTP/1.1 (or uses an encoding we cannot decode)."""


class ProxyError(ConnectionError):
    """The proxy did not open a tunnel (its message names the proxy without credentials)."""


@dataclass(frozen=True)
class Proxy:
    """An HTTP proxy for https upstreams, from `HTTPS_PROXY` (`http://[user:password@]host:port`)."""

    host: str
    port: int
    authorization: str | None = field(repr=False)  # the Proxy-Authorization value (Basic, from the URL)
    shown: str  # the proxy's URL without credentials: what messages may print
    no_proxy: str  # NO_PROXY: hosts (and domain suffixes, `*` for all) that go direct

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Proxy | None:
        """The proxy `HTTPS_PROXY`/`https_proxy` names, or None; ValueError for one we cannot use."""
        raw = environ.get("HTTPS_PROXY") or environ.get("https_proxy")
        if not raw:
            return None
        try:
            parts = urlsplit(raw if "://" in raw else f"http://{raw}")
            port = parts.port or 80
        except ValueError:
            raise ValueError("HTTPS_PROXY is not a valid URL") from None
        if parts.scheme.lower() != "http" or not parts.hostname:
            raise ValueError("HTTPS_PROXY must be an http:// proxy (http://[user:password@]host:port)")
        authorization = None
        if parts.username is not None:
            credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            authorization = "Basic " + base64.b64encode(credentials.encode()).decode()
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        no_proxy = environ.get("NO_PROXY") or environ.get("no_proxy") or ""
        return cls(parts.hostname, port, authorization, f"http://{host}:{port}", no_proxy)

    def serves(self, host: str) -> bool:
        """Whether a connection to `host` goes through this proxy (not loopback, not in NO_PROXY)."""
        if host == "localhost" or host.endswith(".localhost"):
            return False
        try:
            if ipaddress.ip_address(host).is_loopback:
                return False
        except ValueError:
            pass
        return not urllib.request.proxy_bypass_environment(host, {"no": self.no_proxy})


class _TunnelReply(asyncio.Protocol):
    """Reads the proxy's answer to CONNECT: `status` resolves to its status code."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.status: asyncio.Future[int] = loop.create_future()
        self.data = b""

    def data_received(self, data: bytes) -> None:
        self.data += data
        if self.status.done():
            return
        if b"\r\n\r\n" in self.data:
            line = self.data.split(b"\r\n", 1)[0].split()
            if len(line) >= 2 and line[0].startswith(b"HTTP/1.") and line[1].isdigit():
                self.status.set_result(int(line[1]))
            else:
                self.status.set_exception(ProxyError("the proxy's answer to CONNECT is not HTTP/1.1"))
        elif len(self.data) > 16384:
            self.status.set_exception(ProxyError("the proxy's answer to CONNECT is too long"))

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.status.done():
            self.status.set_exception(ProxyError("the proxy closed the connection before answering CONNECT"))


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


class UpstreamConnection(asyncio.Protocol):
    """One HTTP/1.1 connection and the state of the response it is reading."""

    def __init__(self, pool: Pool, key: tuple[str, str, int]) -> None:
        self.pool = pool
        self.key = key
        self.loop = pool.loop
        self.read_s = pool.read_s
        self.max_body = pool.max_response_size
        self.parser = httptools.HttpResponseParser(self)
        self.transport: Any = None
        self.usable = False  # connected, no EOF or error seen: may carry a request
        self.lost = False
        self.busy = False
        self.draining = False  # released after its logical end: awaiting the body's last bytes to be pooled
        self.pooled = False  # sits in the pool's idle deque
        self.idle_since = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.waiter: asyncio.Future[None] | None = None
        self._reset(False)

    def _reset(self, stream: bool) -> None:
        self.stream = stream
        self.status = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.head_size = 0  # bytes received before the (final) headers were complete
        self.body_size = 0  # decoded body bytes received
        self.headers_done = self.complete = self.got_bytes = self.framed = self.paused = False
        self.keep_alive = False
        self.error: BaseException | None = None
        self.decoder: Any = None

    # -- the exchange -----------------------------------------------------------------------

    def send(self, data: bytes, stream: bool) -> None:
        """Write one request and start the read timeout."""
        self._reset(stream)
        self.busy = True
        self.transport.write(data)
        self.last_io = self.loop.time()
        if self.timer is None:  # an armed timer stays armed across requests and re-checks `last_io`
            self.timer = self.loop.call_at(self.last_io + self.read_s, self._on_timer)

    async def wait(self) -> None:
        """Until the headers (stream) or the whole response arrived; raise the connection's error."""
        while not (self.complete or (self.stream and self.headers_done)):
            if self.error is not None:
                raise self.error
            self.waiter = self.loop.create_future()
            await self.waiter

    async def read_chunk(self) -> bytes:
        """The body bytes received since the last call (waiting for some), `b""` at the end."""
        while not self.chunks:
            if self.error is not None:
                raise self.error
            if self.complete:
                return b""
            self.waiter = self.loop.create_future()
            await self.waiter
        chunks = self.chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self.chunks = []
        self.buffered = 0
        if self.paused and self.usable:
            self.paused = False
            self.last_io = self.loop.time()
            self.transport.resume_reading()
        return data

    def drain(self) -> None:
        """Await the rest of a body in the background (bounded); the pool takes the connection at its end."""
        self.draining = True
        self.chunks = []
        self.buffered = 0
        self.waiter = None
        if self.paused:
            self.paused = False
            self.transport.resume_reading()
        self._cancel_timer()
        self.last_io = self.loop.time()
        self.timer = self.loop.call_at(self.last_io + DRAIN_S, self._on_timer)

    def close(self, exc: BaseException | None = None) -> None:
        """Close the socket; a response being read fails with `exc` (or `ConnectionAbortedError`)."""
        if self.draining:
            self.draining = False
            self.pool.done(self)  # incomplete: closes the connection and frees its slot
            return
        self.usable = False
        self._cancel_timer()
        if self.busy and not self.complete and self.error is None:
            self.error = exc or ConnectionAbortedError("the connection was closed")
            self._wake()
        if self.transport is not None and not self.lost:
            self.transport.abort()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _on_timer(self) -> None:
        self.timer = None
        if not self.busy or self.complete or self.error is not None:
            return
        now = self.loop.time()
        deadline = now + self.read_s if self.paused else self.last_io + (DRAIN_S if self.draining else self.read_s)
        if deadline - now > 0.005:
            self.timer = self.loop.call_at(deadline, self._on_timer)
        else:
            self.close(TimeoutError("no data within the read timeout"))

    def _ended(self) -> None:
        """The socket ended (EOF or loss): the end of a read-until-close body, or an error."""
        self.usable = False
        if self.busy and self.headers_done and not self.complete and not self.framed:
            self.on_message_complete()
            self.keep_alive = False
        else:
            self.close(ServerDisconnected("the upstream closed the connection"))

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.usable = True
        self.pool.conns.add(self)

    def data_received(self, data: bytes) -> None:
        if not self.busy or self.complete:  # nothing asked: the connection is out of step
            self.close()
            return
        self.last_io = self.loop.time()
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # a 101 (or CONNECT-style answer) to a plain POST
            self.close(ProtocolError("answered with a protocol switch it was not asked for"))
            return
        except httptools.HttpParserError as exc:
            cause = exc.__context__ if isinstance(exc.__context__, ProtocolError) else None
            self.close(cause or ProtocolError("sent an invalid HTTP response"))
            return
        if not self.headers_done:  # httptools buffers an unfinished head line: bound what it may hold
            self.head_size += len(data)
            if self.head_size > MAX_HEAD_SIZE:
                self.close(ProtocolError(f"sent response headers larger than {MAX_HEAD_SIZE // 1024} KiB"))

    def eof_received(self) -> bool:
        self._ended()
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = True
        self.pool.conns.discard(self)
        if self.busy and not self.complete and self.error is None and exc is None:
            self._ended()
        else:
            self.close(exc)
        if self.pooled:
            self.pool.forget(self)

    # -- httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:  # a second answer to one request: keep the first, drop the connection
            raise ProtocolError("sent more than one answer")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.raw_headers.append((name, value))
        lower = name.lower()
        if lower in _FRAMING:
            self.framed = True
            if lower == b"content-length" and not self.stream and value.strip().isdigit() \
                    and int(value) > self.max_body:  # refused before any byte of it is read
                raise ProtocolError(f"announced a response body larger than {self.max_body} bytes "
                                    "(--max-response-size)")
        elif lower == b"content-encoding":
            coding = value.strip().lower()
            if coding in (b"gzip", b"x-gzip", b"deflate"):
                self.decoder = zlib.decompressobj(wbits=47)  # zlib or gzip header, detected
            elif coding not in (b"", b"identity"):
                raise ProtocolError("answered with an unsupported content encoding")

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if self.status < 200:  # an informational answer: the real one follows
            self.raw_headers = []
            self.framed = False
            self.decoder = None
            return
        self.headers_done = True
        if self.stream:
            self._wake()

    def on_body(self, body: bytes) -> None:
        if self.draining:
            self.buffered += len(body)
            if self.buffered > DRAIN_BYTES:
                raise ProtocolError("kept sending after the end of its stream")
            return
        # a whole body may not pass the limit; a stream's unread bytes not (but at least STREAM_ROOM: a slow
        # client lets HIGH_WATER and one more read pile up even under a tiny limit)
        room = max(self.max_body, STREAM_ROOM) - self.buffered if self.stream else self.max_body - self.body_size
        if self.decoder is not None:
            try:
                body = self.decoder.decompress(body, room + 1)  # never inflates more than the room left
            except zlib.error:
                raise ProtocolError("sent a body that does not decompress") from None
            if not body:
                return
        if len(body) > room:
            raise ProtocolError(f"sent a response body larger than {self.max_body} bytes (--max-response-size)")
        self.body_size += len(body)
        self.chunks.append(body)
        if self.stream:
            self.buffered += len(body)
            if self.buffered > HIGH_WATER and not self.paused:
                self.paused = True
                self.transport.pause_reading()
            self._wake()

    def on_message_complete(self) -> None:
        if not self.headers_done:  # the end of an informational answer
            return
        if self.decoder is not None and (rest := self.decoder.flush()):  # at most what the last step held back
            self.chunks.append(rest)
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()
        if self.draining:
            self.pool.done(self)
        else:
            self._wake()


def _open(transport: Any) -> bool:
    """Whether an idle connection's socket has neither an EOF nor unasked bytes waiting (a peek, ~2 us)."""
    raw = transport.get_extra_info("socket")
    if raw is None:
        return True
    sock = socket.socket(fileno=raw.fileno())  # the loop's transport sockets cannot recv(); detached below
    try:
        sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        return False  # EOF (b"") or bytes nobody asked for: either way, not a connection to reuse
    except (BlockingIOError, InterruptedError):
        return True
    except OSError:
        return False
    finally:
        sock.detach()


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
                conn.busy = False
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
        if finished and not conn.complete and conn.error is None and conn.usable:
            conn.drain()  # back here at the body's end (pooled) or on error/timeout (closed)
            return
        conn.busy = conn.draining = False
        conn.waiter = None
        transport = conn.transport
        if conn.complete and conn.keep_alive and conn.usable and not transport.is_closing() \
                and not transport.get_write_buffer_size():
            conn.chunks = []
            conn.idle_since = now = self.loop.time()
            idle = self.idle.get(conn.key)
            if idle is None:
                idle = self.idle[conn.key] = deque()
            while idle and now - idle[0].idle_since > KEEPALIVE_S:
                old = idle.popleft()
                old.pooled = False
                old.close()
            conn.pooled = True
            idle.append(conn)
        else:
            conn.close()
        self._release_slot()

    def forget(self, conn: UpstreamConnection) -> None:
        """Drop an idle connection the server closed."""
        conn.pooled = False
        self.idle[conn.key].remove(conn)

    async def close(self) -> None:
        """Close every connection, idle or in use."""
        for conn in list(self.conns):
            conn.pooled = False
            conn.close()
        self.idle.clear()
        await asyncio.sleep(0)  # let the transports report their loss

    def _idle(self, key: tuple[str, str, int]) -> UpstreamConnection | None:
        """The most recently pooled connection to `key` that is still open, else None (closed ones dropped)."""
        idle = self.idle.get(key)
        now = self.loop.time()
        while idle:
            conn = idle.pop()
            conn.pooled = False
            age = now - conn.idle_since
            if conn.usable and not conn.transport.is_closing() and age < KEEPALIVE_S \
                    and (age < PEEK_AFTER_S or _open(conn.transport)):
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
                    await self._tunnel(conn, dest, proxy)
        except TimeoutError:
            raise TimeoutError("no connection within the connect timeout") from None
        self.opened += 1
        return conn

    async def _tunnel(self, conn: UpstreamConnection, dest: Destination, proxy: Proxy) -> None:
        """Connect `conn` to `dest` through a CONNECT tunnel of `proxy`, TLS inside it."""
        reply = _TunnelReply(self.loop)
        transport, _ = await self.loop.create_connection(lambda: reply, proxy.host, proxy.port)
        try:
            host = dest.host if dest.host.isascii() else dest.host.encode("idna").decode()
            authority = f"[{host}]:{dest.port}" if ":" in host else f"{host}:{dest.port}"
            head = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"
            if proxy.authorization:
                head += f"Proxy-Authorization: {proxy.authorization}\r\n"
            transport.write(f"{head}\r\n".encode("latin-1"))
            status = await reply.status
            if not 200 <= status < 300:  # any 2xx opens the tunnel (RFC 9110 §9.3.6)
                hint = " (proxy authentication required: give it in HTTPS_PROXY)" if status == 407 else ""
                raise ProxyError(f"the proxy {proxy.shown} refused a tunnel to {authority}: HTTP {status}{hint}")
            if reply.data.split(b"\r\n\r\n", 1)[1]:
                raise ProxyError(f"the proxy {proxy.shown} sent bytes before the tunnel's TLS handshake")
            inner = await self.loop.start_tls(transport, conn, self.ssl_context, server_hostname=dest.host)
        except BaseException:
            transport.close()
            raise
        conn.connection_made(inner)  # start_tls does not call it

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
