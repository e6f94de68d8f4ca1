"""One upstream HTTP/1.1 connection reading one response at a time: framing, decoding, limits, timeouts.

`UpstreamConnection` is the asyncio protocol of a connection the pool (client.py) lends out:
`send` writes a request, `wait` returns once the head (a stream) or the whole response has
arrived, `read_chunk` hands a stream's bytes over as they come. It parses with httptools
(llhttp); decodes gzip/deflate in bounded steps; bounds the head (`MAX_HEAD_SIZE`), a whole
body and a stream's unread bytes (`max_response_size`); pauses the socket while a stream's
unread bytes are above `HIGH_WATER`; fails a response that stays silent for the read timeout;
and, released at a stream's logical end, awaits the body's last bytes in the background
(`drain`, bounded by `DRAIN_S` and `DRAIN_BYTES`) so the connection can be pooled again.

Its state is three phases (phases.py) and a few facts: `link`, the socket (connecting, usable,
ended, lost); `duty`, what the pool has it doing (off, idle in the pool, busy with a request,
draining); `reading`, how far the current response has arrived (head, body, parsed); and
`stream`, `framed` (a Content-Length or Transfer-Encoding: the body does not end at EOF),
`paused` (reading stopped for backpressure) and `keep_alive` (the complete response allows reuse).
"""

from __future__ import annotations

import asyncio
import socket
import zlib
from typing import TYPE_CHECKING, Any

import httptools

from gateway.http.phases import BODY, BUSY, CONNECTING, DRAINING, ENDED, HEAD, IDLE, LOST, OFF, PARSED, USABLE

if TYPE_CHECKING:
    from gateway.http.client import Pool

MAX_HEAD_SIZE = 64 * 1024  # status line and headers of one response (interim 1xx answers included)
HIGH_WATER = 256 * 1024  # unread bytes of a stream above which the socket is not read
STREAM_ROOM = 4 * HIGH_WATER  # the least room a stream's unread (decoded) bytes get, whatever the body limit
DRAIN_S, DRAIN_BYTES = 5.0, 64 * 1024  # the most silence / bytes awaited after a stream's logical end
_FRAMING = (b"content-length", b"transfer-encoding")


class ServerDisconnected(ConnectionError):
    """The server closed the connection before the response ended."""


class ProtocolError(Exception):
    """The server's answer is not valid HTTP/1.1 (or uses an encoding we cannot decode)."""


