"""The durable decision-event store: one SQLite file (WAL) under the state directory.

The request path never touches it: `StoreWriter` drains `runtime.events` in batches on a
single worker thread. Queries serve `GET /keeptrusts/events` and `kt events --db`.
An event is acknowledged once its batch is committed; a committed event survives kill -9.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from gateway.control import metrics
from gateway.control.runtime import Runtime

log = logging.getLogger("kt.gateway.events")
DB_NAME = "events.db"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    ts REAL NOT NULL,
    verdict TEXT,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_INSERT = "INSERT OR IGNORE INTO events (id, ts, verdict, body) VALUES "
_ROWS_PER_INSERT = 200  # 800 parameters: below SQLite's oldest limit of 999
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(value: str | float | None, now: float | None = None) -> float | None:
    """Epoch seconds from a duration back from now (`90s`, `5m`, `1h`, `7d`, `2w`), RFC 3339, or epoch.

    Raises `ValueError` with a message saying what is accepted.
    """
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return float(value)
    text = value.strip()
    match = _RELATIVE.match(text)
    if match:
        return (now or time.time()) - float(match.group(1)) * _UNIT[match.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"invalid time {value!r}: use a duration like 5m, 1h, 7d or an RFC 3339 time") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def event_time(event: dict[str, Any]) -> float:
    """The event's timestamp as epoch seconds (now when missing or unreadable)."""
    ts = event.get("timestamp")
    if isinstance(ts, str) and ts.endswith("Z"):  # the gateway's own RFC 3339 UTC stamps: the fast path
        try:
            return datetime.fromisoformat(ts).timestamp()
        except ValueError:
            pass
    try:
        return parse_time(ts) or time.time()
    except ValueError:
        return time.time()


class EventStore:
    """An SQLite event store. Thread-safe (one connection behind a lock)."""

    def __init__(self, path: str | Path, readonly: bool = False) -> None:
        self.path = Path(path)
        if readonly:
            if not self.path.exists():
                raise FileNotFoundError(f"no event store at {self.path}")
            self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        self._db.execute("PRAGMA busy_timeout=5000")
        self._lock = threading.Lock()
        self.last_seq = self._scalar("SELECT COALESCE(MAX(seq), 0) FROM events") if not readonly else 0

    def _scalar(self, sql: str, args: tuple[Any, ...] = ()) -> Any:
        with self._lock:
            row = self._db.execute(sql, args).fetchone()
        return row[0] if row else None

    def add(self, events: list[dict[str, Any]]) -> int:
        """Commit `events` in one transaction (duplicates by id are ignored); return how many were new."""
        rows = [(str(e.get("id") or ""), event_time(e), e.get("verdict"), orjson.dumps(e, default=str))
                for e in events]
        rows = [r for r in rows if r[0]]
        with self._lock:
            self._db.execute("BEGIN")
            try:
                before = self._db.total_changes
                # Multi-row INSERTs, not executemany: sqlite3 gives up and retakes the GIL around every
                # statement it steps, and each retake from this thread stalls the event loop's thread.
                for start in range(0, len(rows), _ROWS_PER_INSERT):
                    chunk = rows[start:start + _ROWS_PER_INSERT]
                    self._db.execute(_INSERT + ", ".join(["(?, ?, ?, ?)"] * len(chunk)),
                                     [value for row in chunk for value in row])
                added = self._db.total_changes - before
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self.last_seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
        return added

    def query(
        self,
        since: float | None = None,
        until: float | None = None,
        limit: int = 50,
        verdict: str | None = None,
        after: str | None = None,
    ) -> list[dict[str, Any]]:
        """Events oldest first. With `after` (an event id): the first `limit` newer than it;
        otherwise the newest `limit` within [since, until]."""
        where, args = [], []
        if since is not None:
            where.append("ts >= ?")
            args.append(since)
        if until is not None:
            where.append("ts <= ?")
            args.append(until)
        if verdict:
            where.append("verdict = ?")
            args.append(verdict)
        if after:
            where.append("seq > COALESCE((SELECT seq FROM events WHERE id = ?), 0)")
            args.append(after)
        sql = "SELECT body FROM events" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY seq ASC LIMIT ?" if after else " ORDER BY seq DESC LIMIT ?"
        args.append(max(0, int(limit)))
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        events = [orjson.loads(body) for (body,) in rows]
        return events if after else events[::-1]

    def pending(self, cursor: int, limit: int) -> list[tuple[int, dict[str, Any]]]:
        """Up to `limit` (seq, event) pairs after `cursor`, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT seq, body FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                                    (cursor, limit)).fetchall()
        return [(seq, orjson.loads(body)) for seq, body in rows]

    def get_meta(self, key: str) -> str | None:
        return self._scalar("SELECT value FROM meta WHERE key = ?", (key,))

    def set_meta(self, key: str, value: str) -> None:
        with self._lock:
            self._db.execute("INSERT INTO meta (key, value) VALUES (?, ?) "
                             "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    def prune(self, before: float) -> int:
        """Delete events older than `before` (epoch seconds); return how many."""
        with self._lock:
            return self._db.execute("DELETE FROM events WHERE ts < ?", (before,)).rowcount

    def count(self, since: float | None = None, until: float | None = None) -> int:
        """How many events are stored (with `since`/`until`: within that window)."""
        where, args = _window(since, until)
        return int(self._scalar("SELECT COUNT(*) FROM events" + where, args))

    def policy_names(self, since: float | None = None, until: float | None = None) -> list[str]:
        """The names of the policies in the per-policy results of the events in the window, sorted.

        One pass in SQLite's JSON functions, no event is loaded into Python: `kt events export`
        knows its CSV columns before it streams the rows.
        """
        where, args = _window(since, until)
        sql = ("SELECT DISTINCT json_extract(p.value, '$.policy') FROM events, "
               "json_each(CAST(events.body AS TEXT), '$.policies') AS p" + where)
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return sorted(name for (name,) in rows if isinstance(name, str))

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _window(since: float | None, until: float | None) -> tuple[str, tuple[float, ...]]:
    """The WHERE clause (and its arguments) of events with `since <= ts <= until`."""
    where = [clause for clause, bound in (("ts >= ?", since), ("ts <= ?", until)) if bound is not None]
    args = tuple(bound for bound in (since, until) if bound is not None)
    return (" WHERE " + " AND ".join(where) if where else ""), args


def retention_days(runtime: Runtime, default: int = 365) -> int:
    """audit-logger's `retention_days` in the running config, else `default`."""
    snap = runtime.snapshot
    if snap is None:
        return default
    for policy in snap.config.chain.policies:
        if policy.kind == "audit-logger":
            return int(getattr(policy, "retention_days", default))
    return default


