"""gateway/http/http1.py over real loopback sockets: the gateway itself, and a small Tornado app for what needs control.

Raw sockets, because the point is the wire: keep-alive, pipelining, chunked bodies, 100-continue,
HTTP/1.0, `Connection: close`, limits, malformed input, streaming, back-pressure, disconnects, drain.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tornado.web
from tornado.iostream import StreamClosedError

from tests.fake_upstream import FakeUpstream
from tests.gateway_harness import MOCK_TARGETS, GatewayThread, write_config
from tests.http_wire import Wire, request
from tests.waiting import wait_for
from tests.wire_server import serve_app

CHAT = json.dumps({"model": "demo-model", "messages": [{"role": "user", "content": "hello wire"}]}).encode()
STREAM = json.dumps({"model": "demo-model", "stream": True,
                     "messages": [{"role": "user", "content": "hello stream"}]}).encode()


@pytest.fixture
def gw(tmp_path: Path, start_gateway: Any) -> GatewayThread:
    """A gateway with the built-in mock provider (no upstream) and a small body limit (1 KiB)."""
    return start_gateway(write_config(tmp_path / "c.yaml", MOCK_TARGETS), max_body_size=1024)


# --- the gateway over the wire -----------------------------------------------------------------


def test_keep_alive_serves_several_requests_on_one_socket(gw: GatewayThread) -> None:
    wire = Wire(gw.port)
    for _ in range(3):
        wire.send(request("GET", "/v1/models"))
        resp = wire.response()
        assert resp.status == 200 and resp.json()["data"][0]["id"] == "demo-model"
        assert "connection" not in resp.headers and "transfer-encoding" not in resp.headers
        wire.send(request("POST", "/v1/chat/completions", CHAT, Content_Type="application/json"))
        resp = wire.response()
        assert resp.status == 200 and "hello wire" in resp.json()["choices"][0]["message"]["content"]
        assert resp.headers["content-length"] == str(len(resp.body))
    assert gw.open_connections() == 1
    wire.close()
    wait_for(lambda: gw.open_connections() == 0)


def test_pipelined_requests_are_answered_in_order(gw: GatewayThread) -> None:
    wire = Wire(gw.port)
    wire.send(request("POST", "/v1/chat/completions", CHAT, X_Request_ID="first")
              + request("GET", "/v1/models", X_Request_ID="second")
              + request("GET", "/healthz", X_Request_ID="third")
              + request("POST", "/v1/chat/completions", STREAM, X_Request_ID="fourth"))
    answers = [wire.response() for _ in range(4)]
    assert [a.headers["x-request-id"] for a in answers] == ["first", "second", "third", "fourth"]
    assert [a.status for a in answers] == [200, 200, 200, 200]
    assert b"[DONE]" in answers[3].body
    wire.send(request("GET", "/healthz", X_Request_ID="after"))  # the connection is still good
    assert wire.response().headers["x-request-id"] == "after"


def test_chunked_request_body(gw: GatewayThread) -> None:
    wire = Wire(gw.port)
    wire.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
    for i in range(0, len(CHAT), 7):
        piece = CHAT[i:i + 7]
        wire.send(b"%x\r\n%s\r\n" % (len(piece), piece))
    wire.send(b"0\r\n\r\n")
    resp = wire.response()
    assert resp.status == 200 and "hello wire" in resp.json()["choices"][0]["message"]["content"]
    # A chunked body over the handler's limit (1 KiB) is read and answered 413 with the envelope.
    wire.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
              + b"800\r\n" + b"x" * 2048 + b"\r\n0\r\n\r\n")
    resp = wire.response()
    assert resp.status == 413 and resp.json()["error"]["code"] == "request_too_large"


def test_expect_100_continue(gw: GatewayThread) -> None:
    wire = Wire(gw.port)
    wire.send(request("POST", "/v1/chat/completions", None, Content_Length=str(len(CHAT)), Expect="100-continue"))
    status, _ = wire.head()
    assert status == 100
    wire.send(CHAT)
    resp = wire.response()
    assert resp.status == 200 and "hello wire" in resp.json()["choices"][0]["message"]["content"]
    # Beyond the hard cap: 413 at once, no 100, and the connection closes without reading the body.
    wire.send(request("POST", "/v1/chat/completions", None, Content_Length=str(50 * 2**20), Expect="100-continue"))
    resp = wire.response()
    assert resp.status == 413 and resp.json()["error"]["code"] == "request_too_large"
    assert resp.headers["connection"] == "close" and wire.closed()


def test_expect_100_continue_refused_before_the_body(tmp_path: Path, start_gateway: Any) -> None:
    from gateway.proxy.keys import load_keys

    keys = tmp_path / "keys"
    keys.write_text(hashlib.sha256(b"good-key").hexdigest() + "  team\n")
    cfg = write_config(tmp_path / "c.yaml", MOCK_TARGETS)
    gw = start_gateway(cfg, keys=load_keys(keys))
    wire = Wire(gw.port)
    wire.send(request("POST", "/v1/chat/completions", None, Content_Length=str(len(CHAT)), Expect="100-continue",
                      Authorization="Bearer wrong-key"))
    resp = wire.response()  # no 100 Continue first: the client need not send the body
    assert resp.status == 401 and resp.json()["error"]["code"] == "invalid_api_key"
    assert wire.closed()  # the body was announced but not read: closing is the only way to skip it
    wire = Wire(gw.port)
    wire.send(request("POST", "/v1/chat/completions", None, Content_Length=str(len(CHAT)), Expect="100-continue",
                      Authorization="Bearer good-key"))
    assert wire.head()[0] == 100
    wire.send(CHAT)
    assert wire.response().status == 200


def test_http10_closes_unless_keep_alive_was_asked(gw: GatewayThread) -> None:
    wire = Wire(gw.port)
    wire.send(b"GET /v1/models HTTP/1.0\r\n\r\n")
    resp = wire.response()
    assert resp.status == 200 and resp.json()["object"] == "list"
    assert wire.closed()

    wire = Wire(gw.port)
    for _ in range(2):
        wire.send(b"GET /v1/models HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        resp = wire.response()
        assert resp.status == 200 and resp.headers["connection"].lower() == "keep-alive"
    # A stream to an HTTP/1.0 client cannot be chunked: the body ends with the connection.
    wire.send(b"POST /v1/chat/completions HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: %d\r\n\r\n%s"
              % (len(STREAM), STREAM))
    resp = wire.response()
    assert resp.status == 200 and "transfer-encoding" not in resp.headers and resp.body.endswith(b"[DONE]\n\n")


def test_connection_close_is_honoured(gw: GatewayThread) -> None:
    wire = Wire(gw.port)
    wire.send(request("GET", "/v1/models", Connection="close") + request("GET", "/v1/models"))
    resp = wire.response()
    assert resp.status == 200 and resp.headers["connection"] == "close"
    assert wire.closed()  # the request after it is not answered


def test_malformed_requests_get_400_with_the_envelope_then_close(gw: GatewayThread) -> None:
    for bad in (b"THIS IS NOT HTTP\r\n\r\n", b"GET / HTTP/1.1\r\nHost: t\r\nBad Header\r\n\r\n",
                b"GET /v1/models HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n"):
        wire = Wire(gw.port)
        wire.send(bad)
        resp = wire.response()
        assert resp.status == 400, bad
        err = resp.json()["error"]
        assert err["type"] == "validation_error" and err["code"] == "bad_request" and err["message"]
        assert b"Traceback" not in resp.body and resp.headers["connection"] == "close"
        assert wire.closed()


def test_malformed_pipelined_request_is_answered_after_the_good_ones(gw: GatewayThread) -> None:
    wire = Wire(gw.port)
    wire.send(request("POST", "/v1/chat/completions", CHAT, X_Request_ID="good") + b"NOT HTTP AT ALL\r\n\r\n")
    first = wire.response()
    assert first.status == 200 and first.headers["x-request-id"] == "good"
    assert wire.response().status == 400 and wire.closed()


def test_oversized_headers_get_431(gw: GatewayThread) -> None:
    wire = Wire(gw.port)
    wire.send(request("GET", "/v1/models", X_Big="a" * 70_000))
    resp = wire.response()
    assert resp.status == 431 and resp.json()["error"]["code"] == "request_header_fields_too_large"
    assert wire.closed()
    wire = Wire(gw.port)  # one endless header line, never finished
    with pytest.raises((BrokenPipeError, ConnectionResetError)):
        wire.send(b"GET / HTTP/1.1\r\nX-Endless: ")
        for _ in range(1000):
            wire.send(b"b" * 65536)
    wait_for(lambda: gw.open_connections() == 0)


def test_body_beyond_the_hard_cap_drops_the_connection_unread(gw: GatewayThread) -> None:
    # max_body_size 1 KiB: the handler answers 413 up to 2 KiB + 1 MiB; beyond, the server stops reading.
    wire = Wire(gw.port)
    wire.send(request("POST", "/v1/chat/completions", None, Content_Length=str(64 * 2**20)))
    resp = wire.response()
    assert resp.status == 413 and resp.headers["connection"] == "close" and wire.closed()

    wire = Wire(gw.port)
    wire.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"10000\r\n" + b"x" * 65536 + b"\r\n"
    with pytest.raises((BrokenPipeError, ConnectionResetError)):
        for _ in range(1024):  # 64 MiB: far more than the cap plus what the socket buffers hold
            wire.send(chunk)
    wait_for(lambda: gw.open_connections() == 0)
    wait_for(lambda: gw.runtime.in_flight == 0)  # the handler that was reading the body is accounted for
    assert wait_for(lambda: [e for e in gw.events if e["status"] == 499])


def test_304_and_head_carry_no_body(gw: GatewayThread) -> None:
    wire = Wire(gw.port)
    wire.send(request("GET", "/healthz"))  # a RequestHandler route: Tornado adds an Etag to GET answers
    etag = wire.response().headers["etag"]
    wire.send(request("GET", "/healthz", If_None_Match=etag) + request("HEAD", "/healthz")
              + request("GET", "/v1/models"))
    assert wire.response().status == 304
    head = wire.response(head=True)
    assert head.status == 405 and int(head.headers["content-length"]) > 0  # the length the body would have
    assert wire.response().json()["object"] == "list"  # framing intact after both


def test_head_refused_while_parsing_gets_no_body(gw: GatewayThread) -> None:
    """Found by the fuzz suite: a HEAD refused by the parser (here a NUL in a header) got the envelope as content."""
    wire = Wire(gw.port)
    wire.send(b"HEAD /v1/models HTTP/1.1\r\nHost: t\x00x\r\n\r\n")
    resp = wire.response(head=True)
    assert resp.status == 400 and int(resp.headers["content-length"]) > 0
    assert wire.closed()  # and not one byte of content came before the close


def test_upgrade_requests_are_answered_as_http11(gw: GatewayThread) -> None:
    wire = Wire(gw.port)
    wire.send(request("GET", "/v1/models", Connection="Upgrade, HTTP2-Settings", Upgrade="h2c",
                      HTTP2_Settings="AAMAAABkAARAAAAAAAIAAAAA") + request("GET", "/healthz"))
    assert wire.response().status == 200 and wire.response().status == 200


def test_sse_is_chunked_and_a_client_leaving_mid_stream_is_noticed(
        tmp_path: Path, fake_upstream: FakeUpstream, start_gateway: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KT_H1_KEY", "sk-up")
    gw = start_gateway(write_config(tmp_path / "c.yaml", [
        {"id": "up", "provider": "openai", "model": "demo-model", "base_url": fake_upstream.base_url,
         "secret_key_ref": {"env": "KT_H1_KEY"}}]))
    fake_upstream.queue_reply("a b c d e f g h i j k l m n o p q r s t", chunks=20, chunk_delay=0.5)
    wire = Wire(gw.port)
    wire.send(request("POST", "/v1/chat/completions", STREAM))
    status, headers = wire.head()
    assert status == 200 and headers["transfer-encoding"] == "chunked" and "content-length" not in headers
    assert headers["content-type"].startswith("text/event-stream")
    assert wire.chunk().startswith(b"data: ")  # the first event arrives long before the stream ends
    wire.close()
    event = wait_for(lambda: [e for e in gw.events if e["status"] == 499], timeout=10)[0]
    assert event["error_code"] == "client_closed"
    wait_for(lambda: gw.open_connections() == 0)


def test_drain_lets_the_in_flight_request_finish(
        tmp_path: Path, fake_upstream: FakeUpstream, start_gateway: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KT_H1_KEY", "sk-up")
    gw = start_gateway(write_config(tmp_path / "c.yaml", [
        {"id": "up", "provider": "openai", "model": "demo-model", "base_url": fake_upstream.base_url,
         "secret_key_ref": {"env": "KT_H1_KEY"}}]), drain_timeout=20)
    fake_upstream.add_fault("slow", delay=1.0)
    busy, idle = Wire(gw.port), Wire(gw.port)
    idle.send(request("GET", "/healthz"))
    assert idle.response().status == 200
    busy.send(request("POST", "/v1/chat/completions", CHAT))
    wait_for(lambda: gw.runtime.in_flight == 1)
    assert gw.gateway is not None and gw.loop is not None
    draining = asyncio.run_coroutine_threadsafe(gw.gateway.drain(), gw.loop)
    assert idle.closed()  # idle keep-alive connections close at once
    with pytest.raises(OSError):
        Wire(gw.port)  # no longer accepting
    resp = busy.response()
    assert resp.status == 200 and resp.headers["connection"] == "close"
    assert busy.closed()
    draining.result(20)
    assert gw.open_connections() == 0


# --- a small app for what needs control -------------------------------------------------------


class Probe:
    """What the test app's handlers report, and the switch that lets them go on."""

    def __init__(self) -> None:
        self.release: asyncio.Event | None = None
        self.closed = threading.Event()
        self.pending: asyncio.Future[None] | None = None
        self.sent = 0
        self.write_failed = threading.Event()


