"""Times of decision events: the durations, RFC 3339 stamps and epochs that `--since`/`--until` and
`?since=` take, and an event's own timestamp."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


LATEST = 253402300799.0  # 9999-12-31T23:59:59Z: a time past it (or NaN, infinity) is no time


def parse_time(value: str | float | None, now: float | None = None) -> float | None:
    """Epoch seconds from a duration back from now (`90s`, `5m`, `1h`, `7d`, `2w`), RFC 3339, or epoch,
    between -LATEST and LATEST (`nan`, `inf` and `1e300` are refused: they are no time).

    Raises `ValueError` with a message saying what is accepted.
    """
    if value is None or value == "":
        return None
    seconds = _seconds(value, now)
    if not -LATEST <= seconds <= LATEST:  # also false for NaN
        raise ValueError(f"invalid time {value!r}: not a time between the years 1 and 9999")
    return seconds


def _seconds(value: str | float, now: float | None) -> float:
    if isinstance(value, int | float):
        return float(value)
    text = value.strip()
    match = _RELATIVE.match(text)
    if match:
        return (now or time.time()) - float(match.group(1)) * _UNIT[match.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"invalid time {value!r}: use a duration like 5m, 1h, 7d or an RFC 3339 time") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def event_time(event: dict[str, Any]) -> float:
    """The event's timestamp as epoch seconds (now when missing or unreadable)."""
    ts = event.get("timestamp")
    if isinstance(ts, str) and ts.endswith("Z"):  # the gateway's own RFC 3339 UTC stamps: the fast path
        try:
            return datetime.fromisoformat(ts).timestamp()
        except ValueError:
            pass
    try:
        return parse_time(ts) or time.time()
    except ValueError:
        return time.time()
