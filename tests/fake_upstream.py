"""The test upstream: a local LLM provider speaking the OpenAI and Anthropic wire formats.

The only fake kt's tests and benchmarks allow. It answers like the real APIs (JSON and SSE,
OpenAI's chat completions and Responses (`POST /v1/responses`, typed SSE events), embeddings,
usage, their validation errors and error envelopes), records every request it received, and
injects faults on demand.

In-process::

    fake = FakeUpstream("Hello!").start()          # background thread, own IOLoop, free port
    fake.queue_reply(text="two words", chunks=2)    # the next chat/messages request gets this
    fake.add_fault("status", status=503)            # the next request gets a 503
    fake.requests[-1].body                          # what the gateway forwarded
    fake.stop()

As a process: ``python -m tests.fake_upstream --port 8089``; then drive it over HTTP:
``GET /_fake/requests``, ``POST /_fake/reset``, ``POST /_fake/faults {"faults": [...]}``,
``POST /_fake/replies {"replies": [...], "default": {...}}``.

Per request, a reply is chosen in this order: ``X-Fake-*`` headers (``X-Fake-Reply``,
``X-Fake-Chunks``, ``X-Fake-Chunk-Delay-Ms``, ``X-Fake-First-Byte-Delay-Ms``,
``X-Fake-Tool-Calls`` (JSON list), ``X-Fake-Fault`` (JSON object or a kind)), then a
directive in the last user message, ``[[fake {"text": "...", "chunks": 4, "fault": {...}}]]``,
then the queued replies, then the default. Faults: ``status`` (any code; 429 carries
Retry-After), ``slow`` (delay before the first byte), ``disconnect`` (cut the connection after
``after_chunks`` stream events, or mid-body), ``malformed`` (invalid JSON / SSE data), ``hang``
(never answer), ``json`` (answer a stream request with the plain JSON answer, as some
OpenAI-compatible servers that ignore ``stream: true`` do; OpenAI and Azure routes).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import json
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import orjson
import tornado.httpserver
import tornado.ioloop
import tornado.netutil
import tornado.web

from tests.fake_wire import (
    DEFAULT_MESSAGES,
    SSE_TYPE,
    ApiError,
    Reply,
    anthropic_error,
    anthropic_events,
    anthropic_message,
    check_anthropic,
    check_json_object,
    check_openai_chat,
    check_responses,
    count_tokens,
    embedding,
    fake_directive,
    include_usage,
    new_id,
    openai_completion,
    openai_error,
    openai_events,
    responses_events,
    responses_response,
)

DEFAULT_TEXT = "Hello from the fake upstream."
DEFAULT_MODELS = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "claude-3-5-haiku-latest")
FAULT_KINDS = ("status", "slow", "disconnect", "malformed", "hang", "json")


@dataclass(frozen=True)
class Fault:
    """A failure applied to one request (optionally only to requests for `path`)."""

    kind: str  # one of FAULT_KINDS
    status: int = 500
    retry_after: float | None = None  # 429 defaults to 1 second
    delay: float = 0.0  # slow: seconds before the first byte; hang: 0 = until the client leaves
    after_chunks: int = 1  # disconnect: stream events sent before the cut
    message: str | None = None
    path: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; use one of {', '.join(FAULT_KINDS)}")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | str) -> Fault:
        if isinstance(data, str):
            return cls(kind=data)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake received it."""

    method: str
    path: str
    query: str
    headers: dict[str, str]  # lower-cased names
    body: Any  # parsed JSON, or None when absent or not JSON
    raw: bytes
    at: float

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("raw")
        return data


