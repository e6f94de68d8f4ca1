"""The upstream HTTP/1.1 client (gateway/http/client.py via providers/upstream.py) against real loopback servers.

Each test runs one event loop holding both a scripted asyncio server and the client, so the
server side (connections accepted, requests seen, sockets closed) can be checked exactly.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import socket
import ssl
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.http import client as httpclient
from gateway.http import upstream_connection
from gateway.http.https_proxy import Proxy
from gateway.providers import adapters
from gateway.providers.upstream import Timeouts, UpstreamClient, UpstreamFailure, failure_for_exception, iter_stream
from policies.model import SecretRef, Target
from tests.fake_upstream import FakeUpstream
from tests.waiting import async_wait_for

TARGET = Target("up", "openai", "m")
HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer sk-secret-upstream-key"}


@dataclass
class Request:
    conn: int  # which server-side connection (1, 2, ...) carried it
    line: str
    headers: dict[str, str]
    body: bytes


Answer = Callable[[Request, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]


class Upstream:
    """A scripted HTTP/1.1 server: `answer(request, reader, writer)` replies; False closes the connection."""

    def __init__(self, answer: Answer, ssl_context: ssl.SSLContext | None = None) -> None:
        self.answer = answer
        self.ssl_context = ssl_context
        self.connections = 0
        self.ended = 0  # connections whose client side went away (or that we closed)
        self.requests: list[Request] = []

    async def __aenter__(self) -> Upstream:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl_context)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()

    def url(self, host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}/v1/chat/completions"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = self.connections
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:] if h)}
                body = await reader.readexactly(int(headers.get("content-length", 0)))
                request = Request(conn, head[0], headers, body)
                self.requests.append(request)
                if not await self.answer(request, reader, writer):
                    break
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.ended += 1
            writer.close()


def reply(body: bytes = b'{"ok": true}', status: str = "200 OK", headers: str = "") -> bytes:
    return f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{headers}\r\n".encode() + body


async def answer_ok(req: Request, reader: Any, writer: asyncio.StreamWriter) -> bool:
    writer.write(reply(b'{"n": %d}' % len(req.body)))
    return True


async def first_chunk_then_silence(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """Start a chunked stream with the chunk `first`, then say nothing: what the client sent next (b"": it left)."""
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
    await writer.drain()
    return await reader.read(1)


async def answer_silence(req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    await reader.read(1)  # nothing until the client gives up
    return False


def answering(data: bytes) -> Answer:
    """An upstream answer: `data` to every request, the connection kept."""
    async def answer(req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(data)
        return True

    return answer


def stream_stalls(otherwise: Answer) -> Answer:
    """A request with the body b"stream" gets the chunk `first`, then silence; others, `otherwise`."""
    async def answer(req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        if req.body == b"stream":
            await first_chunk_then_silence(reader, writer)
            return False
        return await otherwise(req, reader, writer)

    return answer


RUNNERS: dict[str, Callable[[Any], Any]] = {"asyncio": asyncio.run}
try:
    import uvloop

    RUNNERS["uvloop"] = uvloop.run  # what `kt gateway run` uses
except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
    pass
_runner: list[Callable[[Any], Any]] = [asyncio.run]


@pytest.fixture(autouse=True, params=sorted(RUNNERS))
def _event_loop(request: pytest.FixtureRequest) -> None:
    """Every test runs on asyncio's loop and on uvloop (their transports differ in EOF, TLS and pausing)."""
    _runner[0] = RUNNERS[request.param]


def run(coro: Awaitable[Any]) -> Any:
    return _runner[0](coro)


def client(**timeouts: float) -> UpstreamClient:
    return UpstreamClient(Timeouts(**{"connect_s": 2.0, "read_s": 5.0, **timeouts}))


def test_keep_alive_reuses_one_connection_and_sends_a_correct_head() -> None:
    async def main() -> None:
        async with Upstream(answer_ok) as up:
            up_client = client()
            for body in (b"{}", b'{"a": 1}', b'{"bb": 22}'):
                assert await up_client.post_json(TARGET, up.url(), HEADERS, body) == b'{"n": %d}' % len(body)
            assert up.connections == 1 and up_client.pool.opened == 1 and len(up.requests) == 3
            first = up.requests[0]
            assert first.line == "POST /v1/chat/completions HTTP/1.1"
            assert first.headers["host"] == f"127.0.0.1:{up.port}"  # non-default port kept
            assert first.headers["authorization"] == HEADERS["Authorization"] and first.body == b"{}"
            await up_client.close()
            await async_wait_for(lambda: up.ended == 1)

    run(main())


