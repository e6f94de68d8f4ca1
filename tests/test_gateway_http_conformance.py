"""HTTP/1.1 conformance of the gateway's server (gateway/http/http1.py), over real sockets on loopback.

What a front proxy and the gateway must read the same way (framing: Upgrade, CONNECT, Host,
absolute-form targets, Transfer-Encoding, Content-Length, malformed heads), and the limits and
timeouts on the client side (--client-timeout, --max-connections, a client that stops reading).
docs/gateway.md ("HTTP/1.1 conformance", "Limits and timeouts") says what each case answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import os
import resource
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tornado.web
from tornado.iostream import StreamClosedError

from gateway.http.http1 import HTTP1Server
from tests.gateway_harness import MOCK_TARGETS, GatewayThread, write_config
from tests.gateway_process import GatewayProcess
from tests.http_wire import Wire, request
from tests.waiting import async_wait_for, wait_for
from tests.wire_server import serve_app

CHAT = json.dumps({"model": "demo-model", "messages": [{"role": "user", "content": "hello wire"}]}).encode()
H2C = {"Connection": "Upgrade, HTTP2-Settings", "Upgrade": "h2c", "HTTP2-Settings": "AAMAAABkAARAAAAAAAIAAAAA"}


def raw(method: str, path: str, body: bytes | None = None, *lines: str, host: bool = True) -> bytes:
    """A request whose header lines are given as is (names may repeat, any order)."""
    head = [f"{method} {path} HTTP/1.1", *(["Host: test"] if host else []), *lines]
    if body is not None and not any(line.lower().startswith(("content-length", "transfer-encoding")) for line in lines):
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin1") + (body or b"")


def h2c_lines() -> list[str]:
    return [f"{name}: {value}" for name, value in H2C.items()]


@pytest.fixture
def gw(tmp_path: Path, start_gateway: Any) -> GatewayThread:
    """A gateway with the built-in mock provider (no upstream) and a 4 KiB body limit."""
    return start_gateway(write_config(tmp_path / "c.yaml", MOCK_TARGETS), max_body_size=4096)


def mock_reply(resp: Any) -> str:
    return resp.json()["choices"][0]["message"]["content"]


@pytest.fixture
def no_errors_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fails the test when anything (a traceback included) is logged at ERROR or above."""
    caplog.set_level(logging.INFO)
    yield
    errors = [r for r in caplog.get_records("call") if r.levelno >= logging.ERROR or r.exc_info]
    assert not errors, [r.getMessage() for r in errors]


# --- Upgrade and CONNECT ----------------------------------------------------------------------


def test_upgrade_with_a_body_reads_the_body_by_its_framing(gw: GatewayThread) -> None:
    wire = Wire(gw.port)
    wire.send(raw("POST", "/v1/chat/completions", CHAT, *h2c_lines()))
    resp = wire.response()  # today: the body is lost (400 invalid_json) and parsed as a request of its own
    assert resp.status == 200 and mock_reply(resp) == "[mock] You said: hello wire"
    assert "upgrade" not in resp.headers.get("connection", "").lower()  # no 101, no upgrade
    wire.send(request("GET", "/v1/models"))  # the connection goes on in HTTP/1.1
    assert wire.response().json()["object"] == "list"

    chunked = b"%x\r\n%b\r\n0\r\n\r\n" % (len(CHAT), CHAT)
    wire.send(raw("POST", "/v1/chat/completions", chunked, *h2c_lines(), "Transfer-Encoding: chunked"))
    resp = wire.response()
    assert resp.status == 200 and mock_reply(resp) == "[mock] You said: hello wire"


def test_upgrade_body_arriving_after_the_head_is_still_the_body(gw: GatewayThread) -> None:
    wire = Wire(gw.port)
    wire.send(raw("POST", "/v1/chat/completions", None, *h2c_lines(), f"Content-Length: {len(CHAT)}"))
    wait_for(lambda: gw.runtime.in_flight == 1)  # the head was read and is being answered
    wire.send(CHAT)
    resp = wire.response()
    assert resp.status == 200 and mock_reply(resp) == "[mock] You said: hello wire"


