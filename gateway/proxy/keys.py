"""Inbound gateway keys: a file of SHA-256 hashes with a label each, checked in constant time.

File format, one key per line (blank lines and `#` comments ignored):

    <sha256 hex of the key>  <label>

Make a line with `printf %s "$KEY" | sha256sum`. The keys themselves are never stored.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from pathlib import Path

_LINE = re.compile(r"^(?:sha256:)?([0-9a-fA-F]{64})\s+(\S.*)$")


class KeysFileError(ValueError):
    """The keys file is unreadable or has a malformed line."""


@dataclass(frozen=True)
class GatewayKeys:
    """Labelled SHA-256 digests of the accepted keys."""

    entries: tuple[tuple[bytes, str], ...]

    def __len__(self) -> int:
        return len(self.entries)

    def label_for(self, presented: str | None) -> str | None:
        """The label of `presented` when it is an accepted key, else None.

        Every entry is compared (hmac.compare_digest) so the time does not tell which
        or how many bytes matched.
        """
        if not presented:
            return None
        digest = hashlib.sha256(presented.encode()).digest()
        found = None
        for expected, label in self.entries:
            if hmac.compare_digest(digest, expected) and found is None:
                found = label
        return found


def load_keys(path: str | Path) -> GatewayKeys:
    """Parse a keys file; raise `KeysFileError` saying which line is wrong."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise KeysFileError(f"cannot read keys file {path}: {exc.strerror}") from exc
    entries = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if not m:
            raise KeysFileError(
                f"{path}:{number}: expected '<sha256 hex> <label>' "
                "(make the hash with: printf %s \"$KEY\" | sha256sum)"
            )
        entries.append((bytes.fromhex(m.group(1)), m.group(2).strip()))
    if not entries:
        raise KeysFileError(f"{path}: no keys in file")
    return GatewayKeys(tuple(entries))


def presented_key(authorization: str | None, x_api_key: str | None) -> str | None:
    """The key a client sent: `Authorization: Bearer <key>` (OpenAI SDKs) or `x-api-key` (Anthropic SDKs)."""
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return x_api_key or None
