"""The test upstream's bare server for benchmarks (`python -m tests.fake_upstream --fast`): the same
answers as `tests.fake_upstream` from `tests.fake_wire`, without Tornado's per-request cost."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import orjson

from tests import fake_wire as wire

if TYPE_CHECKING:
    from tests.fake_upstream import FakeUpstream


class FastProtocol(asyncio.Protocol):
    """A bare HTTP/1.1 keep-alive server giving the same answers without Tornado's per-request cost.

    For benchmarks, where the upstream must be several times faster than the gateway under test:
    chat completions and messages (JSON and SSE, validation errors), models; the default reply or
    a `[[fake ...]]` directive. No recording, no faults, no chunked request bodies.
    """

    def __init__(self, fake: FakeUpstream) -> None:
        self.fake = fake
        self.buf = bytearray()
        self.transport: Any = None
        self.tasks: set[asyncio.Future[None]] = set()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while (end := buf.find(b"\r\n\r\n")) >= 0:
            lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
            size = end + 4 + int(headers.get("content-length") or 0)
            if len(buf) < size:
                return
            body = bytes(buf[end + 4 : size])
            del buf[:size]
            method, target, _ = lines[0].split(" ", 2)
            self.handle(method, target.split("?", 1)[0], headers, body)

    def handle(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> None:
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        anthropic = path == "/v1/messages"
        try:
            if path == "/v1/models" and method == "GET":
                data = [{"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "fake-upstream"}
                        for m in self.fake.models]
                self.send(200, orjson.dumps({"object": "list", "data": data}))
                return
            if method != "POST" or path not in ("/v1/chat/completions", "/v1/messages"):
                raise wire.ApiError(404, f"Invalid URL ({method} {path})")
            body = (wire.check_anthropic(body, "anthropic-version" in headers) if anthropic
                    else wire.check_openai_chat(body))
        except wire.ApiError as err:
            self.send(err.status, orjson.dumps(wire.anthropic_error(err) if anthropic else wire.openai_error(err)))
            return
        directive = wire.fake_directive(body)
        reply = wire.Reply.from_dict(directive) if directive else self.fake.default
        if reply.text is None:
            reply = replace(reply, text=self.fake.default.text or "")
        if anthropic:
            message = wire.anthropic_message(body, reply)
            events = wire.anthropic_events(message, reply.chunks) if body.get("stream") is True else None
        else:
            message = wire.openai_completion(body, reply)
            stream = body.get("stream") is True
            events = wire.openai_events(message, reply.chunks, wire.include_usage(body)) if stream else None
        if events is None and not reply.first_byte_delay:
            self.send(200, orjson.dumps(message))
        else:
            task = asyncio.ensure_future(self.send_slowly(message, events, reply))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    def send(self, status: int, body: bytes) -> None:
        reason = {200: b"OK", 400: b"Bad Request", 404: b"Not Found"}.get(status, b"Error")
        self.transport.write(b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                             % (status, reason, len(body), body))

    async def send_slowly(self, message: dict[str, Any], events: list[bytes] | None, reply: wire.Reply) -> None:
        if reply.first_byte_delay:
            await asyncio.sleep(reply.first_byte_delay)
        if events is None:
            self.send(200, orjson.dumps(message))
            return
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
                             b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i, event in enumerate(events):
            if i and reply.chunk_delay:
                await asyncio.sleep(reply.chunk_delay)
            self.transport.write(b"%x\r\n%s\r\n" % (len(event), event))  # one write per event, as a flush
        self.transport.write(b"0\r\n\r\n")


async def serve_fast(fake: FakeUpstream, port: int = 0, host: str = "127.0.0.1") -> asyncio.Server:
    """Serve `fake` with the FastProtocol on the running loop."""
    return await asyncio.get_running_loop().create_server(lambda: FastProtocol(fake), host, port)