def test_an_upgrade_body_never_smuggles_a_request(gw: GatewayThread) -> None:
    smuggled = raw("GET", "/keeptrusts/config")
    wire = Wire(gw.port)
    wire.send(raw("POST", "/v1/chat/completions", smuggled, *h2c_lines()))
    first = wire.response()
    assert first.status == 400 and first.json()["error"]["code"] == "invalid_json"  # the body, read as a body
    wire.send(request("GET", "/healthz", Connection="close"))
    second = wire.response()
    assert second.status == 200 and "revision" not in second.json()  # /healthz's answer, not /keeptrusts/config's
    assert wire.closed()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_http2_prior_upgrade_post_is_served(gw: GatewayThread, tmp_path: Path) -> None:
    body = tmp_path / "body.json"
    body.write_bytes(CHAT)
    out = subprocess.run(["curl", "-sS", "--http2", "-H", "Content-Type: application/json", "--data-binary",
                          f"@{body}", f"http://127.0.0.1:{gw.port}/v1/chat/completions"],
                         capture_output=True, timeout=20, check=True)
    assert json.loads(out.stdout)["choices"][0]["message"]["content"] == "[mock] You said: hello wire"


def test_connect_gets_405_and_close_and_its_body_is_never_a_request(gw: GatewayThread) -> None:
    wire = Wire(gw.port)
    wire.send(b"CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n\r\n" + raw("GET", "/healthz"))
    resp = wire.response()
    assert resp.status == 405 and resp.json()["error"]["code"] == "method_not_allowed"
    assert resp.headers["connection"] == "close" and wire.closed()
    wire = Wire(gw.port)
    wire.send(raw("CONNECT", "/v1/models", raw("GET", "/healthz")))
    assert wire.response().status == 405 and wire.closed()


# --- Host and the request target ----------------------------------------------------------------


def test_two_host_headers_get_400_and_close(gw: GatewayThread) -> None:
    for path in ("/healthz", "/v1/models"):
        wire = Wire(gw.port)
        wire.send(raw("GET", path, None, "Host: a.example", host=True))
        resp = wire.response()
        assert resp.status == 400 and "Host" in resp.json()["error"]["message"]
        assert resp.headers["connection"] == "close" and wire.closed()


@pytest.mark.parametrize("host", ["a b", "a/b", "a@b", "a:b:c", "[::1", "a\\b", 'a"b'])
def test_an_invalid_host_value_gets_400_and_close(gw: GatewayThread, host: str) -> None:
    wire = Wire(gw.port)
    wire.send(raw("GET", "/healthz", None, f"Host: {host}", host=False))
    resp = wire.response()
    assert resp.status == 400 and "Host" in resp.json()["error"]["message"] and wire.closed()


@pytest.mark.parametrize("host", ["gateway.example", "gateway.example:41002", "10.0.0.1:80", "[::1]:41002", "",
                                  "xn--bcher-kva.example", "a_b.internal"])
def test_valid_host_values_are_served(gw: GatewayThread, host: str) -> None:
    wire = Wire(gw.port)
    wire.send(raw("GET", "/healthz", None, f"Host: {host}", host=False))
    assert wire.response().status == 200


def test_no_host_followed_by_more_bytes_is_400_and_close_without_an_error_log(
        gw: GatewayThread, no_errors_logged: None) -> None:
    for path in ("/healthz", "/v1/chat/completions"):
        wire = Wire(gw.port)
        wire.send(raw("GET", path, None, host=False) + raw("GET", "/healthz") + b"more bytes")
        resp = wire.response()
        assert resp.status == 400 and resp.json()["error"]["code"] == "bad_request"
        assert resp.headers["connection"] == "close" and wire.closed()


def test_http10_needs_no_host(gw: GatewayThread) -> None:
    wire = Wire(gw.port)
    wire.send(b"GET /healthz HTTP/1.0\r\n\r\n")
    assert wire.response().status == 200


def test_absolute_form_targets_are_served_like_origin_form(gw: GatewayThread) -> None:
    wire = Wire(gw.port)
    wire.send(raw("POST", "http://gateway.example/v1/chat/completions", CHAT))
    resp = wire.response()
    assert resp.status == 200 and mock_reply(resp) == "[mock] You said: hello wire"
    wire.send(raw("GET", "HTTPS://user@gateway.example:8443/v1/models?x=1"))
    assert wire.response().json()["object"] == "list"
    wire.send(raw("GET", "http://gateway.example"))  # no path: "/"
    assert wire.response().status == 404