class UpstreamConnection(asyncio.Protocol):
    """One HTTP/1.1 connection and the state of the response it is reading."""

    def __init__(self, pool: Pool, key: tuple[str, str, int]) -> None:
        self.pool = pool
        self.key = key
        self.loop = pool.loop
        self.read_s = pool.read_s
        self.max_body = pool.max_response_size
        self.parser = httptools.HttpResponseParser(self)
        self.transport: Any = None
        self.link = CONNECTING
        self.duty = OFF
        self.idle_since = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.waiter: asyncio.Future[None] | None = None
        self._reset(False)

    def _reset(self, stream: bool) -> None:
        self.stream = stream
        self.status = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.head_size = 0  # bytes received before the (final) headers were complete
        self.body_size = 0  # decoded body bytes received
        self.reading = HEAD
        self.framed = self.paused = self.keep_alive = False
        self.error: BaseException | None = None
        self.decoder: Any = None

    # -- the exchange -----------------------------------------------------------------------

    def send(self, data: bytes, stream: bool) -> None:
        """Write one request and start the read timeout."""
        self._reset(stream)
        self.duty = BUSY
        self.transport.write(data)
        self.last_io = self.loop.time()
        if self.timer is None:  # an armed timer stays armed across requests and re-checks `last_io`
            self.timer = self.loop.call_at(self.last_io + self.read_s, self._on_timer)

    async def wait(self) -> None:
        """Until the headers (stream) or the whole response arrived; raise the connection's error."""
        while not (self.reading is PARSED or (self.stream and self.reading is BODY)):
            if self.error is not None:
                raise self.error
            self.waiter = self.loop.create_future()
            await self.waiter

    async def read_chunk(self) -> bytes:
        """The body bytes received since the last call (waiting for some), `b""` at the end."""
        while not self.chunks:
            if self.error is not None:
                raise self.error
            if self.reading is PARSED:
                return b""
            self.waiter = self.loop.create_future()
            await self.waiter
        chunks = self.chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self.chunks = []
        self.buffered = 0
        if self.paused and self.link is USABLE:
            self.paused = False
            self.last_io = self.loop.time()
            self.transport.resume_reading()
        return data

    def drain(self) -> None:
        """Await the rest of a body in the background (bounded); the pool takes the connection at its end."""
        self.duty = DRAINING
        self.chunks = []
        self.buffered = 0
        self.waiter = None
        if self.paused:
            self.paused = False
            self.transport.resume_reading()
        self._cancel_timer()
        self.last_io = self.loop.time()
        self.timer = self.loop.call_at(self.last_io + DRAIN_S, self._on_timer)

    def close(self, exc: BaseException | None = None) -> None:
        """Close the socket; a response being read fails with `exc` (or `ConnectionAbortedError`)."""
        if self.duty is DRAINING:
            self.pool.done(self)  # incomplete: closes the connection (off duty) and frees its slot
            return
        self._end_link()
        self._cancel_timer()
        if self.duty is BUSY and self.reading is not PARSED and self.error is None:
            self.error = exc or ConnectionAbortedError("the connection was closed")
            self._wake()
        if self.transport is not None and self.link is not LOST:
            self.transport.abort()

    @property
    def usable(self) -> bool:
        """Connected, and no EOF or error seen: may carry a request."""
        return self.link is USABLE

    def _end_link(self) -> None:
        """After an EOF or our close the link carries nothing more (a lost one stays lost)."""
        if self.link is USABLE:
            self.link = ENDED

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _on_timer(self) -> None:
        self.timer = None
        if self.duty < BUSY or self.reading is PARSED or self.error is not None:
            return
        now = self.loop.time()
        silence = DRAIN_S if self.duty is DRAINING else self.read_s
        deadline = now + self.read_s if self.paused else self.last_io + silence
        if deadline - now > 0.005:
            self.timer = self.loop.call_at(deadline, self._on_timer)
        else:
            self.close(TimeoutError("no data within the read timeout"))

    def _ended(self) -> None:
        """The socket ended (EOF or loss): the end of a read-until-close body, or an error."""
        self._end_link()
        if self.duty >= BUSY and self.reading is BODY and not self.framed:
            self.on_message_complete()
            self.keep_alive = False
        else:
            self.close(ServerDisconnected("the upstream closed the connection"))

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.link = USABLE
        self.pool.conns.add(self)

    def data_received(self, data: bytes) -> None:
        if self.duty < BUSY or self.reading is PARSED:  # nothing asked: the connection is out of step
            self.close()
            return
        self.last_io = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # a 101 (or CONNECT-style answer) to a plain POST
            self.close(ProtocolError("answered with a protocol switch it was not asked for"))
            return
        except httptools.HttpParserError as exc:
            cause = exc.__context__ if isinstance(exc.__context__, ProtocolError) else None
            self.close(cause or ProtocolError("sent an invalid HTTP response"))
            return
        if self.reading is HEAD:  # httptools buffers an unfinished head line: bound what it may hold
            self.head_size += len(data)
            if self.head_size > MAX_HEAD_SIZE:
                self.close(ProtocolError(f"sent response headers larger than {MAX_HEAD_SIZE // 1024} KiB"))

    def eof_received(self) -> bool:
        self._ended()
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        self.link = LOST
        self.pool.conns.discard(self)
        if self.duty >= BUSY and self.reading is not PARSED and self.error is None and exc is None:
            self._ended()
        else:
            self.close(exc)
        if self.duty is IDLE:
            self.pool.forget(self)

    # -- httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.reading is PARSED:  # a second answer to one request: keep the first, drop the connection
            raise ProtocolError("sent more than one answer")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.raw_headers.append((name, value))
        lower = name.lower()
        if lower in _FRAMING:
            self.framed = True
            if lower == b"content-length" and not self.stream and value.strip().isdigit() \
                    and int(value) > self.max_body:  # refused before any byte of it is read
                raise ProtocolError(f"announced a response body larger than {self.max_body} bytes "
                                    "(--max-response-size)")
        elif lower == b"content-encoding":
            coding = value.strip().lower()
            if coding in (b"gzip", b"x-gzip", b"deflate"):
                self.decoder = zlib.decompressobj(wbits=47)  # zlib or gzip header, detected
            elif coding not in (b"", b"identity"):
                raise ProtocolError("answered with an unsupported content encoding")

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if self.status < 200:  # an informational answer: the real one follows
            self.raw_headers = []
            self.framed = False
            self.decoder = None
            return
        self.reading = BODY
        if self.stream:
            self._wake()

    def on_body(self, body: bytes) -> None:
        if self.duty is DRAINING:
            self.buffered += len(body)
            if self.buffered > DRAIN_BYTES:
                raise ProtocolError("kept sending after the end of its stream")
            return
        # a whole body may not pass the limit; a stream's unread bytes not (but at least STREAM_ROOM: a slow
        # client lets HIGH_WATER and one more read pile up even under a tiny limit)
        room = max(self.max_body, STREAM_ROOM) - self.buffered if self.stream else self.max_body - self.body_size
        if self.decoder is not None:
            try:
                body = self.decoder.decompress(body, room + 1)  # never inflates more than the room left
            except zlib.error:
                raise ProtocolError("sent a body that does not decompress") from None
            if not body:
                return
        if len(body) > room:
            raise ProtocolError(f"sent a response body larger than {self.max_body} bytes (--max-response-size)")
        self.body_size += len(body)
        self.chunks.append(body)
        if self.stream:
            self.buffered += len(body)
            if self.buffered > HIGH_WATER and not self.paused:
                self.paused = True
                self.transport.pause_reading()
            self._wake()

    def on_message_complete(self) -> None:
        if self.reading is HEAD:  # the end of an informational answer
            return
        if self.decoder is not None and (rest := self.decoder.flush()):  # at most what the last step held back
            self.chunks.append(rest)
        self.reading = PARSED
        self.keep_alive = self.parser.should_keep_alive()
        if self.duty is DRAINING:
            self.pool.done(self)
        else:
            self._wake()


def still_open(transport: Any) -> bool:
    """Whether an idle connection's socket has neither an EOF nor unasked bytes waiting (a peek, ~2 us)."""
    raw = transport.get_extra_info("socket")
    if raw is None:
        return True
    sock = socket.socket(fileno=raw.fileno())  # the loop's transport sockets cannot recv(); detached below
    try:
        sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        return False  # EOF (b"") or bytes nobody asked for: either way, not a connection to reuse
    except (BlockingIOError, InterruptedError):
        return True
    except OSError:
        return False
    finally:
        sock.detach()