class Stream(tornado.web.RequestHandler):
    """GET: one chunk, wait for the test's release, another chunk, finish."""

    def initialize(self, probe: Probe) -> None:
        self.probe = probe

    async def get(self) -> None:
        self.probe.release = asyncio.Event()
        self.write("first ")
        await self.flush()
        await self.probe.release.wait()
        self.write("second")
        self.finish()

    def on_connection_close(self) -> None:
        self.probe.closed.set()
        if self.probe.release is not None:
            self.probe.release.set()


class Flood(tornado.web.RequestHandler):
    """GET: 16 MiB in 256 KiB flushes, each awaited (what the proxy does with SSE)."""

    def initialize(self, probe: Probe) -> None:
        self.probe = probe

    async def get(self) -> None:
        block = b"z" * 262144
        try:
            for _ in range(64):
                self.write(block)
                self.probe.pending = self.flush()
                await self.probe.pending
                self.probe.sent += len(block)
        except StreamClosedError:
            self.probe.write_failed.set()
            return
        self.finish()


@pytest.fixture(params=["asyncio", "uvloop"])
def served(request: pytest.FixtureRequest) -> Iterator[tuple[int, Probe, asyncio.AbstractEventLoop]]:
    """The test app on HTTP1Server in a thread, on asyncio's loop and on uvloop (what production runs)."""
    probe = Probe()
    app = tornado.web.Application([(r"/stream", Stream, {"probe": probe}), (r"/flood", Flood, {"probe": probe})])
    with serve_app(app, request.param, idle_timeout=0.5) as (port, _, loop):
        yield port, probe, loop


