"""The durable decision-event store: one SQLite file (WAL) under the state directory.

The request path never touches it: `StoreWriter` drains `runtime.events` in batches on a
single worker thread. Queries serve `GET /keeptrusts/events` and `kt events --db`.
An event is acknowledged once its batch is committed; a committed event survives kill -9.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from gateway.control import metrics
from gateway.control.runtime import Runtime
from gateway.events import codec

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
DEFAULT_MAX_BYTES = 512 * 1024**2  # --events-max-size: half the deploy manifests' 1 GiB state volume
MIN_MAX_BYTES = 1024**2
MAX_BYTES_KEY = "max_bytes"  # in `meta`: the cap the writing gateway runs with (read by `kt doctor`)
CURSOR_KEY = "forward_cursor"  # in `meta`: the last store sequence the control plane acknowledged
SQLITE_FULL = 13
FULL_BACKOFF_S = 60.0  # after a full disk, the lowered limit holds this long before the store tries to grow
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


def file_bytes(path: Path) -> int:
    """Bytes the store takes on disk: the database file, its write-ahead log, its shared-memory index, its reserve."""
    total = 0
    for name in (path, *(path.with_name(path.name + suffix) for suffix in ("-wal", "-shm", "-reserve"))):
        with contextlib.suppress(OSError):
            total += name.stat().st_size
    return total


def store_usage(path: Path) -> tuple[int, int] | None:
    """(bytes on disk, the cap the gateway last opened it with) of the store at `path`; None without one."""
    if not path.exists():
        return None
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (MAX_BYTES_KEY,)).fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return None
    return file_bytes(path), int(row[0]) if row else DEFAULT_MAX_BYTES


class WriterLock:
    """`<db>-lock`: one writer of the store at a time, across the threads and processes (`--workers`) that
    write it, from a batch's first row to the checkpoint after it, so no writer appends to the WAL while
    another one's checkpoint is due. An flock(2): the kernel releases it when its holder dies."""

    def __init__(self, path: Path, timeout: float = 5.0) -> None:
        self.path = path
        self.timeout = timeout  # as SQLite's busy_timeout: then the batch waits in memory and is retried
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Hold the lock (waiting up to `timeout`, else `sqlite3.OperationalError`, as a busy store)."""
        deadline, pause = time.monotonic() + self.timeout, 0.001
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise sqlite3.OperationalError(f"event store is locked by another writer ({self.path})") from None
                time.sleep(pause)
                pause = min(pause * 2, 0.05)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        os.close(self._fd)


def is_disk_full(exc: BaseException) -> bool:
    """True for SQLite's SQLITE_FULL (ENOSPC on a write, or the file at its largest)."""
    return getattr(exc, "sqlite_errorcode", None) == SQLITE_FULL or "disk is full" in str(exc)


