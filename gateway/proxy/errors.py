"""The one error envelope every gateway error uses, and the exception that carries it.

`{"error": {"type", "code", "message", "policy"}}` with the status codes of DESIGN Contract 4:
409 policy block, 400 malformed request, 401 bad gateway key, 413 too large, 429 rate limit,
502 upstream error, 503 not ready / policy error under fail-mode block, 504 upstream timeout.
"""

from __future__ import annotations

from typing import Any

import orjson


def envelope(type_: str, code: str | None, message: str, policy: str | None = None, **extra: Any) -> dict[str, Any]:
    """The error envelope `{"error": {"type", "code", "message", "policy", ...extra}}`: the one builder of it."""
    return {"error": {"type": type_, "code": code, "message": message, "policy": policy, **extra}}


class GatewayError(Exception):
    """An error answered to the client with the envelope; never a traceback."""

    def __init__(
        self,
        status: int,
        type_: str,
        code: str,
        message: str,
        policy: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.code = code
        self.message = message
        self.policy = policy
        self.headers = headers or {}

    def payload(self) -> dict[str, Any]:
        return envelope(self.type, self.code, self.message, self.policy)

    def body(self, anthropic: bool = False) -> bytes:
        """The JSON body; Anthropic clients also get the top-level `"type": "error"` they expect."""
        payload = self.payload()
        if anthropic:
            payload = {"type": "error", **payload}
        return orjson.dumps(payload)


def invalid(message: str, code: str = "invalid_request") -> GatewayError:
    """400: a request the client must fix; `message` says what to change."""
    return GatewayError(400, "validation_error", code, message)


def not_found(path: str) -> GatewayError:
    return GatewayError(404, "not_found", "not_found", f"no route for {path}; see docs/gateway.md for the routes")


def not_ready(message: str = "gateway is not ready: no config loaded yet or draining") -> GatewayError:
    return GatewayError(503, "unavailable", "not_ready", message)