def test_each_flush_reaches_the_client_at_once_as_a_chunk(served: tuple[int, Probe, asyncio.AbstractEventLoop]) -> None:
    port, probe, loop = served
    wire = Wire(port)
    wire.send(request("GET", "/stream"))
    status, headers = wire.head()
    assert status == 200 and headers["transfer-encoding"] == "chunked"
    assert wire.chunk() == b"first "  # while the handler still waits
    assert probe.release is not None
    loop.call_soon_threadsafe(probe.release.set)
    assert wire.chunk() == b"second" and wire.chunk() == b""
    wire.send(request("GET", "/stream"))  # the connection is reusable
    assert wire.head()[0] == 200 and wire.chunk() == b"first "
    loop.call_soon_threadsafe(probe.release.set)  # the new handler's event: it exists once "first " is out
    assert wire.chunk() == b"second" and wire.chunk() == b""


def test_client_leaving_reaches_on_connection_close(served: tuple[int, Probe, asyncio.AbstractEventLoop]) -> None:
    port, probe, _ = served
    wire = Wire(port)
    wire.send(request("GET", "/stream"))
    wire.head()
    assert wire.chunk() == b"first "
    wire.close()  # the handler is not writing: only the server's read side can notice
    assert probe.closed.wait(5)


def test_a_slow_reader_back_pressures_the_handler(served: tuple[int, Probe, asyncio.AbstractEventLoop]) -> None:
    port, probe, loop = served
    wire = Wire(port)
    wire.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    wire.send(request("GET", "/flood"))

    def blocked() -> bool:
        pending = probe.pending
        return pending is not None and not pending.done()

    # The client reads nothing: the handler ends up waiting on its flush, far from done.
    assert asyncio.run_coroutine_threadsafe(_poll(blocked), loop).result(10)
    assert probe.sent < 64 * 262144
    resp = wire.response()  # reading lets it finish
    assert len(resp.body) == 64 * 262144 and probe.sent == 64 * 262144


