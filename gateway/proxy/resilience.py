"""Retries, backoff and circuit breakers for upstream targets.

Every retry has a bound (`providers.fallback.max_retries`) and a jittered exponential
backoff; a `Retry-After` from the upstream is honoured when the next attempt goes to the
same target. A breaker per target opens after consecutive failures and lets one probe
through (half-open) after its cool-down.
"""

from __future__ import annotations

import email.utils
import itertools
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from policies.model import Target
from sync.backoff import backoff

BACKOFF_BASE_S = 0.05
BACKOFF_CAP_S = 2.0
MAX_RETRY_AFTER_S = 10.0  # longer waits are not retried: the client gets the 429 and its Retry-After


def backoff_delay(attempt: int, rng: Callable[[], float] = random.random) -> float:
    """Full-jitter exponential backoff before retry number `attempt` (1-based)."""
    return backoff(attempt - 1, BACKOFF_BASE_S, BACKOFF_CAP_S, rng=rng)


MAX_RETRY_AFTER_HEADER_S = 86400.0  # a Retry-After beyond a day is taken as a day (and `inf`, `1e400` too)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or HTTP date), or None.

    Whatever the upstream sent, the answer is None or a finite number in [0, one day]
    (`nan` is None; `inf`, `1e400` and far dates are a day)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError, OverflowError, IndexError):
            return None
        seconds = when - (now if now is not None else time.time())
    if seconds != seconds:  # nan
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER_HEADER_S)


@dataclass
class CircuitBreaker:
    """closed -> open after `threshold` consecutive failures -> half-open after `cooldown_s` -> closed on success."""

    threshold: int = 5
    cooldown_s: float = 30.0
    clock: Callable[[], float] = time.monotonic
    failures: int = 0
    opened_at: float | None = None
    probing: bool = False

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half_open" if self.clock() - self.opened_at >= self.cooldown_s else "open"

    def allow(self) -> bool:
        """May a request go to this target now? Half-open lets exactly one probe through."""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self.probing:
            self.probing = True
            return True
        return False

    def success(self) -> None:
        self.failures = 0
        self.opened_at = None
        self.probing = False

    def release(self) -> None:
        """An attempt ended without a verdict on the target (cancelled, or the request's own fault)."""
        self.probing = False

    def failure(self) -> None:
        self.failures += 1
        if self.probing or self.failures >= self.threshold:
            self.opened_at = self.clock()
        self.probing = False


@dataclass
class Breakers:
    """One breaker per target id; kept across reloads (keyed by id)."""

    threshold: int = 5
    cooldown_s: float = 30.0
    by_target: dict[str, CircuitBreaker] = field(default_factory=dict)

    def states(self) -> dict[str, str]:
        """Target id -> closed | open | half_open (for health and metrics)."""
        return {target_id: b.state for target_id, b in self.by_target.items()}

    def get(self, target_id: str) -> CircuitBreaker:
        breaker = self.by_target.get(target_id)
        if breaker is None:
            breaker = self.by_target[target_id] = CircuitBreaker(self.threshold, self.cooldown_s)
        return breaker


class RoundRobin:
    """Per-model rotating start index for `strategy: round-robin`."""

    def __init__(self) -> None:
        self._counters: dict[str, itertools.count] = {}

    def rotate(self, key: str, targets: Sequence[Target]) -> list[Target]:
        if len(targets) < 2:
            return list(targets)
        counter = self._counters.setdefault(key, itertools.count())
        start = next(counter) % len(targets)
        return list(targets[start:]) + list(targets[:start])


def attempt_plan(targets: Sequence[Target], max_retries: int) -> list[Target]:
    """The targets of the first attempt and each retry: cycle through `targets`, 1 + max_retries in all."""
    if not targets:
        return []
    return [targets[i % len(targets)] for i in range(1 + max(0, max_retries))]
