"""The operator-facing side of one gateway process, wired together: reload, event store,
forwarder, metrics, logs, and what /health and /keeptrusts/status report.

The server creates one `Ops`, calls `load_initial()` before listening, `await start()` on the
loop, adds `gateway.control.admin.admin_routes(ops)` to its route table, and `await stop()` on exit.
SIGHUP reloads the config; an embedded sync agent that also wants it adds its trigger to
`ops.reloader.on_sighup`. Sync status is read from the agent's state dir, found from the
config path (`<state>/current/...` -> `<state>/revisions/<sha>/...`) or set as `sync_state_dir`.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.control import group, metrics
from gateway.control.deploy_time import DeployClock
from gateway.control.logs import log_request
from gateway.control.reload import Reloader, ReloadResult, sync_state_of
from gateway.control.runtime import Runtime, Snapshot
from gateway.events.forwarder import Forwarder
from gateway.events.store import DB_NAME, DEFAULT_MAX_BYTES, EventStore
from gateway.events.writer import StoreWriter
from gateway.providers.upstream import unavailable_reason
from policies import ConfigError
from sync.clock import rfc3339
from sync.publish import default_state_dir

log = logging.getLogger("kt.gateway")


@dataclass(frozen=True)
class SyncReport:
    """What the sync agent's `status.json` says, seen from this gateway."""

    view: dict[str, Any]  # the `sync` object of /keeptrusts/status
    drifted: bool
    reason: str | None
    age: float | None


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
    sync_state_dir: Path | None = None  # the sync agent's state dir; default: found from the config path
    providers: Callable[[], dict[str, str]] | None = None  # target id -> circuit state (closed|open|half_open)
    connections: Callable[[], int] | None = None  # open client connections
    limits: Callable[[], tuple[int, int]] | None = None  # (--max-connections, connections refused over it so far)
    events_max_size: int = DEFAULT_MAX_BYTES  # --events-max-size
    store: EventStore | None = None
    writer: StoreWriter | None = None
    forwarder: Forwarder | None = None
    reloader: Reloader = field(init=False)
    deploy_clock: DeployClock = field(init=False)

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir)
        self.reloader = Reloader(self.runtime, self.config_path)
        self.deploy_clock = DeployClock(self.sync_state)
        self.reloader.on_new_revision.append(self.deploy_clock.served)

    def load_initial(self, required: bool = True) -> Snapshot | None:
        """Load the config before serving and register the observers.

        Raises `policies.ConfigError` when `required`; otherwise a missing or invalid config is
        logged and the gateway starts not ready (503) until the watcher finds a valid one (an
        embedded sync agent's first publish).
        """
        try:
            snap = self.reloader.load_initial()
        except ConfigError as exc:
            if required:
                raise
            snap = None
            self.reloader.last = ReloadResult("error", "start", None, str(exc), tuple(exc.findings))
            metrics.RELOADS.labels("error").inc()
            log.warning("no valid config yet: not ready until one appears", extra={"error": str(exc)})
        for observer in (metrics.observe_event, log_request):
            if observer not in self.runtime.observers:
                self.runtime.observers.append(observer)
        metrics.bind(runtime=self.runtime, version=self.version,
                     connections=lambda: self.connections() if self.connections else 0,
                     limits=lambda: self.limits() if self.limits else None,
                     store_pending=lambda: self.forwarder.pending if self.forwarder else None,
                     store_size=lambda: (self.store.size_bytes(), self.store.max_bytes) if self.store else None,
                     drift=self.drift, age=self.age_seconds)
        return snap

    async def start(self) -> None:
        """Open the store and start the background tasks (reload watcher, writer, pruner, forwarder)."""
        self.reloader.start(watch=self.watch)
        try:
            self.store = EventStore(self.state_dir / DB_NAME, max_bytes=self.events_max_size,
                                    forwarding=bool(self.api_url))
        except (OSError, sqlite3.Error) as exc:  # serve anyway: events queue in memory, then drop (counted)
            log.error("cannot open the event store; decision events will not be kept",
                      extra={"path": str(self.state_dir / DB_NAME), "error": str(exc)})
            return
        self.writer = StoreWriter(self.runtime, self.store)
        self.writer.start()
        if self.api_url and group.worker_index() in (None, 0):  # one forwarder per group: worker 0's
            self.forwarder = Forwarder(self.writer, self.api_url, self.gateway_token)
            self.forwarder.start()

    async def stop(self) -> None:
        """Stop the watcher and forwarder, flush queued events to the store, close it."""
        await self.reloader.stop()
        await self.deploy_clock.stop()
        if self.forwarder:
            await self.forwarder.stop()
        if self.writer:
            await self.writer.stop()
            self.writer.executor.shutdown(wait=True)
        if self.store:
            self.store.close()

    # -- what the gateway reports ------------------------------------------------------------

    def sync_state(self) -> Path | None:
        """The sync agent's state dir: `sync_state_dir`, or `<state>` when the config runs from
        `<state>/revisions/<sha>/` (published by `kt sync run` or the embedded agent)."""
        if self.sync_state_dir is not None:
            return Path(self.sync_state_dir)
        snap = self.runtime.snapshot
        return sync_state_of(snap.path) if snap is not None and snap.source == "git" else None

    def sync_report(self) -> SyncReport | None:
        """The agent's status, drift and age (None without an agent's `status.json`)."""
        state = self.sync_state()
        if state is None:
            return None
        try:
            from sync import status as sync_status

            raw = sync_status.read_status(state)
            if raw is None:
                return None
            last = self.reloader.last
            drifted, reason = sync_status.drift(state, raw, last is not None and last.result == "error")
            snap = self.runtime.snapshot
            applied = raw.get("applied_revision")
            if not drifted and applied and snap is not None and snap.revision != applied:
                drifted, reason = True, "pending"  # published, not yet running here
            return SyncReport(sync_status.sync_view(raw), drifted, reason, sync_status.age_seconds(raw, time.time()))
        except Exception as exc:  # no agent installed, or a status we cannot read: report without it
            log.warning("sync status unreadable", extra={"error": f"{type(exc).__name__}: {exc}"})
            return None

    def age_seconds(self, sync: SyncReport | None = None) -> float | None:
        """Seconds since the running config was last confirmed to match its source."""
        sync = sync or self.sync_report()
        if sync is not None and sync.age is not None:
            return sync.age
        confirmed = self.reloader.confirmed_at
        return None if confirmed is None else max(0.0, time.time() - confirmed)

    def drift(self, sync: SyncReport | None = None) -> tuple[bool, str | None]:
        """(drifted, reason): pending, rejected, unreachable, modified or reload_failed."""
        sync = sync or self.sync_report()
        if sync is not None:
            return sync.drifted, sync.reason
        last = self.reloader.last
        if last is not None and last.result == "error":
            return True, "reload_failed"
        return False, None

    def render_metrics(self) -> bytes:
        """`/metrics`: this process's, or with --workers the whole group's (gateway/control/group.py)."""
        directory = group.group_dir()
        own = metrics.render()
        return own if directory is None else group.render_group(own, directory, group.worker_index() or 0)

    def worker_record(self) -> dict[str, Any]:
        """What this worker publishes about itself for the group view."""
        snap = self.runtime.snapshot
        return {"ready": self.runtime.ready, "revision": snap.revision if snap else None,
                "in_flight": self.runtime.in_flight}

    def group_view(self) -> list[dict[str, Any]] | None:
        """Every live worker's record (with --workers), else None."""
        directory = group.group_dir()
        if directory is None:
            return None
        own = {**self.worker_record(), "index": group.worker_index(), "pid": os.getpid()}
        return group.workers(directory, own, group.worker_index())

    def status(self) -> dict[str, Any]:
        """The `GET /keeptrusts/status` document (DESIGN Contract 3)."""
        snap = self.runtime.snapshot
        sync = self.sync_report()
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
            "sync": sync.view if sync else None,
            "age_seconds": None if age is None else round(age, 3),
            "drift": {"drifted": drifted, "reason": reason},
            "workers": self.group_view(),
        }

    def health(self) -> dict[str, Any]:
        """The `GET /health` document: healthy, degraded (serving with a problem) or unhealthy."""
        runtime = self.runtime
        snap = runtime.snapshot
        circuits = self.providers() if self.providers else {}
        targets = snap.config.targets if snap else ()
        providers = {t.id: {"provider": t.provider, "circuit": circuits.get(t.id, "closed"),
                            "unavailable": unavailable_reason(t)} for t in targets}
        sync = self.sync_report()
        drifted, reason = self.drift(sync)
        problems = []
        if drifted:
            problems.append(f"config drift: {reason}")
        if self.writer and self.writer.error:
            problems.append("event store not writable")
        if providers and all(p["circuit"] == "open" or p["unavailable"] for p in providers.values()):
            problems.append("no provider target is usable (circuit open or secret missing)")
        state = runtime.state.describe()
        if not state["up"]:
            problems.append("counter store unreachable")
        group_view = self.group_view()
        revisions = sorted({w.get("revision") or "none" for w in group_view or ()})
        if len(revisions) > 1:
            problems.append(f"workers run different revisions: {', '.join(r[:12] for r in revisions)}")
        status = "unhealthy" if not runtime.ready else "degraded" if problems else "healthy"
        age = self.age_seconds(sync)
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
            "state": state,
            "workers": group_view,
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
