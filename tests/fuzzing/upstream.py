"""A misbehaving upstream on a raw socket, and the mutations of its answers.

Every request the gateway forwards is read (head + Content-Length or chunked body); a marker
`fz:<case>` in the body picks the case's `Answer` (registered by the campaign), otherwise a
valid answer for the path and the `stream` flag is sent. An `Answer` renders to actions:
bytes to write, pauses, a close. It can be anything the wire allows and much it does not:
odd statuses, junk Retry-After, junk JSON, wrong types in usage, broken SSE, gzip (bombs
too), HTTP/1.0 close-delimited bodies, bad chunking, huge heads, stalls within bounds, and
an error that echoes the credential the gateway sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import random
import re
import zlib
from dataclasses import dataclass, field
from typing import Any

from tests.fake_wire import Reply, anthropic_events, anthropic_message, openai_completion, openai_events
from tests.fuzzing import bodies
from tests.fuzzing.bodies import Op

MARKER = re.compile(rb"fz:([0-9a-f]+:[0-9]+)")
_AUTH = re.compile(rb"(?im)^(authorization|x-api-key): *([^\r\n]*)")


@dataclass
class Answer:
    """What the upstream answers; mutations edit it, `actions()` renders it."""

    kind: str  # openai | anthropic | embeddings
    stream: bool
    status: int = 200
    reason: bytes = b"OK"
    version: bytes = b"HTTP/1.1"
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    doc: Any = None  # a JSON answer (bodies markers allowed)
    events: list[bytes] = field(default_factory=list)  # SSE events, when streaming
    raw_body: bytes | None = None  # replaces doc/events
    framing: str = "length"  # length | chunked | close | lying_length | bad_chunked
    encoding: str | None = None  # gzip | deflate | bad-gzip | bomb
    bomb_mb: int = 0
    stall_head: float = 0.0
    stall_between: float = 0.0
    eol: bytes = b"\r\n"
    cut_at: float | None = None  # close after this fraction of the body
    echo_key: bool = False  # put the credential the request carried in the error text
    close_now: bool = False  # close without a byte
    ops: list[Op] = field(default_factory=list)

    def body(self, auth: bytes) -> bytes:
        if self.raw_body is not None:
            data = self.raw_body
        elif self.stream and self.events:
            data = b"".join(self.events)
        else:
            doc = self.doc
            if self.echo_key:
                doc = {"error": {"message": "Incorrect API key provided: " + auth.decode("latin1"),
                                 "type": "invalid_request_error", "code": "invalid_api_key"}}
            data = bodies.serialize(doc)
        if self.encoding == "gzip":
            data = gzip.compress(data)
        elif self.encoding == "deflate":
            data = zlib.compress(data)
        elif self.encoding == "bad-gzip":
            data = b"\x1f\x8b\x08\x00" + data
        elif self.encoding == "bomb":
            data = gzip.compress(b"\x00" * (self.bomb_mb * 1024 * 1024), compresslevel=9)
        return data

    def actions(self, auth: bytes) -> list[tuple[str, Any]]:
        """[("write", bytes) | ("sleep", seconds) | ("close", None)]."""
        if self.close_now:
            return [("close", None)]
        body = self.body(auth)
        headers = list(self.headers)
        content_type = b"text/event-stream" if self.stream and self.events and self.raw_body is None \
            else b"application/json"
        if not any(n.lower() == b"content-type" for n, _ in headers):
            headers.append((b"Content-Type", content_type))
        if self.encoding:
            name = b"gzip" if self.encoding in ("gzip", "bad-gzip", "bomb") else b"deflate"
            headers.append((b"Content-Encoding", name))
        if self.framing in ("length", "lying_length"):
            extra = 50 if self.framing == "lying_length" else 0
            headers.append((b"Content-Length", str(len(body) + extra).encode()))
        elif self.framing in ("chunked", "bad_chunked"):
            headers.append((b"Transfer-Encoding", b"chunked"))
        else:
            headers.append((b"Connection", b"close"))
        status = str(self.status).encode() + b" " if self.status else b""  # 0: `reason` is a raw status token
        head = self.version + b" " + status + self.reason + self.eol
        head += b"".join(n + b": " + v + self.eol for n, v in headers) + self.eol
        out: list[tuple[str, Any]] = []
        if self.stall_head:
            out.append(("sleep", self.stall_head))
        out.append(("write", head))
        pieces = self._pieces(body)
        if self.cut_at is not None:
            wire = b"".join(pieces)
            out += [("write", wire[: int(len(wire) * self.cut_at)]), ("close", None)]
            return out
        for piece in pieces:
            if self.stall_between:
                out.append(("sleep", self.stall_between))
            out.append(("write", piece))
        if self.framing in ("close", "lying_length", "bad_chunked"):
            out.append(("close", None))
        return out

    def _pieces(self, body: bytes) -> list[bytes]:
        parts = self.events if (self.stream and self.events and self.raw_body is None and not self.encoding) \
            else [body]
        if self.framing == "chunked":
            return [b"%x\r\n" % len(p) + p + b"\r\n" for p in parts if p] + [b"0\r\n\r\n"]
        if self.framing == "bad_chunked":
            return [b"%x\r\n" % (len(p) + 3) + p + b"\r\n" for p in parts if p] + [b"zz\r\n"]
        return parts


def valid_answer(kind: str, stream: bool, model: str = "m", rng: random.Random | None = None) -> Answer:
    """The well-formed answer to a request of this kind."""
    rng = rng or random.Random(0)
    reply = Reply(text=rng.choice(("Hi.", "A longer answer with a few words in it.", "日本語 🧪", "")) or None)
    if kind == "embeddings":
        doc = {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.1, -0.2, 0.3]}],
               "model": model, "usage": {"prompt_tokens": 3, "total_tokens": 3}}
        return Answer(kind, False, doc=doc)
    request = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    ident = {"id": f"fz_{rng.getrandbits(64):016x}"}  # not the builders' random ids: a case replays byte for byte
    if kind == "anthropic":
        doc = {**anthropic_message(request, reply), **ident}
        return Answer(kind, stream, doc=doc, events=anthropic_events(doc, 3) if stream else [])
    doc = {**openai_completion(request, reply), **ident, "created": 1_800_000_000}
    return Answer(kind, stream, doc=doc, events=openai_events(doc, 3, rng.random() < 0.5) if stream else [])


_STATUSES = (100, 101, 199, 201, 202, 204, 206, 301, 302, 304, 400, 401, 403, 404, 408, 409, 413, 418, 422, 429,
             499, 500, 501, 502, 503, 504, 529, 599, 600, 999)
_RETRY_AFTER = (b"inf", b"-inf", b"nan", b"1e400", b"-1", b"0", b"3", b"99999999999999999999", b"1e10", b"0x10",
                b"\xd9\xa1", b"Wed, 21 Oct 2015 07:28:00 GMT", b"Fri, 31 Dec 9999 23:59:59 GMT", b"soon", b"",
                b"2.5", b" 1 ")
_USAGE = ("x", -1, None, [], {}, 1.5, 2**80, True, "1e400")
_SSE_JUNK = (b"data: {not json}\n\n", b"data: \n\n", b": comment\n\n", b"event: error\ndata: {\"error\": 1}\n\n",
             b"data: [DONE]\n\n", b"data: null\n\n", b"data: []\n\n", b"data: 1e400\n\n", b"retry: x\n\n",
             b"\xef\xbb\xbfdata: {}\n\n", b"data: {\"choices\": [{\"delta\": {\"content\": 5}}]}\n\n",
             b"data: {\"choices\": \"x\"}\n\n", b"data: {\"type\": \"content_block_delta\", \"delta\": 3}\n\n",
             b"data: {\"type\": \"message_start\", \"message\": null}\n\n", b"\r\r\r", b"data:" + b"[" * 3000 + b"\n\n",
             b"data: {\"usage\": {\"prompt_tokens\": \"x\"}}\n\n")


def answer_op(rng: random.Random) -> Op:
    """One mutation of an upstream answer."""
    kind = rng.choice(("status", "status", "retry_after", "retry_after", "json_junk", "json_junk", "usage_types",
                       "not_json", "lying_length", "chunked", "bad_chunked", "close_delimited", "http10", "gzip",
                       "gzip", "bad_gzip", "bomb", "stall_head", "stall_between", "huge_header", "bad_head",
                       "close_now", "cut", "echo_key", "sse_junk", "sse_junk", "sse_huge_line", "sse_cr",
                       "plain_json_for_stream", "content_type", "deep_content"))
    status = rng.choice(_STATUSES)
    retry_after = rng.choice(_RETRY_AFTER)
    doc_ops = [bodies.doc_op(rng) for _ in range(rng.randrange(1, 4))]
    usage = rng.choice(_USAGE)
    junk = rng.choice((b"", b"<html>oops</html>", b"{", b'{"choices": [', b"\x00\xff" * 10, b"null", b"[]",
                       b'"x"', b"{}", b'{"error": "x"}', b'{"error": {"message": 5}}'))
    stall = rng.choice((0.05, 0.3, 0.8, 1.3))  # the gateway's upstream read timeout is 1 s
    cut = rng.random()
    bad_head = rng.choice(((b"HTTP/1.1", b"2OO"), (b"ICY", b"200"), (b"HTTP/1.1", b"20"), (b"HTTP/2", b"200"),
                           (b"HTTP/1.1\n", b"200"), (b"HTTP/1.1", b"200 OK\x00")))
    sse = [rng.choice(_SSE_JUNK) for _ in range(rng.randrange(1, 4))]
    position = rng.random()
    bomb = rng.choice((1, 8, 32, 100))
    ctype = rng.choice((b"text/html", b"text/event-stream", b"application/octet-stream", b"application/json; x"))
    depth = rng.choice((100, 500, 2000, 20_000))

    def apply(a: Answer) -> None:
        if kind == "status":
            a.status, a.reason = status, b"Whatever"
        elif kind == "retry_after":
            a.status = rng_status
            a.headers.append((b"Retry-After", retry_after))
        elif kind == "json_junk":
            if a.stream and a.events:
                at = int(position * len(a.events))
                event = a.events[at]
                prefix, sep, data = event.rpartition(b"data: ")
                try:
                    doc = json.loads(data)
                except ValueError:
                    return
                for op in doc_ops:
                    op.apply(doc)
                a.events[at] = prefix + sep + bodies.serialize(doc) + b"\n\n"
            else:
                for op in doc_ops:
                    op.apply(a.doc)
        elif kind == "usage_types":
            if isinstance(a.doc, dict) and isinstance(a.doc.get("usage"), dict):
                for key in list(a.doc["usage"]):
                    a.doc["usage"][key] = usage
        elif kind == "not_json":
            a.raw_body = junk
        elif kind == "lying_length":
            a.framing = "lying_length"
        elif kind == "chunked":
            a.framing = "chunked"
        elif kind == "bad_chunked":
            a.framing = "bad_chunked"
        elif kind == "close_delimited":
            a.framing = "close"
        elif kind == "http10":
            a.version, a.framing = b"HTTP/1.0", "close"
        elif kind == "gzip":
            a.encoding = rng.choice(("gzip", "deflate")) if position < 0.5 else "gzip"
        elif kind == "bad_gzip":
            a.encoding = "bad-gzip"
        elif kind == "bomb":
            a.encoding, a.bomb_mb = "bomb", bomb
        elif kind == "stall_head":
            a.stall_head = stall
        elif kind == "stall_between":
            a.stall_between = stall / 3
        elif kind == "huge_header":
            a.headers.append((b"X-Big", b"h" * rng.choice((10_000, 70_000, 300_000))))
        elif kind == "bad_head":
            a.version, a.status = bad_head[0], 0
            a.reason = bad_head[1]
        elif kind == "close_now":
            a.close_now = True
        elif kind == "cut":
            a.cut_at = cut
        elif kind == "echo_key":
            a.status, a.echo_key = rng.choice((400, 401, 403)), True
        elif kind == "sse_junk" and a.stream:
            at = int(position * (len(a.events) + 1))
            a.events[at:at] = sse
        elif kind == "sse_huge_line" and a.stream:
            a.events.insert(1, b"data: " + b"x" * (3 * 1024 * 1024 // 2))
        elif kind == "sse_cr" and a.stream:
            a.events = [e.replace(b"\n", b"\r") for e in a.events]
        elif kind == "plain_json_for_stream":
            a.events = []
        elif kind == "content_type":
            a.headers.append((b"Content-Type", ctype))
        elif kind == "deep_content":
            nested = bodies.Raw(b'[{"type": "text", "text": ' * depth + b'"x"' + b"}]" * depth)
            if isinstance(a.doc, dict) and a.doc.get("choices"):
                a.doc["choices"][0]["message"]["content"] = nested
            elif isinstance(a.doc, dict) and "content" in a.doc:
                a.doc["content"] = nested

    rng_status = rng.choice((429, 503, 500, 200))
    return Op(f"upstream.{kind}", apply)


class Upstream:
    """The raw-socket upstream: `answers[marker]` says what a marked request gets."""

    def __init__(self) -> None:
        self.answers: dict[str, Answer] = {}
        self.server: asyncio.AbstractServer | None = None
        self.port = 0
        self.requests = 0
        self.keys_seen: set[bytes] = set()

    async def start(self) -> Upstream:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, limit=1 << 20)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await self._read_request(reader)
                if request is None:
                    return
                head, body = request
                self.requests += 1
                if not await self._answer(writer, head, body):
                    return
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            return
        finally:
            writer.close()

    async def _read_request(self, reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        length = re.search(rb"(?im)^content-length: *([0-9]+)", head)
        if length:
            return head, await reader.readexactly(int(length[1]))
        if re.search(rb"(?im)^transfer-encoding: *chunked", head):
            parts = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    return head, b"".join(parts)
                parts.append(await reader.readexactly(size + 2))
        return head, b""

    async def _answer(self, writer: asyncio.StreamWriter, head: bytes, body: bytes) -> bool:
        auth = _AUTH.search(head)
        key = auth[2] if auth else b""
        self.keys_seen.add(key)
        marker = MARKER.search(body)
        answer = self.answers.get(marker[1].decode()) if marker else None
        if answer is None:
            answer = _default(head, body)
        for action, arg in answer.actions(key):
            if action == "sleep":
                await writer.drain()
                await asyncio.sleep(arg)
            elif action == "write":
                writer.write(arg)
            else:
                await writer.drain()
                return False
        await writer.drain()
        return True


def _default(head: bytes, body: bytes) -> Answer:
    path = head.split(b" ", 2)[1] if b" " in head else b"/"
    kind = "embeddings" if b"embeddings" in path else "anthropic" if b"/messages" in path else "openai"
    try:
        stream = json.loads(body).get("stream") is True
    except (ValueError, AttributeError, RecursionError):
        stream = False
    return valid_answer(kind, stream)
