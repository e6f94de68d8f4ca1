"""What a request head must be to be served, and the answer to one that is not.

The rules the server applies once httptools has parsed a request's head: the HTTP version,
exactly one valid Host (RFC 9112 3.2), the request target (origin-form, absolute-form served
like it, `OPTIONS *`), no CONNECT, the body's framing (Content-Length within the hard cap, or
`Transfer-Encoding: chunked` alone, on HTTP/1.1) and `Expect: 100-continue`. A head that breaks
one raises `Reject` (answered in the gateway's JSON error envelope, then the connection
closes); `error_response` builds that answer.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from tornado import httputil

from gateway.proxy.errors import GatewayError

if TYPE_CHECKING:
    from gateway.http.exchange import ServerExchange

MAX_HEADER_SIZE = 64 * 1024  # request line + headers, as Tornado's default
CHUNKED = -1  # `BodyFraming.size` of a chunked body
# a Host value (RFC 9110 7.2): uri-host [":" port]; uri-host an IP literal or a reg-name (or empty)
_HOST = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]*)(?::[0-9]*)?")
# absolute-form (RFC 9112 3.2.2): scheme, optional userinfo, the authority, then the path and query
_ABSOLUTE = re.compile(rb"https?://(?:[^/?#@]*@)?([^/?#@]+)([/?][^#]*)?(?:#.*)?", re.IGNORECASE | re.DOTALL)


class Reject(Exception):
    """Raised in a parser callback: answer this status with the error envelope, then close."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class Drop(Exception):
    """Raised in a parser callback: a body beyond the hard cap; drop the connection unread."""


class Halt(Exception):
    """Raised in a parser callback: the connection is being closed; parse nothing more."""


def error_response(status: int, code: str, message: str, type_: str = "validation_error", extra: str = "") -> bytes:
    """A complete `Connection: close` response carrying the gateway's JSON error envelope (`extra`: header lines)."""
    body = GatewayError(status, type_, code, message).body()
    reason = httputil.responses.get(status, "Error")
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"{extra}Connection: close\r\n\r\n").encode("latin1") + body


def head_too_large(max_header_size: int) -> Reject:
    return Reject(431, "request_header_fields_too_large",
                  f"request line and headers exceed {max_header_size} bytes")


def version_not_supported(version: str) -> Reject:
    return Reject(505, "http_version_not_supported", f"{version} is not served here; send HTTP/1.1")


def check_host(hosts: list[str], version: str, seen: str) -> str:
    """Raise `Reject` unless the request has one valid Host (none is fine on HTTP/1.0); the value to
    remember as `seen` (the last valid Host: most requests repeat it, so it is checked once)."""
    if len(hosts) != 1:
        if hosts or version == "HTTP/1.1":  # RFC 9112 3.2
            raise Reject(400, "bad_request", "a request needs exactly one Host header (HTTP/1.1 requires "
                         f"it); this one has {len(hosts)}")
        return seen
    if hosts[0] != seen and _HOST.fullmatch(hosts[0]) is None:
        raise Reject(400, "bad_request", f"invalid Host header {hosts[0][:100]!r}: send host[:port]")
    return hosts[0]


def check_not_connect(method: str) -> None:
    """Called for a request llhttp flags as an upgrade (CONNECT among them)."""
    if method == "CONNECT":
        raise Reject(405, "method_not_allowed", "CONNECT is not served: kt is an API gateway, not a forward "
                     "proxy; send requests such as POST /v1/chat/completions")


def origin_form(req: ServerExchange, url: bytes, method: str) -> bytes:
    """The path of a target that is not origin-form: absolute-form is served like it (its authority
    is the Host, RFC 9112 3.2.2), `OPTIONS *` stays; anything else is refused."""
    if url == b"*" and method == "OPTIONS":
        return url
    match = _ABSOLUTE.fullmatch(url)
    if match is None:
        raise Reject(400, "bad_request", "the request target must be a path such as /v1/chat/completions "
                     "(or an absolute http:// URL)")
    req.headers["Host"] = match[1].decode("latin1")
    path = match[2] or b"/"
    return path if path[:1] == b"/" else b"/" + path


def body_size(headers: httputil.HTTPHeaders, version: str, max_body_size: int) -> int:
    """The announced body: its Content-Length, `CHUNKED`, or 0 for none; refused beyond `max_body_size`,
    or when it is compressed (`Content-Encoding`: kt reads bodies as they are sent, RFC 9110 15.5.16)."""
    coding = headers.get("Content-Encoding")
    if coding is not None and coding.strip().lower() not in ("", "identity"):
        raise Reject(415, "unsupported_content_encoding",
                     f"Content-Encoding {coding!r} is not supported: send the request body uncompressed")
    if "Transfer-Encoding" in headers:
        codings = headers.get_list("Transfer-Encoding")
        if len(codings) != 1 or codings[0].strip().lower() != "chunked":
            raise Reject(501, "unsupported_transfer_encoding",
                         f"Transfer-Encoding {', '.join(codings)!r} is not supported: send the body with "
                         "Content-Length, or with 'Transfer-Encoding: chunked' alone")
        if version != "HTTP/1.1":  # RFC 9112 6.1: an HTTP/1.0 message with Transfer-Encoding is faulty
            raise Reject(400, "bad_request", "Transfer-Encoding needs HTTP/1.1; send Content-Length")
        return CHUNKED
    if "Content-Length" in headers:
        length = headers["Content-Length"]
        try:
            size = int(length)
        except ValueError:
            raise Reject(400, "bad_request", f"invalid Content-Length {length!r}") from None
        if size > max_body_size:
            raise Reject(413, "request_too_large", f"request body is {size} bytes, far beyond what this gateway "
                         "accepts (--max-body-size); it was not read")
        return size
    return 0


def without_body(response: bytes) -> bytes:
    """`response` cut after its head: the answer to HEAD carries no content (RFC 9110 9.3.2)."""
    return response[: response.index(b"\r\n\r\n") + 4]


def upgrade_framing(size: int) -> bytes:
    """A head with the framing of an Upgrade request's body, to prime a fresh parser with (see `UpgradeBody`)."""
    framing = b"Transfer-Encoding: chunked" if size == CHUNKED else b"Content-Length: %d" % size
    return b"POST / HTTP/1.1\r\n" + framing + b"\r\n\r\n"