def test_an_idle_connection_closed_by_the_server_is_not_reused() -> None:
    async def answer(req: Request, reader: Any, writer: asyncio.StreamWriter) -> bool:
        writer.write(reply())
        return False  # keep-alive promised, but the server closes right after (as idle timeouts do)

    async def main() -> None:
        async with Upstream(answer) as up:
            up_client = client()
            await up_client.post_json(TARGET, up.url(), HEADERS, b"{}")
            await async_wait_for(lambda: not any(c.usable for q in up_client.pool.idle.values() for c in q))
            assert not up_client.pool.idle[("http", "127.0.0.1", up.port)]  # dropped when the EOF came
            await up_client.post_json(TARGET, up.url(), HEADERS, b"{}")
            assert up.connections == 2 and len(up.requests) == 2  # a new connection, no failed attempt
            await up_client.close()

    run(main())


def test_a_request_written_on_a_reused_connection_is_never_sent_again() -> None:
    """A POST that reached the upstream may have been billed: a drop after the write is a failure, not a resend."""
    async def answer(req: Request, reader: Any, writer: asyncio.StreamWriter) -> bool:
        if len(up.requests) == 2:  # the server read the request (a generation started), then the connection broke
            return False
        writer.write(reply())
        return True

    async def main() -> None:
        nonlocal up
        async with Upstream(answer) as up:
            up_client = client()
            await up_client.post_json(TARGET, up.url(), HEADERS, b"{}")
            with pytest.raises(UpstreamFailure) as failure:
                await up_client.post_json(TARGET, up.url(), HEADERS, b"{}")
            assert failure.value.kind == "connect"
            assert [r.conn for r in up.requests] == [1, 1]  # sent once, not again on a new connection
            await up_client.close()

    up: Upstream
    run(main())


def test_a_pooled_connection_found_closed_before_the_write_is_replaced() -> None:
    """The one case a request moves to another connection: the pooled one is closed before anything is written.

    The client's loop has not seen the server's FIN yet (reading paused); the peek at reuse finds it."""
    async def answer(req: Request, reader: Any, writer: asyncio.StreamWriter) -> bool:
        writer.write(reply())
        return len(up.requests) != 1  # the first connection is closed by the server after its answer

    async def main() -> None:
        nonlocal up
        async with Upstream(answer) as up:
            up_client = client()
            await up_client.post_json(TARGET, up.url(), HEADERS, b"{}")
            (conn,) = up_client.pool.idle[("http", "127.0.0.1", up.port)]
            conn.transport.pause_reading()  # the FIN stays unread in the socket
            await async_wait_for(lambda: up.ended == 1)
            conn.idle_since -= httpclient.PEEK_AFTER_S  # idle long enough to be checked before reuse
            assert await up_client.post_json(TARGET, up.url(), HEADERS, b"{}") == b'{"ok": true}'
            assert [r.conn for r in up.requests] == [1, 2] and up_client.pool.opened == 2
            await up_client.close()

    up: Upstream
    run(main())


def test_keep_alive_reuse_stays_below_common_upstream_idle_timeouts() -> None:
    assert httpclient.KEEPALIVE_S < 5.0  # uvicorn's and Node.js's default keep-alive timeout


def test_a_fresh_connection_dropped_before_any_answer_fails_without_retry() -> None:
    async def answer(req: Request, reader: Any, writer: asyncio.StreamWriter) -> bool:
        return False

    async def main() -> None:
        async with Upstream(answer) as up:
            with pytest.raises(UpstreamFailure) as failure:
                await client().post_json(TARGET, up.url(), HEADERS, b"{}")
            assert failure.value.kind == "connect" and "ServerDisconnected" in failure.value.message
            assert len(up.requests) == 1

    run(main())


def test_connection_close_answers_are_not_reused() -> None:
    async def answer(req: Request, reader: Any, writer: asyncio.StreamWriter) -> bool:
        writer.write(reply(headers="Connection: close\r\n"))
        return True  # the server even keeps its end open: the client must not reuse it

    async def main() -> None:
        async with Upstream(answer) as up:
            up_client = client()
            for _ in range(2):
                await up_client.post_json(TARGET, up.url(), HEADERS, b"{}")
            assert up.connections == 2
            await async_wait_for(lambda: up.ended == 2)  # the client closed both
            await up_client.close()

    run(main())