class EventStore:
    """An SQLite event store. Thread-safe (one connection behind a lock).

    Bounded by `max_bytes` (database file + WAL): before a batch goes in, the oldest events
    that the control plane acknowledged (`forwarding`), or the oldest at all (no control
    plane), are deleted to make room; undelivered ones only when nothing else is left
    (`dropped`). Freed pages are reused (`auto_vacuum=INCREMENTAL` gives them back to the file
    system when the file is over its share); the WAL is checkpointed (TRUNCATE) before a transaction
    whenever it holds a sixteenth of the cap. Writers of one file (`--workers`) take turns under a
    `WriterLock`, so none appends while another's checkpoint is due. A full disk (SQLITE_FULL) lowers
    the limit to what fits (`disk_full`).
    """

    def __init__(self, path: str | Path, readonly: bool = False, max_bytes: int = DEFAULT_MAX_BYTES,
                 forwarding: bool = False) -> None:
        self.path = Path(path)
        self.max_bytes = max(MIN_MAX_BYTES, int(max_bytes))
        self.forwarding = forwarding
        self.evicted = 0  # deleted to keep under the cap: delivered, or (no control plane) the oldest
        self.dropped = 0  # undelivered events deleted or refused for room (reason disk_full)
        self._full_limit: int | None = None  # a lower limit learnt from SQLITE_FULL
        self._full_until = 0.0
        if readonly:
            if not self.path.exists():
                raise FileNotFoundError(f"no event store at {self.path}")
            self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # takes effect on a new file (else by VACUUM)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            if self._db.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:  # a store from before the cap
                self._db.execute("VACUUM")
            self.page_size = int(self._db.execute("PRAGMA page_size").fetchone()[0])
            # The WAL's share: a sixteenth of the cap, at most 1 MiB (a checkpoint every 256 pages), so
            # a full disk finds most pages in the database file, where freed ones can be reused.
            self.wal_bytes = min(1024**2, max(16 * self.page_size, self.max_bytes // 16))
            self._db.execute(f"PRAGMA wal_autocheckpoint={self.wal_bytes // self.page_size}")
            self._db.execute(f"PRAGMA journal_size_limit={self.wal_bytes}")
            self._db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE "
                             "SET value = excluded.value", (MAX_BYTES_KEY, str(self.max_bytes)))
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.create_function("event_json", 1, _event_json, deterministic=True)
        self._lock = threading.Lock()
        self.reserve = self.path.with_name(self.path.name + "-reserve")
        self._wal = self.path.with_name(self.path.name + "-wal")
        self._shm = self.path.with_name(self.path.name + "-shm")
        self._writer: WriterLock | None = None
        if not readonly:
            self._writer = WriterLock(self.path.with_name(self.path.name + "-lock"))
            self._make_reserve()
        self.last_seq = self._scalar("SELECT COALESCE(MAX(seq), 0) FROM events") if not readonly else 0

    def _scalar(self, sql: str, args: tuple[Any, ...] = ()) -> Any:
        with self._lock:
            row = self._db.execute(sql, args).fetchone()
        return row[0] if row else None

    @property
    def limit(self) -> int:
        """Bytes the database file may use: the cap less the WAL's share (lower after a full disk)."""
        # The reserve, the WAL (its share and one transaction past it: see `_bound_wal`) and its index.
        limit = self.max_bytes - 4 * self.wal_bytes - self._shm_bytes()
        if self._full_limit is not None:
            if time.monotonic() < self._full_until:
                return min(limit, self._full_limit)
            self._full_limit = None
        return limit

    def size_bytes(self) -> int:
        """Bytes on disk now (database file, WAL, its index, reserve)."""
        return file_bytes(self.path)

    def _shm_bytes(self) -> int:
        with contextlib.suppress(OSError):
            return self._shm.stat().st_size
        return 32 * 1024  # SQLite's first WAL-index region

    def _bound_wal(self) -> None:
        """Checkpoint the WAL back to zero bytes once it holds its share (under the writer lock, so
        no other writer appends meanwhile; a long reader of another process can still hold it off)."""
        with contextlib.suppress(OSError):
            if self._wal.stat().st_size > self.wal_bytes:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def add(self, events: list[dict[str, Any]]) -> int:
        """Commit `events` (duplicates by id are ignored), making room under the cap; return how many were new.

        Rows go in transactions of at most a quarter of the WAL's share, so the WAL stays bounded too.
        """
        compress, dumps, prefix = codec.compressor().compress, orjson.dumps, codec.PREFIX
        rows = [(str(e.get("id") or ""), event_time(e), e.get("verdict"), prefix + compress(dumps(e, default=str)))
                for e in events]  # codec.encode, inlined: this loop is the writer's per-event cost
        rows = [r for r in rows if r[0]]
        added, start = 0, 0
        with self._lock, self._writing():
            while start < len(rows):
                end, size = start, 0
                while end < len(rows) and (end == start or size + len(rows[end][3]) <= self.wal_bytes // 4):
                    size += len(rows[end][3])
                    end += 1
                self._bound_wal()
                added += self._add_chunk(rows[start:end], size)
                start = end
            self._bound_wal()
            self.last_seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
            if self._full_limit is None:  # a full disk used the reserve: take it again once it passed
                self._make_reserve()
        return added

    def _add_chunk(self, rows: list[tuple[str, float, Any, bytes]], size: int) -> int:
        need = size + size // 4 + 64 * len(rows)  # the rows, their index entries and page slack
        self._db.execute("BEGIN IMMEDIATE")  # the room made and the rows added: one writer at a time
        try:
            evicted, dropped = self._make_room(need)
            if evicted < 0:
                evicted, dropped = 0, dropped + len(rows)  # this batch alone does not fit: refused, counted
                added = 0
            else:
                before = self._db.total_changes
                # Multi-row INSERTs, not executemany: sqlite3 gives up and retakes the GIL around every
                # statement it steps, and each retake from this thread stalls the event loop's thread.
                for start in range(0, len(rows), _ROWS_PER_INSERT):
                    chunk = rows[start:start + _ROWS_PER_INSERT]
                    self._db.execute(_INSERT + ", ".join(["(?, ?, ?, ?)"] * len(chunk)),
                                     [value for row in chunk for value in row])
                added = self._db.total_changes - before
            if self._pages() * self.page_size > self.limit:  # over its share: trim, give pages back
                more = self._make_room(0)
                evicted, dropped = evicted + max(0, more[0]), dropped + more[1]
                self._db.execute("PRAGMA incremental_vacuum").fetchall()  # one page per step
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:  # a failed COMMIT (SQLITE_FULL) may already have rolled back
                self._db.execute("ROLLBACK")
            raise
        self.evicted, self.dropped = self.evicted + evicted, self.dropped + dropped  # only once committed
        return added

    def _writing(self) -> contextlib.AbstractContextManager[None]:
        """The writer lock (a read-only store has none)."""
        if self._writer is None:
            raise sqlite3.OperationalError(f"event store {self.path} is open read-only")
        return self._writer.held()

    def _pages(self) -> int:
        return int(self._db.execute("PRAGMA page_count").fetchone()[0])

    def _used(self) -> int:
        free = int(self._db.execute("PRAGMA freelist_count").fetchone()[0])
        return (self._pages() - free) * self.page_size

    def _make_room(self, need: int) -> tuple[int, int]:
        """Delete the oldest events until `need` more bytes fit under `limit`, delivered ones first.

        Inside the caller's transaction; returns (evicted, dropped), evicted -1 when even an empty
        store has no room for `need`.
        """
        limit = self.limit
        evicted = dropped = 0
        pages = self._pages()
        if pages * self.page_size + need <= limit:  # far from the cap: one PRAGMA, no more
            return evicted, dropped
        used = self._used()
        if used + need <= limit:
            return evicted, dropped
        if self.forwarding:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (CURSOR_KEY,)).fetchone()
            delivered = int(row[0]) if row else 0
        else:
            delivered = 1 << 62  # no control plane: every stored event may go, oldest first
        while used + need > limit:
            if self._db.execute("SELECT 1 FROM events LIMIT 1").fetchone() is None:
                return -1, dropped
            step = max(8, (used + need - limit) // 512)
            gone = self._db.execute("DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE seq <= ? "
                                    "ORDER BY seq LIMIT ?)", (delivered, step)).rowcount
            if gone:
                evicted += gone
            else:
                dropped += self._db.execute("DELETE FROM events WHERE seq IN (SELECT seq FROM events "
                                            "ORDER BY seq LIMIT ?)", (step,)).rowcount
            used = self._used()
        return evicted, dropped

    def _make_reserve(self) -> None:
        """Keep `<db>-reserve` (the WAL's share in bytes): on a full disk, deleting it lets the WAL be
        checkpointed into the database file, where the events that make room are deleted."""
        if self.reserve.exists():
            return
        try:
            with open(self.reserve, "wb") as out:
                os.posix_fallocate(out.fileno(), 0, self.wal_bytes)
        except OSError:
            self.reserve.unlink(missing_ok=True)

    def disk_full(self, batch_bytes: int) -> None:
        """After SQLITE_FULL: free the reserve, checkpoint; hold the database, for a while, at what it uses
        now less room for a batch; delete down to that and hand the freed pages back; reserve again."""
        with self._lock, self._writing():
            self.reserve.unlink(missing_ok=True)
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._full_limit = max(0, min(self._used(), self.limit) - batch_bytes - batch_bytes // 4)
            self._full_until = time.monotonic() + FULL_BACKOFF_S
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    evicted, dropped = self._make_room(0)
                    self._db.execute("PRAGMA incremental_vacuum").fetchall()  # one page per step
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
                self.evicted, self.dropped = self.evicted + max(0, evicted), self.dropped + dropped
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def vacuum(self) -> None:
        """Give the free pages back to the file system (after retention deleted events).

        In transactions of a quarter of the WAL's share in pages (a page moved writes it, its parent, its
        pointer map), checkpointed between, each under the writer lock: the WAL stays within its share.
        """
        step = max(1, self.wal_bytes // self.page_size // 4)
        while True:
            with self._lock, self._writing():
                self._bound_wal()
                if not int(self._db.execute("PRAGMA freelist_count").fetchone()[0]):
                    return
                self._db.execute(f"PRAGMA incremental_vacuum({step})").fetchall()  # one page per row

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
        events = [codec.decode(body) for (body,) in rows]
        return events if after else events[::-1]

    def pending(self, cursor: int, limit: int) -> list[tuple[int, dict[str, Any]]]:
        """Up to `limit` (seq, event) pairs after `cursor`, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT seq, body FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                                    (cursor, limit)).fetchall()
        return [(seq, codec.decode(body)) for seq, body in rows]

    def get_meta(self, key: str) -> str | None:
        return self._scalar("SELECT value FROM meta WHERE key = ?", (key,))

    def set_meta(self, key: str, value: str) -> None:
        with self._lock, self._writing():
            self._db.execute("INSERT INTO meta (key, value) VALUES (?, ?) "
                             "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    def prune(self, before: float) -> int:
        """Delete events older than `before` (epoch seconds); return how many.

        In transactions of a few hundred rows, checkpointed between (as `vacuum`): one DELETE of a
        month of events would write its pages to the WAL at once, far past the WAL's share.
        """
        step, removed = max(64, self.wal_bytes // 1024), 0
        while True:
            with self._lock, self._writing():
                self._bound_wal()
                gone = self._db.execute("DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE ts < ? "
                                        "LIMIT ?)", (before, step)).rowcount
                removed += gone
                if gone < step:
                    self._bound_wal()
                    return removed

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
               "json_each(event_json(events.body), '$.policies') AS p" + where)
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return sorted(name for (name,) in rows if isinstance(name, str))

    def close(self) -> None:
        with self._lock:
            self._db.close()
            if self._writer is not None:
                self._writer.close()


def _event_json(body: bytes) -> str:
    """SQL `event_json(body)`: a stored body as JSON text (for SQLite's JSON functions)."""
    return codec.json_bytes(body).decode()


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
        self._counted = (store.evicted, store.dropped)  # the store's counts already in the metrics
        self._full_logged = (store.dropped, -60.0)  # disk_full drops last logged, and when (monotonic)
        self._full_tries = 0  # SQLITE_FULL in a row on the held batch

    @property
    def holding(self) -> int:
        """How many events this writer took from the queue and has not committed yet."""
        return len(self._held)

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
                if is_disk_full(exc):  # make room below what fits and retry now: the batch stays held
                    self._full_tries += 1
                    if self._full_tries > 3:  # no room even so: this batch is dropped, counted and logged
                        self.store.dropped += len(self._held)
                        self._held, self._full_tries = [], 0
                        self.count_room()
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, 5.0)
                        continue
                    size = sum(len(orjson.dumps(e, default=str)) for e in self._held)
                    await self.call(self.store.disk_full, size)
                    if self.error is None:
                        log.error("event store: disk full; keeping it at what fits",
                                  extra={"path": str(self.store.path), "error": str(exc)})
                    self.error = str(exc)
                    continue
                if self.error is None:
                    log.error("event store write failed; events wait in memory", extra={"error": str(exc)})
                self.error = str(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if self.error is not None:
                log.info("event store writable again", extra={"path": str(self.store.path)})
            self.error, delay, self._held, self._full_tries = None, 0.1, [], 0
            metrics.EVENTS_STORED.inc(added)
            self.count_room()
            self.stored.set()

    def count_room(self, now: float | None = None) -> None:
        """Move the store's eviction and disk_full counts into the metrics; log drops at most once a minute
        (`now`: a monotonic time, for tests)."""
        store = self.store
        evicted, dropped = store.evicted - self._counted[0], store.dropped - self._counted[1]
        self._counted = (store.evicted, store.dropped)
        if evicted:
            metrics.EVENTS_EVICTED.inc(evicted)
        if dropped:
            metrics.EVENTS_DROPPED_DISK.inc(dropped)
        now = time.monotonic() if now is None else now
        since = store.dropped - self._full_logged[0]
        if since and now - self._full_logged[1] >= 60.0:
            log.warning("event store full: undelivered decision events dropped, oldest first",
                        extra={"dropped": since, "dropped_total": store.dropped, "max_bytes": store.max_bytes,
                               "path": str(store.path)})
            self._full_logged = (store.dropped, now)

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
                    with contextlib.suppress(sqlite3.Error):
                        await self.call(self.store.vacuum)
            await asyncio.sleep(self.prune_interval)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._drain()), loop.create_task(self._prune())]

    async def flush(self, timeout: float = 5.0) -> None:
        """Store what is held and queued now (used at shutdown, after `_drain` stopped)."""
        deadline = time.monotonic() + timeout
        while (self._held or len(self.runtime.events)) and time.monotonic() < deadline:
            batch, self._held = self._held or await self.runtime.events.get_batch(self.batch, timeout=0), []
            try:
                metrics.EVENTS_STORED.inc(await self.call(self.store.add, batch))
            except sqlite3.Error as exc:
                self.store.dropped += len(batch)  # at exit there is no later: counted, logged
                log.error("event store write failed at shutdown; events dropped",
                          extra={"events": len(batch), "error": str(exc)})
            self.count_room(now=float("inf"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self.flush()
