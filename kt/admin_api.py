"""Reading a running gateway's admin API (`/keeptrusts/*`) from a CLI command."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import click


def get_json(url: str, path: str, token: str | None, timeout: float, unreachable_hint: str) -> Any:
    """GET `path` of the gateway at `url` (with the admin token when set) as parsed JSON.

    Failures raise `click.ClickException` with what to do: a refused token (401), another HTTP error
    (with the gateway's own error message), or no gateway there (`unreachable_hint` follows the reason).
    """
    request = urllib.request.Request(f"{url.rstrip('/')}{path}")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            raise click.ClickException(f"{url} refused the admin token: set KEEPTRUSTS_ADMIN_TOKEN") from None
        try:
            message = json.loads(exc.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = exc.reason
        raise click.ClickException(f"{url} answered {exc.code}: {message}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise click.ClickException(f"cannot reach the gateway at {url} ({reason}){unreachable_hint}") from None
