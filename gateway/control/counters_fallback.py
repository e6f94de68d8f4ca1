"""The fail-open fallback of the Redis counters: memory counters, and a journal of what Redis has not seen.

While `--state-url`'s Redis is unreachable and `--fail-mode allow`, a gateway process counts in
`FallbackCounters`. Two things keep an outage from being a way around the limits:

- a counter starts from the last value this process saw for its key in Redis (`seen`, which
  `RedisCounters` keeps from its replies), not from zero;
- every amount added here is journalled by storage key (sum, expiry) in `Journal`, a SQLite file
  of the state dir (`counters-journal.db`, shared by the workers of a host). When Redis answers
  again the journal is cut into `MergeBatch`es (one pack each: one Redis Cluster slot) that
  `RedisCounters.merge` adds to the same keys. A batch keeps its id, on disk, from its cut until
  Redis confirmed it, and Redis applies an id once: a merge retried after a lost reply, by
  another worker, or by the gateway restarted in the middle of it, does not count twice, and a
  gateway restarted during the outage still merges what it admitted.
"""

from __future__ import annotations

import logging
import sqlite3
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path

from policies.counters import EPSILON, MemoryCounters

JOURNAL_NAME = "counters-journal.db"
BATCH_KEYS = 256  # counters per merge call (one Lua script; Redis stays responsive)
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS journal (key TEXT PRIMARY KEY, namespace TEXT NOT NULL, amount REAL NOT NULL, "
    "expires_at REAL NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS batches (id TEXT NOT NULL, namespace TEXT NOT NULL, key TEXT NOT NULL, "
    "amount REAL NOT NULL, expires_at REAL NOT NULL, PRIMARY KEY (id, key)) WITHOUT ROWID",
)
_ADD = ("INSERT INTO journal VALUES (?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET amount = amount + excluded.amount, "
        "expires_at = max(expires_at, excluded.expires_at)")

log = logging.getLogger("kt.gateway.state")


@dataclass(frozen=True)
class MergeBatch:
    """Amounts counted locally, to add to Redis once: `entries` are (storage key, amount, expires_at)."""

    id: str
    namespace: str
    entries: tuple[tuple[str, float, float], ...]


@dataclass(frozen=True)
class Merged:
    """What merging added to Redis: counters, their amounts summed, counters skipped (window ended)."""

    keys: int = 0
    amount: float = 0.0
    expired: int = 0

    def __add__(self, other: Merged) -> Merged:
        return Merged(self.keys + other.keys, self.amount + other.amount, self.expired + other.expired)


class Journal:
    """What was counted during outages and Redis has not confirmed: `journal` rows (summed by key)
    until a merge cuts them into `batches` rows, deleted once Redis confirmed their batch."""

    def __init__(self, path: Path | None = None, batch_keys: int = BATCH_KEYS) -> None:
        if path is None:  # tests and embedding: in memory, this process only
            self.db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
            for statement in _SCHEMA:
                self.db.execute(statement)
        else:
            from gateway.control.counters_sqlite import open_shared_db

            self.db = open_shared_db(path, _SCHEMA)
        self.path = path
        self.batch_keys = batch_keys
        self._origin = uuid.uuid4().hex[:16]  # batch ids are unique across processes and restarts
        self._cuts = 0

    def add(self, namespace: str, key: str, amount: float, expires: float) -> None:
        self.db.execute(_ADD, (key, namespace, amount, expires))

    def unmerged(self) -> int:
        """Counters in the journal or in batches not yet confirmed."""
        return self.db.execute("SELECT (SELECT count(*) FROM journal) + (SELECT count(*) FROM batches)").fetchone()[0]

    def cut(self, now: float) -> list[MergeBatch]:
        """Move the journal into batches and return every batch not yet confirmed, whoever cut it.

        Counters whose window ended are dropped (Redis would have expired them too); amounts
        that cancelled out (a hold given back) are not sent."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            rows = db.execute("SELECT namespace, key, amount, expires_at FROM journal WHERE expires_at > ? "
                              "AND abs(amount) > ? ORDER BY namespace", (now, EPSILON)).fetchall()
            db.execute("DELETE FROM journal")
            for namespace, entries in groupby(rows, key=lambda r: r[0]):
                live = list(entries)
                for start in range(0, len(live), self.batch_keys):
                    self._cuts += 1
                    batch = f"{self._origin}-{self._cuts}"
                    db.executemany("INSERT INTO batches VALUES (?, ?, ?, ?, ?)",
                                   [(batch, namespace, k, a, e) for _, k, a, e in live[start:start + self.batch_keys]])
            stored = db.execute("SELECT id, namespace, key, amount, expires_at FROM batches ORDER BY id").fetchall()
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return [MergeBatch(batch, namespace, tuple((k, a, e) for _, _, k, a, e in rows))
                for (batch, namespace), rows in groupby(stored, key=lambda r: (r[0], r[1]))]

    def merged(self, batch: MergeBatch) -> None:
        """Redis confirmed `batch` (applied now, or before a lost reply): never send it again."""
        self.db.execute("DELETE FROM batches WHERE id = ?", (batch.id,))

    def close(self) -> None:
        self.db.close()


class FallbackCounters(MemoryCounters):
    """`MemoryCounters` that start from `seen` values and journal what they add (see the module docstring)."""

    def __init__(self, seen: Mapping[str, tuple[float, float]] | None = None, journal: Journal | None = None) -> None:
        super().__init__()
        self.seen: Mapping[str, tuple[float, float]] = seen if seen is not None else {}  # key -> (value, expires_at)
        self.journal = journal if journal is not None else Journal()
        self._journal_failed = False

    def _get(self, key: str, now: float) -> float:
        """The larger of the local count (its own outage adds on top of what it started from) and the
        last value seen in Redis (which may have grown between outages)."""
        local, seen = self._data.get(key), self.seen.get(key)
        return max(local[0] if local is not None and local[1] > now else 0.0,
                   seen[0] if seen is not None and seen[1] > now else 0.0)

    def _add(self, namespace: str, key: str, amount: float, expires: float, now: float) -> None:
        super()._add(namespace, key, amount, expires, now)
        try:
            self.journal.add(namespace, key, amount, expires)
        except sqlite3.Error as exc:  # disk full, locked past the busy timeout: counted here, not merged
            if not self._journal_failed:
                log.error("cannot journal counts made during the Redis outage in %s (%s): they will not be "
                          "merged into Redis", self.journal.path, exc)
            self._journal_failed = True

    @property
    def unmerged(self) -> int:
        """Counters counted during outages (by any worker of the host) that Redis has not confirmed yet."""
        return self.journal.unmerged()

    def cut(self, now: float) -> list[MergeBatch]:
        return self.journal.cut(now)

    def merged(self, batch: MergeBatch) -> None:
        # the local counts stay: a next outage in the same window starts from no less than this
        # process's own adds, even when another worker merged them and this one saw no reply
        self.journal.merged(batch)
        self._journal_failed = False

    def close(self) -> None:
        self.journal.close()
