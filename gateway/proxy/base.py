"""What every proxy route is built on: the request id, the revision headers, the one error envelope
(never a traceback), and, for the routes that need it, readiness, the gateway key and the request
record (`AuthedHandler`). `NotFoundHandler` answers any path no route serves.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import orjson
import tornado.httputil
import tornado.web

from gateway.control.runtime import Runtime
from gateway.control.tracing import RequestTrace
from gateway.events.record import RequestRecord, new_request_id
from gateway.http.handler import Handler
from gateway.proxy.errors import GatewayError, invalid, not_found, not_ready
from gateway.proxy.keys import presented_key
from gateway.proxy.services import services_of

log = logging.getLogger("kt.gateway")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_CLIENT_FAULTS = {499: "client_closed", 408: "request_timeout"}  # error codes of requests the client left unfinished


def request_id_for(headers: Any) -> str:
    """The client's `X-Request-ID` when it is sane, else a new `req_<hex>`."""
    rid = headers.get_list("X-Request-ID")  # not .get(): a missing header costs a KeyError inside
    return rid[0] if rid and _REQUEST_ID.match(rid[0]) else new_request_id()


def error_for(exc: BaseException, request_id: str | None) -> GatewayError:
    """The client-facing error for whatever a handler raised (never a traceback)."""
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, tornado.web.HTTPError) and exc.status_code < 500:
        reason = exc.reason or tornado.httputil.responses.get(exc.status_code, "error")
        return GatewayError(exc.status_code, "validation_error", reason.lower().replace(" ", "_"),
                            exc.log_message or reason)
    return GatewayError(500, "internal_error", "internal_error",
                        f"internal gateway error; the gateway log has the details (request {request_id})")


def log_unexpected(exc: BaseException, request_id: str | None) -> None:
    """Log a handler's exception with its traceback unless it is an expected client error."""
    if isinstance(exc, GatewayError) or (isinstance(exc, tornado.web.HTTPError) and exc.status_code < 500):
        return
    log.error("request %s failed", request_id, exc_info=(type(exc), exc, exc.__traceback__))


class BaseHandler(Handler):
    """Every proxy route: request id, config revision header, the error envelope, never a traceback."""

    anthropic_errors = False
    request_id: str | None = None

    def __init__(self, settings: dict[str, Any], connection: Any) -> None:
        super().__init__(settings, connection)
        self.services = services_of(settings)
        self.runtime: Runtime = self.services.runtime
        self.snap = self.runtime.snapshot
        # The code of the error answered, not the exception (docs/gateway.md, "Requests and the
        # garbage collector", rule 2).
        self.error_code: str | None = None

    def set_default_headers(self) -> None:
        if self.request_id:
            self.set_header("X-Request-ID", self.request_id)
            self.set_header("X-Keeptrusts-Config-Revision", self.snap.revision if self.snap else "none")
            if self.snap and not self.snap.config.enabled:
                self.set_header("X-Keeptrusts-Policies", "disabled")

    def prepare(self) -> None:
        self.request_id = request_id_for(self.request.headers)
        self.set_default_headers()

    def method_not_allowed(self) -> Exception:
        allowed = ", ".join(sorted(self.methods))
        return GatewayError(405, "validation_error", "method_not_allowed",
                            f"{self.request.method} is not supported on {self.request.path}; use {allowed}",
                            headers={"Allow": allowed})

    def send_json(self, payload: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(payload if isinstance(payload, bytes) else orjson.dumps(payload))

    def handle_error(self, exc: BaseException) -> None:
        log_unexpected(exc, self.request_id)
        err = error_for(exc, self.request_id)
        self.error_code = err.code
        self.set_default_headers()
        for name, value in err.headers.items():
            self.set_header(name, value)
        self.send_json(err.body(self.anthropic_errors), err.status)


class NotFoundHandler(tornado.web.RequestHandler):
    """Any path no route serves: 404 with the envelope (the Application's default handler)."""

    def prepare(self) -> None:
        if self.request.path.startswith("/v1/responses/"):  # retrieval of a stored response: kt stores none
            raise invalid("`store`: kt keeps no responses, so /v1/responses/{id} (retrieve, delete, input items) "
                          "cannot be answered; keep the response on the client side", "unsupported_stateful")
        raise not_found(self.request.path)

    def check_xsrf_cookie(self) -> None:  # an API: no cookies, no XSRF
        return

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        err = error_for(exc, None) if exc is not None else not_found(self.request.path)
        self.clear_header("Server")
        self.set_status(err.status)
        self.set_header("Content-Type", "application/json")
        self.finish(err.body(False))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if value is not None:
            log_unexpected(value, None)


class AuthedHandler(BaseHandler):
    """Routes that need the gateway to be ready and, with --keys-file, a gateway key."""

    limited = False  # counts against --max-concurrency (the proxy routes)

    def prepare(self) -> None:
        super().prepare()
        self.record = RequestRecord(self.request_id or "", self.request.path)
        runtime = self.runtime
        runtime.in_flight += 1
        self._counted = True
        if self.limited and runtime.max_concurrency and runtime.in_flight > runtime.max_concurrency:
            raise GatewayError(503, "unavailable", "overloaded",
                               f"this gateway is at its limit of {runtime.max_concurrency} requests in flight "
                               "(--max-concurrency); retry shortly", headers={"Retry-After": "1"})
        if not self.runtime.ready or self.snap is None:
            raise not_ready()
        snap = self.snap
        rec = self.record
        rec.revision = snap.revision
        rec.pack_name = snap.config.pack.name
        rec.pack_version = snap.config.pack.version
        rec.policies_enabled = snap.config.enabled
        rec.fail_mode = self.runtime.fail_mode
        if runtime.tracer is not None:
            rec.trace = RequestTrace.begin(self.request.headers.get("traceparent"))
        keys = self.services.keys
        if keys is not None:
            headers = self.request.headers
            label = keys.label_for(presented_key(headers.get("Authorization"), headers.get("X-Api-Key")))
            if label is None:
                raise GatewayError(401, "authentication_error", "invalid_api_key",
                                   "missing or invalid gateway key: send it as 'Authorization: Bearer <key>' "
                                   "or in the 'x-api-key' header")
            rec.key_label = label

    def on_finish(self) -> None:
        if getattr(self, "_counted", False):
            self._counted = False
            self.runtime.in_flight -= 1
            tally = getattr(self, "tally", None)
            if tally is not None and (tally.queued or tally.holds) and self.snap is not None:
                # usage settled after the answer, and every reservation the request did not use given back
                self.runtime.state.apply_later(self.snap.config.chain.namespace, tally.queued + tally.take_undo())
                tally.queued = []
            rec = self.record
            rec.status = rec.status or self.get_status()
            if rec.error_code is None and rec.status in _CLIENT_FAULTS:
                rec.error_code = _CLIENT_FAULTS[rec.status]
            if rec.error_code is None:
                rec.error_code = self.error_code
            if self.emits_event:
                rec.finished = time.perf_counter()
                self.runtime.record(rec)

    emits_event = True
