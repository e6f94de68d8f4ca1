"""The fail-open fallback of the Redis counters: memory counters that remember what Redis has not seen.

While `--state-url`'s Redis is unreachable and `--fail-mode allow`, a gateway process counts in
`FallbackCounters`. Two things keep an outage from being a way around the limits:

- a counter starts from the last value this process saw for its key in Redis (`seen`, which
  `RedisCounters` keeps from its replies), not from zero;
- every amount added here is journalled by storage key (sum, expiry). When Redis answers again
  the journal is cut into `MergeBatch`es (one pack each: one Redis Cluster slot) that
  `RedisCounters.merge` adds to the same keys; a batch keeps its id until Redis confirmed it,
  and Redis applies an id once, so a merge retried after a lost reply does not count twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from policies.counters import EPSILON, MemoryCounters

BATCH_KEYS = 256  # counters per merge call (one Lua script; Redis stays responsive)


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


class FallbackCounters(MemoryCounters):
    """`MemoryCounters` that start from `seen` values and journal what they add (see the module docstring)."""

    def __init__(self, seen: Mapping[str, tuple[float, float]] | None = None, batch_keys: int = BATCH_KEYS) -> None:
        super().__init__()
        self.seen: Mapping[str, tuple[float, float]] = seen if seen is not None else {}  # key -> (value, expires_at)
        self.journal: dict[str, dict[str, list[float]]] = {}  # namespace -> key -> [amount, expires_at]
        self.batches: list[MergeBatch] = []  # cut from the journal, not yet confirmed by Redis
        self.batch_keys = batch_keys
        self._origin = uuid.uuid4().hex[:16]  # batch ids are unique across processes and restarts
        self._cuts = 0

    def _get(self, key: str, now: float) -> float:
        entry = self._data.get(key)
        if entry is None or entry[1] <= now:
            entry = self.seen.get(key)
        return entry[0] if entry is not None and entry[1] > now else 0.0

    def _add(self, namespace: str, key: str, amount: float, expires: float, now: float) -> None:
        super()._add(namespace, key, amount, expires, now)
        entries = self.journal.setdefault(namespace, {})
        entry = entries.get(key)
        if entry is None:
            entries[key] = [amount, expires]
        else:
            entry[0] += amount
            entry[1] = max(entry[1], expires)

    @property
    def unmerged(self) -> int:
        """Counter keys counted here that Redis has not confirmed yet."""
        return sum(len(e) for e in self.journal.values()) + sum(len(b.entries) for b in self.batches)

    def cut(self, now: float) -> list[MergeBatch]:
        """Move the journal into batches and return every batch not yet merged (oldest first).

        Counters whose window ended are dropped here (Redis would have expired them too);
        amounts that cancelled out (a hold given back) are not sent."""
        for namespace, entries in self.journal.items():
            live = [(k, a, e) for k, (a, e) in entries.items() if e > now and abs(a) > EPSILON]
            for start in range(0, len(live), self.batch_keys):
                self._cuts += 1
                self.batches.append(MergeBatch(f"{self._origin}-{self._cuts}", namespace,
                                               tuple(live[start:start + self.batch_keys])))
        self.journal.clear()
        return list(self.batches)

    def merged(self, batch: MergeBatch) -> None:
        """Redis confirmed `batch` (applied now, or before a lost reply): never send it again."""
        self.batches.remove(batch)
        if not self.batches and not self.journal:
            self._data.clear()  # Redis holds it all now; a next outage starts from `seen` again
