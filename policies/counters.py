"""Counters that outlive a request: the one interface for spend, rates and session actions.

A policy never does I/O. It *declares* what it needs counted for an exchange as `Claim`s
(`Policy.claims(ex, phase)`); whoever runs the chain reserves them in one call to a
`Counters` backend and puts the results on `ex.tally`, which the policy then reads. The
gateway does that asynchronously before the chain (one pipelined round trip to Redis); the
chain itself does it synchronously when nobody did (`kt policy test`, unit tests).

A claim with a `limit` is *checked*: it passes when `value + need <= limit` (with `need` 0:
when `value < limit`, "is anything left"). The checked claims of one call are all-or-nothing:
when one fails, none of them is added. A claim without a limit is always added. Backends:
`MemoryCounters` here (tests, `kt policy test`); SQLite and Redis in `gateway/control/`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

WINDOWS = ("day", "hour", "session")
SESSION_TTL_S = 86400.0  # a session counter idle this long is forgotten
EPSILON = 1e-9  # float slack for "fits the budget" (dollars are compared to well under a cent)


@dataclass(frozen=True)
class Claim:
    """One counter to check and/or add to.

    `key` is the logical key (`spend-limit:user:ann`); backends prefix the pack namespace and
    the window's bucket. `hold` marks a reservation that is undone when the request ends
    without settling it (an estimate of spend, not a count that sticks).
    """

    key: str
    window: str  # "day" (UTC) | "hour" (UTC, fixed) | "session" (idle expiry)
    add: float = 0.0
    limit: float | None = None
    need: float | None = None  # what must fit under `limit`; default: `add`
    hold: bool = False

    def fits(self, value: float) -> bool:
        if self.limit is None:
            return True
        need = self.add if self.need is None else self.need
        return value + need <= self.limit + EPSILON if need > 0 else value < self.limit


@dataclass(frozen=True)
class ClaimResult:
    ok: bool  # the check passed (always True for a claim without a limit)
    value: float  # the counter before this call added anything
    applied: bool  # `add` was added


@dataclass
class Tally:
    """What one exchange reserved: results by claim key, holds to undo, adds queued for later."""

    results: dict[str, ClaimResult] = field(default_factory=dict)
    ready: object = None  # the Phase the caller already reserved for (the chain then does not)
    holds: dict[str, Claim] = field(default_factory=dict)
    queued: list[Claim] = field(default_factory=list)

    def record(self, claims: Sequence[Claim], results: Sequence[ClaimResult]) -> None:
        for claim, result in zip(claims, results, strict=True):
            self.results[claim.key] = result
            if claim.hold and result.applied:
                self.holds[claim.key] = claim

    def take_undo(self) -> list[Claim]:
        """Claims that give back every hold not settled (the request ended without its usage)."""
        undo = [Claim(c.key, c.window, -c.add) for c in self.holds.values() if c.add]
        self.holds.clear()
        return undo


def bucket(window: str, now: float) -> tuple[str, float]:
    """(bucket suffix, expiry time) of `window` at `now`: a counter expires at its window's end."""
    if window == "day":
        day = int(now // 86400)
        return f"d{day}", (day + 1) * 86400.0 + 3600.0  # kept an hour past midnight (clock skew)
    if window == "hour":
        hour = int(now // 3600)
        return f"h{hour}", (hour + 1) * 3600.0 + 60.0
    return "s", now + SESSION_TTL_S


def window_end(window: str, now: float) -> float:
    """When the current bucket of `window` ends (a rate limit's Retry-After counts to it)."""
    if window == "day":
        return (math.floor(now / 86400) + 1) * 86400.0
    if window == "hour":
        return (math.floor(now / 3600) + 1) * 3600.0
    return now + SESSION_TTL_S


def storage_key(namespace: str, claim_key: str, window: str, now: float) -> tuple[str, float]:
    """The backend key and its expiry. `{namespace}` is a Redis Cluster hash tag: one pack, one slot."""
    suffix, expires = bucket(window, now)
    return f"kt:{{{namespace}}}:{claim_key}:{suffix}", expires


class Counters(Protocol):
    """A synchronous counter backend (memory, SQLite)."""

    def reserve(self, namespace: str, claims: Sequence[Claim], now: float | None = None) -> list[ClaimResult]:
        """Check the checked claims all-or-nothing, add what passed; one result per claim, in order."""
        ...

    def value(self, namespace: str, key: str, window: str, now: float | None = None) -> float: ...


def decide(claims: Sequence[Claim], values: Sequence[float]) -> tuple[bool, list[bool]]:
    """(all checked claims fit, per claim: whether its check passed) — the rule every backend applies."""
    passed = [c.fits(v) for c, v in zip(claims, values, strict=True)]
    return all(passed), passed


def results_of(claims: Sequence[Claim], values: Sequence[float], passed: Sequence[bool],
               all_ok: bool) -> list[ClaimResult]:
    return [ClaimResult(ok, v, all_ok or c.limit is None) for c, v, ok in zip(claims, values, passed, strict=True)]


class MemoryCounters:
    """In-process counters: for `kt policy test`, unit tests, and the fail-open fallback."""

    def __init__(self) -> None:
        self._data: dict[str, tuple[float, float]] = {}  # key -> (value, expires_at)
        self._writes = 0

    def _get(self, key: str, now: float) -> float:
        entry = self._data.get(key)
        return entry[0] if entry is not None and entry[1] > now else 0.0

    def _add(self, namespace: str, key: str, amount: float, expires: float, now: float) -> None:
        self._data[key] = (self._get(key, now) + amount, expires)

    def value(self, namespace: str, key: str, window: str, now: float | None = None) -> float:
        now = time.time() if now is None else now
        return self._get(storage_key(namespace, key, window, now)[0], now)

    def reserve(self, namespace: str, claims: Sequence[Claim], now: float | None = None) -> list[ClaimResult]:
        now = time.time() if now is None else now
        keys = [storage_key(namespace, c.key, c.window, now) for c in claims]
        values = [self._get(k, now) for k, _ in keys]
        all_ok, passed = decide(claims, values)
        for claim, (key, expires) in zip(claims, keys, strict=True):
            if claim.add and (all_ok or claim.limit is None):
                self._add(namespace, key, claim.add, expires, now)
        self._writes += 1
        if self._writes % 1024 == 0:  # forget expired counters now and then
            self._data = {k: e for k, e in self._data.items() if e[1] > now}
        return results_of(claims, values, passed, all_ok)
