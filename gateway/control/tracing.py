"""OpenTelemetry traces of requests (`--otlp-endpoint`), following the GenAI semantic conventions.

Off by default, and then free: nothing here imports OpenTelemetry, a request's record has no
`trace`, and the request path only tests `rec.trace is not None`. When on, the request path
notes span boundaries as plain numbers in a `RequestTrace` (ids drawn up front, so the
upstream attempt's `traceparent` can be sent before its span exists); the spans are built with
those times when the record is published (in the batch after the response) and exported by the
SDK's BatchSpanProcessor on its own thread, off the request path.

Spans: `chat <model>` (the request; kind SERVER), children `input_chain`, one `upstream <target>`
per attempt (kind CLIENT; a failed attempt has status ERROR, so a fallback shows as two), and
`output_chain` (for a stream, from its first chunk to the chain's last decision, within the
attempt). A client's W3C `traceparent` makes the request span its child; the attempt's own span
id goes to the upstream in `traceparent`.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

from gateway.providers.upstream import UPSTREAM_TRACEPARENT

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def parse_traceparent(value: str | None) -> tuple[int, int, bool] | None:
    """(trace id, parent span id, sampled) of a W3C `traceparent`; None when absent or invalid."""
    match = _TRACEPARENT.match((value or "").strip().lower())
    if not match or set(match.group(1)) == {"0"} or set(match.group(2)) == {"0"}:
        return None
    return int(match.group(1), 16), int(match.group(2), 16), bool(int(match.group(3), 16) & 1)


def _span_id() -> int:
    return int.from_bytes(os.urandom(8), "big") or 1


def traceparent(trace_id: int, span_id: int) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-01"


@dataclass(slots=True)
class RequestTrace:
    """One request's span boundaries, noted on the request path (epoch ns)."""

    trace_id: int
    span_id: int
    parent_id: int | None  # the client's span, from its traceparent
    start_ns: int = field(default_factory=time.time_ns)
    spans: list[tuple[str, int, int, int, dict[str, Any]]] = field(default_factory=list)  # name, id, start, end, attrs

    @classmethod
    def begin(cls, header: str | None) -> RequestTrace:
        parent = parse_traceparent(header)
        if parent is None:
            return cls(int.from_bytes(os.urandom(16), "big") or 1, _span_id(), None)
        return cls(parent[0], _span_id(), parent[1])

    def child(self, name: str, start_ns: int, attrs: dict[str, Any], span_id: int | None = None) -> None:
        self.spans.append((name, span_id or _span_id(), start_ns, time.time_ns(), attrs))
        if span_id is not None:  # an upstream attempt ended: later calls of this task send no stale parent
            UPSTREAM_TRACEPARENT.set(None)

    def attempt_id(self) -> int:
        """A span id for the next upstream attempt; sets the `traceparent` the adapters send."""
        span_id = _span_id()
        UPSTREAM_TRACEPARENT.set(traceparent(self.trace_id, span_id))
        return span_id


class Tracer:
    """The OpenTelemetry SDK set up for OTLP/HTTP; `export(record)` turns a record into spans."""

    def __init__(self, endpoint: str, service_name: str = "kt-gateway", version: str = "") -> None:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError as exc:
            raise RuntimeError("--otlp-endpoint needs the OpenTelemetry SDK: pip install 'kt-gateway[otel]'") from exc
        from opentelemetry import trace

        self._trace = trace
        url = endpoint.rstrip("/")
        if not url.endswith("/v1/traces"):
            url += "/v1/traces"
        self.provider = TracerProvider(resource=Resource.create(
            {"service.name": service_name, "service.version": version}), id_generator=_IDS)
        self.processor = BatchSpanProcessor(OTLPSpanExporter(endpoint=url, timeout=10))
        self.provider.add_span_processor(self.processor)
        self.tracer = self.provider.get_tracer("kt.gateway", version)

    def _context(self, trace_id: int, span_id: int) -> Any:
        t = self._trace
        parent = t.SpanContext(trace_id, span_id, is_remote=True, trace_flags=t.TraceFlags(t.TraceFlags.SAMPLED))
        return t.set_span_in_context(t.NonRecordingSpan(parent))

    def export(self, rec: Any) -> None:
        """The request span and its children of one finished `RequestRecord` (queued for the batch)."""
        tr: RequestTrace = rec.trace
        t = self._trace
        operation = "embeddings" if rec.route.endswith("/embeddings") else "chat"
        attrs = {"gen_ai.operation.name": operation, "gen_ai.request.model": rec.model or "",
                 "http.route": rec.route, "http.response.status_code": rec.status,
                 "kt.request_id": rec.request_id, "kt.config.revision": rec.revision or "",
                 "kt.attempts": rec.attempts, "gen_ai.usage.input_tokens": rec.input_tokens,
                 "gen_ai.usage.output_tokens": rec.output_tokens}
        if rec.provider:
            attrs["gen_ai.provider.name"] = attrs["gen_ai.system"] = rec.provider
        end_ns = tr.start_ns + int(((rec.finished or time.perf_counter()) - rec.started) * 1e9)
        end_ns = max(end_ns, max((span[3] for span in tr.spans), default=0))  # a stream attempt ends after it answered
        parent = self._context(tr.trace_id, tr.parent_id) if tr.parent_id else None
        root = self._start(f"{operation} {rec.model or ''}".strip(), parent, tr.start_ns, t.SpanKind.SERVER,
                           attrs, tr.trace_id, tr.span_id)
        if rec.status >= 500:  # a 4xx (a policy block, a bad request) is the client's, not a server error
            root.set_status(t.Status(t.StatusCode.ERROR, rec.error_code or str(rec.status)))
        if rec.error_code:
            root.set_attribute("error.type", rec.error_code)
        inner = self._context(tr.trace_id, tr.span_id)
        for name, span_id, start, end, span_attrs in tr.spans:
            kind = t.SpanKind.CLIENT if name.startswith("upstream") else t.SpanKind.INTERNAL
            span = self._start(name, inner, start, kind, span_attrs, tr.trace_id, span_id)
            if span_attrs.get("error.type"):
                span.set_status(t.Status(t.StatusCode.ERROR, str(span_attrs["error.type"])))
            span.end(end_time=end)
        root.end(end_time=end_ns)

    def _start(self, name: str, context: Any, start: int, kind: Any, attrs: dict[str, Any],
               trace_id: int, span_id: int) -> Any:
        _IDS.next_ids = (trace_id, span_id)
        try:
            return self.tracer.start_span(name, context=context, kind=kind, attributes=attrs, start_time=start)
        finally:
            _IDS.next_ids = None

    def shutdown(self) -> None:
        """Export what is queued, then stop the exporter thread."""
        self.processor.force_flush(5000)
        self.provider.shutdown()


class _FixedIds:
    """An IdGenerator that hands out the ids noted on the request path (then random ones)."""

    next_ids: tuple[int, int] | None = None

    def generate_trace_id(self) -> int:
        return self.next_ids[0] if self.next_ids else int.from_bytes(os.urandom(16), "big") or 1

    def is_trace_id_random(self) -> bool:
        return True

    def generate_span_id(self) -> int:
        return self.next_ids[1] if self.next_ids else _span_id()


_IDS = _FixedIds()