@pytest.mark.parametrize("target", ["v1/models", "ftp://x/v1/models", "http:///v1/models"])
def test_other_request_targets_get_400(gw: GatewayThread, target: str) -> None:
    wire = Wire(gw.port)
    wire.send(raw("GET", target))
    assert wire.response().status == 400 and wire.closed()


# --- framing: Transfer-Encoding and Content-Length --------------------------------------------------

BODY5 = b"5\r\nhello\r\n0\r\n\r\n"


@pytest.mark.parametrize("lines, body", [
    (["Transfer-Encoding: identity, chunked"], BODY5),  # today: read as chunked, kept alive
    (["Transfer-Encoding: chunked, identity"], b"hello"),
    (["Transfer-Encoding: gzip, chunked"], BODY5),
    (["Transfer-Encoding: gzip"], b"hello"),
    (["Transfer-Encoding: chunked", "Transfer-Encoding: chunked"], BODY5),
    (["Transfer-Encoding: chunked", "Content-Length: 5"], BODY5),  # both: a smuggling classic
    (["Content-Length: 5", "Transfer-Encoding: chunked"], BODY5),
    (["Content-Length: 5", "Content-Length: 5"], b"hello"),
    (["Content-Length: 5", "Content-Length: 6"], b"hello!"),
    (["Content-Length: 5, 5"], b"hello"),
    (["Content-Length: +5"], b"hello"),
    (["Content-Length: -1"], b""),
    (["Content-Length: 0x5"], b"hello"),
    (["Content-Length: 99999999999999999999999"], b""),
    (["X-Folded: a", " b"], b""),  # obs-fold
    (["X-Nul: a\x00b"], b""),
    (["X-Space : a"], b""),
    (["Transfer-Encoding:\x0bchunked"], BODY5),
])
def test_ambiguous_framing_gets_an_error_and_close(gw: GatewayThread, lines: list[str], body: bytes) -> None:
    wire = Wire(gw.port)
    wire.send(raw("POST", "/v1/chat/completions", body, *lines) + raw("GET", "/keeptrusts/config"))
    resp = wire.response()
    assert resp.status in (400, 501), (lines, resp.status, resp.body)
    assert resp.headers["connection"] == "close" and wire.closed()  # nothing after it is read as a request


@pytest.mark.parametrize("coding", ["gzip", "br", "deflate, gzip"])
def test_a_compressed_body_is_refused_with_415_not_read_as_json(gw: GatewayThread, coding: str) -> None:
    wire = Wire(gw.port)
    wire.send(raw("POST", "/v1/chat/completions", gzip.compress(CHAT), f"Content-Encoding: {coding}"))
    resp = wire.response()
    assert resp.status == 415 and json.loads(resp.body)["error"]["code"] == "unsupported_content_encoding"
    assert coding in json.loads(resp.body)["error"]["message"] and wire.closed()
    wire = Wire(gw.port)  # identity is no coding at all
    wire.send(raw("POST", "/v1/chat/completions", CHAT, "Content-Encoding: identity"))
    assert wire.response().status == 200


def test_transfer_encoding_on_http10_is_refused(gw: GatewayThread) -> None:
    wire = Wire(gw.port)
    wire.send(b"POST /v1/chat/completions HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n" + BODY5)
    assert wire.response().status == 400 and wire.closed()


def test_chunked_is_case_insensitive_and_takes_extensions_and_trailers(gw: GatewayThread) -> None:
    wire = Wire(gw.port)
    body = b"%x;ext=1\r\n%b\r\n0\r\nX-Trailer: t\r\n\r\n" % (len(CHAT), CHAT)
    wire.send(raw("POST", "/v1/chat/completions", body, "Transfer-Encoding: Chunked"))
    resp = wire.response()
    assert resp.status == 200 and mock_reply(resp) == "[mock] You said: hello wire"


