"""A local OTLP/HTTP trace receiver: `POST /v1/traces` (protobuf), its spans decoded or only counted.

The tracing tests run `Receiver(keep=True)` in a thread and read `spans` as plain dicts. `make
bench` runs it as a process (`python bench/otlp_receiver.py --port N`, pinned beside the test
upstream) that only counts, so a gateway with `--otlp-endpoint` exports to a real endpoint;
`GET /count` answers `{"requests": n, "spans": n}`. Needs opentelemetry-proto (the
`kt-gateway[otel]` extra brings it).
"""

from __future__ import annotations

import argparse
import asyncio
import threading
from typing import Any

import orjson
import tornado.httpserver
import tornado.ioloop
import tornado.netutil
import tornado.web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


class Receiver:
    """Accepts OTLP/HTTP trace exports on `url`; `spans` (when `keep`), `span_count`, `requests`."""

    def __init__(self, keep: bool = True, port: int = 0) -> None:
        self.keep = keep
        self.spans: list[dict[str, Any]] = []
        self.content_types: list[str] = []
        self.span_count = 0
        self.requests = 0
        self.sockets = tornado.netutil.bind_sockets(port, "127.0.0.1")
        self.port = self.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def take(self, body: bytes, content_type: str) -> None:
        """One export request's spans."""
        self.requests += 1
        self.content_types.append(content_type)
        request = ExportTraceServiceRequest.FromString(body)
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                self.span_count += len(scope.spans)
                if self.keep:
                    self.spans += [_as_dict(s) for s in scope.spans]

    def app(self) -> tornado.web.Application:
        receiver = self

        class Traces(tornado.web.RequestHandler):
            def post(self) -> None:
                receiver.take(self.request.body, self.request.headers.get("Content-Type", ""))
                self.set_header("Content-Type", "application/x-protobuf")
                self.finish(b"")

        class Count(tornado.web.RequestHandler):
            def get(self) -> None:
                self.set_header("Content-Type", "application/json")
                self.finish(orjson.dumps({"requests": receiver.requests, "spans": receiver.span_count}))

        return tornado.web.Application([(r"/v1/traces", Traces), (r"/count", Count)])

    def start(self) -> Receiver:
        """Serve on a thread of its own (its own event loop) until `stop()`."""
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(asyncio.new_event_loop())
            self.loop = tornado.ioloop.IOLoop.current()
            server = tornado.httpserver.HTTPServer(self.app())
            server.add_sockets(self.sockets)
            ready.set()
            self.loop.start()
            server.stop()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        self.loop.add_callback(self.loop.stop)
        self.thread.join(10)


def _as_dict(s: Any) -> dict[str, Any]:
    return {"name": s.name, "trace_id": s.trace_id.hex(), "span_id": s.span_id.hex(),
            "parent": s.parent_span_id.hex(), "kind": s.kind, "status": s.status.code,
            "start": s.start_time_unix_nano, "end": s.end_time_unix_nano,
            "attrs": {a.key: _value(a.value) for a in s.attributes}}


def _value(v: Any) -> Any:
    return getattr(v, v.WhichOneof("value")) if v.WhichOneof("value") else None


async def serve(port: int) -> None:
    receiver = Receiver(keep=False, port=port)
    tornado.httpserver.HTTPServer(receiver.app()).add_sockets(receiver.sockets)
    print(f"listening on {receiver.url}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    asyncio.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
