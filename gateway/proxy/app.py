"""The Tornado application: the route table and what every handler shares.

`ROUTES` is the one place the proxy routes are declared: exact paths the server's
`gateway.http.handler.Router` sends to their lean handlers. Other parts add their
RequestHandler routes through `make_app(..., extra_routes=[...])` (admin, metrics, events)
without touching the proxy; any other path is a 404 with the envelope.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tornado.web

from gateway.control.runtime import Runtime
from gateway.http.handler import Handler
from gateway.providers.upstream import Timeouts, UpstreamClient
from gateway.proxy.base import NotFoundHandler, request_id_for
from gateway.proxy.chat import ChatHandler
from gateway.proxy.embeddings import EmbeddingsHandler
from gateway.proxy.keys import GatewayKeys
from gateway.proxy.messages import MessagesHandler
from gateway.proxy.models import ModelsHandler
from gateway.proxy.resilience import Breakers, RoundRobin
from gateway.proxy.responses import ResponsesHandler
from gateway.proxy.services import SETTINGS_KEY, ProxyServices

MIB = 1024 * 1024
# In-flight proxied requests per worker. LLM requests spend seconds waiting on the provider and cost
# little CPU meanwhile, so a worker holds many; past the upstream pool (max_upstream_connections, 1000)
# a request would only wait for a connection, so the default stops there.
DEFAULT_MAX_CONCURRENCY = 1000

ROUTES: list[tuple[str, type[Handler]]] = [  # exact paths -> lean handlers (gateway/http/handler.py)
    ("/v1/chat/completions", ChatHandler),
    ("/v1/messages", MessagesHandler),
    ("/v1/responses", ResponsesHandler),
    ("/v1/embeddings", EmbeddingsHandler),
    ("/v1/models", ModelsHandler),
]


@dataclass(frozen=True)
class GatewaySettings:
    """Everything `kt gateway run` decides at start (flags), as one value."""

    host: str = "0.0.0.0"
    port: int = 41002
    fail_mode: str = "block"
    max_body_size: int = 10 * MIB
    max_response_size: int = 64 * MIB  # the largest upstream answer (decoded) read; larger is a 502
    drain_timeout: float = 30.0
    client_timeout: float = 30.0  # longest silence of a client sending a request, or not reading an answer
    max_connections: int | None = None  # None: what the open-file limit allows (http1.default_max_connections)
    keys: GatewayKeys | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)
    breaker_threshold: int = 5
    breaker_cooldown_s: float = 30.0
    max_upstream_connections: int = 1000
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY  # in-flight proxied requests; past it 503 overloaded at once
    state_dir: Path | None = None  # events.db lives here; None: $KEEPTRUSTS_STATE_DIR or ~/.local/state/kt
    events_max_size: int = 512 * MIB  # the event store's cap on disk (gateway/events/store.py DEFAULT_MAX_BYTES)
    watch_config: bool = True  # reload when the config file changes (SIGHUP and the reload API always work)
    wait_for_config: bool = False  # start not ready when the config is missing/invalid (e.g. first sync pending)
    state_url: str | None = None  # redis://, rediss://, unix://: shared counters; None: <state dir>/counters.db
    state_password_file: str | None = None  # the Redis password, when not in the URL
    otlp_endpoint: str | None = None  # OTLP/HTTP collector for traces (gateway/control/tracing.py); None: off


def make_app(
    runtime: Runtime,
    settings: GatewaySettings,
    upstream: UpstreamClient | None = None,
    extra_routes: Sequence[tuple[Any, ...]] = (),
) -> tornado.web.Application:
    """The application for every route but the proxy ones: `extra_routes`, then a 404 envelope for any other path."""
    return tornado.web.Application(
        list(extra_routes),
        default_handler_class=NotFoundHandler,
        **{SETTINGS_KEY: ProxyServices(
            runtime=runtime,
            keys=settings.keys,
            max_body_size=settings.max_body_size,
            upstream=upstream or UpstreamClient(settings.timeouts, settings.max_upstream_connections,
                                                max_response_size=settings.max_response_size),
            breakers=Breakers(settings.breaker_threshold, settings.breaker_cooldown_s),
            round_robin=RoundRobin(),
        )},
        compress_response=False,
        log_function=_no_access_log,  # one line per request comes from the decision event instead
        transforms=[_stamp(runtime)],
    )


def _stamp(runtime: Runtime) -> type[tornado.web.OutputTransform]:
    """An output transform that gives every RequestHandler response (admin, 404) its request id and revision."""

    class Stamp(tornado.web.OutputTransform):
        def __init__(self, request: Any) -> None:
            self.request = request

        def transform_first_chunk(self, status_code: int, headers: Any, chunk: bytes,
                                  finishing: bool) -> tuple[int, Any, bytes]:
            if "X-Request-ID" not in headers:
                headers["X-Request-ID"] = request_id_for(self.request.headers)
            if "X-Keeptrusts-Config-Revision" not in headers:
                snap = runtime.snapshot
                headers["X-Keeptrusts-Config-Revision"] = snap.revision if snap else "none"
            return status_code, headers, chunk

    return Stamp


def _no_access_log(handler: tornado.web.RequestHandler) -> None:
    return None
