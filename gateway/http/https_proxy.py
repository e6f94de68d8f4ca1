"""https upstreams through an HTTP proxy: `HTTPS_PROXY`/`NO_PROXY` read into a `Proxy`, and the CONNECT tunnel.

A connection to an https upstream that the proxy serves (not loopback, not in NO_PROXY) opens
a TCP connection to the proxy, asks it for a tunnel with `CONNECT host:port` (with
`Proxy-Authorization` when the URL carries credentials) and runs TLS to the upstream inside
it. Messages name the proxy without its credentials.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import os
import ssl
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit


class ProxyError(ConnectionError):
    """The proxy did not open a tunnel (its message names the proxy without credentials)."""


@dataclass(frozen=True)
class Proxy:
    """An HTTP proxy for https upstreams, from `HTTPS_PROXY` (`http://[user:password@]host:port`)."""

    host: str
    port: int
    authorization: str | None = field(repr=False)  # the Proxy-Authorization value (Basic, from the URL)
    shown: str  # the proxy's URL without credentials: what messages may print
    no_proxy: str  # NO_PROXY: hosts (and domain suffixes, `*` for all) that go direct

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Proxy | None:
        """The proxy `HTTPS_PROXY`/`https_proxy` names, or None; ValueError for one we cannot use."""
        raw = environ.get("HTTPS_PROXY") or environ.get("https_proxy")
        if not raw:
            return None
        try:
            parts = urlsplit(raw if "://" in raw else f"http://{raw}")
            port = parts.port or 80
        except ValueError:
            raise ValueError("HTTPS_PROXY is not a valid URL") from None
        if parts.scheme.lower() != "http" or not parts.hostname:
            raise ValueError("HTTPS_PROXY must be an http:// proxy (http://[user:password@]host:port)")
        authorization = None
        if parts.username is not None:
            credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            authorization = "Basic " + base64.b64encode(credentials.encode()).decode()
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        no_proxy = environ.get("NO_PROXY") or environ.get("no_proxy") or ""
        return cls(parts.hostname, port, authorization, f"http://{host}:{port}", no_proxy)

    def serves(self, host: str) -> bool:
        """Whether a connection to `host` goes through this proxy (not loopback, not in NO_PROXY)."""
        if host == "localhost" or host.endswith(".localhost"):
            return False
        try:
            if ipaddress.ip_address(host).is_loopback:
                return False
        except ValueError:
            pass
        return not urllib.request.proxy_bypass_environment(host, {"no": self.no_proxy})


class TunnelReply(asyncio.Protocol):
    """Reads the proxy's answer to CONNECT: `status` resolves to its status code."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.status: asyncio.Future[int] = loop.create_future()
        self.data = b""

    def data_received(self, data: bytes) -> None:
        self.data += data
        if self.status.done():
            return
        if b"\r\n\r\n" in self.data:
            line = self.data.split(b"\r\n", 1)[0].split()
            if len(line) >= 2 and line[0].startswith(b"HTTP/1.") and line[1].isdigit():
                self.status.set_result(int(line[1]))
            else:
                self.status.set_exception(ProxyError("the proxy's answer to CONNECT is not HTTP/1.1"))
        elif len(self.data) > 16384:
            self.status.set_exception(ProxyError("the proxy's answer to CONNECT is too long"))

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.status.done():
            self.status.set_exception(ProxyError("the proxy closed the connection before answering CONNECT"))


async def open_tunnel(loop: asyncio.AbstractEventLoop, protocol: asyncio.Protocol, host: str, port: int,
                      proxy: Proxy, ssl_context: ssl.SSLContext) -> None:
    """Connect `protocol` to `host:port` through a CONNECT tunnel of `proxy`, TLS inside it."""
    reply = TunnelReply(loop)
    transport, _ = await loop.create_connection(lambda: reply, proxy.host, proxy.port)
    try:
        name = host if host.isascii() else host.encode("idna").decode()
        authority = f"[{name}]:{port}" if ":" in name else f"{name}:{port}"
        head = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"
        if proxy.authorization:
            head += f"Proxy-Authorization: {proxy.authorization}\r\n"
        transport.write(f"{head}\r\n".encode("latin-1"))
        status = await reply.status
        if not 200 <= status < 300:  # any 2xx opens the tunnel (RFC 9110 §9.3.6)
            hint = " (proxy authentication required: give it in HTTPS_PROXY)" if status == 407 else ""
            raise ProxyError(f"the proxy {proxy.shown} refused a tunnel to {authority}: HTTP {status}{hint}")
        if reply.data.split(b"\r\n\r\n", 1)[1]:
            raise ProxyError(f"the proxy {proxy.shown} sent bytes before the tunnel's TLS handshake")
        inner = await loop.start_tls(transport, protocol, ssl_context, server_hostname=host)
    except BaseException:
        transport.close()
        raise
    protocol.connection_made(inner)  # start_tls does not call it
