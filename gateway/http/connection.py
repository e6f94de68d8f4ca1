"""The gateway's HTTP/1.1 server: httptools parses, the unchanged Tornado application answers.

Tornado's HTTP1Connection and IOStream cost about 150 us of CPU per request on the benchmark
machine, more than the rest of a proxied request (docs/benchmarks.md). This server reads and
writes on an asyncio transport (uvloop in production) with httptools' C parser (llhttp, what
Node.js and uvicorn use) and hands every request to the `tornado.web.Application` through
Tornado's documented interfaces: `HTTPServerConnectionDelegate.start_request` gets a `ServerExchange`,
which implements `tornado.httputil.HTTPConnection` (`write_headers`, `write`, `finish`, plus the
`set_close_callback`, `set_max_body_size`, `set_body_timeout` and `context` that handlers use).

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
import contextlib
import logging
import re
import resource
import socket
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import httptools
from tornado import gen, httputil
from tornado.iostream import StreamClosedError
from tornado.log import app_log

from gateway.proxy.errors import GatewayError

log = logging.getLogger("kt.gateway")

MAX_HEADER_SIZE = 64 * 1024  # request line + headers, as Tornado's default
IDLE_TIMEOUT = 75.0  # seconds a keep-alive connection may wait for (the head of) its next request
CLIENT_TIMEOUT = 30.0  # seconds a client may stay silent while sending a request, or not read a response
_BACKLOG_LIMIT = 256 * 1024  # parsed body bytes not yet taken by a handler before reading pauses
_SWEEP_INTERVAL = 1.0  # seconds between checks for idle connections and body timeouts (at most)
_FD_RESERVE = 128  # open files kept for what is not a client connection (listeners, event store, logs, git)
_LINGER = 1.0  # seconds a connection refused over --max-connections stays open for its client to read the 503
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_LAST_CHUNK = b"0\r\n\r\n"
_HEADERS, _BODY, _END = 0, 1, 2
_CHUNKED = -1  # `Request.upgrade_body` of a chunked body
# absolute-form (RFC 9112 3.2.2): scheme, optional userinfo, the authority, then the path and query
# a Host value (RFC 9110 7.2): uri-host [":" port]; uri-host an IP literal or a reg-name (or empty)
_HOST = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]*)(?::[0-9]*)?")
_ABSOLUTE = re.compile(rb"https?://(?:[^/?#@]*@)?([^/?#@]+)([/?][^#]*)?(?:#.*)?", re.IGNORECASE | re.DOTALL)


class _Reject(Exception):
    """Raised in a parser callback: answer this status with the error envelope, then close."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class _Drop(Exception):
    """Raised in a parser callback: a body beyond the hard cap; drop the connection unread."""


class _Halt(Exception):
    """Raised in a parser callback: the connection is being closed; parse nothing more."""


class _Primed:
    """Parser callbacks after an Upgrade request with a body (kt does not upgrade).

    llhttp treats the bytes after an Upgrade request's head as another protocol, so the body
    would be parsed as a request of its own. A fresh parser is primed with a head that carries
    the same framing (Content-Length or chunked): its callbacks are swallowed, then the body
    and every later request go to the connection as usual."""

    __slots__ = ("conn", "priming")

    def __init__(self, conn: ServerConnection) -> None:
        self.conn = conn
        self.priming = True

    def on_message_begin(self) -> None:
        if not self.priming:
            self.conn.on_message_begin()

    def on_url(self, url: bytes) -> None:
        if not self.priming:
            self.conn.on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.priming:
            self.conn.on_header(name, value)

    def on_headers_complete(self) -> None:
        if self.priming:
            self.priming = False
        else:
            self.conn.on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self.conn.on_body(body)

    def on_message_complete(self) -> None:
        self.conn.on_message_complete()


def error_response(status: int, code: str, message: str, type_: str = "validation_error", extra: str = "") -> bytes:
    """A complete `Connection: close` response carrying the gateway's JSON error envelope (`extra`: header lines)."""
    body = GatewayError(status, type_, code, message).body()
    reason = httputil.responses.get(status, "Error")
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"{extra}Connection: close\r\n\r\n").encode("latin1") + body


