"""State that outlives one request and one config: spend and per-session counters.

The gateway creates one `PolicyState` at start and hands it to every config it loads, so a
reload does not reset a day's spend. Single event loop: no locks.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from dataclasses import dataclass, field


def _day(now: float) -> int:
    return int(now // 86400)


@dataclass
class PolicyState:
    """Counters keyed by agent, user or session; all times are `time.time()` seconds."""

    spend_usd: dict[tuple[int, str], float] = field(default_factory=lambda: defaultdict(float))
    session_actions: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    request_times: dict[str, deque[float]] = field(default_factory=lambda: defaultdict(deque))
    session_seen: dict[str, float] = field(default_factory=dict)  # insertion order = least recently used first
    session_ttl_s: float = 86400.0  # a session idle this long is forgotten

    def spent_today(self, key: str, now: float | None = None) -> float:
        return self.spend_usd.get((_day(now or time.time()), key), 0.0)

    def add_spend(self, key: str, usd: float, now: float | None = None) -> None:
        day = _day(now or time.time())
        self.spend_usd[(day, key)] += usd
        for stale in [k for k in self.spend_usd if k[0] < day - 1]:
            del self.spend_usd[stale]

    def requests_in_last_hour(self, key: str, now: float | None = None, record: bool = False) -> int:
        now = now or time.time()
        times = self.request_times[key]
        while times and times[0] < now - 3600:
            times.popleft()
        if record:
            times.append(now)
        return len(times)

    def actions_in_session(self, key: str) -> int:
        return self.session_actions.get(key, 0)

    def add_session_actions(self, key: str, count: int, now: float | None = None) -> int:
        """Count `count` more actions for session `key`; forget idle sessions. Returns the new total."""
        now = now or time.time()
        self.session_seen.pop(key, None)
        self.session_seen[key] = now
        self.session_actions[key] += count
        while self.session_seen:
            oldest, seen = next(iter(self.session_seen.items()))
            if seen >= now - self.session_ttl_s:
                break
            del self.session_seen[oldest]
            self.session_actions.pop(oldest, None)
        return self.session_actions[key]