def background_thread() -> None:
    """Lower this thread's scheduling priority (Linux: per thread), so the event loop's thread wins the core.

    The gateway's helper threads (event store, log writer) batch work that can wait; on a busy
    core the request path should not wait behind a commit.
    """
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


class StoreWriter:
    """Background tasks: drain the in-memory queue into the store; prune by retention."""

    def __init__(self, runtime: Runtime, store: EventStore, batch: int = 500,
                 prune_interval: float = 3600.0, linger: float = 0.1) -> None:
        self.runtime = runtime
        self.store = store
        self.batch = batch
        # After the first event of a batch, wait this long for more: one transaction per ~100 ms
        # instead of one per request at low traffic (a commit is ~100 us of the same core).
        self.linger = linger
        self.prune_interval = prune_interval
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kt-events", initializer=background_thread)
        self.stored = asyncio.Event()  # set after each commit (the forwarder waits on it)
        self.error: str | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # The batch taken from the queue and not yet committed: kept here, not in `_drain`'s frame,
        # so a stop while it lingers or retries stores it rather than losing it (ids deduplicate).
        self._held: list[dict[str, Any]] = []
        self._dropped_logged = 0

    async def call(self, fn: Any, *args: Any) -> Any:
        """Run a blocking store call on the store's worker thread."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def _drain(self) -> None:
        delay = 0.1
        while True:
            if not self._held:
                self._held = await self.runtime.events.get_batch(self.batch)
                if self._held and len(self._held) < self.batch and self.linger:
                    await asyncio.sleep(self.linger)
                    self._held += await self.runtime.events.get_batch(self.batch - len(self._held), timeout=0)
            self._log_drops()
            if not self._held:
                continue
            try:
                added = await self.call(self.store.add, self._held)
            except sqlite3.Error as exc:
                if self.error is None:
                    log.error("event store write failed; events wait in memory", extra={"error": str(exc)})
                self.error = str(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if self.error is not None:
                log.info("event store writable again", extra={"path": str(self.store.path)})
            self.error, delay, self._held = None, 0.1, []
            metrics.EVENTS_STORED.inc(added)
            self.stored.set()

    def _log_drops(self) -> None:
        dropped = self.runtime.events.dropped
        if dropped > self._dropped_logged:
            log.warning("event queue full: decision events dropped",
                        extra={"dropped": dropped - self._dropped_logged, "dropped_total": dropped})
            self._dropped_logged = dropped

    async def _prune(self) -> None:
        while True:
            days = retention_days(self.runtime)
            try:
                removed = await self.call(self.store.prune, time.time() - days * 86400)
            except sqlite3.Error as exc:
                log.warning("event retention pruning failed", extra={"error": str(exc)})
            else:
                if removed:
                    metrics.EVENTS_PRUNED.inc(removed)
                    log.info("events pruned by retention", extra={"removed": removed, "retention_days": days})
            await asyncio.sleep(self.prune_interval)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._drain()), loop.create_task(self._prune())]

    async def flush(self, timeout: float = 5.0) -> None:
        """Store what is held and queued now (used at shutdown, after `_drain` stopped)."""
        deadline = time.monotonic() + timeout
        while (self._held or len(self.runtime.events)) and time.monotonic() < deadline:
            batch, self._held = self._held or await self.runtime.events.get_batch(self.batch, timeout=0), []
            with contextlib.suppress(sqlite3.Error):
                metrics.EVENTS_STORED.inc(await self.call(self.store.add, batch))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self.flush()
