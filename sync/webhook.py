"""Webhook verification (GitHub `X-Hub-Signature-256`, GitLab `X-Gitlab-Token`), as pure functions.

The HTTP handler lives in the gateway; it calls `verify` and, on success, triggers a sync. The
payload is only a hint: the agent always fetches the branch itself.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

SECRET_ENV = "KEEPTRUSTS_WEBHOOK_SECRET"
DELIVERY_HEADERS = ("X-GitHub-Delivery", "X-Gitlab-Event-UUID")
REMEMBERED_DELIVERIES = 4096


class WebhookSecretError(Exception):
    """The webhook secret cannot be read (the message never contains the secret)."""


def load_secret(path: str | None = None) -> bytes | None:
    """The secret from `path` (stripped) or `$KEEPTRUSTS_WEBHOOK_SECRET`; None when neither is set."""
    if path:
        try:
            value = Path(path).read_bytes().strip()
        except OSError as exc:
            raise WebhookSecretError(f"cannot read webhook secret file {path}: {exc.strerror}") from exc
        if not value:
            raise WebhookSecretError(f"webhook secret file {path} is empty")
        return value
    env = os.environ.get(SECRET_ENV, "").strip()
    return env.encode() if env else None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    return None


def verify_github(secret: bytes, body: bytes, signature: str | None) -> bool:
    """True if `signature` is `sha256=<hex HMAC-SHA256 of body>` (compared in constant time)."""
    if not signature or not signature.startswith("sha256="):
        return False
    expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), signature.strip().encode())


def verify_gitlab(secret: bytes, token: str | None) -> bool:
    """True if the `X-Gitlab-Token` header equals the secret (constant time)."""
    return token is not None and hmac.compare_digest(secret, token.strip().encode())


def verify(secret: bytes, headers: Mapping[str, str], body: bytes) -> bool:
    """Check a GitHub or GitLab delivery; anything unsigned is refused."""
    signature = _header(headers, "X-Hub-Signature-256")
    if signature is not None:
        return verify_github(secret, body, signature)
    return verify_gitlab(secret, _header(headers, "X-Gitlab-Token"))


def concerns_branch(body: bytes, branch: str) -> bool:
    """False only when the payload clearly names another branch (`ref: refs/heads/x`); a hint, never trusted.

    `branch` is the agent's ref (`main`, `refs/heads/main`, a tag or a SHA)."""
    branch = branch.removeprefix("refs/heads/")
    try:
        ref = json.loads(body).get("ref")
    except (ValueError, AttributeError):
        return True
    return not (isinstance(ref, str) and ref.startswith("refs/heads/") and ref != f"refs/heads/{branch}")


def delivery_id(headers: Mapping[str, str]) -> str | None:
    """The delivery's unique id (GitHub `X-GitHub-Delivery`, GitLab `X-Gitlab-Event-UUID`), if it has one."""
    for name in DELIVERY_HEADERS:
        value = _header(headers, name)
        if value and value.strip():
            return f"{name.lower()}:{value.strip()[:200]}"
    return None


class RecentDeliveries:
    """A bounded memory of the delivery ids already acted on (the oldest is forgotten first)."""

    def __init__(self, size: int = REMEMBERED_DELIVERIES) -> None:
        self.size = size
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def first_time(self, delivery: str) -> bool:
        """True, and remember it, the first time `delivery` is seen; False for a replay."""
        with self._lock:
            if delivery in self._seen:
                self._seen.move_to_end(delivery)
                return False
            self._seen[delivery] = None
            if len(self._seen) > self.size:
                self._seen.popitem(last=False)
            return True
