"""Exponential backoff with jitter, the repo's one helper for it (retries upstream, event submission,
the Redis probe, sync runs after errors). Lives in sync/ because the sync scheduler uses it too."""

from __future__ import annotations

import random
from collections.abc import Callable


def backoff(retry: int, base: float, cap: float, *, low: float = 0.0, least: float = 0.0,
            rng: Callable[[], float] = random.random) -> float:
    """Seconds to wait before retry number `retry` (0: the first).

    A random point of [low * ceiling, ceiling] with ceiling = min(cap, base * 2**retry): `low=0`
    is full jitter, `low=0.5` keeps at least half the step. Never less than `least`.
    """
    ceiling = min(cap, base * 2 ** min(retry, 30))
    return max(least, ceiling * (low + (1.0 - low) * rng()))
