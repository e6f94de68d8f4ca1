"""Time stamps, the repo's one helper for them: RFC 3339 UTC with milliseconds, and its inverse.

Every stamp kt writes (status.json, decision events, logs, the admin API) is `rfc3339(ts)`.
The gateway formats one or two per request, so the date and time of day are formatted once a
second (`per_second`, also behind the HTTP `Date` header) and only the milliseconds per call.
Lives in sync/ because sync writes stamps too and may import nothing of the gateway.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime


def per_second(fmt: Callable[[int], str]) -> Callable[[int], str]:
    """`fmt(second)` remembered for the last whole second asked: the one once-a-second clock cache.

    A closure, not a class with `__call__` (cheaper to call on the hot path). Thread-safe without
    a lock: the cached pair is read and replaced as one tuple.
    """
    cached: tuple[int, str] = (-1, "")

    def at(second: int) -> str:
        nonlocal cached
        last = cached
        if last[0] != second:
            last = cached = (second, fmt(second))
        return last[1]

    return at


_date_time = per_second(lambda second: datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S"))


def rfc3339(ts: float) -> str:
    """`2026-11-27T14:00:00.123Z` for seconds since the epoch, as `datetime.isoformat(timespec="milliseconds")`."""
    whole = int(ts)
    micros = round((ts - whole) * 1e6)
    if micros >= 1_000_000:
        whole, micros = whole + 1, micros - 1_000_000
    return f"{_date_time(whole)}.{micros // 1000:03d}Z"


def parse_time(value: str | None) -> float | None:
    """Inverse of `rfc3339` (None for None or garbage)."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
