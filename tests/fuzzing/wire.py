"""A strict reader of HTTP/1.1 responses: what any client may rely on, and nothing more.

Stricter than h11 or llhttp on purpose: CRLF only (no bare LF), no obs-fold, header names are
tokens, values carry no control characters, exactly one of Content-Length / `chunked` frames
a body (none for 1xx, 204, 304 and HEAD), chunk sizes are plain hex, and nothing is
delimited by the close of the connection. Anything else is `Malformed`.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field

MAX_HEAD = 64 * 1024
MAX_BODY = 64 * 1024 * 1024

_STATUS = re.compile(rb"HTTP/1\.([01]) ([1-9][0-9][0-9]) ([\t\x20-\x7e\x80-\xff]*)")
_HEADER = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([\t\x20-\x7e\x80-\xff]*?)[ \t]*")
_CHUNK = re.compile(rb"([0-9A-Fa-f]{1,16})(;[\t\x20-\x7e\x80-\xff]*)?")


class Malformed(Exception):
    """The gateway wrote bytes that are not a well-framed HTTP/1.1 response."""


class Closed(Exception):
    """The connection ended cleanly (EOF or reset) before the first byte of a response."""

    def __init__(self, reset: bool = False) -> None:
        super().__init__("reset" if reset else "eof")
        self.reset = reset


@dataclass
class Response:
    """One response as read off the wire."""

    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        name = name.lower()
        values = [v for k, v in self.headers if k.lower() == name]
        return ", ".join(values) if values else None

    @property
    def keep_alive(self) -> bool:
        tokens = {t.strip().lower() for t in (self.header("Connection") or "").split(",")}
        return "keep-alive" in tokens if self.version == "HTTP/1.0" else "close" not in tokens


class Reader:
    """Reads responses off one connection's `asyncio.StreamReader`, each before a deadline."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self.stream = stream
        self.started = False  # a byte of the current response was read

    async def _line(self, limit: int) -> bytes:
        try:
            line = await self.stream.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial and not self.started:
                raise Closed() from None
            raise Malformed(f"connection closed mid-response after {exc.partial[:80]!r}") from None
        except asyncio.LimitOverrunError:
            raise Malformed(f"a response line longer than {limit} bytes") from None
        except (ConnectionResetError, BrokenPipeError):
            if not self.started:
                raise Closed(reset=True) from None
            raise Malformed("connection reset mid-response") from None
        self.started = True
        if len(line) > limit:
            raise Malformed(f"a response line longer than {limit} bytes")
        if not line.endswith(b"\r\n") or b"\r" in line[:-2]:
            raise Malformed(f"a line not ended by exactly CRLF: {line[:80]!r}")
        return line[:-2]

    async def _exact(self, n: int) -> bytes:
        try:
            return await self.stream.readexactly(n)
        except asyncio.IncompleteReadError as exc:
            raise Malformed(f"body cut short: {len(exc.partial)} of {n} bytes") from None
        except (ConnectionResetError, BrokenPipeError):
            raise Malformed("connection reset mid-body") from None

    async def read(self, method: str, http10: bool = False) -> Response:
        """The next response (1xx interim ones are returned too: check `status`).

        `http10`: the request was not HTTP/1.1, so a body may end with the connection (no chunked)."""
        self.started = False
        line = await self._line(MAX_HEAD)
        match = _STATUS.fullmatch(line)
        if match is None:
            raise Malformed(f"not a status line: {line[:80]!r}")
        resp = Response(f"HTTP/1.{match[1].decode()}", int(match[2]), match[3].decode("latin1"))
        size = len(line)
        while True:
            line = await self._line(MAX_HEAD)
            size += len(line) + 2
            if size > MAX_HEAD:
                raise Malformed("response head beyond 64 KiB")
            if not line:
                break
            if line[:1] in (b" ", b"\t"):
                raise Malformed(f"obs-fold in a response header: {line[:80]!r}")
            header = _HEADER.fullmatch(line)
            if header is None:
                raise Malformed(f"not a header line: {line[:80]!r}")
            resp.headers.append((header[1].decode("latin1"), header[2].decode("latin1")))
        resp.body = await self._body(resp, method, http10)
        return resp

    async def _body(self, resp: Response, method: str, http10: bool) -> bytes:
        lengths = [v for k, v in resp.headers if k.lower() == "content-length"]
        codings = [v for k, v in resp.headers if k.lower() == "transfer-encoding"]
        if resp.status < 200:
            if lengths or codings:
                raise Malformed(f"a {resp.status} interim response with a body framing")
            if resp.status == 101:
                raise Malformed("101 Switching Protocols: the gateway upgrades nothing")
            return b""
        if codings and lengths:
            raise Malformed("both Transfer-Encoding and Content-Length")
        if resp.status in (204, 304):
            if codings or (lengths and lengths != ["0"]):
                raise Malformed(f"a {resp.status} response that frames a body")
            return b""
        if codings:
            if len(codings) != 1 or codings[0].strip().lower() != "chunked":
                raise Malformed(f"Transfer-Encoding {codings!r}, not exactly chunked")
            return b"" if method == "HEAD" else await self._chunked()
        if not lengths and http10 and method != "HEAD":  # RFC 9112 6.3: read until the close
            return await self._until_close()
        if len(lengths) != 1 or not lengths[0].isdigit() or len(lengths[0]) > 12:
            raise Malformed(f"no usable framing: Content-Length {lengths!r} and no chunked")
        if method == "HEAD":
            return b""
        length = int(lengths[0])
        if length > MAX_BODY:
            raise Malformed(f"a body of {length} bytes")
        return await self._exact(length)

    async def _until_close(self) -> bytes:
        try:
            data = await self.stream.read(MAX_BODY + 1)
            parts = [data]
            while data:
                data = await self.stream.read(MAX_BODY)
                parts.append(data)
        except (ConnectionResetError, BrokenPipeError):
            raise Malformed("connection reset mid-body") from None
        return b"".join(parts)

    async def _chunked(self) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            line = await self._line(1024)
            match = _CHUNK.fullmatch(line)
            if match is None:
                raise Malformed(f"bad chunk size line {line[:80]!r}")
            size = int(match[1], 16)
            if size == 0:
                break
            total += size
            if total > MAX_BODY:
                raise Malformed("a chunked body beyond 64 MiB")
            parts.append(await self._exact(size))
            if await self._exact(2) != b"\r\n":
                raise Malformed("chunk data not followed by CRLF")
        while True:  # trailers
            line = await self._line(MAX_HEAD)
            if not line:
                return b"".join(parts)
            if _HEADER.fullmatch(line) is None:
                raise Malformed(f"bad trailer line {line[:80]!r}")


def sse_problem(body: bytes, may_be_empty: bool = False) -> str | None:
    """What is wrong with a `text/event-stream` body the gateway wrote (None: fine).

    Every event's data is JSON (or `[DONE]`), and the stream carries at least one event besides
    `[DONE]` (a silent `200` with only `[DONE]` hides an answer) unless `may_be_empty` (the
    upstream itself ended its stream before any event)."""
    text = body.decode("utf-8", errors="strict") if body else ""
    events = [e for e in text.replace("\r\n", "\n").split("\n\n") if e.strip()]
    payloads = 0
    for event in events:
        for line in event.split("\n"):
            if line.startswith("data:"):
                data = line[5:].strip()
                if data == "[DONE]":
                    continue
                try:
                    json.loads(data)
                except ValueError:
                    return f"an SSE data line that is not JSON: {data[:80]!r}"
                payloads += 1
    if payloads == 0 and not may_be_empty:
        return f"a stream with no event but [DONE]: {text[:120]!r}"
    return None
