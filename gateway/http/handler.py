"""A lean request handler for the hot routes, driven directly by Tornado's HTTP connection.

`tornado.web.RequestHandler` costs about 55 us of CPU per request before any of our code runs
(measured against a bare `HTTPMessageDelegate` on this machine: 136 vs 81 us per request):
header bookkeeping, a Date header through `email.utils`, output transforms, XSRF/cookie
hooks, argument parsing. The proxy routes need none of that, so they are
`httputil.HTTPMessageDelegate`s with the small part of RequestHandler's surface the proxy
uses (`set_status`, `set_header`, `write`/`flush`/`finish`, `prepare`, `on_finish`,
`on_connection_close`). The server's `Router` sends their exact paths to them and
everything else (admin, health, metrics, webhook, 404) to the Tornado `Application`, whose
routes stay RequestHandlers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from email.utils import formatdate
from typing import Any

from tornado import httputil
from tornado.iostream import StreamClosedError

from sync.clock import per_second


class RequestHead:
    """What a handler reads of the request."""

    __slots__ = ("connection", "headers", "method", "path", "query")

    def __init__(self, start_line: httputil.RequestStartLine, headers: httputil.HTTPHeaders,
                 connection: httputil.HTTPConnection) -> None:
        self.method = start_line.method
        self.path, _, self.query = start_line.path.partition("?")
        self.headers = headers
        self.connection = connection


class ResponseHeaders(dict[str, str]):
    """Response headers as the connection reads them (`in`, `[]`, `get`, `get_all`), without
    `HTTPHeaders`' per-name normalisation: the handler writes canonical names itself."""

    def get_all(self) -> Iterable[tuple[str, str]]:
        return self.items()

    def get_list(self, name: str) -> list[str]:
        return [self[name]] if name in self else []


_date = per_second(lambda second: formatdate(second, usegmt=True))


def http_date() -> str:
    """The Date header value, formatted once per second."""
    return _date(int(time.time()))


class Handler:
    """One request. Subclasses implement `get`/`post` (sync or async) and may override the hooks."""

    methods: frozenset[str] = frozenset()  # e.g. {"POST"}; others get 405 from `method_not_allowed`
    cancel_on_close = True  # a client that goes away cancels the work it asked for (upstream calls included)

    def __init__(self, settings: dict[str, Any], connection: httputil.HTTPConnection) -> None:
        self.settings = settings
        self.connection = connection
        self.request: RequestHead = None  # type: ignore[assignment]  # set in headers_received
        self._status = 200
        self._headers: dict[str, str] = {}
        self._pending: list[bytes] = []
        self._headers_written = False
        self._finished = False
        self._task: asyncio.Future[None] | None = None
        self._failed = False  # prepare() answered already: ignore the body

    # --- hooks ------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Runs once the headers are in, before the body; raise to answer with an error."""

    def on_finish(self) -> None:
        """Runs once after the response is finished (or abandoned)."""

    def on_connection_close(self) -> None:
        """The client closed the connection before the response finished."""

    def handle_error(self, exc: BaseException) -> None:
        """Answer `exc` (subclasses write their error envelope); called with headers not yet sent."""
        self.set_status(500)
        self.finish(b"")

    def method_not_allowed(self) -> Exception:
        """The exception `handle_error` gets for a method the route does not serve."""
        return RuntimeError(f"method {self.request.method} not allowed")

    # --- response ---------------------------------------------------------------------------
    def set_status(self, status: int) -> None:
        self._status = status

    def get_status(self) -> int:
        return self._status

    def set_header(self, name: str, value: str) -> None:
        self._headers[name] = value

    def clear_header(self, name: str) -> None:
        self._headers.pop(name, None)

    def write(self, chunk: bytes) -> None:
        self._pending.append(chunk)

    def flush(self) -> asyncio.Future[None]:
        """Send what was written (the headers first); resolves when the connection took it."""
        chunk = b"".join(self._pending)
        self._pending.clear()
        if not self._headers_written:
            self._headers_written = True
            return self.connection.write_headers(self._start_line(), self._header_block(), chunk)
        return self.connection.write(chunk)

    def finish(self, chunk: bytes | None = None) -> None:
        """Send the rest and end the response; a one-piece answer gets a Content-Length."""
        if self._finished:
            raise RuntimeError("finish() called twice")
        if chunk:
            self._pending.append(chunk)
        try:
            if not self._headers_written:
                body = b"".join(self._pending)
                self._pending.clear()
                self._headers_written = True
                if self._status not in (204, 304):
                    self._headers["Content-Length"] = str(len(body))
                self.connection.write_headers(self._start_line(), self._header_block(), body)
            elif self._pending:
                self.flush()
            self.connection.finish()
        finally:
            self._done()

    def _start_line(self) -> httputil.ResponseStartLine:
        return httputil.ResponseStartLine("HTTP/1.1", self._status, httputil.responses.get(self._status, "Unknown"))

    def _header_block(self) -> httputil.HTTPHeaders:
        return ResponseHeaders({"Date": http_date(), **self._headers})  # type: ignore[return-value]

    def _done(self) -> None:
        if not self._finished:
            self._finished = True
            self.connection.set_close_callback(None)
            self.on_finish()

    # --- driven by `_HandlerDelegate` ------------------------------------------------------------------
    def _headers_in(self, start_line: httputil.RequestStartLine, headers: httputil.HTTPHeaders) -> None:
        self.request = RequestHead(start_line, headers, self.connection)
        self.connection.set_close_callback(self._connection_closed)
        try:
            self.prepare()
            if self.request.method not in self.methods:
                raise self.method_not_allowed()
        except Exception as exc:
            self._failed = True
            self._answer_error(exc)

    def body_received(self, chunk: bytes) -> None:
        """A piece of the request body (subclasses keep it)."""

    def _body_done(self) -> None:
        if not self._failed and not self._finished:
            self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        try:
            result = getattr(self, self.request.method.lower())()
            if result is not None:
                await result
        except asyncio.CancelledError:  # the client went away (`_connection_closed`): nobody to answer
            self._status = 499
            self._done()
            return
        except Exception as exc:
            if not self._finished:
                self._answer_error(exc)
        self._end()

    def _answer_error(self, exc: BaseException) -> None:
        if not self._headers_written:
            self._status, self._headers, self._pending = 500, {}, []
            with contextlib.suppress(Exception):  # the connection is gone; nothing more to tell the client
                self.handle_error(exc)
        self._end()  # headers already sent: too late for a status, end what was sent

    def _end(self) -> None:
        if not self._finished:
            try:
                self.finish()
            except (StreamClosedError, RuntimeError):
                self._done()

    def _connection_closed(self) -> None:
        self.on_connection_close()
        if self._task is None and not self._finished:  # gone (or timed out) before the request was complete
            self._status = 408 if getattr(self.connection, "timed_out", False) else 499
            self._done()
        elif self._task is not None and not self._task.done() and self.cancel_on_close:
            self._task.cancel()  # `_run` ends it as 499; an upstream call in flight closes its connection


