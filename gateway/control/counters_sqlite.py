"""The embedded counter backend: one SQLite file in the state dir, shared by the workers of a host.

WAL mode; each reservation is one `BEGIN IMMEDIATE` transaction (check, then add), so the
workers of one host serialise on it and never both take the last dollar. `synchronous=NORMAL`:
a crashed or restarted process loses nothing; a power cut may lose the last few transactions.
A call costs some tens of microseconds and runs on the event loop (no thread hop).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

from gateway.events.disk import SETUP_TIMEOUT_S, WriterLock
from policies.counters import Claim, ClaimResult, decide, results_of, storage_key

DB_NAME = "counters.db"
_SCHEMA = ("CREATE TABLE IF NOT EXISTS counters (key TEXT PRIMARY KEY, value REAL NOT NULL, "
           "expires_at REAL NOT NULL) WITHOUT ROWID")
_UPSERT = ("INSERT INTO counters (key, value, expires_at) VALUES (?, ?, ?) ON CONFLICT(key) DO UPDATE SET "
           "value = CASE WHEN counters.expires_at > ? THEN counters.value + excluded.value ELSE excluded.value END, "
           "expires_at = excluded.expires_at")


def open_shared_db(path: Path, schema: Sequence[str], busy_timeout_s: float = 5.0) -> sqlite3.Connection:
    """A SQLite file of the state dir that the workers of a host share: WAL, `synchronous=NORMAL`,
    autocommit; `schema` (CREATE ... IF NOT EXISTS) applied by one process at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, timeout=busy_timeout_s, check_same_thread=False)
    setup = WriterLock(path.with_name(path.name + "-lock"))
    try:
        with setup.held(SETUP_TIMEOUT_S):  # workers starting at once set the file up one at a time
            db.execute("PRAGMA journal_mode=WAL")
            for statement in schema:
                db.execute(statement)
    finally:
        setup.close()
    db.execute("PRAGMA synchronous=NORMAL")
    return db


class SqliteCounters:
    """`policies.counters.Counters` over a SQLite file (see the module docstring)."""

    def __init__(self, path: str | Path, busy_timeout_s: float = 5.0) -> None:
        self.path = Path(path)
        self.db = open_shared_db(self.path, [_SCHEMA], busy_timeout_s)
        self._writes = 0

    def _values(self, keys: Sequence[str], now: float) -> list[float]:
        marks = ",".join("?" * len(keys))
        rows = dict(self.db.execute(f"SELECT key, value FROM counters WHERE key IN ({marks}) AND expires_at > ?",
                                    (*keys, now)).fetchall())
        return [rows.get(k, 0.0) for k in keys]

    def value(self, namespace: str, key: str, window: str, now: float | None = None) -> float:
        now = time.time() if now is None else now
        return self._values([storage_key(namespace, key, window, now)[0]], now)[0]

    def reserve(self, namespace: str, claims: Sequence[Claim], now: float | None = None) -> list[ClaimResult]:
        now = time.time() if now is None else now
        keys = [storage_key(namespace, c.key, c.window, now) for c in claims]
        writes = any(c.add for c in claims)
        db = self.db
        if writes:
            db.execute("BEGIN IMMEDIATE")
        try:
            values = self._values([k for k, _ in keys], now)
            all_ok, passed = decide(claims, values)
            for claim, (key, expires) in zip(claims, keys, strict=True):
                if claim.add and (all_ok or claim.limit is None):
                    db.execute(_UPSERT, (key, claim.add, expires, now))
            self._writes += writes
            if writes and self._writes % 4096 == 0:
                db.execute("DELETE FROM counters WHERE expires_at <= ?", (now,))
        except BaseException:
            if writes:
                db.execute("ROLLBACK")
            raise
        if writes:
            db.execute("COMMIT")
        return results_of(claims, values, passed, all_ok)

    def close(self) -> None:
        self.db.close()
