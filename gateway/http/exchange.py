"""One request and its response on a server connection: the `HTTPConnection` Tornado's handlers write to.

A `ServerExchange` is made when the parser meets a request. Its reading side carries the
parser's events to the handler (`HTTPMessageDelegate`), holding them back while the handler
is still busy or while an earlier request on the connection is being answered; its writing
side frames what the handler writes (Content-Length, chunked, or no body) and lets the
connection move on to the next request once both sides are done.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tornado import gen, httputil
from tornado.iostream import StreamClosedError
from tornado.log import app_log

from gateway.http.phases import (
    CHUNKED,
    DATA,
    DELIVERED,
    FINISHED,
    HEAD,
    HEADERS,
    LENGTH,
    NO_BODY,
    OPEN,
    PARSED,
    PENDING,
    STARTED,
    UNTIL_CLOSE,
    Event,
)

if TYPE_CHECKING:
    from gateway.http.connection import Context, ServerConnection

BACKLOG_LIMIT = 256 * 1024  # parsed body bytes not yet taken by a handler before reading pauses
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_LAST_CHUNK = b"0\r\n\r\n"


def closed_future() -> asyncio.Future[None]:
    """What a write on a closed connection returns: a future failed with `StreamClosedError`."""
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.set_exception(StreamClosedError())
    future.exception()  # retrieved: a handler that does not await its write must not log an error
    return future


class ServerExchange(httputil.HTTPConnection):
    """One request/response exchange on a `ServerConnection`: the `HTTPConnection` Tornado's handlers write to."""

    # Defaults as class attributes (immutable values only): a request sets only what differs.
    url = b""
    head_size = 0  # bytes of the request line and headers parsed so far
    head_seen = 0  # bytes received while the head was incomplete (httptools buffers an unfinished line)
    start_line: httputil.RequestStartLine
    remaining = 0  # bytes still owed to a Content-Length
    keep_alive = True
    expect_continue = False  # a `100 Continue` is owed once the handler took the head
    blocked = False  # the handler's headers_received/data_received future is pending
    timed_out = False  # closed by --client-timeout while this request was being received
    body_size = 0
    body_deadline = 0.0
    upgrade_body = 0  # an Upgrade request's body still to read: its Content-Length, or request_head.CHUNKED
    events: deque[tuple[Event, bytes | None]] | None = None  # events held back from the handler
    delegate: httputil.HTTPMessageDelegate | None = None
    close_callback: Callable[[], None] | None = None

    def __init__(self, conn: ServerConnection) -> None:
        self.conn = conn
        self.context: Context = conn.context
        self.headers = httputil.HTTPHeaders()
        self.max_body_size = conn.server.max_body_size
        # phases here, not as class defaults (see gateway/http/phases.py)
        self.reading = HEAD
        self.writing = PENDING
        self.framing = LENGTH

    # --- reading: parser events to the delegate ----------------------------------------------
    def push(self, kind: Event, data: bytes | None) -> None:
        """A parser event: to the handler now if it is this exchange's turn, else held back."""
        conn = self.conn
        if conn.phase is not OPEN:
            return
        if self is conn.current and not self.blocked and not self.events:
            self.deliver(kind, data)
            return
        if self.events is None:
            self.events = deque()
        self.events.append((kind, data))
        if data is not None:
            conn.backlog += len(data)
        if self is not conn.current or conn.backlog > BACKLOG_LIMIT:
            conn.pause_reading()

    def deliver(self, kind: Event, data: bytes | None) -> None:
        """Hand one event to the handler; a pending future it returns holds back the next ones."""
        conn = self.conn
        try:
            if kind is DATA:
                if self.writing is FINISHED or self.delegate is None:
                    return  # answered already: the rest of the body is read and dropped
                ret = self.delegate.data_received(data)  # type: ignore[arg-type]
            elif kind is HEADERS:
                conn.idle_since = 0.0
                self.delegate = conn.server.delegate.start_request(conn, self)
                ret = self.delegate.headers_received(self.start_line, self.headers)
            else:
                self.reading = DELIVERED
                if self.writing is FINISHED:
                    self.delegate = None  # read and answered (see `finish`)
                    conn.advance()
                    return
                assert self.delegate is not None
                ret = self.delegate.finish()  # type: ignore[func-returns-value]
        except httputil.HTTPInputError as exc:  # e.g. a missing or invalid Host header
            self.delegate = None
            conn.reject(self, 400, "bad_request", str(exc))
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
        if kind is HEADERS and self.expect_continue:
            self._send_continue()

    def _unblock(self, future: asyncio.Future[Any]) -> None:
        self.blocked = False
        conn = self.conn
        if conn.phase is not OPEN:
            return
        if future.cancelled() or future.exception() is not None:
            if not future.cancelled():
                app_log.error("Uncaught exception", exc_info=future.exception())
            conn.abort()
            return
        if self.expect_continue:
            self._send_continue()
        conn.advance()

    def _send_continue(self) -> None:
        self.expect_continue = False
        conn = self.conn
        if self.writing is PENDING and self.reading < PARSED and conn.phase is OPEN:
            conn.last_read = conn.loop.time()  # the client waited for this: its silence starts now
            conn.transport.write(_CONTINUE)

    # --- writing: tornado.httputil.HTTPConnection ----------------------------------------------
    def write_headers(self, start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
                      headers: httputil.HTTPHeaders, chunk: bytes | None = None) -> asyncio.Future[None]:
        """Send the status line and headers (and the first chunk) in one write."""
        conn = self.conn
        if conn.phase is not OPEN:
            return closed_future()
        assert isinstance(start_line, httputil.ResponseStartLine)
        code = start_line.code
        request = self.start_line
        http11 = request.version == "HTTP/1.1"
        self.writing = STARTED
        if request.method == "HEAD" or code in (204, 304) or code < 200:
            self.framing = NO_BODY
        elif "Content-Length" in headers:
            self.remaining = int(headers["Content-Length"])  # framing stays LENGTH, the default
        elif http11:
            self.framing = CHUNKED
        else:
            self.framing = UNTIL_CLOSE
            self.keep_alive = False
        connection = headers.get_list("Connection")  # not .get(): a KeyError inside costs ~8 % of a bare request
        if (connection and connection[0].lower() == "close") or conn.server.draining:
            self.keep_alive = False
        lines = [f"HTTP/1.1 {code} {start_line.reason}"]
        lines.extend([f"{name}: {value}" for name, value in headers.get_all()])
        if self.framing is CHUNKED:
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
        if chunk and self.framing is not NO_BODY:
            data += self._frame(chunk)
        conn.transport.write(data)
        return conn.written()

    def write(self, chunk: bytes) -> asyncio.Future[None]:
        """Send a body chunk now (a chunk of the chunked encoding unless a Content-Length was given)."""
        conn = self.conn
        if conn.phase is not OPEN:
            return closed_future()
        if chunk and self.framing is not NO_BODY:
            conn.transport.write(self._frame(chunk))
        return conn.written()

    def finish(self) -> None:
        """End the response; the next request on the connection is answered after it."""
        conn = self.conn
        self.writing = FINISHED
        self.close_callback = None
        if self.reading is DELIVERED:
            # Read and answered: let go of the handler, which holds this exchange as its connection
            # (docs/gateway.md, "Requests and the garbage collector", rule 1).
            self.delegate = None
        if conn.phase is not OPEN:
            return
        if self.framing is CHUNKED:
            conn.transport.write(_LAST_CHUNK)
        elif self.remaining:
            conn.abort()
            raise httputil.HTTPOutputError(f"Tried to write {self.remaining} bytes less than Content-Length")
        conn.response_finished(self)

    def _frame(self, chunk: bytes) -> bytes:
        framing = self.framing
        if framing is CHUNKED:
            return b"%x\r\n%b\r\n" % (len(chunk), chunk)
        if framing is LENGTH:
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