class FakeUpstream:
    """The fake provider: state (replies, faults, recorded requests) and its Tornado app."""

    def __init__(
        self,
        default_text: str = DEFAULT_TEXT,
        *,
        models: tuple[str, ...] = DEFAULT_MODELS,
        api_key: str | None = None,
        require_key: bool = True,
        record: bool = True,
        max_recorded: int = 10_000,
    ) -> None:
        self.default = Reply(text=default_text)
        self.models = models
        self.api_key = api_key  # when set, any other key gets 401
        self.require_key = require_key  # like the real APIs: no key at all gets 401
        self.record = record
        self._recorded: collections.deque[RecordedRequest] = collections.deque(maxlen=max_recorded)
        self._faults: list[Fault] = []
        self._replies: collections.deque[Reply] = collections.deque()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: tornado.ioloop.IOLoop | None = None
        self._server: tornado.httpserver.HTTPServer | None = None
        self.port = 0

    # -- control -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL without the /v1 (Anthropic SDK style)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """Base URL with /v1 (OpenAI SDK style)."""
        return self.url + "/v1"

    @property
    def requests(self) -> list[RecordedRequest]:
        """Requests received so far (the control API's own excluded), oldest first."""
        return list(self._recorded)

    def requests_to(self, path: str) -> list[RecordedRequest]:
        return [r for r in self._recorded if r.path == path]

    def add_fault(self, fault: Fault | str, times: int = 1, **kwargs: Any) -> None:
        """Apply `fault` (or Fault(kind=fault, **kwargs)) to the next `times` matching requests."""
        if isinstance(fault, str):
            fault = Fault(kind=fault, **kwargs)
        with self._lock:
            self._faults.extend([fault] * times)

    def queue_reply(self, reply: Reply | str | None = None, times: int = 1, **kwargs: Any) -> None:
        """Answer the next `times` chat/messages requests with `reply` (or Reply(text=reply, **kwargs))."""
        if not isinstance(reply, Reply):
            reply = Reply(text=reply, **kwargs)
        with self._lock:
            self._replies.extend([reply] * times)

    def set_default(self, reply: Reply | str | None = None, **kwargs: Any) -> None:
        """Change the reply used when nothing else was asked for."""
        self.default = reply if isinstance(reply, Reply) else replace(self.default, text=reply, **kwargs)

    def reset(self) -> None:
        """Forget recorded requests, pending faults and queued replies."""
        with self._lock:
            self._recorded.clear()
            self._faults.clear()
            self._replies.clear()

    def _take_fault(self, path: str) -> Fault | None:
        with self._lock:
            for i, fault in enumerate(self._faults):
                if fault.path is None or fault.path == path:
                    return self._faults.pop(i)
        return None

    def _take_reply(self) -> Reply | None:
        with self._lock:
            return self._replies.popleft() if self._replies else None

    # -- serving -------------------------------------------------------------------------------

    def routes(self) -> list[tuple[str, type[tornado.web.RequestHandler]]]:
        """The provider's API: (path pattern, handler) in match order. A fake of another provider overrides this."""
        return [
            (r"/v1/chat/completions", ChatCompletions),
            (r"/v1/embeddings", Embeddings),
            (r"/v1/responses", Responses),
            (r"/v1/models", Models),
            (r"/v1/messages", Messages),
            (r"/v1/.*", NotFound),
        ]

    def app(self) -> tornado.web.Application:
        """The control API (`/_fake/...`, matched first) and the provider's `routes()`."""
        control = [(r"/_fake/requests", ControlRequests), (r"/_fake/reset", ControlReset),
                   (r"/_fake/faults", ControlFaults), (r"/_fake/replies", ControlReplies)]
        kw = {"fake": self}
        return tornado.web.Application([(path, handler, kw) for path, handler in [*control, *self.routes()]],
                                       log_function=lambda handler: None)

    def listen(self, port: int = 0, host: str = "127.0.0.1") -> tornado.httpserver.HTTPServer:
        """Serve on the current IOLoop (for a process of its own)."""
        sockets = tornado.netutil.bind_sockets(port, host)
        self.port = sockets[0].getsockname()[1]
        self._server = tornado.httpserver.HTTPServer(self.app())
        self._server.add_sockets(sockets)
        return self._server

    def start(self, port: int = 0, host: str = "127.0.0.1") -> FakeUpstream:
        """Serve from a background thread with its own event loop; returns once listening."""
        sockets = tornado.netutil.bind_sockets(port, host)  # bound and listening before we return
        self.port = sockets[0].getsockname()[1]
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = tornado.ioloop.IOLoop.current()
            self._server = tornado.httpserver.HTTPServer(self.app())
            self._server.add_sockets(sockets)
            ready.set()
            try:
                loop.run_forever()
            finally:
                for task in asyncio.all_tasks(loop):
                    task.cancel()
                loop.run_until_complete(asyncio.sleep(0))
                loop.close()

        self._thread = threading.Thread(target=run, name=f"fake-upstream-{self.port}", daemon=True)
        self._thread.start()
        ready.wait(5)
        return self

    def stop(self) -> None:
        """Stop serving, drop open connections (also hanging ones) and join the thread."""
        if self._loop is None or self._thread is None:
            return

        async def shutdown() -> None:
            assert self._server is not None
            self._server.stop()
            await self._server.close_all_connections()
            asyncio.get_running_loop().stop()

        self._loop.add_callback(shutdown)
        self._thread.join(10)
        self._loop = self._thread = None

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- handlers ----------------------------------------------------------------------------------


