"""Time stamps, the repo's one helper for them: RFC 3339 UTC with milliseconds, and its inverse.

Every stamp kt writes (status.json, decision events, logs, the admin API) is `rfc3339(ts)`.
The gateway formats one or two per request, so the date and time of day are formatted once a
second (`PerSecond`, also behind the HTTP `Date` header) and only the milliseconds per call.
Lives in sync/ because sync writes stamps too and may import nothing of the gateway.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime


class PerSecond:
    """`fmt(second)` remembered for the last whole second asked: the one once-a-second clock cache.

    Thread-safe without a lock: the cached pair is read and replaced as one tuple.
    """

    __slots__ = ("_fmt", "_last")

    def __init__(self, fmt: Callable[[int], str]) -> None:
        self._fmt = fmt
        self._last: tuple[int, str] = (-1, "")

    def __call__(self, second: int) -> str:
        last = self._last
        if last[0] != second:
            last = self._last = (second, self._fmt(second))
        return last[1]


_date_time = PerSecond(lambda second: datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S"))


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
