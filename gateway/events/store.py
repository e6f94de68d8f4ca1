"""The durable decision-event store: one SQLite file (WAL) under the state directory.

The request path never touches it: `StoreWriter` (gateway/events/writer.py) drains
`runtime.events` in batches on a single worker thread. Queries serve `GET /keeptrusts/events`
and `kt events --db`. Its files on disk, the reserve and the writer lock: gateway/events/disk.py.
An event is acknowledged once its batch is committed; a committed event survives kill -9.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from gateway.events import codec, rollup
from gateway.events.disk import SETUP_TIMEOUT_S, WriterLock, file_bytes, make_reserve
from gateway.events.times import event_time

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
ROLLUP_SHARE = 0.125  # rollups may take this share of the database's limit; past it the oldest hours go
FULL_BACKOFF_S = 60.0  # after a full disk, the lowered limit holds this long before the store tries to grow


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
                 forwarding: bool = False, lock_timeout: float = 5.0) -> None:
        """`lock_timeout`: how long a batch waits for the `WriterLock` before the store answers as a
        busy database (the batch then waits in memory and is retried)."""
        self.path = Path(path)
        self.max_bytes = max(MIN_MAX_BYTES, int(max_bytes))
        self.forwarding = forwarding
        self.evicted = 0  # deleted to keep under the cap: delivered, or (no control plane) the oldest
        self.dropped = 0  # undelivered events deleted or refused for room (reason disk_full)
        self._full_limit: int | None = None  # a lower limit learnt from SQLITE_FULL
        self._full_until = 0.0
        self._writer: WriterLock | None = None
        if readonly:
            if not self.path.exists():
                raise FileNotFoundError(f"no event store at {self.path}")
            self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = WriterLock(self.path.with_name(self.path.name + "-lock"), lock_timeout)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            with self._writer.held(SETUP_TIMEOUT_S):  # one process at a time sets the file up
                self._set_up()
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.create_function("event_json", 1, _event_json, deterministic=True)
        rollup.register(self._db)
        self._lock = threading.Lock()
        self.reserve = self.path.with_name(self.path.name + "-reserve")
        self._wal = self.path.with_name(self.path.name + "-wal")
        self._shm = self.path.with_name(self.path.name + "-shm")
        if not readonly:
            make_reserve(self.reserve, self.wal_bytes)
        self.last_seq = self._scalar("SELECT COALESCE(MAX(seq), 0) FROM events") if not readonly else 0

    def _set_up(self) -> None:
        db = self._db
        db.execute("PRAGMA busy_timeout=5000")
        db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # takes effect on a new file (else by VACUUM)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        rollup.set_up(db)
        if db.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:  # a store from before the cap
            db.execute("VACUUM")
        self.page_size = int(db.execute("PRAGMA page_size").fetchone()[0])
        # The WAL's share: a sixteenth of the cap, at most 1 MiB (a checkpoint every 256 pages), so
        # a full disk finds most pages in the database file, where freed ones can be reused.
        self.wal_bytes = min(1024**2, max(16 * self.page_size, self.max_bytes // 16))
        db.execute(f"PRAGMA wal_autocheckpoint={self.wal_bytes // self.page_size}")
        db.execute(f"PRAGMA journal_size_limit={self.wal_bytes}")
        db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE "
                   "SET value = excluded.value", (MAX_BYTES_KEY, str(self.max_bytes)))

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
        events = [e for e in events if e.get("id")]
        compress, dumps, prefix, note = codec.compressor().compress, orjson.dumps, codec.PREFIX, rollup.note
        rows: list[tuple[str, float, Any, bytes]] = []
        groups: rollup.Groups = {}
        for e in events:  # the writer's per-event cost: codec.encode inlined, the rollups noted
            ts = event_time(e)
            rows.append((str(e["id"]), ts, e.get("verdict"), prefix + compress(dumps(e, default=str))))
            note(groups, e, ts)
        added, start = 0, 0
        with self._lock, self._writing():
            while start < len(rows):
                end, size = start, 0
                while end < len(rows) and (end == start or size + len(rows[end][3]) <= self.wal_bytes // 4):
                    size += len(rows[end][3])
                    end += 1
                self._bound_wal()
                whole = start == 0 and end == len(rows)  # one transaction (as usual): the groups noted above
                added += self._add_chunk(rows[start:end], size, events[start:end], groups if whole else None)
                start = end
            self._bound_wal()
            self.last_seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
            if self._full_limit is None:  # a full disk used the reserve: take it again once it passed
                make_reserve(self.reserve, self.wal_bytes)
        return added

    def _add_chunk(self, rows: list[tuple[str, float, Any, bytes]], size: int, events: list[dict[str, Any]],
                   groups: rollup.Groups | None) -> int:
        """Make room for `rows` and insert them with the rollups of those that were new, in one transaction
        (`groups`: the rollups of all `rows`, when noted already)."""
        need = size + size // 4 + 64 * len(rows)  # the rows, their index entries and page slack
        self._db.execute("BEGIN IMMEDIATE")  # the room made and the rows added: one writer at a time
        try:
            evicted, dropped = self._make_room(need)
            if evicted < 0:
                evicted, dropped = 0, dropped + len(rows)  # this batch alone does not fit: refused, counted
                added = 0
            else:
                last = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
                before = self._db.total_changes
                # Multi-row INSERTs, not executemany: sqlite3 gives up and retakes the GIL around every
                # statement it steps, and each retake from this thread stalls the event loop's thread.
                for start in range(0, len(rows), _ROWS_PER_INSERT):
                    chunk = rows[start:start + _ROWS_PER_INSERT]
                    self._db.execute(_INSERT + ", ".join(["(?, ?, ?, ?)"] * len(chunk)),
                                     [value for row in chunk for value in row])
                added = self._db.total_changes - before
                if added == len(rows):  # the rollups count each event once: a retried batch's stored ones not again
                    rollup.write(self._db, groups if groups is not None else rollup.group(events, [r[1] for r in rows]))
                elif added:  # some were stored before: the new rows are those past the last sequence
                    fresh, kept = {i for (i,) in self._db.execute("SELECT id FROM events WHERE seq > ?", (last,))}, []
                    for i, row in enumerate(rows):
                        if row[0] in fresh:
                            fresh.discard(row[0])  # an id twice in one batch was stored once
                            kept.append(i)
                    rollup.write(self._db, rollup.group([events[i] for i in kept], [rows[i][1] for i in kept]))
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
                if not self._drop_oldest_rollups():  # no event left: the oldest hour of rollups goes
                    return -1, dropped
                used = self._used()
                continue
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
        """Delete events older than `before` (epoch seconds), and the rollups of the minutes before its
        minute; return how many events.

        In transactions of a few hundred rows (rollups: an hour of minutes), checkpointed between (as
        `vacuum`): one DELETE of a month of events would write its pages to the WAL at once, far past
        the WAL's share.
        """
        step, removed = max(64, self.wal_bytes // 1024), 0
        while True:
            with self._lock, self._writing():
                self._bound_wal()
                gone = self._db.execute("DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE ts < ? "
                                        "LIMIT ?)", (before, step)).rowcount
                removed += gone
                if gone < step:
                    break
        while self._drop_oldest_rollups(int(min(before, 1e15) // 60)):  # prune(inf): everything
            pass
        return removed

    def _drop_oldest_rollups(self, before_minute: int | None = None) -> bool:
        """Delete the oldest hour of rollups (only minutes before `before_minute`); False when none was.

        Takes the lock and its own transaction when called outside one (inside `_make_room`, it runs in the
        caller's)."""
        if self._db.in_transaction:
            oldest = rollup.oldest_minute(self._db)
            if oldest is None or (before_minute is not None and oldest >= before_minute):
                return False
            end = oldest + 60 if before_minute is None else min(oldest + 60, before_minute)
            return rollup.delete_before(self._db, end) > 0
        with self._lock, self._writing():
            self._bound_wal()
            self._db.execute("BEGIN IMMEDIATE")
            try:
                done = self._drop_oldest_rollups(before_minute)
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            self._bound_wal()
            return done

    def bound_rollups(self) -> int:
        """Delete the oldest rollups, an hour at a time, while they take more than `ROLLUP_SHARE` of the
        database's limit; return how many hours went (the writer calls it hourly, after retention)."""
        hours = 0
        while True:
            with self._lock:
                over = rollup.size_bytes(self._db) > self.limit * ROLLUP_SHARE
            if not over or not self._drop_oldest_rollups():
                return hours
            hours += 1

    def summary(self, query: rollup.SummaryQuery) -> dict[str, Any]:
        """The window's counts and latency from the rollups (see gateway/events/rollup.py)."""
        with self._lock:
            return rollup.summary(self._db, query)

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
        """Close the store's connections and its writer lock; a second call does nothing."""
        with self._lock:
            self._db.close()
            if self._writer is not None:
                self._writer.close()
                self._writer = None


def _event_json(body: bytes) -> str:
    """SQL `event_json(body)`: a stored body as JSON text (for SQLite's JSON functions)."""
    return codec.json_bytes(body).decode()


def _window(since: float | None, until: float | None) -> tuple[str, tuple[float, ...]]:
    """The WHERE clause (and its arguments) of events with `since <= ts <= until`."""
    where = [clause for clause, bound in (("ts >= ?", since), ("ts <= ?", until)) if bound is not None]
    args = tuple(bound for bound in (since, until) if bound is not None)
    return (" WHERE " + " AND ".join(where) if where else ""), args


