"""Health, metrics and admin endpoints (DESIGN Contract 3).

Open: `GET /healthz`, `/readyz`, `/health`, `/metrics`. Admin (Bearer `$KEEPTRUSTS_ADMIN_TOKEN`
when set, else open): `GET /keeptrusts/config`, `POST /keeptrusts/config/reload`,
`GET /keeptrusts/status`, `GET /keeptrusts/events`, `GET /keeptrusts/events/summary`,
`GET /keeptrusts/ui` (the console page, gateway/control/console_web.py).
"""

from __future__ import annotations

import base64
import hmac
import time
from typing import Any

import orjson
import tornado.web
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.control.ops import Ops
from gateway.events.rollup import MAX_SLICES, SummaryQuery
from gateway.events.times import parse_time
from gateway.proxy.errors import envelope

MAX_EVENTS = 1000
SUMMARY_WINDOW_S = 3600.0  # `since` of /keeptrusts/events/summary when not given


class _Base(tornado.web.RequestHandler):
    ops: Ops

    def initialize(self, ops: Ops) -> None:
        self.ops = ops

    def send_json(self, body: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(orjson.dumps(body, default=str))

    def send_error_envelope(self, status: int, type_: str, code: str, message: str, **extra: Any) -> None:
        self.send_json(envelope(type_, code, message, None, **extra), status)

    def write_error(self, status_code: int, **kwargs: Any) -> None:  # never a traceback
        self.send_error_envelope(status_code, "server_error", "internal_error", self._reason)


class _Admin(_Base):
    browser = False  # also accept HTTP Basic with the token as password (a browser prompts for it)

    def prepare(self) -> None:
        token = self.ops.admin_token
        if not token:
            return
        given = self.request.headers.get("Authorization", "")
        if self.browser and given[:6].lower() == "basic ":
            given = f"Bearer {_basic_password(given[6:])}"
        expected = f"Bearer {token}"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            self.set_header("WWW-Authenticate", 'Basic realm="kt-admin"' if self.browser else 'Bearer realm="kt-admin"')
            self.send_error_envelope(401, "authentication_error", "invalid_admin_token",
                                     "admin endpoints need 'Authorization: Bearer <KEEPTRUSTS_ADMIN_TOKEN>'")


def _basic_password(encoded: str) -> str:
    """The password of an HTTP Basic credential (any user name), or "" when it does not decode."""
    try:
        return base64.b64decode(encoded.strip(), validate=True).decode().partition(":")[2]
    except (ValueError, UnicodeDecodeError):
        return ""


class Healthz(_Base):
    def get(self) -> None:
        self.send_json({"status": "ok"})


class Readyz(_Base):
    def get(self) -> None:
        """Ready when this worker has a config and is not draining, and (with --workers) so is every live worker:
        the workers share one socket, so a worker that is not ready fails its share of the host's requests."""
        runtime = self.ops.runtime
        if not runtime.ready:
            reason = "draining" if runtime.draining else "no config loaded"
            self.send_json({"status": "not_ready", "ready": False, "reason": reason}, 503)
            return
        body: dict[str, Any] = {"status": "ready", "ready": True, "revision": runtime.snapshot.revision}
        group_view = self.ops.group_view()
        if group_view is not None:
            waiting = [w.get("index") for w in group_view if not w.get("ready")]
            body["workers"] = {"ready": len(group_view) - len(waiting), "total": len(group_view)}
            if waiting:
                body.update(status="not_ready", ready=False, reason=f"worker(s) {waiting} not ready")
                self.send_json(body, 503)
                return
        self.send_json(body)


class Health(_Base):
    def get(self) -> None:
        body = self.ops.health()
        self.send_json(body, 503 if body["status"] == "unhealthy" else 200)


class Metrics(_Base):
    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(self.ops.render_metrics())


class ConfigView(_Admin):
    def get(self) -> None:
        view = self.ops.config_view()
        if view is None:
            self.send_error_envelope(503, "not_ready", "no_config", "no config is loaded yet")
        else:
            self.send_json(view)


class ConfigReload(_Admin):
    async def post(self) -> None:
        result = await self.ops.reloader.reload("api")
        if result.result == "error":
            self.send_error_envelope(422, "validation_error", "config_invalid",
                                     f"{result.error}; the previous config keeps serving",
                                     findings=[f.as_dict() for f in result.findings], revision=result.revision)
        else:
            self.send_json(result.as_dict())


class Status(_Admin):
    def get(self) -> None:
        self.send_json(self.ops.status())


class _EventsAdmin(_Admin):
    def store_window(self) -> tuple[Any, float | None, float | None] | None:
        """The store's writer and the query's `since`/`until`; None once a 503 or 400 was answered."""
        writer = self.ops.writer
        if writer is None:
            self.send_error_envelope(503, "not_ready", "no_event_store", "the event store is not open")
            return None
        try:
            return writer, parse_time(self.get_query_argument("since", None)), parse_time(
                self.get_query_argument("until", None))
        except ValueError as exc:
            self.send_error_envelope(400, "validation_error", "invalid_query", str(exc))
            return None

    def whole_number(self, name: str, default: str, wanted: str, low: int = 0, high: int | None = None) -> int | None:
        """The query argument `name` as a whole number in [low, high]; None once a 400 saying `wanted` was answered."""
        text = self.get_query_argument(name, default)
        number = int(text) if text.isascii() and text.isdigit() and len(text) <= 9 else -1  # not "²", nor 5,000 digits
        if number >= low and (high is None or number <= high):
            return number
        self.send_error_envelope(400, "validation_error", "invalid_query", f"invalid {name} {text!r}: use {wanted}")
        return None


class Events(_EventsAdmin):
    async def get(self) -> None:
        asked = self.store_window()
        limit = asked and self.whole_number("limit", "50", f"a whole number up to {MAX_EVENTS}")
        if asked is None or limit is None:
            return
        writer, since, until = asked
        verdict = self.get_query_argument("verdict", None) or None
        after = self.get_query_argument("after", None) or None
        limit = min(limit, MAX_EVENTS)
        events = await writer.call(writer.store.query, since, until, limit, verdict, after)
        next_after = events[-1]["id"] if events else after
        self.send_json({"events": events, "count": len(events), "next_after": next_after})


class EventsSummary(_EventsAdmin):
    """`GET /keeptrusts/events/summary`: counts and latency of a window from the store's per-minute rollups."""

    async def get(self) -> None:
        asked = self.store_window()
        slices = asked and self.whole_number("slices", "24", f"a whole number from 1 to {MAX_SLICES}", 1, MAX_SLICES)
        if asked is None or slices is None:
            return
        writer, since, until = asked
        until = time.time() if until is None else until
        since = until - SUMMARY_WINDOW_S if since is None else since
        if since > until:
            self.send_error_envelope(400, "validation_error", "invalid_query", "since is after until")
            return
        text = {name: (self.get_query_argument(name, None) or "").strip()[:200]
                for name in ("verdict", "policy", "model", "provider")}
        query = SummaryQuery(since=since, until=until, slices=slices, **text)
        self.send_json(await writer.call(writer.store.summary, query))


def admin_routes(ops: Ops) -> list[tuple[str, type[tornado.web.RequestHandler], dict[str, Any]]]:
    """The route table entries for health, metrics and admin endpoints."""
    from gateway.control.console_web import ui_routes  # it builds on _Admin below

    kwargs = {"ops": ops}
    return [
        *ui_routes(ops),
        (r"/healthz", Healthz, kwargs),
        (r"/readyz", Readyz, kwargs),
        (r"/health", Health, kwargs),
        (r"/metrics", Metrics, kwargs),
        (r"/keeptrusts/config", ConfigView, kwargs),
        (r"/keeptrusts/config/reload", ConfigReload, kwargs),
        (r"/keeptrusts/status", Status, kwargs),
        (r"/keeptrusts/events", Events, kwargs),
        (r"/keeptrusts/events/summary", EventsSummary, kwargs),
    ]