class _HandlerDelegate(httputil.HTTPMessageDelegate):
    """The connection's side of a `Handler` (the delegate's `finish` means "request body complete")."""

    __slots__ = ("handler",)

    def __init__(self, handler: Handler) -> None:
        self.handler = handler

    def headers_received(self, start_line: Any, headers: httputil.HTTPHeaders) -> None:
        assert isinstance(start_line, httputil.RequestStartLine)
        self.handler._headers_in(start_line, headers)

    def data_received(self, chunk: bytes) -> None:
        if not self.handler._failed:
            self.handler.body_received(chunk)

    def finish(self) -> None:
        self.handler._body_done()

    def on_connection_close(self) -> None:
        self.handler._connection_closed()


class Router(httputil.HTTPServerConnectionDelegate):
    """The server's delegate: exact paths of lean routes go straight to their handler, the rest to `app`.

    The hot routes skip the Application's per-request `HTTPServerRequest` and regex routing
    (~13 us); their handlers get the Application's settings.
    """

    def __init__(self, app: Any, routes: Iterable[tuple[str, type[Handler]]]) -> None:
        self.app = app
        self.routes = dict(routes)

    def start_request(self, server_conn: object, request_conn: httputil.HTTPConnection) -> httputil.HTTPMessageDelegate:
        return _RoutedRequest(self, server_conn, request_conn)


class _RoutedRequest(httputil.HTTPMessageDelegate):
    __slots__ = ("delegate", "dispatcher", "request_conn", "server_conn")

    def __init__(self, dispatcher: Router, server_conn: object, request_conn: httputil.HTTPConnection) -> None:
        self.dispatcher, self.server_conn, self.request_conn = dispatcher, server_conn, request_conn
        self.delegate: httputil.HTTPMessageDelegate | None = None

    def headers_received(self, start_line: Any, headers: httputil.HTTPHeaders) -> Any:
        handler = self.dispatcher.routes.get(start_line.path.partition("?")[0])
        if handler is not None:  # (the server refused a request without exactly one Host header)
            self.delegate = _HandlerDelegate(handler(self.dispatcher.app.settings, self.request_conn))
        else:
            self.delegate = self.dispatcher.app.start_request(self.server_conn, self.request_conn)
        return self.delegate.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Any:
        assert self.delegate is not None
        return self.delegate.data_received(chunk)

    def finish(self) -> None:
        assert self.delegate is not None
        self.delegate.finish()

    def on_connection_close(self) -> None:
        if self.delegate is not None:
            self.delegate.on_connection_close()
