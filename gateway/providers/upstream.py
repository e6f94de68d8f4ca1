"""Talking to upstream providers: the pooled HTTP client, credentials, failures, adapters.

Why our own client (`gateway.http.client`: asyncio protocol + httptools' llhttp parser) and not
aiohttp: the upstream call is on every request's path and the gateway's budget is ~330 us of
CPU per request (3,000 RPS on one core, issue 3). On this machine (uvloop, one core, 32
concurrent keep-alive POSTs to a trivial local server) aiohttp's `ClientSession.post` + `read()`
costs 65-68 us a request, a bare protocol with httptools 11 us: aiohttp alone was ~17 % of the
budget. The client does what the gateway needs and no more: http/https (verified, SNI),
keep-alive pool per host with a total limit, per-attempt connect and read (idle) timeouts,
Content-Length/chunked/until-close bodies, streaming with back-pressure, never a request sent
twice (a pooled connection found closed before the write is replaced; nothing is resent after
it). Measured with bench/overhead.py in two interleaved before/after runs: gateway +14 % /
+28 % RPS at c=32, ~0.13 ms less at c=1 p50.
Tornado's clients were slower still (docs/gateway.md "Upstream connections", docs/benchmarks.md).
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import AsyncIterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.http.client import DEFAULT_MAX_RESPONSE_SIZE, Pool, Response
from gateway.http.https_proxy import Proxy, ProxyError
from gateway.http.upstream_connection import ProtocolError
from gateway.providers import aws, secrets
from gateway.providers.scrub import scrub
from gateway.proxy.errors import GatewayError
from gateway.proxy.resilience import parse_retry_after
from policies.model import Target

DONE = None  # marks the end of a canonical chunk stream


@dataclass(frozen=True)
class Timeouts:
    """Per-attempt limits: connecting, and the longest silence while reading a response."""

    connect_s: float = 5.0
    read_s: float = 120.0


# The W3C `traceparent` the current upstream attempt sends: set per attempt by a traced request
# (gateway/control/tracing.py, --otlp-endpoint), None otherwise; the adapters add it to the headers.
UPSTREAM_TRACEPARENT: ContextVar[str | None] = ContextVar("kt_upstream_traceparent", default=None)


class UpstreamFailure(Exception):
    """One failed attempt against one target, classified for the retry decision.

    kind: `5xx`, `rate_limit`, `timeout`, `connect` (refused/reset/disconnected),
    `bad_response` (not the JSON/SSE we expect), `client_error` (another 4xx; not retried).
    `committed`: bytes of a stream already reached the client, so it cannot be retried.
    `credential_refused`: the upstream refused the gateway's credential (its source may have rotated).
    """

    credential_refused = False

    def __init__(
        self,
        kind: str,
        message: str,
        status: int | None = None,
        retry_after: float | None = None,
        committed: bool = False,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code  # the error code the client sees (default: upstream_<status>)
        self.kind = kind
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.committed = committed

    def retryable(self, retry_on: frozenset[str]) -> bool:
        if self.committed:
            return False
        if self.kind == "rate_limit":
            return "rate_limit" in retry_on
        if self.kind == "timeout":
            return "timeout" in retry_on
        return self.kind in ("5xx", "connect", "bad_response") and "5xx" in retry_on

    @property
    def target_failed(self) -> bool:
        """Counts against the target's circuit breaker (a 4xx is the request's fault, not the target's)."""
        return self.kind != "client_error"

    def error(self) -> GatewayError:
        """The client-facing error once retries are exhausted."""
        if self.kind == "timeout":
            return GatewayError(504, "upstream_error", "upstream_timeout", self.message)
        if self.kind == "rate_limit":
            headers = {"Retry-After": str(max(1, round(self.retry_after)))} if self.retry_after is not None else {}
            return GatewayError(429, "rate_limit", "rate_limited", self.message, headers=headers)
        if self.kind == "client_error" and self.status and 400 <= self.status < 500 \
                and self.status not in (401, 403, 407):
            return GatewayError(self.status, "upstream_error", self.code or f"upstream_{self.status}", self.message)
        return GatewayError(502, "upstream_error", "upstream_error", self.message)


def unavailable_reason(target: Target) -> str | None:
    """Why `target` cannot be used (its secret is missing), or None when it can."""
    ref = target.secret_key_ref
    if target.provider == "mock" or ref is None:
        return None
    if ref.env:
        return secrets.missing_reason(ref)
    return f"secret_key_ref store:{ref.store} cannot be resolved by this gateway; use {{env: VAR}}"


def secret_value(target: Target) -> str | None:
    """The credential the gateway sends to `target` (from its `secret_key_ref`: VAR or VAR_FILE), or None."""
    return secrets.value(target.secret_key_ref)


def auth_headers(target: Target) -> dict[str, str]:
    """The upstream credential header of `target` (never the client's own key)."""
    key = secret_value(target)
    return {target.api_key_header: f"{target.api_key_prefix}{key}"} if key else {}


def upstream_text(target: Target, text: str, limit: int = 300) -> str:
    """A text an upstream sent (an error message) as kt may pass it on, log or store it:
    at most `limit` characters, the target's secret and anything key-like scrubbed."""
    return scrub(text[: limit + 200], (secret_value(target),))[:limit]


def _error_object(data: bytes) -> dict[str, Any] | None:
    """The `error` object of an upstream's JSON error body, if it has one."""
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    err = body.get("error") if isinstance(body, dict) else None
    return err if isinstance(err, dict) else {"message": err} if isinstance(err, str) else None