@pytest.mark.parametrize("data", [
    b"GET /healthz HTTP/1.1\nHost: t\n\n",  # bare LF
    b"GET /healthz HTTP/1.1\r\nHost: t\nX: y\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: t\rX: y\r\n\r\n",  # bare CR
    b"GET /he\x00lthz HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: t\r\n\x00: y\r\n\r\n",
    b"GET /healthz HTTP/2.0\r\nHost: t\r\n\r\n",
    b"GET /healthz HTTP/1.1 \r\nHost: t\r\n\r\n",
])
def test_malformed_heads_get_400_and_close(gw: GatewayThread, data: bytes) -> None:
    wire = Wire(gw.port)
    wire.send(data + raw("GET", "/keeptrusts/config"))
    resp = wire.response()
    assert resp.status in (400, 505), (data, resp.status)
    assert wire.closed()


def test_a_very_long_head_gets_431(gw: GatewayThread) -> None:
    wire = Wire(gw.port)
    wire.send(raw("GET", "/healthz", None, *[f"X-H{i}: {'v' * 1000}" for i in range(80)]))
    resp = wire.response()
    assert resp.status == 431 and wire.closed()
    wire = Wire(gw.port)
    wire.send(raw("GET", "/" + "a" * 70_000))
    assert wire.response().status == 431 and wire.closed()


def test_pipelined_requests_are_answered_in_order_with_their_own_bodies(gw: GatewayThread) -> None:
    wire = Wire(gw.port)
    bodies = [json.dumps({"model": "demo-model", "messages": [{"role": "user", "content": f"n{i}"}]}).encode()
              for i in range(3)]
    wire.send(b"".join(raw("POST", "/v1/chat/completions", b) for b in bodies) + raw("GET", "/healthz"))
    assert [mock_reply(wire.response()) for _ in bodies] == [f"[mock] You said: n{i}" for i in range(3)]
    assert wire.response().status == 200


# --- --client-timeout -------------------------------------------------------------------------


@pytest.fixture
def impatient(tmp_path: Path, start_gateway: Any) -> GatewayThread:
    cfg = write_config(tmp_path / "c.yaml", MOCK_TARGETS)
    return start_gateway(cfg, client_timeout=0.5, drain_timeout=20)


def test_a_stalled_body_gets_408_and_close(impatient: GatewayThread) -> None:
    wire = Wire(impatient.port)
    wire.send(raw("POST", "/v1/chat/completions", None, "Content-Length: 100") + b'{"model"')
    resp = wire.response()
    assert resp.status == 408 and resp.json()["error"]["code"] == "request_timeout"
    assert wire.closed()
    event = wait_for(lambda: impatient.events)[0]
    assert event["status"] == 408 and event["error_code"] == "request_timeout"
    assert impatient.runtime.in_flight == 0 and impatient.open_connections() == 0


def test_a_stalled_head_gets_408_and_close(impatient: GatewayThread) -> None:
    wire = Wire(impatient.port)
    wire.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nX-Slow: ")
    resp = wire.response()
    assert resp.status == 408 and wire.closed()


def test_a_client_sending_steadily_is_not_cut(impatient: GatewayThread) -> None:
    wire = Wire(impatient.port)
    wire.send(raw("POST", "/v1/chat/completions", None, f"Content-Length: {len(CHAT)}"))
    for i in range(len(CHAT)):  # well over the 0.5 s timeout in all, never silent for long
        wire.send(CHAT[i:i + 1])
        time.sleep(0.03)
    resp = wire.response()
    assert resp.status == 200 and mock_reply(resp) == "[mock] You said: hello wire"


def test_drain_finishes_with_a_stalled_client_connected(impatient: GatewayThread) -> None:
    wire = Wire(impatient.port)
    wire.send(raw("POST", "/v1/chat/completions", None, "Content-Length: 100") + b"{")
    wait_for(lambda: impatient.runtime.in_flight == 1)
    assert impatient.gateway is not None and impatient.loop is not None
    began = time.monotonic()
    asyncio.run_coroutine_threadsafe(impatient.gateway.drain(), impatient.loop).result(20)
    assert time.monotonic() - began < 5  # the stalled request is cut by the client timeout, not the drain timeout
    assert wire.response().status == 408