def test_idle_keep_alive_connections_are_closed(served: tuple[int, Probe, asyncio.AbstractEventLoop]) -> None:
    port, probe, loop = served  # idle timeout 0.5 s here (75 s in the gateway)
    wire = Wire(port)
    wire.send(request("GET", "/stream"))
    wire.head()
    wire.chunk()
    loop.call_soon_threadsafe(probe.release.set)  # type: ignore[union-attr]
    assert wire.chunk() == b"second" and wire.chunk() == b""
    assert wire.closed()  # nothing more sent: the server closes it
    assert Wire(port).closed()  # a connection that never sends a request too


def test_a_client_leaving_fails_the_pending_write(served: tuple[int, Probe, asyncio.AbstractEventLoop]) -> None:
    port, probe, loop = served
    wire = Wire(port)
    wire.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    wire.send(request("GET", "/flood"))
    assert asyncio.run_coroutine_threadsafe(
        _poll(lambda: probe.pending is not None and not probe.pending.done()), loop).result(10)
    wire.close()
    assert probe.write_failed.wait(5)  # the awaited flush raised StreamClosedError


async def _poll(predicate: Any) -> bool:
    """Check `predicate` on the server's loop between its iterations (where a pending flush is visible)."""
    from tests.waiting import async_wait_for

    return bool(await async_wait_for(predicate, timeout=8))