def default_max_connections() -> int:
    """Client connections the open-file limit allows: each may hold an upstream connection too, and a
    reserve of files stays for the rest of the process."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(16, (soft - _FD_RESERVE) // 2)


def _closed_future() -> asyncio.Future[None]:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.set_exception(StreamClosedError())
    future.exception()  # retrieved: a handler that does not await its write must not log an error
    return future


class Context:
    """`request.connection.context`: where `HTTPServerRequest` reads `remote_ip` and `protocol`."""

    __slots__ = ("address", "address_family", "protocol", "remote_ip")

    def __init__(self, address: Any, family: int | None) -> None:
        self.address = address
        self.address_family = family
        inet = family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple)
        self.remote_ip = address[0] if inet else "0.0.0.0"
        self.protocol = "http"

    def __str__(self) -> str:
        return self.remote_ip


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


class ServerConnection(asyncio.Protocol):
    """One client connection: parses requests and answers them one at a time, in order.

    Parser events go straight to the handler of the request being answered; events of a
    pipelined request (or of one whose handler is still preparing) wait in its queue, and
    reading pauses while the queue holds a pipelined request or much body."""

    transport: asyncio.Transport

    def __init__(self, server: HTTP1Server) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.current: ServerExchange | None = None  # the request being answered
        self.parsing: ServerExchange | None = None  # the request being parsed: `current` or the last queued one
        self.last: ServerExchange | None = None  # the last request the parser began
        self.queue: deque[ServerExchange] = deque()  # pipelined requests waiting for `current`
        self.closing = False
        self.idle_since = 0.0  # loop time since no request head is being answered; 0.0 while busy
        self.backlog = 0  # queued body bytes
        self.reading_paused = False
        self.write_paused = False
        self.write_paused_at = 0.0  # loop time of the last pause_writing
        self.closing_since = 0.0  # loop time of `close()`, while what is buffered is still being written
        self.last_read = 0.0  # loop time of the last bytes received (or reading resumed)
        self.waiters: list[asyncio.Future[None]] = []
        self._error: bytes | None = None  # answered (then close) once the requests before it are answered
        self._advancing = False
        self._feeding = False
        self._check_unread = False
        self._advance_on_resume = False

    # --- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport
        loop = asyncio.get_running_loop()
        self.loop = loop
        sock = transport.get_extra_info("socket")
        family = sock.family if sock is not None else None
        if family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.context = Context(transport.get_extra_info("peername"), family)
        if len(self.server.connections) >= self.server.max_connections:
            self._refuse()
            return
        self.ready: asyncio.Future[None] = loop.create_future()  # what writes return while not paused
        self.ready.set_result(None)
        self.idle_since = self.last_read = loop.time()
        self.server.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.last_read = self.loop.time()
        self._feeding = True
        try:
            while True:
                try:
                    self.parser.feed_data(data)
                    break
                except httptools.HttpParserUpgrade as exc:
                    # kt does not upgrade (h2c, websocket; RFC 9110 7.8): the request is answered as plain
                    # HTTP/1.1 (no 101), its body read by its framing, and the client goes on in HTTP/1.1.
                    data = data[int(exc.args[0]):]
                    req = self.parsing
                    if req is not None and req.upgrade_body:
                        self._prime(req)
                    if not data:
                        break
        except httptools.HttpParserError as exc:
            self._parser_error(exc)
        finally:
            self._feeding = False
        req = self.parsing
        if req is not None and not req.head_done and not self.closing:
            req.head_seen += len(data)  # a head line still incomplete is buffered by httptools: bound it
            if req.head_seen > 2 * self.server.max_header_size:
                self._reject(req, 431, "request_header_fields_too_large", self._head_message())
        if self._check_unread:
            self._check_unread = False
            req = self.current
            if req is not None and req.write_finished and not req.parsed_done:
                self.close()  # answered before its body arrived: closing is the only way not to read it

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.server._lost(self)
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(StreamClosedError())
                waiter.exception()
        req = self.current
        self.current = self.parsing = self.last = None
        self.queue.clear()
        if req is not None and req.delegate is not None and not req.write_finished:
            try:
                if not req.read_done:
                    req.delegate.on_connection_close()
                elif req.close_callback is not None:
                    callback, req.close_callback = req.close_callback, None
                    callback()
            except Exception:
                app_log.error("Uncaught exception in on_connection_close", exc_info=True)
        self.server.delegate.on_close(self)

    def pause_writing(self) -> None:
        self.write_paused = True
        self.write_paused_at = self.loop.time()

    def resume_writing(self) -> None:
        self.write_paused = False
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        if self._advance_on_resume:
            self._advance_on_resume = False
            self._advance()

    # --- httptools callbacks ------------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.closing or self._error is not None:
            raise _Halt  # a request before this one was refused: nothing after it is read
        req = self.parsing = self.last = ServerExchange(self)
        if self.current is None:
            self.current = req
        else:
            self.queue.append(req)  # pipelined: answered after the ones before it

    def on_url(self, url: bytes) -> None:
        req = self.parsing
        assert req is not None
        req.url += url
        req.head_size += len(url)
        if req.head_size > self.server.max_header_size:
            raise _Reject(431, "request_header_fields_too_large", self._head_message())

    def on_header(self, name: bytes, value: bytes) -> None:
        req = self.parsing
        assert req is not None
        req.head_size += len(name) + len(value) + 4
        if req.head_size > self.server.max_header_size:
            raise _Reject(431, "request_header_fields_too_large", self._head_message())
        key, text = name.decode("latin1"), value.decode("latin1")
        headers = req.headers
        if key in headers:
            headers.add(key, text)
        else:
            headers[key] = text

    def on_headers_complete(self) -> None:
        req = self.parsing
        assert req is not None
        parser = self.parser
        req.head_done = True
        version = "HTTP/" + parser.get_http_version()
        method = parser.get_method().decode("latin1")
        if version != "HTTP/1.1" and version != "HTTP/1.0":
            raise _Reject(505, "http_version_not_supported", f"{version} is not served here; send HTTP/1.1")
        headers = req.headers
        hosts = headers.get_list("Host")
        if len(hosts) != 1:
            if hosts or version == "HTTP/1.1":  # RFC 9112 3.2
                raise _Reject(400, "bad_request", "a request needs exactly one Host header (HTTP/1.1 requires "
                              f"it); this one has {len(hosts)}")
        elif hosts[0] != self.server.host_seen:
            if _HOST.fullmatch(hosts[0]) is None:
                raise _Reject(400, "bad_request", f"invalid Host header {hosts[0][:100]!r}: send host[:port]")
            self.server.host_seen = hosts[0]
        upgrade = parser.should_upgrade()
        if upgrade and method == "CONNECT":
            raise _Reject(405, "method_not_allowed", "CONNECT is not served: kt is an API gateway, not a forward "
                          "proxy; send requests such as POST /v1/chat/completions")
        url = req.url
        if url[:1] != b"/":
            url = self._origin_form(req, method)
        req.start_line = httputil.RequestStartLine(method, url.decode("latin1"), version)
        req.keep_alive = parser.should_keep_alive()
        size = 0
        if "Transfer-Encoding" in headers:
            codings = headers.get_list("Transfer-Encoding")
            if len(codings) != 1 or codings[0].strip().lower() != "chunked":
                raise _Reject(501, "unsupported_transfer_encoding",
                              f"Transfer-Encoding {', '.join(codings)!r} is not supported: send the body with "
                              "Content-Length, or with 'Transfer-Encoding: chunked' alone")
            if version != "HTTP/1.1":  # RFC 9112 6.1: an HTTP/1.0 message with Transfer-Encoding is faulty
                raise _Reject(400, "bad_request", "Transfer-Encoding needs HTTP/1.1; send Content-Length")
            size = _CHUNKED
        elif "Content-Length" in headers:
            length = headers["Content-Length"]
            try:
                size = int(length)
            except ValueError:
                raise _Reject(400, "bad_request", f"invalid Content-Length {length!r}") from None
            if size > req.max_body_size:
                raise _Reject(413, "request_too_large",
                              f"request body is {size} bytes, far beyond what this gateway accepts "
                              "(--max-body-size); it was not read")
        if upgrade:
            req.upgrade_body = size  # llhttp would read what follows the head as the upgraded protocol
        if version == "HTTP/1.1" and "Expect" in headers and headers["Expect"].lower() == "100-continue":
            req.expect_continue = True
        req.push(_HEADERS, None)

    def on_body(self, body: bytes) -> None:
        req = self.parsing
        if req is None:
            raise _Halt
        req.body_size += len(body)
        if req.body_size > req.max_body_size:
            raise _Drop
        req.push(_BODY, body)

    def on_message_complete(self) -> None:
        req = self.parsing
        if req is None:
            raise _Halt
        if req.upgrade_body:
            return  # the body follows: see `_prime`
        req.parsed_done = True
        self.parsing = None
        req.push(_END, None)

    # --- serving ------------------------------------------------------------------------------
    def _advance(self) -> None:
        """Deliver what waits for the current request; when it is answered, move to the next."""
        if self._advancing:
            return  # the outer call's loop goes on
        self._advancing = True
        try:
            while not self.closing:
                req = self.current
                if req is None:
                    if self._error is not None:
                        self.transport.write(self._error)
                        self.close()
                    break
                if req.write_finished and req.read_done:
                    if not req.keep_alive or self.server.draining:
                        self.close()
                        break
                    if self.write_paused:  # the next answer waits until the client reads this one
                        self._advance_on_resume = True
                        break
                    self.current = self.queue.popleft() if self.queue else None
                    self.idle_since = self.last_read = self.loop.time()
                    continue
                if req.blocked or not req.events:
                    break
                kind, data = req.events.popleft()
                if data is not None:
                    self.backlog -= len(data)
                req.deliver(kind, data)
            if self.reading_paused and not self.queue and self.backlog <= _BACKLOG_LIMIT and self._error is None:
                self.reading_paused = False
                if not self.closing:
                    self.last_read = self.loop.time()  # silence while not reading is not the client's
                    self.transport.resume_reading()
        finally:
            self._advancing = False

    def response_finished(self, req: ServerExchange) -> None:
        if not req.read_done and not req.parsed_done:
            if self._feeding:
                self._check_unread = True  # the rest of the body may be in this very read
            else:
                self.close()
                return
        self._advance()

    def written(self) -> asyncio.Future[None]:
        """The future a write returns: done now, or once the transport's buffer drained below its high-water mark."""
        if self.closing:
            return _closed_future()
        if not self.write_paused:
            return self.ready
        waiter: asyncio.Future[None] = self.loop.create_future()
        self.waiters.append(waiter)
        return waiter

    def pause_reading(self) -> None:
        if not self.reading_paused and not self.closing:
            self.reading_paused = True
            self.transport.pause_reading()

    def close(self) -> None:
        """Close after what is buffered has been written (within --client-timeout: see `check_timeouts`)."""
        if not self.closing:
            self.closing = True
            self.closing_since = self.loop.time()
            self.transport.close()

    def abort(self) -> None:
        """Close now, dropping anything unwritten."""
        self.closing = True
        self.transport.abort()

    def _refuse(self) -> None:
        """Over --max-connections: a 503 at once, then close (after a short linger, so the client reads it)."""
        self.closing = True  # what arrives is dropped unread
        server, transport = self.server, self.transport
        server.refused += 1
        now = self.loop.time()
        if now - server._refused_logged >= 10:
            server._refused_logged = now
            log.warning("refusing connections with 503: %d open, --max-connections %d (%d refused so far)",
                        len(server.connections), server.max_connections, server.refused)
        transport.write(server._unavailable)
        if transport.can_write_eof():
            transport.write_eof()
        self.loop.call_later(_LINGER, transport.close)

    def check_timeouts(self, now: float) -> None:
        server = self.server
        if self.closing:
            if self.closing_since and now - self.closing_since > server.client_timeout:
                log.info("closing a connection from %s: the client read nothing of the last response for %g s "
                         "(--client-timeout)", self.context, server.client_timeout)
                self.abort()  # what it left unread stays unwritten: no connection waits on a client forever
            return
        if self.idle_since and now - self.idle_since > server.idle_timeout:
            self.close()
            return
        if self.write_paused:
            if now - self.write_paused_at > server.client_timeout:
                log.info("closing a connection from %s: the client read nothing of the response for %g s "
                         "(--client-timeout)", self.context, server.client_timeout)
                self.abort()
            return
        req = self.current
        if req is not None and req.body_deadline and not req.read_done and now > req.body_deadline:
            log.info("closing a connection from %s: request body timeout", self.context)
            self.abort()
            return
        req = self.parsing
        if (req is not None and req is self.current and not self.reading_paused
                and now - self.last_read > server.client_timeout):
            self._timed_out(req)  # (a pipelined request's turn comes once the answers before it are sent)

    def _timed_out(self, req: ServerExchange) -> None:
        """The client went silent in the middle of a request: 408 while an answer can still be written, then close."""
        part = "body" if req.head_done else "head"
        timeout = self.server.client_timeout
        log.info("closing a connection from %s: no bytes of the request %s for %g s (--client-timeout)",
                 self.context, part, timeout)
        req.timed_out = True
        if req is self.current and not req.headers_written:
            self.transport.write(error_response(408, "request_timeout",
                                                f"the request {part} stalled: nothing arrived for {timeout:g} s; "
                                                "send the whole request without pausing"))
        self.close()

    def _prime(self, req: ServerExchange) -> None:
        """Read the body of an Upgrade request by its framing: a fresh parser, primed with that framing."""
        size, req.upgrade_body = req.upgrade_body, 0
        framing = b"Transfer-Encoding: chunked" if size == _CHUNKED else b"Content-Length: %d" % size
        self.parser = httptools.HttpRequestParser(_Primed(self))
        self.parser.feed_data(b"POST / HTTP/1.1\r\n" + framing + b"\r\n\r\n")

    def _origin_form(self, req: ServerExchange, method: str) -> bytes:
        """The path of a target that is not origin-form: absolute-form is served like it (its authority
        is the Host, RFC 9112 3.2.2), `OPTIONS *` stays; anything else is refused."""
        url = req.url
        if url == b"*" and method == "OPTIONS":
            return url
        match = _ABSOLUTE.fullmatch(url)
        if match is None:
            raise _Reject(400, "bad_request", "the request target must be a path such as /v1/chat/completions "
                          "(or an absolute http:// URL)")
        req.headers["Host"] = match[1].decode("latin1")
        path = match[2] or b"/"
        return path if path[:1] == b"/" else b"/" + path

    def _head_message(self) -> str:
        return f"request line and headers exceed {self.server.max_header_size} bytes"

    def _parser_error(self, exc: httptools.HttpParserError) -> None:
        cause = exc.__context__
        if isinstance(cause, _Halt):
            pass
        elif isinstance(cause, _Drop):
            log.info("dropping a connection from %s: request body beyond %d bytes", self.context,
                     self.parsing.max_body_size if self.parsing else self.server.max_body_size)
            self.abort()
        elif isinstance(cause, _Reject):
            self._reject(self.parsing, cause.status, cause.code, cause.message)
        elif cause is not None:
            app_log.error("Uncaught exception while reading a request", exc_info=cause)
            self.abort()
        elif self.parsing is None and self.last is not None and not self.last.keep_alive:
            pass  # bytes after a `Connection: close` request: ignored (reading goes on to notice a hang-up)
        else:
            self._reject(self.parsing, 400, "bad_request", f"malformed HTTP/1.1 request: {exc}")

    def _method(self) -> bytes | None:
        """The method of the request being parsed, once its request line was read."""
        try:
            return self.parser.get_method()
        except httptools.HttpParserError:
            return None

    def _reject(self, req: ServerExchange | None, status: int, code: str, message: str) -> None:
        """Answer `req` (the request being parsed) with an error and close, after the requests before it."""
        log.info("rejecting a request from %s with %d: %s", self.context, status, message)
        response = error_response(status, code, message)
        if req is not None and self._method() == b"HEAD":  # a response to HEAD carries no content (RFC 9110 9.3.2)
            response = response[: response.index(b"\r\n\r\n") + 4]
        self.pause_reading()
        self.parsing = None
        if req is not None and req.delegate is not None:  # its handler runs: it learns of the close
            if not req.headers_written:
                self.transport.write(response)
            self.close()
            return
        if req is self.current:
            self.current = None
        elif req is not None and req in self.queue:
            self.queue.remove(req)
        self._error = response
        self._advance()