@pytest.mark.parametrize("framing", ["chunked", "until-close", "gzip", "after-100-continue"])
def test_chunked_read_until_close_and_gzip_bodies(framing: str) -> None:
    text = b'{"choices": [], "pad": "' + b"x" * 5000 + b'"}'

    async def answer(req: Request, reader: Any, writer: asyncio.StreamWriter) -> bool:
        if framing == "chunked":
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for i in range(0, len(text), 1000):
                writer.write(b"%x\r\n%s\r\n" % (len(text[i:i + 1000]), text[i:i + 1000]))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            return True
        if framing == "gzip":
            writer.write(reply(gzip.compress(text), headers="Content-Encoding: gzip\r\n"))
            return True
        if framing == "after-100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + reply(text))
            return True
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + text[:100])
        await writer.drain()
        writer.write(text[100:])
        return False  # the end of the body is the end of the connection

    async def main() -> None:
        async with Upstream(answer) as up:
            up_client = client()
            for _ in range(2):
                assert await up_client.post_json(TARGET, up.url(), HEADERS, b"{}") == text
            assert up.connections == (2 if framing == "until-close" else 1)
            await up_client.close()

    run(main())


def test_streaming_yields_chunks_as_they_arrive_and_the_pool_keeps_a_finished_stream() -> None:
    go_on = asyncio.Event()

    async def answer(req: Request, reader: Any, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        writer.write(b"d\r\ndata: first\n\n\r\n")
        await writer.drain()
        await go_on.wait()  # the client must have the first chunk before the server sends more
        writer.write(b"e\r\ndata: second\n\n\r\n0\r\n\r\n")
        return True

    async def main() -> None:
        async with Upstream(answer) as up:
            up_client = client()
            resp = await up_client.open_stream(TARGET, up.url(), HEADERS, b"{}")
            assert resp.status == 200 and resp.headers["content-type"] == "text/event-stream"
            chunks = iter_stream(TARGET, resp)
            assert await anext(chunks) == b"data: first\n\n"
            go_on.set()
            assert [c async for c in chunks] == [b"data: second\n\n"]
            resp.release()
            await up_client.post_json(TARGET, up.url(), HEADERS, b"{}")
            assert up.connections == 1  # a stream read to its end returns its connection
            await up_client.close()

    run(main())


def test_early_release_closes_the_connection() -> None:
    async def answer(req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        assert await first_chunk_then_silence(reader, writer) == b""  # the client went away mid-stream
        return False

    async def main() -> None:
        async with Upstream(answer) as up:
            up_client = client()
            resp = await up_client.open_stream(TARGET, up.url(), HEADERS, b"{}")
            assert await resp.read_chunk() == b"first"
            resp.release()
            await async_wait_for(lambda: up.ended == 1)
            assert not up_client.pool.idle.get(("http", "127.0.0.1", up.port)) and up_client.pool.in_use == 0
            await up_client.close()

    run(main())


@pytest.mark.parametrize("tail", ["in time", "never"])
def test_a_stream_released_at_its_logical_end_is_pooled_when_its_body_ends(
        tail: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upstream_connection, "DRAIN_S", 0.2)
    go_on = asyncio.Event()

    async def answer(req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        if req.body == b"plain":
            writer.write(reply())
            return True
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\ne\r\ndata: [DONE]\n\n\r\n")
        await writer.drain()
        if tail == "never":  # the body never ends: the client gives up waiting and closes
            assert await reader.read(1) == b""
            return False
        await go_on.wait()  # the last chunk comes only after the client released the stream
        writer.write(b"0\r\n\r\n")
        return True

    async def main() -> None:
        async with Upstream(answer) as up:
            up_client = client()
            resp = await up_client.open_stream(TARGET, up.url(), HEADERS, b"{}")
            assert await resp.read_chunk() == b"data: [DONE]\n\n"
            resp.release(finished=True)
            go_on.set()
            if tail == "never":
                await async_wait_for(lambda: up.ended == 1)
            else:
                await async_wait_for(lambda: up_client.pool.idle.get(("http", "127.0.0.1", up.port)))
            await up_client.post_json(TARGET, up.url(), HEADERS, b"plain")
            assert up.connections == (2 if tail == "never" else 1)
            assert up_client.pool.in_use == 0  # every slot given back
            await up_client.close()

    run(main())


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_streams_through_the_adapters_keep_their_connection(
        provider: str, fake_upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    """The test upstream (Tornado) writes the chunked terminator after `[DONE]`: the connection still gets pooled."""
    monkeypatch.setenv("FAKE_UPSTREAM_KEY", "sk-fake")
    key = SecretRef(env="FAKE_UPSTREAM_KEY")
    target = Target("fake", provider, "m", base_url=fake_upstream.url, secret_key_ref=key,
                    **({"api_key_header": "x-api-key", "api_key_prefix": ""} if provider == "anthropic" else {}))
    req = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}

    async def main() -> None:
        up_client = client()
        pool_key = ("http", "127.0.0.1", fake_upstream.port)
        for _ in range(3):
            fake_upstream.queue_reply("one two three", chunks=3)
            batches = [b async for b in adapters.stream(up_client, target, req)]
            assert batches[-1][-1] is None  # DONE
            await async_wait_for(lambda: up_client.pool.idle.get(pool_key))
        assert up_client.pool.opened == 1 and up_client.pool.in_use == 0
        await up_client.close()

    run(main())


def test_a_lagging_reader_pauses_the_socket_instead_of_buffering() -> None:
    piece = b"y" * 65536
    total = 64 * len(piece)  # 4 MiB

    async def answer(req: Request, reader: Any, writer: asyncio.StreamWriter) -> bool:
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n".encode())
        for _ in range(64):
            writer.write(piece)
            await writer.drain()
        return True

    async def main() -> None:
        async with Upstream(answer) as up:
            up_client = client()
            resp = await up_client.open_stream(TARGET, up.url(), HEADERS, b"{}")
            await async_wait_for(lambda: resp.reading_paused)
            assert resp.unread < upstream_connection.HIGH_WATER + 2 * len(piece)
            got = 0
            async for data in iter_stream(TARGET, resp):
                got += len(data)
            assert got == total
            resp.release()
            await up_client.close()

    run(main())


def test_max_response_size_bounds_whole_bodies_and_inflation_not_streams() -> None:
    """--max-response-size bounds a whole body (decoded, before inflating past it) but not a long stream."""
    big = b"z" * 300_000

    async def answer(req: Request, reader: Any, writer: asyncio.StreamWriter) -> bool:
        if req.body == b"gzip":
            body = gzip.compress(b" " * 5_000_000)
            writer.write(reply(body, headers="Content-Encoding: gzip\r\n"))
        else:
            writer.write(reply(big))
        return True

    async def main() -> None:
        async with Upstream(answer) as up:
            small = UpstreamClient(Timeouts(connect_s=2.0, read_s=5.0), max_response_size=100_000)
            for body in (b"{}", b"gzip"):
                with pytest.raises(UpstreamFailure) as failure:
                    await small.post_json(TARGET, up.url(), HEADERS, body)
                assert failure.value.kind == "bad_response" and "--max-response-size" in failure.value.message
            resp = await small.open_stream(TARGET, up.url(), HEADERS, b"{}")  # a stream read late: not limited
            await async_wait_for(lambda: resp.body_received or resp.reading_paused)
            assert len(await resp.read()) == len(big)
            resp.release()
            assert up.connections == 3  # each body past the limit dropped its connection
            await small.close()

    run(main())


def test_read_timeout_before_the_answer_and_mid_stream() -> None:
    async def main() -> None:
        async with Upstream(stream_stalls(answer_silence)) as up:
            up_client = client(read_s=0.2)
            with pytest.raises(UpstreamFailure) as failure:
                await up_client.post_json(TARGET, up.url(), HEADERS, b"{}")
            assert failure.value.message == "target up (openai) timed out: no data within the read timeout"
            resp = await up_client.open_stream(TARGET, up.url(), HEADERS, b"stream")
            chunks = iter_stream(TARGET, resp)
            assert await anext(chunks) == b"first"
            with pytest.raises(UpstreamFailure) as failure:
                await anext(chunks)
            assert failure.value.kind == "timeout"
            resp.release()
            await async_wait_for(lambda: up.ended == 2)  # both timed-out connections were closed
            assert up_client.pool.in_use == 0
            await up_client.close()

    run(main())


def test_connect_timeout_covers_a_tls_handshake_that_never_answers(tls: dict[str, Any]) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accepts TCP, never speaks TLS
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        up_client = UpstreamClient(Timeouts(connect_s=0.2, read_s=5), ssl_context=tls["client"])
        with pytest.raises(UpstreamFailure) as failure:
            await up_client.post_json(TARGET, f"https://localhost:{port}/v1/x", HEADERS, b"{}")
        assert failure.value.kind == "timeout" and "connect timeout" in failure.value.message
        server.close()

    run(main())


def test_refused_connection_and_error_status_are_classified_without_secrets() -> None:
    async def main() -> None:
        slow_down = reply(b'{"error": {"message": "slow down"}}', "429 Too Many Requests", "Retry-After: 7\r\n")
        async with Upstream(answering(slow_down)) as up:
            up_client = client()
            with pytest.raises(UpstreamFailure) as failure:
                await up_client.post_json(TARGET, up.url(), HEADERS, b"{}")
            assert failure.value.kind == "rate_limit" and failure.value.retry_after == 7
            with pytest.raises(UpstreamFailure) as failure:
                await up_client.open_stream(TARGET, up.url(), HEADERS, b"{}")
            assert failure.value.kind == "rate_limit" and failure.value.retry_after == 7
            assert up.connections == 1  # error answers read to their end keep the connection
            port = up.port
        await up_client.close()  # the pooled connection goes; the port is closed now
        with pytest.raises(UpstreamFailure) as failure:
            await up_client.post_json(TARGET, f"http://127.0.0.1:{port}/v1/x", HEADERS, b"{}")
        assert failure.value.kind == "connect" and failure.value.message.endswith("ConnectionRefusedError")
        dns = failure_for_exception(TARGET, socket.gaierror(-2, "Name or service not known"))  # no resolver in tests
        assert dns.kind == "connect" and dns.message == "target up (openai) is unreachable: DNS lookup failed"
        with pytest.raises(UpstreamFailure) as failure:
            await up_client.post_json(TARGET, up.url(), {"Authorization": "Bearer sk-secret\r\nX: y"}, b"{}")
        assert failure.value.kind == "client_error" and "sk-secret" not in failure.value.message
        await up_client.close()

    run(main())


def test_close_closes_idle_and_busy_connections() -> None:
    async def main() -> None:
        async with Upstream(stream_stalls(answer_ok)) as up:
            up_client = client()
            resp = await up_client.open_stream(TARGET, up.url(), HEADERS, b"stream")
            await up_client.post_json(TARGET, up.url(), HEADERS, b"{}")  # a second connection, now idle
            assert up.connections == 2
            await up_client.close()
            await async_wait_for(lambda: up.ended == 2)
            chunks = iter_stream(TARGET, resp)
            assert await anext(chunks) == b"first"
            with pytest.raises(UpstreamFailure):
                await anext(chunks)
            resp.release()
            assert up_client.pool.in_use == 0

    run(main())


@pytest.mark.parametrize("answer_bytes", [b"SSH-2.0-OpenSSH_9.6\r\n", b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\n"
                                          b"Content-Length: 2\r\n\r\n{}"])
def test_an_answer_that_is_not_usable_http_is_a_bad_response(answer_bytes: bytes) -> None:
    async def main() -> None:
        async with Upstream(answering(answer_bytes)) as up:
            up_client = client()
            with pytest.raises(UpstreamFailure) as failure:
                await up_client.post_json(TARGET, up.url(), HEADERS, b"{}")
            assert failure.value.kind == "bad_response" and up_client.pool.in_use == 0
            assert failure.value.message in ("target up (openai) sent an invalid HTTP response",
                                             "target up (openai) answered with an unsupported content encoding")
            await async_wait_for(lambda: up.ended == 1)  # not kept
            await up_client.close()

    run(main())


def test_an_unasked_second_answer_drops_the_connection() -> None:
    async def main() -> None:
        async with Upstream(answering(reply(b'{"first": 1}') + reply(b'{"second": 2}'))) as up:
            up_client = client()
            for _ in range(2):
                assert await up_client.post_json(TARGET, up.url(), HEADERS, b"{}") == b'{"first": 1}'
            assert up.connections == 2
            await up_client.close()

    run(main())


def test_max_connections_queues_the_request_beyond_the_limit() -> None:
    async def main() -> None:
        async with Upstream(answer_ok) as up:
            up_client = UpstreamClient(Timeouts(connect_s=2, read_s=5), max_connections=1)
            resp = await up_client.open_stream(TARGET, up.url(), HEADERS, b"{}")
            second = asyncio.ensure_future(up_client.post_json(TARGET, up.url(), HEADERS, b"{}"))
            await async_wait_for(lambda: up_client.pool.waiting)  # it waits for the one connection
            assert not second.done() and len(up.requests) == 1
            assert await resp.read() == b'{"n": 2}'
            resp.release()
            assert await second == b'{"n": 2}'
            assert up.connections == 1 and up_client.pool.in_use == 0
            await up_client.close()

            busy = UpstreamClient(Timeouts(connect_s=0.2, read_s=5), max_connections=1)
            resp = await busy.open_stream(TARGET, up.url(), HEADERS, b"{}")
            with pytest.raises(UpstreamFailure) as failure:  # the wait for a connection is bounded
                await busy.post_json(TARGET, up.url(), HEADERS, b"{}")
            assert failure.value.kind == "timeout" and "all 1 upstream connections stayed busy" in failure.value.message
            resp.release()
            assert busy.pool.in_use == 0 and not busy.pool.waiting
            await busy.close()

    run(main())


# -- TLS ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A self-signed certificate for localhost, upstream.test and 127.0.0.1: the server context and a client
    context trusting it."""
    d: Path = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", d / "key.pem", "-out", d / "cert.pem", "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,DNS:upstream.test,IP:127.0.0.1"],
                   check=True, capture_output=True)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(d / "cert.pem", d / "key.pem")
    return {"server": server, "client": ssl.create_default_context(cafile=d / "cert.pem"), "cert": d / "cert.pem"}


def test_https_verifies_the_certificate_and_the_host_name(tls: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        async with Upstream(answer_ok, tls["server"]) as up:
            trusting = UpstreamClient(Timeouts(connect_s=2, read_s=5), ssl_context=tls["client"])
            for _ in range(2):
                assert await trusting.post_json(TARGET, up.url("localhost", "https"), HEADERS, b"{}") == b'{"n": 2}'
            assert up.connections == 1 and up.requests[0].headers["host"] == f"localhost:{up.port}"
            await trusting.close()

            default = client()  # the system CAs do not know our self-signed certificate
            with pytest.raises(UpstreamFailure) as failure:
                await default.post_json(TARGET, up.url("localhost", "https"), HEADERS, b"{}")
            assert failure.value.kind == "connect" and "certificate" in failure.value.message
            await default.close()
            assert len(up.requests) == 2  # nothing sent over the untrusted connection

            monkeypatch.setenv("SSL_CERT_FILE", str(tls["cert"]))  # a private CA, as docs/gateway.md says
            private_ca = client()
            assert await private_ca.post_json(TARGET, up.url("localhost", "https"), HEADERS, b"{}") == b'{"n": 2}'
            await private_ca.close()

    run(main())


# -- through an HTTP proxy (HTTPS_PROXY) ------------------------------------------------------------


class ConnectProxy:
    """An HTTP proxy on loopback that opens CONNECT tunnels to `port` on 127.0.0.1, whatever host is asked.

    `tunnels` records each CONNECT's target and Proxy-Authorization; with `require` set, a request
    without that Proxy-Authorization gets 407; with `hang_up` the proxy closes without answering.
    """

    def __init__(self, port: int, require: str | None = None, hang_up: bool = False) -> None:
        self.target_port, self.require, self.hang_up = port, require, hang_up
        self.tunnels: list[tuple[str, str | None]] = []

    async def __aenter__(self) -> ConnectProxy:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:] if h)}
        method, target, _ = head[0].split(" ")
        auth = headers.get("proxy-authorization")
        self.tunnels.append((target, auth))
        if self.hang_up or method != "CONNECT":
            writer.close()
            return
        if self.require is not None and auth != self.require:
            writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except ConnectionError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


def basic(credentials: str) -> str:
    return "Basic " + base64.b64encode(credentials.encode()).decode()


def test_https_upstream_through_a_proxy_tunnel_with_credentials(tls: dict[str, Any],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        async with Upstream(answer_ok, tls["server"]) as up, \
                ConnectProxy(up.port, require=basic("us@r:p:ss")) as proxy:
            monkeypatch.setenv("HTTPS_PROXY", f"http://us%40r:p%3Ass@127.0.0.1:{proxy.port}")
            via_proxy = UpstreamClient(Timeouts(connect_s=2, read_s=5), ssl_context=tls["client"])
            for _ in range(2):  # the proxy resolves upstream.test (to our loopback server); we never do
                url = "https://upstream.test/v1/chat/completions"
                assert await via_proxy.post_json(TARGET, url, HEADERS, b"{}") == b'{"n": 2}'
            assert proxy.tunnels == [("upstream.test:443", basic("us@r:p:ss"))]  # one tunnel, kept alive
            assert up.connections == 1 and up.requests[0].headers["host"] == "upstream.test"
            assert "proxy-authorization" not in up.requests[0].headers  # the proxy's credentials stay with it
            # loopback goes direct, as it would with NO_PROXY
            assert await via_proxy.post_json(TARGET, up.url("localhost", "https"), HEADERS, b"{}") == b'{"n": 2}'
            assert len(proxy.tunnels) == 1 and up.connections == 2
            await via_proxy.close()

    run(main())


def test_a_proxy_that_refuses_or_hangs_up_is_a_clear_connect_failure(tls: dict[str, Any],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        async with Upstream(answer_ok, tls["server"]) as up, ConnectProxy(up.port, require=basic("a:b")) as proxy:
            monkeypatch.setenv("HTTPS_PROXY", f"http://a:wrong-s3cret@127.0.0.1:{proxy.port}")
            refused = UpstreamClient(Timeouts(connect_s=2, read_s=5), ssl_context=tls["client"])
            with pytest.raises(UpstreamFailure) as failure:
                await refused.post_json(TARGET, "https://upstream.test/v1/x", HEADERS, b"{}")
            message = failure.value.message
            assert failure.value.kind == "connect"
            assert f"the proxy http://127.0.0.1:{proxy.port} refused a tunnel to upstream.test:443: HTTP 407" in message
            assert "wrong-s3cret" not in message and "a:" not in message
            await refused.close()
        async with ConnectProxy(1, hang_up=True) as proxy:
            monkeypatch.setenv("HTTPS_PROXY", f"127.0.0.1:{proxy.port}")  # scheme-less, as curl takes it
            dropped = UpstreamClient(Timeouts(connect_s=2, read_s=5), ssl_context=tls["client"])
            with pytest.raises(UpstreamFailure) as failure:
                await dropped.post_json(TARGET, "https://upstream.test/v1/x", HEADERS, b"{}")
            assert "closed the connection before answering CONNECT" in failure.value.message
            assert up.requests == []  # nothing reached the upstream either way
            await dropped.close()

    run(main())


def test_proxy_settings_from_the_environment() -> None:
    proxy = Proxy.from_env({"https_proxy": "http://u:pw@proxy.corp:3128", "NO_PROXY": "internal.corp,.svc"})
    assert proxy is not None and proxy.shown == "http://proxy.corp:3128" and "pw" not in repr(proxy)
    assert proxy.serves("api.openai.com") and proxy.serves("api.anthropic.com")
    for direct in ("internal.corp", "llm.internal.corp", "vllm.ns.svc", "127.0.0.1", "::1", "localhost"):
        assert not proxy.serves(direct), direct
    assert Proxy.from_env({}) is None and Proxy.from_env({"HTTP_PROXY": "http://p:1"}) is None
    for bad in ("https://proxy:443", "socks5://proxy:1080", "http://", "http://proxy:99999"):
        with pytest.raises(ValueError, match="HTTPS_PROXY"):
            Proxy.from_env({"HTTPS_PROXY": bad})


def test_destination_parsing() -> None:
    d = httpclient.destination("https://api.example.com/v1/chat/completions")
    assert d.key == ("https", "api.example.com", 443) and d.tls
    assert d.head == "POST /v1/chat/completions HTTP/1.1\r\nHost: api.example.com\r\n"
    d = httpclient.destination("http://[::1]:8080/v1/x?a=1")
    assert d.key == ("http", "::1", 8080) and d.head == "POST /v1/x?a=1 HTTP/1.1\r\nHost: [::1]:8080\r\n"
    for bad in ("ftp://h/x", "http:///x", "http://h:99999/x", "https://u:secret@h/x"):
        with pytest.raises(ValueError):
            httpclient.destination(bad)
