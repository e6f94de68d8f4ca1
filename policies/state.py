"""State that outlives one request and one config: the counter backend policies count through.

The gateway creates one `PolicyState` at start and hands it to every config it loads, so a
reload does not reset a day's spend. Its `counters` are a synchronous backend (in memory by
default; the gateway's SQLite file); see `policies.counters` for the claim protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from policies.counters import Claim, ClaimResult, Counters, MemoryCounters


@dataclass
class PolicyState:
    """The counter backend of a gateway (or of a test); keys carry no pack namespace here."""

    counters: Counters = field(default_factory=MemoryCounters)

    def reserve(self, claims: Sequence[Claim], namespace: str = "", now: float | None = None) -> list[ClaimResult]:
        return self.counters.reserve(namespace, claims, now)

    def spent_today(self, key: str, now: float | None = None, namespace: str = "") -> float:
        return self.counters.value(namespace, key, "day", now)

    def add_spend(self, key: str, usd: float, now: float | None = None, namespace: str = "") -> None:
        self.counters.reserve(namespace, [Claim(key, "day", usd)], now)
