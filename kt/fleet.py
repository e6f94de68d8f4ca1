"""`kt gateway status`: several gateways' `/keeptrusts/status` side by side, and whether they agree.

The fleet is healthy when every gateway answers, none is drifted, and all run the same
revision. Gateways are asked concurrently, each within `timeout` seconds.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from kt.doctor import http_get
from sync.credentials import mask_url


@dataclass(frozen=True)
class Member:
    """One gateway as seen from here: its status object, or why there is none."""

    url: str
    status: dict[str, Any] | None = None
    error: str | None = None

    @property
    def revision(self) -> str | None:
        return ((self.status or {}).get("config") or {}).get("revision")

    @property
    def drift(self) -> tuple[bool, str | None]:
        drift = (self.status or {}).get("drift") or {}
        return bool(drift.get("drifted")), drift.get("reason")

    def as_dict(self) -> dict[str, Any]:
        return {"url": mask_url(self.url), "reachable": self.error is None, "error": self.error,
                "status": self.status}


def ask(url: str, token: str | None, timeout: float) -> Member:
    """`GET <url>/keeptrusts/status`, never raising."""
    try:
        code, body = http_get(url, "/keeptrusts/status", timeout, token)
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        return Member(url, error=f"unreachable: {reason}")
    if code == 401:
        return Member(url, error="admin token required or rejected (HTTP 401): set KEEPTRUSTS_ADMIN_TOKEN")
    if code != 200 or not isinstance(body, dict):
        return Member(url, error=f"/keeptrusts/status answered HTTP {code}")
    return Member(url, body)


def survey(urls: list[str], token: str | None, timeout: float) -> list[Member]:
    """Every gateway's status, asked concurrently, in the order given."""
    found: dict[int, Member] = {}

    def work(i: int, url: str) -> None:
        found[i] = ask(url, token, timeout)

    threads = [threading.Thread(target=work, args=(i, u), daemon=True) for i, u in enumerate(urls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 1)
    return [found.get(i) or Member(u, error=f"no answer within {timeout:g}s") for i, u in enumerate(urls)]


def problems(members: list[Member]) -> list[str]:
    """Why the fleet is not in agreement (empty when it is)."""
    found = []
    for m in members:
        where = mask_url(m.url)
        if m.error:
            found.append(f"{where}: {m.error}")
        elif m.revision is None:
            found.append(f"{where}: no config loaded")
        elif m.drift[0]:
            found.append(f"{where}: drifted ({m.drift[1]})")
    revisions = {m.revision for m in members if m.revision}
    if len(revisions) > 1:
        found.append(f"gateways disagree on the revision: {', '.join(sorted(r[:12] for r in revisions))}")
    return found


def report(members: list[Member]) -> dict[str, Any]:
    """The `--json` object: {ok, revisions, problems, gateways[{url, reachable, error, status}]}."""
    found = problems(members)
    return {"ok": not found, "revisions": sorted({m.revision for m in members if m.revision}),
            "problems": found, "gateways": [m.as_dict() for m in members]}
