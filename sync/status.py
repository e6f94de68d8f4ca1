"""`<state>/status.json`: what the agent last attempted and applied, and the drift/age view of it.

Written only by write-temp + fsync + rename, so a reader sees the old or the new file, never a
torn one. `report()` builds the JSON object of DESIGN Contract 3 from the state directory alone
(used by `kt sync status` and by the gateway, which adds its own `config` and `reload` parts).
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from sync.clock import parse_time
from sync.manifest import Tampered, verify
from sync.publish import TMP, content_digest, current_dir

STATUS = "status.json"
FETCH_ERRORS = frozenset({"unreachable", "auth", "branch_missing", "timeout"})
DRIFT_REASONS = ("pending", "rejected", "unreachable", "modified", "reload_failed")
# The `sync` object of Contract 3, in this order; the agent may add more keys after these.
SYNC_FIELDS = ("repo", "branch", "path", "applied_revision", "attempted_revision", "remote_head",
               "last_fetch_at", "last_success_at", "last_error", "consecutive_failures")


def write_status(state: Path, status: dict[str, Any]) -> None:
    """Replace `status.json` atomically and durably."""
    tmp = state / f"{TMP}status-{secrets.token_hex(4)}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(status, f, indent=2, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, state / STATUS)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fd = os.open(state, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_status(state: Path) -> dict[str, Any] | None:
    """The last written status, or None when there is none (or it is unreadable)."""
    try:
        data = json.loads((Path(state) / STATUS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def drift(state: Path, status: dict[str, Any] | None, reload_failed: bool = False) -> tuple[bool, str | None]:
    """(drifted, reason): whether what is published differs from what should run, and why.

    `modified` (what `current` shows no longer matches the digest recorded at publish) comes first;
    then `reload_failed` (the gateway refused its config) once a revision was published; before that
    the gateway has nothing to load and the agent's state says why."""
    if status is None:
        return True, "reload_failed" if reload_failed else "pending"
    if status.get("applied_revision") and _modified(Path(state), status):
        return True, "modified"  # checked first: it is also why a gateway refuses its reload
    if reload_failed and status.get("applied_revision"):
        return True, "reload_failed"
    applied = status.get("applied_revision")
    if status.get("last_result") == "rejected":
        return True, "rejected"
    if status.get("last_result") == "error" and status.get("error_kind") in FETCH_ERRORS:
        return True, "unreachable"
    if not applied or (status.get("remote_head") and status["remote_head"] != applied):
        return True, "pending"
    return False, None


def _modified(state: Path, status: dict[str, Any]) -> bool:
    """True when what `current` shows is not the applied revision as it was published."""
    live = current_dir(state)
    if live is None:
        return True
    try:
        verify(live)
    except Tampered:
        return True
    digest = status.get("applied_digest")
    return bool(digest) and content_digest(live, status.get("path") or ".") != digest


def age_seconds(status: dict[str, Any] | None, now: float) -> float | None:
    """Seconds since the remote head was last confirmed equal to what is published."""
    last = parse_time((status or {}).get("last_success_at"))
    return None if last is None else round(max(0.0, now - last), 3)


def sync_view(status: dict[str, Any]) -> dict[str, Any]:
    """The `sync` object: the Contract 3 fields first, then the agent's extra keys."""
    view = {k: status.get(k) for k in SYNC_FIELDS}
    view["consecutive_failures"] = int(view["consecutive_failures"] or 0)
    view.update({k: v for k, v in status.items() if k not in view})
    return view


def report(state: Path, now: float, reload_failed: bool = False) -> dict[str, Any]:
    """Contract 3's status object as seen from the state directory (`reload` is the gateway's part)."""
    state = Path(state)
    status = read_status(state)
    drifted, reason = drift(state, status, reload_failed)
    config = None
    if status and status.get("applied_revision"):
        live = current_dir(state)
        cfg_path = (live or state / "current") / (status.get("path") or ".")
        config = {
            "revision": status["applied_revision"],
            "sha256": status.get("applied_sha256"),
            "pack": status.get("applied_pack"),
            "source": "git",
            "path": str(cfg_path),
            "loaded_at": status.get("applied_at"),
        }
    return {
        "config": config,
        "reload": None,
        "sync": sync_view(status) if status else None,
        "age_seconds": age_seconds(status, now),
        "drift": {"drifted": drifted, "reason": reason},
    }
