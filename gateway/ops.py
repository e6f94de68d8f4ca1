"""The operator-facing side of one gateway process, wired together: reload, event store,
forwarder, metrics, logs, and what /health and /keeptrusts/status report.

The server creates one `Ops`, calls `load_initial()` before listening, `await start()` on the
loop, adds `gateway.admin.admin_routes(ops)` to its route table, and `await stop()` on exit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway import metrics
from gateway.forwarder import Forwarder
from gateway.logs import log_request
from gateway.reload import Reloader
from gateway.runtime import Runtime, Snapshot
from gateway.store import DB_NAME, EventStore, StoreWriter, default_state_dir, parse_time, rfc3339

log = logging.getLogger("kt.gateway")
SyncStatusReader = Callable[[], dict[str, Any] | None]


@dataclass
class Ops:
    """Reload, events, metrics and status for one `Runtime`."""

    runtime: Runtime
    config_path: str
    state_dir: Path = field(default_factory=default_state_dir)
    version: str = ""
    admin_token: str | None = field(default_factory=lambda: os.environ.get("KEEPTRUSTS_ADMIN_TOKEN") or None)
    api_url: str | None = field(default_factory=lambda: os.environ.get("KEEPTRUSTS_API_URL") or None)
    gateway_token: str | None = field(default_factory=lambda: os.environ.get("KEEPTRUSTS_GATEWAY_TOKEN") or None)
    watch: bool = True
    sync_status: SyncStatusReader | None = None  # e.g. a reader of `<state>/status.json` (sync/status.py)
    providers: Callable[[], dict[str, str]] | None = None  # target id -> circuit state (closed|open|half_open)
    connections: Callable[[], int] | None = None  # open client connections
    store: EventStore | None = None
    writer: StoreWriter | None = None
    forwarder: Forwarder | None = None
    reloader: Reloader = field(init=False)

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir)
        self.reloader = Reloader(self.runtime, self.config_path)

    def load_initial(self) -> Snapshot:
        """Load the config before serving (raises `policies.ConfigError`) and register the observers."""
        snap = self.reloader.load_initial()
        for observer in (metrics.observe_event, log_request):
            if observer not in self.runtime.observers:
                self.runtime.observers.append(observer)
        metrics.bind(runtime=self.runtime, version=self.version,
                     connections=lambda: self.connections() if self.connections else 0,
                     store_pending=lambda: self.forwarder.pending if self.forwarder else None,
                     drift=self.drift, age=self.age_seconds)
        return snap

    async def start(self) -> None:
        """Open the store and start the background tasks (reload watcher, writer, pruner, forwarder)."""
        self.store = EventStore(self.state_dir / DB_NAME)
        self.writer = StoreWriter(self.runtime, self.store)
        self.writer.start()
        if self.api_url:
            self.forwarder = Forwarder(self.writer, self.api_url, self.gateway_token)
            self.forwarder.start()
        self.reloader.start(watch=self.watch)

    async def stop(self) -> None:
        """Stop the watcher and forwarder, flush queued events to the store, close it."""
        await self.reloader.stop()
        if self.forwarder:
            await self.forwarder.stop()
        if self.writer:
            await self.writer.stop()
            self.writer.executor.shutdown(wait=True)
        if self.store:
            self.store.close()

    # -- what the gateway reports ------------------------------------------------------------

    def _sync(self) -> dict[str, Any] | None:
        if self.sync_status is None:
            return None
        try:
            return self.sync_status()
        except Exception as exc:  # a torn or unreadable status file must not break /status
            log.warning("sync status unreadable", extra={"error": str(exc)})
            return None

    def age_seconds(self, sync: dict[str, Any] | None = None) -> float | None:
        """Seconds since the running config was last confirmed to match its source."""
        sync = sync if sync is not None else self._sync()
        confirmed = self.reloader.confirmed_at
        if sync and sync.get("last_success_at"):
            with contextlib.suppress(ValueError):
                confirmed = parse_time(sync["last_success_at"])
        return None if confirmed is None else max(0.0, time.time() - confirmed)

    def drift(self, sync: dict[str, Any] | None = None) -> tuple[bool, str | None]:
        """(drifted, reason): pending, rejected, unreachable, modified or reload_failed."""
        sync = sync if sync is not None else self._sync()
        snap = self.runtime.snapshot
        if sync:
            given = sync.get("drift")
            if isinstance(given, dict) and given.get("drifted"):
                return True, given.get("reason")
            applied, attempted = sync.get("applied_revision"), sync.get("attempted_revision")
            if attempted and applied != attempted and sync.get("last_error"):
                return True, "rejected"
            if sync.get("last_error") and sync.get("consecutive_failures"):
                return True, "unreachable"
            if applied and snap is not None and snap.source == "git" and snap.revision != applied:
                return True, "pending"
            head = sync.get("remote_head")
            if head and applied and head != applied:
                return True, "pending"
        last = self.reloader.last
        if last is not None and last.result == "error":
            return True, "reload_failed"
        return False, None

    def status(self) -> dict[str, Any]:
        """The `GET /keeptrusts/status` document (DESIGN Contract 3)."""
        snap = self.runtime.snapshot
        sync = self._sync()
        last = self.reloader.last
        drifted, reason = self.drift(sync)
        age = self.age_seconds(sync)
        return {
            "config": None if snap is None else {
                "revision": snap.revision,
                "sha256": snap.sha256,
                "pack": {"name": snap.config.pack.name, "version": snap.config.pack.version},
                "source": snap.source,
                "path": snap.path,
                "loaded_at": rfc3339(snap.loaded_at),
            },
            "reload": {
                "last_result": last.result if last else None,
                "last_error": last.error if last else None,
                "last_attempt_at": rfc3339(last.at) if last else None,
                "last_trigger": last.trigger if last else None,
                "findings": [f.as_dict() for f in last.findings] if last else [],
            },
            "sync": sync,
            "age_seconds": None if age is None else round(age, 3),
            "drift": {"drifted": drifted, "reason": reason},
        }

    def health(self) -> dict[str, Any]:
        """The `GET /health` document: healthy, degraded (serving with a problem) or unhealthy."""
        runtime = self.runtime
        snap = runtime.snapshot
        circuits = self.providers() if self.providers else {}
        targets = snap.config.targets if snap else ()
        providers = {t.id: {"provider": t.provider, "circuit": circuits.get(t.id, "closed")} for t in targets}
        drifted, reason = self.drift()
        problems = []
        if drifted:
            problems.append(f"config drift: {reason}")
        if self.writer and self.writer.error:
            problems.append("event store not writable")
        if providers and all(p["circuit"] == "open" for p in providers.values()):
            problems.append("every provider circuit is open")
        status = "unhealthy" if not runtime.ready else "degraded" if problems else "healthy"
        age = self.age_seconds()
        return {
            "status": status,
            "problems": problems,
            "uptime_seconds": round(time.time() - runtime.started_at, 3),
            "version": self.version,
            "ready": runtime.ready,
            "draining": runtime.draining,
            "in_flight": runtime.in_flight,
            "config": None if snap is None else {
                "revision": snap.revision,
                "pack": {"name": snap.config.pack.name, "version": snap.config.pack.version},
                "age_seconds": None if age is None else round(age, 3),
            },
            "providers": providers,
            "events": {
                "queue": len(runtime.events),
                "dropped": runtime.events.dropped,
                "pending_submission": self.forwarder.pending if self.forwarder else None,
                "store_error": self.writer.error if self.writer else None,
            },
        }

    def config_view(self) -> dict[str, Any] | None:
        """The running config for `GET /keeptrusts/config`: the document as written (secret refs only)."""
        snap = self.runtime.snapshot
        if snap is None:
            return None
        return {
            "revision": snap.revision,
            "sha256": snap.sha256,
            "source": snap.source,
            "path": snap.path,
            "loaded_at": rfc3339(snap.loaded_at),
            "config": _redact(snap.config.document),
        }


_SECRET_NAMES = frozenset({"api_key", "apikey", "password", "secret", "token", "access_token", "authorization"})
_SECRET_SUFFIXES = ("_key", "_secret", "_password", "_token")


def _redact(value: Any) -> Any:
    """Plain JSON of the document; a literal string under a secret-looking key is masked (refs stay)."""
    if hasattr(value, "items"):
        out = {}
        for key, item in value.items():
            name = str(key).lower()
            secret = name in _SECRET_NAMES or name.endswith(_SECRET_SUFFIXES)
            out[key] = "***" if secret and isinstance(item, str) else _redact(item)
        return out
    if isinstance(value, list | tuple):
        return [_redact(v) for v in value]
    return value