class ProviderHandler(tornado.web.RequestHandler):
    """Shared behaviour: record, auth, faults, error envelopes."""

    flavor = "openai"
    fake: FakeUpstream

    def initialize(self, fake: FakeUpstream) -> None:
        self.fake = fake
        self.body: Any = None
        self.fault: Fault | None = None
        self.closed = asyncio.Event()

    def on_connection_close(self) -> None:
        self.closed.set()

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.clear_header("Server")

    async def prepare(self) -> None:
        raw = self.request.body
        if raw:
            try:
                self.body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                self.body = None
        if self.fake.record:
            headers = {k.lower(): v for k, v in self.request.headers.items()}
            self.fake._recorded.append(
                RecordedRequest(self.request.method or "", self.request.path, self.request.query,
                                headers, self.body, raw, time.time()))
        self.fault = self._header_fault() or self._directive_fault() or self.fake._take_fault(self.request.path)
        try:
            self.authenticate()
        except ApiError as err:
            self.send_api_error(err)
            return
        if self.fault and self.fault.kind in ("slow", "hang"):
            await self.apply_wait_fault(self.fault)

    def _header_fault(self) -> Fault | None:
        value = self.request.headers.get("X-Fake-Fault")
        if not value:
            return None
        return Fault.from_dict(json.loads(value) if value.lstrip().startswith("{") else value.strip())

    def _directive_fault(self) -> Fault | None:
        data = fake_directive(self.body)
        return Fault.from_dict(data["fault"]) if data and data.get("fault") else None

    async def apply_wait_fault(self, fault: Fault) -> None:
        if fault.kind == "slow":
            await asyncio.sleep(fault.delay)
            return
        with contextlib.suppress(TimeoutError):  # hang: until the client leaves, the server stops, or `delay` s
            await asyncio.wait_for(self.closed.wait(), fault.delay or None)
        if not self._finished:
            self.request.connection.close()
            self._finished = True

    def authenticate(self) -> None:
        auth = self.request.headers.get("Authorization", "")
        key = auth[7:] if auth.startswith("Bearer ") else ""
        if not key and self.fake.require_key:
            raise ApiError(401, "You didn't provide an API key. You need to provide your API key in an Authorization "
                           "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")
        if self.fake.api_key is not None and key != self.fake.api_key:
            raise ApiError(401, f"Incorrect API key provided: {key[:3]}***. You can find your API key at "
                           "https://platform.openai.com/account/api-keys.", code="invalid_api_key")

    def send_api_error(self, err: ApiError, retry_after: float | None = None) -> None:
        self.set_status(err.status)
        if retry_after is not None:
            self.set_header("Retry-After", f"{retry_after:g}")
            self.set_header("retry-after-ms", str(int(retry_after * 1000)))
        self.finish(orjson.dumps(self.error_body(err)))

    def error_body(self, err: ApiError) -> dict[str, Any]:
        return openai_error(err)

    def status_fault(self, fault: Fault) -> None:
        """Answer the fault's status code in the provider's error envelope."""
        retry_after = fault.retry_after if fault.retry_after is not None else (1 if fault.status == 429 else None)
        code = "rate_limit_exceeded" if fault.status == 429 and self.flavor == "openai" else None
        message = fault.message or DEFAULT_MESSAGES.get(fault.status, f"Fake upstream error {fault.status}.")
        self.send_api_error(ApiError(fault.status, message, code=code), retry_after)

    def body_fault(self) -> bool:
        """Apply a status/malformed/non-stream disconnect fault; True if the request is answered."""
        fault = self.fault
        if fault is None:
            return False
        if fault.kind == "status":
            self.status_fault(fault)
            return True
        if fault.kind == "malformed" and not self.wants_stream():
            self.finish(b'{"id": "broken", "object": "chat.completion", "choices": [{"index": 0, "mess')
            return True
        return False

    def wants_stream(self) -> bool:
        """Whether to answer with a stream: the request asks for one and no `json` fault ignores that."""
        if self.fault is not None and self.fault.kind == "json":
            return False
        return isinstance(self.body, dict) and self.body.get("stream") is True

    def checked(self, check: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        """The request body as `check` returns it; None once the request is answered: a status fault
        (an outage, a missing route or a refused key comes before the body is read), `check`'s
        ApiError in the provider's envelope, or a malformed fault."""
        if self.fault is not None and self.fault.kind == "status":
            self.status_fault(self.fault)
            return None
        try:
            body = check()
        except ApiError as err:
            self.send_api_error(err)
            return None
        return None if self.body_fault() else body

    def json_object(self) -> dict[str, Any]:
        return check_json_object(self.body)

    async def send_json(self, payload: dict[str, Any], delay: float = 0.0) -> None:
        """Finish with a JSON body after `delay` seconds (a reply's first-byte delay), honouring a
        non-stream disconnect fault."""
        if delay:
            await asyncio.sleep(delay)
        data = orjson.dumps(payload)
        if self.fault and self.fault.kind == "disconnect":
            self.set_header("Content-Length", str(len(data)))
            self.write(data[: len(data) // 2])
            await self.flush()
            self.request.connection.close()
            self._finished = True
            return
        self.finish(data)

    def reply_for(self, body: dict[str, Any]) -> Reply:
        """The reply asked for by header, directive, queue, or the default."""
        h = self.request.headers
        directive = fake_directive(body)
        reply = Reply.from_dict(directive) if directive else self.fake._take_reply() or self.fake.default
        if "X-Fake-Reply" in h:
            reply = replace(reply, text=h["X-Fake-Reply"])
        if "X-Fake-Chunks" in h:
            reply = replace(reply, chunks=int(h["X-Fake-Chunks"]))
        if "X-Fake-Chunk-Delay-Ms" in h:
            reply = replace(reply, chunk_delay=float(h["X-Fake-Chunk-Delay-Ms"]) / 1000)
        if "X-Fake-First-Byte-Delay-Ms" in h:
            reply = replace(reply, first_byte_delay=float(h["X-Fake-First-Byte-Delay-Ms"]) / 1000)
        if "X-Fake-Tool-Calls" in h:
            reply = Reply.from_dict({**asdict(reply), "tool_calls": json.loads(h["X-Fake-Tool-Calls"])})
        if reply.text is None:
            reply = replace(reply, text="" if reply.tool_calls else self.fake.default.text or "")
        return reply

    async def answer(self, check: Callable[[], dict[str, Any]],
                     build: Callable[[dict[str, Any], Reply], dict[str, Any]],
                     stream: Callable[[dict[str, Any], Reply, dict[str, Any]], list[bytes]]) -> None:
        """The usual POST: the body as `check` accepts it, the reply asked for, then `build(body, reply)`
        as JSON or, when the request asks for a stream, `stream(built, reply, body)`'s events."""
        body = self.checked(check)
        if body is None:
            return
        reply = self.reply_for(body)
        built = build(body, reply)
        if not self.wants_stream():
            await self.send_json(built, reply.first_byte_delay)
            return
        await self.send_stream(stream(built, reply, body), reply)

    async def send_stream(self, events: list[bytes], reply: Reply, content_type: str = SSE_TYPE) -> None:
        """Stream `events` (SSE, or the provider's framing) one by one, flushing each, with the
        reply's timing (first-byte and between-event delays) and the stream faults."""
        self.set_header("Content-Type", content_type)
        self.set_header("Cache-Control", "no-cache")
        if reply.first_byte_delay:
            await asyncio.sleep(reply.first_byte_delay)
        fault = self.fault
        for i, event in enumerate(events):
            if fault and fault.kind == "disconnect" and i >= fault.after_chunks:
                self.request.connection.close()
                self._finished = True
                return
            if fault and fault.kind == "malformed" and i == min(fault.after_chunks, len(events) - 1):
                self.write(b'data: {"id": "broken", "choices": [{"delta": {"content": "x"\n\n')
                self.finish()
                return
            if i and reply.chunk_delay:
                await asyncio.sleep(reply.chunk_delay)
            self.write(event)
            await self.flush()
            if self.closed.is_set():
                return
        self.finish()


class ChatCompletions(ProviderHandler):
    """OpenAI `POST /v1/chat/completions`."""

    async def post(self) -> None:
        await self.answer(self.validate, openai_completion,
                          lambda completion, reply, body: openai_events(completion, reply.chunks, include_usage(body)))

    def validate(self) -> dict[str, Any]:
        return check_openai_chat(self.body)


class Responses(ProviderHandler):
    """OpenAI `POST /v1/responses` (the Responses API: a Response object, or its typed SSE events)."""

    async def post(self) -> None:
        await self.answer(lambda: check_responses(self.body), responses_response,
                          lambda response, reply, _: responses_events(response, reply.chunks))


class Embeddings(ProviderHandler):
    """OpenAI `POST /v1/embeddings` (float or base64 encoding)."""

    inputs: list[Any]  # the body's `input` as a list, once validated

    def validate(self) -> dict[str, Any]:
        body = self.json_object()
        for name in ("model", "input"):
            if name not in body:
                raise ApiError(400, f"Missing required parameter: '{name}'.", param=name,
                               code="missing_required_parameter")
        inputs = body["input"]
        if isinstance(inputs, str) or (isinstance(inputs, list) and inputs and isinstance(inputs[0], int)):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs:
            raise ApiError(400, "'input' : input must be a string, an array of strings, or an array of tokens.",
                           param="input")
        self.inputs = inputs
        return body

    async def post(self) -> None:
        body = self.checked(self.validate)
        if body is None:
            return
        inputs = self.inputs
        dims = int(body.get("dimensions") or 8)
        data, tokens = [], 0
        for i, item in enumerate(inputs):
            text = item if isinstance(item, str) else " ".join(map(str, item))
            tokens += count_tokens(text)
            vector: Any = embedding(text, dims)
            if body.get("encoding_format") == "base64":
                vector = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
            data.append({"object": "embedding", "index": i, "embedding": vector})
        await self.send_json({"object": "list", "data": data, "model": body["model"],
                              "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


class Models(ProviderHandler):
    """`GET /v1/models`, in Anthropic's shape when `anthropic-version` is sent, else OpenAI's."""

    def prepare(self) -> Any:
        if "anthropic-version" in self.request.headers:
            self.flavor = "anthropic"
        return super().prepare()

    def authenticate(self) -> None:
        if self.flavor == "anthropic":
            Messages.authenticate(self)  # type: ignore[arg-type]
        else:
            super().authenticate()

    def error_body(self, err: ApiError) -> dict[str, Any]:
        return Messages.error_body(self, err) if self.flavor == "anthropic" else super().error_body(err)  # type: ignore[arg-type]

    async def get(self) -> None:
        if self.body_fault():
            return
        if self.flavor == "anthropic":
            data = [{"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"}
                    for m in self.fake.models]
            await self.send_json({"data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
                                  "last_id": data[-1]["id"] if data else None})
            return
        data = [{"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "fake-upstream"}
                for m in self.fake.models]
        await self.send_json({"object": "list", "data": data})


class Messages(ProviderHandler):
    """Anthropic `POST /v1/messages`."""

    flavor = "anthropic"

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("request-id", new_id("req_"))

    def authenticate(self) -> None:
        key = self.request.headers.get("x-api-key", "")
        auth = self.request.headers.get("Authorization", "")
        key = key or (auth[7:] if auth.startswith("Bearer ") else "")
        if not key and self.fake.require_key:
            raise ApiError(401, "x-api-key header is required", "authentication_error")
        if self.fake.api_key is not None and key != self.fake.api_key:
            raise ApiError(401, "invalid x-api-key", "authentication_error")

    def error_body(self, err: ApiError) -> dict[str, Any]:
        return anthropic_error(err, self._headers.get("request-id"))

    def validate(self) -> dict[str, Any]:
        return check_anthropic(self.body, "anthropic-version" in self.request.headers)

    async def post(self) -> None:
        await self.answer(self.validate, anthropic_message,
                          lambda message, reply, _: anthropic_events(message, reply.chunks))


class NotFound(ProviderHandler):
    """Any other /v1 path: the OpenAI 404 envelope."""

    def authenticate(self) -> None:
        pass

    def _not_found(self) -> None:
        self.send_api_error(ApiError(404, f"Invalid URL ({self.request.method} {self.request.path})"))

    get = post = put = delete = patch = _not_found  # type: ignore[assignment]


class _Control(tornado.web.RequestHandler):
    """The fake's own control API (not recorded, never faulted)."""

    def initialize(self, fake: FakeUpstream) -> None:
        self.fake = fake

    def json_body(self) -> dict[str, Any]:
        return orjson.loads(self.request.body or b"{}")


class ControlRequests(_Control):
    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(orjson.dumps({"requests": [r.to_json() for r in self.fake.requests]}))


class ControlReset(_Control):
    def post(self) -> None:
        self.fake.reset()
        self.set_status(204)


class ControlFaults(_Control):
    def post(self) -> None:
        for item in self.json_body().get("faults", []):
            times = item.pop("times", 1) if isinstance(item, dict) else 1
            self.fake.add_fault(Fault.from_dict(item), times)
        self.set_status(204)


class ControlReplies(_Control):
    def post(self) -> None:
        data = self.json_body()
        if "default" in data:
            self.fake.set_default(Reply.from_dict(data["default"]))
        for item in data.get("replies", []):
            self.fake.queue_reply(Reply.from_dict(item), item.get("times", 1))
        self.set_status(204)


def main(argv: list[str] | None = None) -> None:
    """Run the fake upstream as a process of its own."""
    parser = argparse.ArgumentParser(prog="python -m tests.fake_upstream", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on stdout)")
    parser.add_argument("--text", default=DEFAULT_TEXT, help="default reply text")
    parser.add_argument("--chunks", type=int, default=3, help="stream content events per reply")
    parser.add_argument("--api-key", default=None, help="accept only this key (default: any non-empty key)")
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0, help="delay between stream events")
    parser.add_argument("--first-byte-delay-ms", type=float, default=0.0, help="delay before answering")
    parser.add_argument("--no-record", action="store_true", help="do not keep requests (benchmarks)")
    parser.add_argument("--fast", action="store_true",
                        help="bare asyncio server for benchmarks: same answers; no recording, faults or control API")
    args = parser.parse_args(argv)
    fake = FakeUpstream(args.text, api_key=args.api_key, record=not args.no_record)
    fake.set_default(Reply(text=args.text, chunks=args.chunks, chunk_delay=args.chunk_delay_ms / 1000,
                           first_byte_delay=args.first_byte_delay_ms / 1000))

    async def serve() -> None:
        if args.fast:
            from tests.fake_fast import serve_fast

            fake.port = (await serve_fast(fake, args.port, args.host)).sockets[0].getsockname()[1]
        else:
            fake.listen(args.port, args.host)
        print(f"fake upstream listening on http://{args.host}:{fake.port}", flush=True)
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    main()