def test_sigterm_drain_of_a_real_gateway_finishes_with_a_stalled_client(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.yaml", MOCK_TARGETS)
    gw = GatewayProcess(cfg, tmp_path / "state", "--client-timeout", "1", "--drain-timeout", "60")
    try:
        wire = Wire(gw.port)
        wire.send(raw("POST", "/v1/chat/completions", None, "Content-Length: 100") + b"{")
        wait_for(lambda: gw.get("/health")[1]["in_flight"] == 1, timeout=10)
        began = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        assert gw.proc.wait(20) == 0
        assert time.monotonic() - began < 10
        assert wire.response().status == 408
    finally:
        if gw.proc.poll() is None:
            gw.proc.kill()
            gw.proc.wait(10)


# --- a client that stops reading ------------------------------------------------------------------


class Flood(tornado.web.RequestHandler):
    """Writes 256 KiB chunks, each flush awaited, until the client goes away."""

    def initialize(self, seen: dict[str, Any]) -> None:
        self.seen = seen

    async def get(self) -> None:
        chunk = b"x" * 262144
        try:
            while True:
                self.write(chunk)
                self.seen["pending"] = fut = self.flush()
                await fut
        except StreamClosedError:
            self.seen["failed"].set()


class Dump(tornado.web.RequestHandler):
    """Answers 16 MiB in one go (no flush awaited): all of it sits in the server's buffers."""

    def get(self) -> None:
        self.finish(b"x" * (16 * 2**20))


@contextlib.contextmanager
def h1_server(loop_kind: str, **settings: Any) -> Iterator[tuple[int, dict[str, Any], HTTP1Server,
                                                                  asyncio.AbstractEventLoop]]:
    """HTTP1Server with the Flood app in a thread, on asyncio's loop or on uvloop (what production runs)."""
    seen: dict[str, Any] = {"failed": threading.Event()}
    app = tornado.web.Application([(r"/flood", Flood, {"seen": seen}), (r"/dump", Dump)])
    with serve_app(app, loop_kind, **settings) as (port, server, loop):
        yield port, seen, server, loop


@pytest.fixture(params=["asyncio", "uvloop"])
def flood_server(request: pytest.FixtureRequest) -> Iterator[tuple[int, dict[str, Any], HTTP1Server,
                                                                   asyncio.AbstractEventLoop]]:
    with h1_server(request.param, client_timeout=0.5) as served:
        yield served


def test_a_client_that_stops_reading_is_closed_by_the_write_timeout(flood_server: Any) -> None:
    port, seen, server, loop = flood_server
    wire = Wire(port)
    wire.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    wire.send(request("GET", "/flood"))
    assert seen["failed"].wait(10)  # the pending write failed: the handler (and what it holds) is let go

    async def gone() -> bool:
        return bool(await async_wait_for(lambda: not server.connections, timeout=5))

    assert asyncio.run_coroutine_threadsafe(gone(), loop).result(10)


def test_a_finished_response_left_unread_does_not_hold_the_connection(flood_server: Any) -> None:
    port, _, server, loop = flood_server
    for connection in ("close", "keep-alive"):
        wire = Wire(port)
        wire.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        wire.send(request("GET", "/dump", Connection=connection))  # and never read

        async def stuck_then_gone() -> bool:
            await async_wait_for(lambda: any(c.write_paused for c in server.connections), timeout=5)
            return bool(await async_wait_for(lambda: not server.connections, timeout=5))

        assert asyncio.run_coroutine_threadsafe(stuck_then_gone(), loop).result(10), connection
        wire.close()


# --- --max-connections ------------------------------------------------------------------------------


def test_over_max_connections_a_new_connection_gets_503_and_the_others_live_on(
        tmp_path: Path, start_gateway: Any) -> None:
    cfg = write_config(tmp_path / "c.yaml", MOCK_TARGETS)
    gw = start_gateway(cfg, max_connections=2)
    held = [Wire(gw.port), Wire(gw.port)]
    for wire in held:
        wire.send(request("GET", "/healthz"))
        assert wire.response().status == 200
    extra = Wire(gw.port)
    extra.send(request("GET", "/healthz"))
    resp = extra.response()
    assert resp.status == 503 and resp.json()["error"]["code"] == "too_many_connections"
    assert resp.headers["retry-after"] == "1" and extra.closed()
    for wire in held:  # never a reset of the connections already served
        wire.send(request("GET", "/v1/models"))
        assert wire.response().status == 200
    held.pop().close()
    wait_for(lambda: gw.open_connections() == 1)
    fresh = Wire(gw.port)  # capacity freed: the health endpoints answer at once
    fresh.send(request("GET", "/readyz"))
    assert fresh.response().status == 200
    fresh.send(request("GET", "/metrics"))
    scraped = fresh.response().body.decode()
    assert "keeptrusts_gateway_max_connections 2.0" in scraped
    assert "keeptrusts_gateway_connections_refused_total 1.0" in scraped


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_the_503_over_max_connections_reaches_the_client_on_both_loops(loop_kind: str) -> None:
    with h1_server(loop_kind, max_connections=1) as (port, _, server, _loop):
        held = Wire(port)
        held.send(request("GET", "/nowhere"))
        assert held.response().status == 404
        for _ in range(3):
            extra = Wire(port)
            extra.send(request("POST", "/flood", b"x" * 100_000))  # unread by the server: still a clean 503
            assert extra.response().status == 503 and extra.closed()
        held.send(request("GET", "/nowhere"))
        assert held.response().status == 404
        assert server.refused == 3


def test_accept_failing_with_emfile_neither_spins_nor_crashes(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.yaml", MOCK_TARGETS)
    limit = 96

    def low_fd_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    gw = GatewayProcess(cfg, tmp_path / "state", "--max-connections", "1000", preexec=low_fd_limit)
    wires: list[socket.socket] = []
    try:
        for _ in range(limit + 20):  # more than the process can hold open
            wires.append(socket.create_connection(("127.0.0.1", gw.port), timeout=5))
        before = _cpu_seconds(gw.proc.pid)
        time.sleep(1.5)  # a measurement window, not a synchronisation
        assert _cpu_seconds(gw.proc.pid) - before < 0.5  # not spinning on accept
        assert gw.proc.poll() is None
        for sock in wires:
            sock.close()
        wires.clear()
        wait_for(lambda: _healthy(gw.port), timeout=15)
        assert "Traceback" not in gw.logs()
    finally:
        for sock in wires:
            sock.close()
        gw.proc.terminate()
        gw.proc.wait(20)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _healthy(port: int) -> bool:
    """A health check answered 200. A connection closed unanswered is not yet: while the gateway is still
    out of descriptors, libuv accepts and closes pending connections (docs/gateway.md, EMFILE)."""
    try:
        wire = Wire(port)
        wire.send(request("GET", "/healthz", Connection="close"))
        return wire.response().status == 200
    except (OSError, EOFError):
        return False


def test_a_stream_the_client_stops_reading_frees_the_connection_and_the_upstream_slot(
        tmp_path: Path, fake_upstream: Any, start_gateway: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KT_CONF_KEY", "sk-up")
    gw = start_gateway(write_config(tmp_path / "c.yaml", [
        {"id": "up", "provider": "openai", "model": "demo-model", "base_url": fake_upstream.base_url,
         "secret_key_ref": {"env": "KT_CONF_KEY"}}]), client_timeout=0.5)
    fake_upstream.queue_reply("word " * 2_000_000, chunks=4000)  # ~10 MB of SSE: more than the socket buffers
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", gw.port))
    body = json.dumps({"model": "demo-model", "stream": True, "messages": [{"role": "user", "content": "go"}]})
    sock.sendall(raw("POST", "/v1/chat/completions", body.encode()))  # and never read
    event = wait_for(lambda: gw.events, timeout=20)[0]
    assert event["status"] == 499 and event["error_code"] == "client_closed"
    pool = gw.services().upstream.pool
    wait_for(lambda: gw.call(lambda: pool.in_use) == 0)  # the upstream slot is free again
    assert gw.open_connections() == 0
    sock.close()


def test_the_default_max_connections_follows_the_raised_open_file_limit(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.yaml", MOCK_TARGETS)
    hard = min(4096, resource.getrlimit(resource.RLIMIT_NOFILE)[1])

    def shell_like_limit() -> None:  # a low soft limit under a higher hard one, as a login shell has
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    gw = GatewayProcess(cfg, tmp_path / "state", preexec=shell_like_limit)
    try:
        expected = f"at most {(hard - 128) // 2} at once"
        assert any(expected in line.get("msg", "") for line in gw.log_lines()), gw.logs()
    finally:
        assert gw.stop() == 0
