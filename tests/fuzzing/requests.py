"""One fuzz case's request(s) as an editable `Draft`, and the mutation families that edit it.

A case is a seed-determined valid request plus a list of `Op`s (a family's mutations). The
draft renders to the exact bytes sent, in segments (a slow sender, a wait for `100 Continue`),
with how many responses may come back. Families:

- `head`: methods, targets (absolute-form included), versions, header names and values,
  duplicates, obs-fold, bare LF, NUL, huge heads, missing Host;
- `framing`: Content-Length vs chunked, bad chunk sizes, trailers, pipelining, truncation,
  Upgrade/Connection, Expect: 100-continue, slow senders;
- `body`: structure-aware mutations of valid JSON bodies (every route, streams included);
- `upstream`: a valid request whose answer from the upstream is mutated (`upstream.answer_ops`).
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field
from typing import Any

from tests.fuzzing import bodies
from tests.fuzzing.bodies import Op

ROUTES = ("/v1/chat/completions", "/v1/messages", "/v1/embeddings", "/v1/models", "/v1/responses")
ROUTE_WEIGHTS = (5, 4, 2, 1, 3)
UPSTREAM_ROUTES = ("/v1/chat/completions", "/v1/messages", "/v1/embeddings", "/v1/responses")  # routes that call one
OTHER_TARGETS = ("/healthz", "/readyz", "/health", "/metrics", "/keeptrusts/status", "/keeptrusts/config",
                 "/keeptrusts/events?limit=3&verdict=block", "/v1/chat/completions/", "/v1/chat/completions?x=1",
                 "/v1//messages", "/V1/MODELS", "/v1/models/../messages", "/%76%31/models", "/nope", "*", "/v2/x")
CLIENT_TIMEOUT_S = 2.0  # the gateway's --client-timeout in the campaign
WAIT_100 = b""  # a segment marker: wait for an interim or final response before the next segment


@dataclass
class Draft:
    """One request, to be rendered to bytes; every field is something a mutation may change."""

    route: str
    method: bytes = b"POST"
    target: bytes = b"/"
    version: bytes = b"HTTP/1.1"
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    doc: Any = None  # JSON document (bodies.Raw / Pairs allowed); None: no body
    doc_ops: list[Op] = field(default_factory=list)
    byte_ops: list[Op] = field(default_factory=list)
    framing: str = "length"  # length | chunked | both | none
    te: bytes = b"chunked"
    cl_delta: int = 0  # Content-Length = len(body) + cl_delta
    chunk_sizes: list[int] = field(default_factory=list)  # how the body is cut into chunks ([] = one chunk)
    chunk_line: Any = None  # a function (size -> size line) for broken chunk-size lines
    trailers: list[bytes] = field(default_factory=list)
    eol: bytes = b"\r\n"
    fold: int = -1  # index of a header continued by obs-fold
    tail: bytes = b""  # bytes after the body (a smuggled request, garbage)
    pipeline: list[Draft] = field(default_factory=list)
    splits: int = 0  # send in this many extra pieces, with small pauses
    pause: float = 0.0  # seconds between pieces
    expect_wait: bool = False  # send the head, wait for 100 Continue (or an answer), then the body
    half_close: bool = False  # shut down our sending side after the last byte
    stream: bool = False

    def body(self) -> bytes:
        if self.doc is None:
            return b""
        doc = copy.deepcopy(self.doc)
        for op in self.doc_ops:
            op.apply(doc)
        data = bodies.serialize(doc)
        for op in self.byte_ops:
            data = op.apply(data)
        return data

    def render(self) -> tuple[bytes, bytes]:
        """(head, body-on-the-wire)."""
        body = self.body()
        headers = list(self.headers)
        if self.framing in ("length", "both") and (self.doc is not None or self.method == b"POST"):
            headers.append((b"Content-Length", str(max(0, len(body) + self.cl_delta)).encode()))
        if self.framing in ("chunked", "both"):
            headers.append((b"Transfer-Encoding", self.te))
        lines = [self.method + b" " + self.target + b" " + self.version]
        for i, (name, value) in enumerate(headers):
            if i == self.fold:
                lines.append(name + b": " + value[: len(value) // 2])
                lines.append(b" \t" + value[len(value) // 2:])
            else:
                lines.append(name + b": " + value)
        head = self.eol.join(lines) + self.eol + self.eol
        if self.framing in ("chunked", "both"):
            body = self._chunked(body)
        return head, body + self.tail

    def _chunked(self, body: bytes) -> bytes:
        out, pos = [], 0
        sizes = self.chunk_sizes or [len(body)]
        for size in sizes:
            piece = body[pos:pos + size]
            pos += size
            if piece:
                out.append(self._size_line(len(piece)) + b"\r\n" + piece + b"\r\n")
        if pos < len(body):
            out.append(self._size_line(len(body) - pos) + b"\r\n" + body[pos:] + b"\r\n")
        out.append(b"0\r\n" + b"".join(t + b"\r\n" for t in self.trailers) + b"\r\n")
        return b"".join(out)

    def _size_line(self, size: int) -> bytes:
        return self.chunk_line(size) if self.chunk_line else b"%x" % size

    def segments(self, rng: random.Random) -> list[bytes]:
        """The bytes to send, in pieces; `WAIT_100` between head and body when waiting for 100 Continue."""
        head, body = self.render()
        rest = b"".join(b"".join(p.render()) for p in self.pipeline)
        if self.expect_wait:
            return [head, WAIT_100, body + rest]
        data = head + body + rest
        if not self.splits:
            return [data]
        cuts = sorted(rng.randrange(1, max(2, len(data))) for _ in range(self.splits))
        return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True) if data[a:b]]

    @property
    def responses(self) -> int:
        """How many requests this sends (each gets one response, or the connection closes)."""
        return 1 + len(self.pipeline)

    def method_of(self, index: int) -> str:
        draft = self if index == 0 else self.pipeline[index - 1]
        return draft.method.decode("latin1")

    def http10_at(self, index: int) -> bool:
        """Whether request `index` is not plain HTTP/1.1 (its response may be delimited by the close)."""
        draft = self if index == 0 or not self.pipeline else self.pipeline[min(index, len(self.pipeline)) - 1]
        return draft.version != b"HTTP/1.1"


def base_draft(rng: random.Random, marker: str, request_id: str, route: str | None = None,
               upstream_only: bool = False) -> Draft:
    """A valid request to one route; `upstream_only` keeps to models the fuzz upstream serves."""
    route = route or rng.choices(ROUTES, weights=ROUTE_WEIGHTS)[0]
    draft = Draft(route=route, target=route.encode())
    draft.headers = [(b"Host", b"127.0.0.1"), (b"X-Request-ID", request_id.encode())]
    if route == "/v1/models":
        draft.method = b"GET"
        return draft
    draft.headers.append((b"Content-Type", b"application/json"))
    if route == "/v1/embeddings":
        draft.doc = bodies.embeddings_body(rng, rng.choice(bodies.EMBEDDING_MODELS), marker)
        return draft
    models = bodies.OPENAI_MODELS + bodies.ANTHROPIC_MODELS + (() if upstream_only else (bodies.MOCK_MODEL,))
    model = rng.choice(models)
    draft.stream = rng.random() < 0.4
    if route == "/v1/messages":
        draft.headers.append((b"anthropic-version", b"2023-06-01"))
        draft.doc = bodies.messages_body(rng, model, draft.stream, marker)
    elif route == "/v1/responses":
        draft.doc = bodies.responses_body(rng, model, draft.stream, marker)
    else:
        draft.doc = bodies.chat_body(rng, model, draft.stream, marker)
    return draft


# --- head -------------------------------------------------------------------------------------

_METHODS = (b"GET", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE", b"CONNECT", b"post", b"P OST",
            b"POST\x00", b"PRI", b"BREW", b"G" * 300, b"")
_VERSIONS = (b"HTTP/1.0", b"HTTP/1.2", b"HTTP/2.0", b"HTTP/0.9", b"http/1.1", b"HTTP/1.1 ", b"HTTP/11", b"", b"HTTP/")
_NAMES = (b"Host", b"Content-Length", b"Content-Type", b"Transfer-Encoding", b"Connection", b"Authorization",
          b"X-Api-Key", b"X-Request-ID", b"Expect", b"Upgrade", b"X-Agent-ID", b"Accept-Encoding", b"anthropic-version",
          b"Bad Name", b"Bad:Name", b"\x00", b"", b"X-\xff", b"Content-Length ", b"(", b"X" * 9000)
_VALUES = (b"", b" ", b"\x00", b"a\x00b", b"\x7f", b"\xff\xfe", b"x" * 70_000, b"x" * 8000, b"-1", b"0", b"1e3",
           b"+5", b"0x10", b"99999999999999999999999", b"chunked", b"close", b"keep-alive, Upgrade", b"h2c",
           b"100-continue", b"Bearer sk-" + b"a" * 40, b"application/json; charset=utf-16", b"text/plain",
           b"gzip", b"\r", b"a\rb", b"https://evil.example/")


def head_op(rng: random.Random) -> Op:
    kind = rng.choice(("method", "method", "target", "target", "version", "header", "header", "dup_header",
                       "fold", "bare_lf", "nul", "huge_head", "many_headers", "no_host", "space_before_colon",
                       "lower_names"))
    method = rng.choice(_METHODS)
    version = rng.choice(_VERSIONS)
    name, value = rng.choice(_NAMES), rng.choice(_VALUES)
    target = rng.choice((
        b"http://127.0.0.1/ROUTE", b"http://other.example:81/ROUTE?x=1", b"https://127.0.0.1/ROUTE",
        b"HTTP://127.0.0.1ROUTE", b"//ROUTE", b"ROUTE#frag", b"ROUTE?" + b"q" * 70_000, b"", b"*", b"127.0.0.1:80",
        b"/\xff\xfe", b"/%00", b"/..%2f..%2fetc/passwd", b"ROUTE\x00", b"ROUTE%20", b"/ROUTE",
        *(t.encode() for t in OTHER_TARGETS)))
    dup = rng.choice((b"Host", b"Content-Length", b"Content-Type", b"X-Request-ID", b"Authorization",
                      b"Transfer-Encoding", b"anthropic-version"))
    dup_value = rng.choice((b"127.0.0.1", b"evil.example", b"0", b"5", b"chunked", b"text/plain", b"x"))
    count = rng.choice((100, 1000, 5000))
    index = rng.random()

    def apply(d: Draft) -> None:
        if kind == "method":
            d.method = method
        elif kind == "target":
            d.target = target.replace(b"ROUTE", d.route.encode())
        elif kind == "version":
            d.version = version
        elif kind == "header":
            d.headers.insert(int(index * (len(d.headers) + 1)), (name, value))
        elif kind == "dup_header":
            d.headers.append((dup, dup_value))
        elif kind == "fold":
            d.fold = int(index * len(d.headers))
        elif kind == "bare_lf":
            d.eol = b"\n"
        elif kind == "nul":
            i = int(index * len(d.headers))
            if d.headers:
                n, v = d.headers[i]
                d.headers[i] = (n, v + b"\x00x")
        elif kind == "huge_head":
            d.headers.append((b"X-Big", b"b" * rng_size))
        elif kind == "many_headers":
            d.headers += [(b"X-H%d" % i, b"v") for i in range(count)]
        elif kind == "no_host":
            d.headers = [(n, v) for n, v in d.headers if n.lower() != b"host"]
        elif kind == "space_before_colon":
            d.headers.append((b"Content-Length ", b"3"))
        elif kind == "lower_names":
            d.headers = [(n.lower(), v) for n, v in d.headers]

    rng_size = rng.choice((1000, 60_000, 66_000, 200_000))
    return Op(f"head.{kind}", apply)


# --- framing ----------------------------------------------------------------------------------

_TE = (b"identity, chunked", b"chunked, chunked", b"gzip, chunked", b"Chunked", b" chunked", b"chunked, identity",
       b"identity", b"xchunked", b"chunked\x00", b"")
_CHUNK_LINES = (
    lambda n: b"%X" % n, lambda n: b"0x%x" % n, lambda n: b"-%x" % n, lambda n: b"%x;ext=1" % n,
    lambda n: b"%x ;a" % n, lambda n: b" %x" % n, lambda n: b"%x" % (n + 1), lambda n: b"%x" % max(0, n - 1),
    lambda n: b"ffffffffffffffffffff", lambda n: b"%018x" % n, lambda n: b"", lambda n: b"zz", lambda n: b"%x\n" % n,
)


def framing_op(rng: random.Random, marker: str, request_id: str) -> Op:
    kind = rng.choice(("chunked", "chunked", "te_variant", "both", "cl_short", "cl_long_half_close", "bad_chunk",
                       "trailers", "pipeline", "pipeline", "truncate_half_close", "upgrade", "upgrade_smuggle",
                       "expect_wait", "expect_no_wait", "slow_sender", "no_length", "connection_close",
                       "http10_keepalive", "get_with_body", "connect", "stall_past_timeout"))
    te = rng.choice(_TE)
    line = rng.choice(_CHUNK_LINES)
    sizes = [rng.choice((1, 2, 7, 100, 4096)) for _ in range(rng.randrange(1, 6))]
    trailers = rng.choice(([b"X-T: 1"], [b"Content-Length: 5"], [b"bad trailer"], [b"X-T: " + b"t" * 70_000]))
    sub = random.Random(rng.random())
    n_pipe = rng.randrange(1, 4)
    delta = rng.choice((-1, -5, -40))
    upgrade = rng.choice((b"h2c", b"websocket", b"HTTP/2.0", b"TLS/1.2"))
    pause = rng.choice((0.001, 0.01, 0.03))
    splits = rng.randrange(2, 12)

    def apply(d: Draft) -> None:
        if kind == "chunked":
            d.framing, d.chunk_sizes = "chunked", sizes
        elif kind == "te_variant":
            d.framing, d.te = "chunked", te
        elif kind == "both":
            d.framing = "both"
        elif kind == "cl_short":
            d.cl_delta = delta  # the rest of the body is read as the next request
        elif kind == "cl_long_half_close":
            d.cl_delta, d.half_close = -delta, True
        elif kind == "bad_chunk":
            d.framing, d.chunk_sizes, d.chunk_line = "chunked", sizes, line
        elif kind == "trailers":
            d.framing, d.trailers = "chunked", trailers
        elif kind == "pipeline":
            d.pipeline += [base_draft(sub, marker, f"{request_id}-p{i}") for i in range(n_pipe)]
        elif kind == "truncate_half_close":
            d.tail, d.half_close = b"", True
            d.cl_delta = max(1, -delta)
            d.byte_ops.append(Op("cut", lambda b: b[: len(b) // 2]))
        elif kind == "upgrade":
            d.headers += [(b"Connection", b"Upgrade, HTTP2-Settings"), (b"Upgrade", upgrade),
                          (b"HTTP2-Settings", b"AAMAAABkAAQCAAAAAAIAAAAA")]
        elif kind == "upgrade_smuggle":
            d.headers += [(b"Connection", b"Upgrade"), (b"Upgrade", upgrade)]
            smuggled = b"GET /keeptrusts/config HTTP/1.1\r\nHost: x\r\n\r\n"
            d.byte_ops.append(Op("smuggle", lambda b: smuggled))
        elif kind == "expect_wait":
            d.headers.append((b"Expect", b"100-continue"))
            d.expect_wait = True
        elif kind == "expect_no_wait":
            d.headers.append((b"Expect", b"100-continue"))
        elif kind == "slow_sender":
            d.splits, d.pause = splits, pause
        elif kind == "no_length":
            d.framing = "none"
        elif kind == "connection_close":
            d.headers.append((b"Connection", b"close"))
        elif kind == "http10_keepalive":
            d.version = b"HTTP/1.0"
            d.headers.append((b"Connection", b"keep-alive"))
        elif kind == "get_with_body":
            d.method = b"GET"
        elif kind == "connect":
            d.method, d.target = b"CONNECT", b"127.0.0.1:443"
        elif kind == "stall_past_timeout":  # silent longer than --client-timeout mid-request: 408 or a close
            d.splits, d.pause = 1, CLIENT_TIMEOUT_S + 0.5

    return Op(f"framing.{kind}", apply)


def leftover(d: Draft) -> bool:
    """Whether bytes the gateway may read as a further request follow a request (extra responses are fine)."""
    return d.cl_delta < 0 or d.framing == "none" or d.method in (b"CONNECT", b"GET") or d.chunk_line is not None