class ServerExchange(httputil.HTTPConnection):
    """One request/response exchange on a `ServerConnection`: the `HTTPConnection` Tornado's handlers write to."""

    # Defaults as class attributes: a request sets only what differs (this is the per-request path).
    url = b""
    head_size = 0
    head_seen = 0
    head_done = False
    start_line: httputil.RequestStartLine
    keep_alive = True
    expect_continue = False
    body_size = 0
    body_deadline = 0.0
    upgrade_body = 0  # an Upgrade request's body still to read: its Content-Length, or _CHUNKED
    timed_out = False  # closed by --client-timeout while this request was being received
    parsed_done = False  # the parser saw the end of the request
    read_done = False  # ... and the handler was told (delegate.finish)
    events: deque[tuple[int, bytes | None]] | None = None
    blocked = False  # the handler's headers_received/data_received future is pending
    delegate: httputil.HTTPMessageDelegate | None = None
    close_callback: Callable[[], None] | None = None
    headers_written = False
    write_finished = False
    chunked = False
    no_body = False
    remaining: int | None = None  # bytes still owed to a Content-Length

    def __init__(self, conn: ServerConnection) -> None:
        self.conn = conn
        self.context = conn.context
        self.headers = httputil.HTTPHeaders()
        self.max_body_size = conn.server.max_body_size

    # --- reading: parser events to the delegate ----------------------------------------------
    def push(self, kind: int, data: bytes | None) -> None:
        conn = self.conn
        if conn.closing:
            return
        if self is conn.current and not self.blocked and not self.events:
            self.deliver(kind, data)
            return
        if self.events is None:
            self.events = deque()
        self.events.append((kind, data))
        if data is not None:
            conn.backlog += len(data)
        if self is not conn.current or conn.backlog > _BACKLOG_LIMIT:
            conn.pause_reading()

    def deliver(self, kind: int, data: bytes | None) -> None:
        conn = self.conn
        try:
            if kind == _BODY:
                if self.write_finished or self.delegate is None:
                    return  # answered already: the rest of the body is read and dropped
                ret = self.delegate.data_received(data)  # type: ignore[arg-type]
            elif kind == _HEADERS:
                conn.idle_since = 0.0
                self.delegate = conn.server.delegate.start_request(conn, self)
                ret = self.delegate.headers_received(self.start_line, self.headers)
            else:
                self.read_done = True
                if self.write_finished:
                    self.delegate = None  # read and answered (see `finish`)
                    conn._advance()
                    return
                assert self.delegate is not None
                ret = self.delegate.finish()  # type: ignore[func-returns-value]
        except httputil.HTTPInputError as exc:  # e.g. a missing or invalid Host header
            self.delegate = None
            conn._reject(self, 400, "bad_request", str(exc))
            return
        except Exception:
            app_log.error("Uncaught exception", exc_info=True)
            conn.abort()
            return
        if ret is not None:
            future = gen.convert_yielded(ret)
            if not future.done() or future.cancelled() or future.exception() is not None:
                self.blocked = True
                future.add_done_callback(self._unblock)
                return
        if kind == _HEADERS and self.expect_continue:
            self._send_continue()

    def _unblock(self, future: asyncio.Future[Any]) -> None:
        self.blocked = False
        conn = self.conn
        if conn.closing:
            return
        if future.cancelled() or future.exception() is not None:
            if not future.cancelled():
                app_log.error("Uncaught exception", exc_info=future.exception())
            conn.abort()
            return
        if self.expect_continue:
            self._send_continue()
        conn._advance()

    def _send_continue(self) -> None:
        self.expect_continue = False
        conn = self.conn
        if not self.headers_written and not self.parsed_done and not conn.closing:
            conn.last_read = conn.loop.time()  # the client waited for this: its silence starts now
            conn.transport.write(_CONTINUE)

    # --- tornado.httputil.HTTPConnection --------------------------------------------------------
    def write_headers(self, start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
                      headers: httputil.HTTPHeaders, chunk: bytes | None = None) -> asyncio.Future[None]:
        """Send the status line and headers (and the first chunk) in one write."""
        conn = self.conn
        if conn.closing:
            return _closed_future()
        assert isinstance(start_line, httputil.ResponseStartLine)
        code = start_line.code
        request = self.start_line
        http11 = request.version == "HTTP/1.1"
        self.headers_written = True
        if request.method == "HEAD" or code in (204, 304) or code < 200:
            self.no_body = True
        elif "Content-Length" in headers:
            self.remaining = int(headers["Content-Length"])
        elif http11:
            self.chunked = True
        else:
            self.keep_alive = False  # HTTP/1.0 and no length: the body ends when the connection closes
        connection = headers.get_list("Connection")  # not .get(): a KeyError inside costs ~8 % of a bare request
        if (connection and connection[0].lower() == "close") or conn.server.draining:
            self.keep_alive = False
        lines = [f"HTTP/1.1 {code} {start_line.reason}"]
        lines.extend([f"{name}: {value}" for name, value in headers.get_all()])
        if self.chunked:
            lines.append("Transfer-Encoding: chunked")
        if not connection:
            if not self.keep_alive:
                if http11:
                    lines.append("Connection: close")
            elif not http11:
                lines.append("Connection: keep-alive")
        head = "\r\n".join(lines)
        breaks = len(lines) - 1
        if head.count("\n") != breaks or head.count("\r") != breaks:
            raise ValueError(f"illegal characters (CR or LF) in a response header: {head!r}")
        data = (head + "\r\n\r\n").encode("latin1")
        if chunk and not self.no_body:
            data += self._frame(chunk)
        conn.transport.write(data)
        return conn.written()

    def write(self, chunk: bytes) -> asyncio.Future[None]:
        """Send a body chunk now (a chunk of the chunked encoding unless a Content-Length was given)."""
        conn = self.conn
        if conn.closing:
            return _closed_future()
        if chunk and not self.no_body:
            conn.transport.write(self._frame(chunk))
        return conn.written()

    def finish(self) -> None:
        """End the response; the next request on the connection is answered after it."""
        conn = self.conn
        self.write_finished = True
        self.close_callback = None
        if self.read_done:
            # Read and answered: let go of the handler, which holds this exchange as its connection
            # (docs/gateway.md, "Requests and the garbage collector", rule 1).
            self.delegate = None
        if conn.closing:
            return
        if self.chunked:
            conn.transport.write(_LAST_CHUNK)
        elif self.remaining:
            conn.abort()
            raise httputil.HTTPOutputError(f"Tried to write {self.remaining} bytes less than Content-Length")
        conn.response_finished(self)

    def _frame(self, chunk: bytes) -> bytes:
        if self.chunked:
            return b"%x\r\n%b\r\n" % (len(chunk), chunk)
        if self.remaining is not None:
            self.remaining -= len(chunk)
            if self.remaining < 0:
                self.conn.abort()
                raise httputil.HTTPOutputError("Tried to write more data than Content-Length")
        return chunk

    def set_close_callback(self, callback: Callable[[], None] | None) -> None:
        """Called when the client goes away after the request was read and before the answer finished."""
        self.close_callback = callback

    def set_max_body_size(self, max_body_size: int) -> None:
        """This request's body cap (for `@stream_request_body` handlers, from `prepare`)."""
        self.max_body_size = max_body_size

    def set_body_timeout(self, timeout: float) -> None:
        """Drop the connection when this request's body is not complete within `timeout` seconds from now."""
        self.body_deadline = self.conn.loop.time() + timeout

    def close(self) -> None:
        """Close the connection (what `HTTP1Connection.close` does)."""
        self.conn.abort()
