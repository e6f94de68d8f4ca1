"""One client connection of the HTTP/1.1 server: parsing, the order of answers, flow control, timeouts.

httptools (llhttp) parses what arrives; each request becomes a `ServerExchange` whose events go
to its handler. Requests are answered one at a time, in order: events of a pipelined request
(or of one whose handler is still busy) wait in its exchange, and reading pauses while a
pipelined request or much body waits. The connection's own state is small: its `phase`
(`Lifecycle`: open, closing, closed), `idle_since` (set while no request is being answered),
whether reading is paused (by us) and writing is paused (by the transport: the client reads
slowly), and a refused request's answer waiting for its turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import deque
from typing import TYPE_CHECKING, Any

import httptools
from tornado import httputil
from tornado.iostream import StreamClosedError
from tornado.log import app_log

from gateway.http.exchange import BACKLOG_LIMIT, ServerExchange, closed_future
from gateway.http.phases import (
    BODY,
    CLOSED,
    CLOSING,
    DATA,
    DELIVERED,
    END,
    FINISHED,
    HEAD,
    HEADERS,
    OPEN,
    PARSED,
    PENDING,
)
from gateway.http.request_head import (
    Drop,
    Halt,
    Reject,
    body_size,
    check_host,
    check_not_connect,
    error_response,
    head_too_large,
    origin_form,
    upgrade_framing,
    version_not_supported,
    without_body,
)

if TYPE_CHECKING:
    from gateway.http.http1 import HTTP1Server

log = logging.getLogger("kt.gateway")

_LINGER = 1.0  # seconds a connection refused over --max-connections stays open for its client to read the 503


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


class UpgradeBody:
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


class ServerConnection(asyncio.Protocol):
    """One client connection: parses requests and answers them one at a time, in order."""

    transport: asyncio.Transport

    def __init__(self, server: HTTP1Server) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.phase = OPEN
        self.current: ServerExchange | None = None  # the request being answered
        self.parsing: ServerExchange | None = None  # the request being parsed: `current` or the last queued one
        self.last: ServerExchange | None = None  # the last request the parser began
        self.queue: deque[ServerExchange] = deque()  # pipelined requests waiting for `current`
        self.refusal: bytes | None = None  # a refused request's answer: written (then close) once those before it are
        self.idle_since = 0.0  # loop time since no request head is being answered; 0.0 while one is
        self.closing_since = 0.0  # loop time of `close()`, while what is buffered is still being written
        self.last_read = 0.0  # loop time of the last bytes received (or reading resumed)
        self.backlog = 0  # body bytes held back from handlers
        self.reading_paused = False  # by us: a pipelined request or too much body waits
        self.write_paused_at = 0.0  # loop time the transport paused writing (the client reads slowly); 0.0 if not
        self.waiters: list[asyncio.Future[None]] = []  # writes waiting for the transport to resume
        self.feeding = False  # inside `parser.feed_data` (callbacks run)
        self.advancing = False  # inside `advance` (a nested call leaves the work to the outer one)

    @property
    def write_paused(self) -> bool:
        """Whether the client has left so much of the response unread that writes wait."""
        return self.write_paused_at != 0.0

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
        if self.phase is not OPEN:
            return
        self.last_read = self.loop.time()
        self.feeding = True
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
                        self._read_upgrade_body(req)
                    if not data:
                        break
        except httptools.HttpParserError as exc:
            self._parser_error(exc)
        finally:
            self.feeding = False
        req = self.parsing
        if req is not None and req.reading is HEAD and self.phase is OPEN:
            req.head_seen += len(data)  # a head line still incomplete is buffered by httptools: bound it
            if req.head_seen > 2 * self.server.max_header_size:
                too_large = head_too_large(self.server.max_header_size)
                self.reject(req, too_large.status, too_large.code, too_large.message)
        req = self.current
        if req is not None and req.writing is FINISHED and req.reading < PARSED:
            self.close()  # answered before its body arrived (`response_finished`): only closing avoids reading it

    def connection_lost(self, exc: Exception | None) -> None:
        self.phase = CLOSED
        self.server._lost(self)
        self._fail_waiters()
        req = self.current
        self.current = self.parsing = self.last = None
        self.queue.clear()
        if req is not None and req.delegate is not None and req.writing is not FINISHED:
            try:
                if req.reading is not DELIVERED:
                    req.delegate.on_connection_close()
                elif req.close_callback is not None:
                    callback, req.close_callback = req.close_callback, None
                    callback()
            except Exception:
                app_log.error("Uncaught exception in on_connection_close", exc_info=True)
        self.server.delegate.on_close(self)

    def pause_writing(self) -> None:
        self.write_paused_at = self.loop.time()

    def resume_writing(self) -> None:
        self.write_paused_at = 0.0
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        self.advance()  # the next request may have waited for this one's answer to be read

    def _fail_waiters(self) -> None:
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(StreamClosedError())
                waiter.exception()

    # --- httptools callbacks ------------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.phase is not OPEN or self.refusal is not None:
            raise Halt  # a request before this one was refused: nothing after it is read
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
            raise head_too_large(self.server.max_header_size)

    def on_header(self, name: bytes, value: bytes) -> None:
        req = self.parsing
        assert req is not None
        req.head_size += len(name) + len(value) + 4
        if req.head_size > self.server.max_header_size:
            raise head_too_large(self.server.max_header_size)
        key, text = name.decode("latin1"), value.decode("latin1")
        headers = req.headers
        if key in headers:
            headers.add(key, text)
        else:
            headers[key] = text

    def on_headers_complete(self) -> None:
        """Check the head (`request_head`), then hand it to the request's handler."""
        req = self.parsing
        assert req is not None
        parser = self.parser
        server = self.server
        req.reading = BODY
        version = "HTTP/" + parser.get_http_version()
        method = parser.get_method().decode("latin1")
        if version != "HTTP/1.1" and version != "HTTP/1.0":
            raise version_not_supported(version)
        headers = req.headers
        hosts = headers.get_list("Host")
        if len(hosts) != 1 or hosts[0] != server.host_seen:
            server.host_seen = check_host(hosts, version, server.host_seen)
        upgrade = parser.should_upgrade()
        if upgrade:
            check_not_connect(method)
        url = req.url
        if url[:1] != b"/":
            url = origin_form(req, url, method)
        req.start_line = httputil.RequestStartLine(method, url.decode("latin1"), version)
        req.keep_alive = parser.should_keep_alive()
        size = body_size(headers, version, req.max_body_size)
        if upgrade:
            req.upgrade_body = size  # llhttp would read what follows the head as the upgraded protocol
        if version == "HTTP/1.1" and "Expect" in headers and headers["Expect"].lower() == "100-continue":
            req.expect_continue = True
        req.push(HEADERS, None)

    def on_body(self, body: bytes) -> None:
        req = self.parsing
        if req is None:
            raise Halt
        req.body_size += len(body)
        if req.body_size > req.max_body_size:
            raise Drop
        req.push(DATA, body)

    def on_message_complete(self) -> None:
        req = self.parsing
        if req is None:
            raise Halt
        if req.upgrade_body:
            return  # the body follows: see `_read_upgrade_body`
        req.reading = PARSED
        self.parsing = None
        req.push(END, None)

    def _read_upgrade_body(self, req: ServerExchange) -> None:
        """Read the body of an Upgrade request by its framing: a fresh parser, primed with that framing."""
        size, req.upgrade_body = req.upgrade_body, 0
        self.parser = httptools.HttpRequestParser(UpgradeBody(self))
        self.parser.feed_data(upgrade_framing(size))

    def _parser_error(self, exc: httptools.HttpParserError) -> None:
        cause = exc.__context__
        if isinstance(cause, Halt):
            pass
        elif isinstance(cause, Drop):
            log.info("dropping a connection from %s: request body beyond %d bytes", self.context,
                     self.parsing.max_body_size if self.parsing else self.server.max_body_size)
            self.abort()
        elif isinstance(cause, Reject):
            self.reject(self.parsing, cause.status, cause.code, cause.message)
        elif cause is not None:
            app_log.error("Uncaught exception while reading a request", exc_info=cause)
            self.abort()
        elif self.parsing is None and self.last is not None and not self.last.keep_alive:
            pass  # bytes after a `Connection: close` request: ignored (reading goes on to notice a hang-up)
        else:
            self.reject(self.parsing, 400, "bad_request", f"malformed HTTP/1.1 request: {exc}")

    def _method(self) -> bytes | None:
        """The method of the request being parsed, once its request line was read."""
        try:
            return self.parser.get_method()
        except httptools.HttpParserError:
            return None

    def reject(self, req: ServerExchange | None, status: int, code: str, message: str) -> None:
        """Answer `req` (the request being parsed) with an error and close, after the requests before it."""
        log.info("rejecting a request from %s with %d: %s", self.context, status, message)
        response = error_response(status, code, message)
        if req is not None and self._method() == b"HEAD":
            response = without_body(response)
        self.pause_reading()
        self.parsing = None
        if req is not None and req.delegate is not None:  # its handler runs: it learns of the close
            if req.writing is PENDING:
                self.transport.write(response)
            self.close()
            return
        if req is self.current:
            self.current = None
        elif req is not None and req in self.queue:
            self.queue.remove(req)
        self.refusal = response
        self.advance()

    # --- serving ------------------------------------------------------------------------------
    def advance(self) -> None:
        """Deliver what waits for the current request; when it is answered, move to the next."""
        if self.advancing:
            return  # the outer call's loop goes on
        self.advancing = True
        try:
            while self.phase is OPEN:
                req = self.current
                if req is None:
                    if self.refusal is not None:
                        self.transport.write(self.refusal)
                        self.close()
                    break
                if req.writing is FINISHED and req.reading is DELIVERED:
                    if not req.keep_alive or self.server.draining:
                        self.close()
                        break
                    if self.write_paused_at:
                        break  # the next answer waits until the client reads this one (`resume_writing`)
                    self.current = self.queue.popleft() if self.queue else None
                    self.idle_since = self.last_read = self.loop.time()
                    continue
                if req.blocked or not req.events:
                    break
                kind, data = req.events.popleft()
                if data is not None:
                    self.backlog -= len(data)
                req.deliver(kind, data)
            if self.reading_paused and not self.queue and self.backlog <= BACKLOG_LIMIT and self.refusal is None:
                self._resume_reading()
        finally:
            self.advancing = False

    def response_finished(self, req: ServerExchange) -> None:
        """`req`'s handler finished its answer: move on, or close if the request is not read to its end."""
        if req.reading < PARSED and not self.feeding:
            self.close()  # (while feeding, the rest of the body may be in this very read: see `data_received`)
            return
        self.advance()

    def written(self) -> asyncio.Future[None]:
        """The future a write returns: done now, or once the transport's buffer drained below its high-water mark."""
        if self.phase is not OPEN:
            return closed_future()
        if not self.write_paused_at:
            return self.ready
        waiter: asyncio.Future[None] = self.loop.create_future()
        self.waiters.append(waiter)
        return waiter

    def pause_reading(self) -> None:
        if not self.reading_paused and self.phase is OPEN:
            self.reading_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        self.reading_paused = False
        if self.phase is OPEN:
            self.last_read = self.loop.time()  # silence while not reading is not the client's
            self.transport.resume_reading()

    def close(self) -> None:
        """Close after what is buffered has been written (within --client-timeout: see `check_timeouts`)."""
        if self.phase is OPEN:
            self.phase = CLOSING
            self.closing_since = self.loop.time()
            self.transport.close()

    def abort(self) -> None:
        """Close now, dropping anything unwritten."""
        self.phase = CLOSED
        self.transport.abort()

    def _refuse(self) -> None:
        """Over --max-connections: a 503 at once, then close (after a short linger, so the client reads it)."""
        self.phase = CLOSED  # what arrives is dropped unread
        transport = self.transport
        transport.write(self.server.refused_one())
        if transport.can_write_eof():
            transport.write_eof()
        self.loop.call_later(_LINGER, transport.close)

    # --- timeouts (checked by the server's sweep) -----------------------------------------------
    def check_timeouts(self, now: float) -> None:
        server = self.server
        if self.phase is not OPEN:
            if self.phase is CLOSING and now - self.closing_since > server.client_timeout:
                log.info("closing a connection from %s: the client read nothing of the last response for %g s "
                         "(--client-timeout)", self.context, server.client_timeout)
                self.abort()  # what it left unread stays unwritten: no connection waits on a client forever
            return
        if self.idle_since and now - self.idle_since > server.idle_timeout:
            self.close()
            return
        if self.write_paused_at:
            if now - self.write_paused_at > server.client_timeout:
                log.info("closing a connection from %s: the client read nothing of the response for %g s "
                         "(--client-timeout)", self.context, server.client_timeout)
                self.abort()
            return
        req = self.current
        if req is not None and req.body_deadline and req.reading is not DELIVERED and now > req.body_deadline:
            log.info("closing a connection from %s: request body timeout", self.context)
            self.abort()
            return
        req = self.parsing
        if (req is not None and req is self.current and not self.reading_paused
                and now - self.last_read > server.client_timeout):
            self._timed_out(req)  # (a pipelined request's turn comes once the answers before it are sent)

    def _timed_out(self, req: ServerExchange) -> None:
        """The client went silent in the middle of a request: 408 while an answer can still be written, then close."""
        part = "body" if req.reading is not HEAD else "head"
        timeout = self.server.client_timeout
        log.info("closing a connection from %s: no bytes of the request %s for %g s (--client-timeout)",
                 self.context, part, timeout)
        req.timed_out = True
        if req is self.current and req.writing is PENDING:
            self.transport.write(error_response(408, "request_timeout",
                                                f"the request {part} stalled: nothing arrived for {timeout:g} s; "
                                                "send the whole request without pausing"))
        self.close()