def _error_message(err: dict[str, Any] | None, data: bytes) -> str:
    msg = err.get("message") if err else None
    return msg if isinstance(msg, str) and msg else data[:500].decode("utf-8", "replace")


def failure_for_status(target: Target, status: int, headers: Any, data: bytes) -> UpstreamFailure:
    """Classify a non-2xx upstream answer (`headers`: lower-case names, or a case-insensitive mapping).

    The upstream's message is scrubbed of credentials (`upstream_text`) before it goes anywhere."""
    err = _error_object(data)
    if status == 400 and err and err.get("code") == "content_filter":  # Azure's, or a compatible upstream's
        from gateway.providers.azure import prompt_filtered  # (azure imports this module)

        return prompt_filtered(target, err)
    detail = upstream_text(target, _error_message(err, data))
    where = f"target {target.id} ({target.provider}) answered {status}"
    retry_after = parse_retry_after(headers.get("retry-after"))
    if status == 429:
        return UpstreamFailure("rate_limit", f"{where}: rate limited", status, retry_after)
    if status >= 500:
        return UpstreamFailure("5xx", f"{where}: {detail}", status, retry_after)
    if status < 400:  # a redirect or another status we do not follow: the upstream is misconfigured
        return UpstreamFailure("bad_response", f"{where}, which kt does not follow: {detail}", status)
    if status in (401, 403, 407) or (status == 400 and b"API_KEY_INVALID" in data):  # Gemini: 400 for a bad key
        refused = UpstreamFailure("client_error", f"{where}: the gateway's key for this target was refused", status)
        refused.credential_refused = True
        return refused
    return UpstreamFailure("client_error", f"{where}: {detail}", status)


def failure_for_exception(target: Target, exc: BaseException) -> UpstreamFailure:
    """Classify a transport error of one attempt (the message names the error's type, never a header)."""
    where = f"target {target.id} ({target.provider})"
    if isinstance(exc, TimeoutError):
        return UpstreamFailure("timeout", f"{where} timed out" + (f": {exc}" if str(exc) else ""))
    if isinstance(exc, ProtocolError):
        return UpstreamFailure("bad_response", f"{where} {exc}")
    if isinstance(exc, ProxyError):
        return UpstreamFailure("connect", f"{where} is unreachable: {exc}")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return UpstreamFailure("connect", f"{where} is unreachable: TLS certificate not trusted ({exc.verify_message})")
    if isinstance(exc, ValueError) and not isinstance(exc, OSError):  # ours: an unusable base_url or header
        return UpstreamFailure("client_error", f"{where} cannot be called: {exc}")
    reason = "DNS lookup failed" if isinstance(exc, socket.gaierror) else type(exc).__name__
    return UpstreamFailure("connect", f"{where} is unreachable: {reason}")


_TRANSPORT_ERRORS = (OSError, ProtocolError, ValueError)  # TimeoutError and ssl errors are OSErrors


class UpstreamClient:
    """The process's pooled keep-alive connections to every upstream (`gateway.http.client.Pool`)."""

    def __init__(self, timeouts: Timeouts = Timeouts(), max_connections: int = 1000,
                 ssl_context: ssl.SSLContext | None = None,
                 max_response_size: int = DEFAULT_MAX_RESPONSE_SIZE) -> None:
        self.timeouts = timeouts
        self.max_connections = max_connections
        self.pool = Pool(timeouts.connect_s, timeouts.read_s, max_connections, ssl_context, Proxy.from_env(),
                         max_response_size)
        self.aws = aws.CredentialChain()  # SigV4 credentials of bedrock targets without a secret_key_ref

    @property
    def proxy(self) -> Proxy | None:
        """The HTTPS proxy upstream connections go through (`HTTPS_PROXY`), or None."""
        return self.pool.proxy

    async def close(self) -> None:
        await self.pool.close()

    async def post_json(self, target: Target, url: str, headers: dict[str, str], body: bytes) -> bytes:
        """POST and return the 2xx body; raise `UpstreamFailure` otherwise."""
        try:
            resp = await self.pool.request(url, headers, body)
        except _TRANSPORT_ERRORS as exc:
            raise failure_for_exception(target, exc) from None
        if resp.status >= 300:
            raise failure_for_status(target, resp.status, resp.headers, resp.body)
        return resp.body

    async def open_stream(self, target: Target, url: str, headers: dict[str, str], body: bytes) -> Response:
        """POST and return the open 2xx response to read with `iter_stream`; the caller releases it."""
        try:
            resp = await self.pool.request(url, headers, body, stream=True)
        except _TRANSPORT_ERRORS as exc:
            raise failure_for_exception(target, exc) from None
        if resp.status >= 300:
            try:
                data = await resp.read(65536)
            except _TRANSPORT_ERRORS:
                data = b""
            finally:
                resp.release()
            raise failure_for_status(target, resp.status, resp.headers, data)
        return resp


async def read_chunk(target: Target, resp: Response) -> bytes:
    """The next bytes of a streamed response (`b""` at its end); transport errors become `UpstreamFailure`."""
    try:
        return await resp.read_chunk()
    except _TRANSPORT_ERRORS as exc:
        raise failure_for_exception(target, exc) from None


async def iter_stream(target: Target, resp: Response) -> AsyncIterator[bytes]:
    """The raw bytes of a streamed response as they arrive; transport errors become `UpstreamFailure`."""
    while data := await read_chunk(target, resp):
        yield data
