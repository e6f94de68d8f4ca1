"""The console's chart numbers: requests per verdict, per policy, and p50/p99 latency per slice of the window,
summed across gateways from their per-minute rollups (`/keeptrusts/events/summary`, histograms merged by
bucket), so they are true over the whole window however many events it held.

Where rollups cannot answer (the reason or user filter; a gateway without the summary endpoint) the
numbers come from the newest events the console was given, and `Charts.notes` says so plainly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.events import latency_histogram as lh
from gateway.events.times import LATEST

if TYPE_CHECKING:
    from gateway.control.console_data import Filters, GatewayView

SLICES = 24  # the latency chart's points over the window
SERVED = ("verdict", "policy", "model", "provider")  # the filters the rollups serve
UNSERVED = ("reason", "user")


@dataclass(frozen=True)
class PolicyCounts:
    policy: str
    requests: int
    blocks: int
    redactions: int


@dataclass
class Charts:
    """What the charts and counts show, and how far they reach."""

    requests: int = 0
    redactions: int = 0
    verdicts: dict[str, int] = field(default_factory=dict)
    policies: dict[str, list[int]] = field(default_factory=dict)  # policy -> [requests, blocks, redactions]
    slices: list[lh.Histogram] = field(default_factory=lambda: [{} for _ in range(SLICES)])
    notes: list[str] = field(default_factory=list)  # where the numbers cover less than the window
    whole: bool = True  # every number is counted over the whole window

    def policy_rows(self) -> list[PolicyCounts]:
        """Busiest first."""
        rows = [PolicyCounts(p, *counts) for p, counts in self.policies.items()]
        return sorted(rows, key=lambda r: (-r.requests, r.policy))

    def latency_series(self) -> list[tuple[int, float, float]]:
        """(slice index, p50 ms, p99 ms) of each slice that had requests (estimates within the bucket error)."""
        return [(i, lh.percentile_ms(h, 0.5) or 0.0, lh.percentile_ms(h, 0.99) or 0.0)
                for i, h in enumerate(self.slices) if h]

    def add_summary(self, summary: dict[str, Any]) -> None:
        """Add one gateway's `/keeptrusts/events/summary` answer; `ValueError` (nothing added) when it is not
        in the summary's shape: another gateway's answer is read, never trusted."""
        try:
            verdicts = {str(v): _count(n) for v, n in (summary.get("verdicts") or {}).items()}
            rows = [(str(r.get("policy")), [_count(r.get(k)) for k in ("requests", "blocks", "redactions")])
                    for r in summary.get("policies") or ()]
            series = [(int(part.get("slice", -1)), {_bucket(b): _count(n) for b, n in
                                                    (part.get("histogram") or {}).items()})
                      for part in summary.get("series") or ()]
            requests, redactions = _count(summary.get("requests")), _count(summary.get("redactions"))
        except (AttributeError, TypeError, ValueError, OverflowError):
            raise ValueError("not a summary") from None
        self.requests += requests
        self.redactions += redactions
        for verdict, n in verdicts.items():
            self.verdicts[verdict] = self.verdicts.get(verdict, 0) + n
        for policy, counts in rows:
            mine = self.policies.setdefault(policy, [0, 0, 0])
            for i, n in enumerate(counts):
                mine[i] += n
        for index, histogram in series:
            if 0 <= index < SLICES:
                lh.merge(self.slices[index], histogram)

    def add_events(self, events: list[dict[str, Any]], since: float, window: float) -> None:
        """Add events (already filtered) the way a summary would count them."""
        width = window / SLICES
        for event in events:
            verdict = str(event.get("verdict") or "")
            self.requests += 1
            self.redactions += int(event.get("redactions") or 0)
            self.verdicts[verdict] = self.verdicts.get(verdict, 0) + 1
            ms = event.get("latency_ms")
            index = int((event["_ts"] - since) // width)
            if 0 <= index < SLICES and isinstance(ms, int | float):
                b = lh.bucket(ms)
                self.slices[index][b] = self.slices[index].get(b, 0) + 1
        for row in policy_counts(events):
            mine = self.policies.setdefault(row.policy, [0, 0, 0])
            mine[0], mine[1], mine[2] = mine[0] + row.requests, mine[1] + row.blocks, mine[2] + row.redactions


def _count(value: Any) -> int:
    """A count from another gateway's answer: a whole number >= 0 (None: 0), else ValueError."""
    if value is None:
        return 0
    if type(value) is not int or value < 0:
        raise ValueError(value)
    return value


def _bucket(value: Any) -> int:
    """A histogram bucket from another gateway's answer (JSON makes its keys strings): 0..TOP, else ValueError."""
    b = int(value)
    if not 0 <= b <= lh.TOP:
        raise ValueError(value)
    return b


def policy_counts(events: list[dict[str, Any]]) -> list[PolicyCounts]:
    """Per policy: requests it checked, requests it blocked, values it redacted (busiest first)."""
    seen: dict[str, list[int]] = {}
    for event in events:
        results = [r for r in event.get("policies") or () if isinstance(r, dict) and r.get("policy")]
        for policy in {str(r["policy"]) for r in results}:
            seen.setdefault(policy, [0, 0, 0])[0] += 1
        for policy in {str(r["policy"]) for r in results if r.get("verdict") == "block"}:
            seen[policy][1] += 1
        for r in results:
            seen[str(r["policy"])][2] += int(r.get("redactions") or 0)
    rows = [PolicyCounts(p, *counts) for p, counts in seen.items()]
    return sorted(rows, key=lambda r: (-r.requests, r.policy))


def charts(views: list[GatewayView], events: list[dict[str, Any]], filters: Filters, newest: int) -> Charts:
    """The window's numbers across `views`: from each gateway's summary, else from its part of `events`
    (the merged, filtered newest `newest` events of each gateway), with a note for each such part."""
    from gateway.control.console_data import WINDOWS

    out = Charts()
    window = WINDOWS[filters.window]
    since = filters.since
    unserved = [name for name in UNSERVED if getattr(filters, name)]
    if unserved:
        out.add_events(events, since, window)
        out.whole = False
        out.notes.append(f"The {' and '.join(unserved)} filter is not kept in the per-minute rollups: these charts "
                         f"and counts cover only the newest {newest:,} events of each gateway in the window.")
        return out
    for view in views:
        if view.summary is not None and _added(out, view.summary):
            started = view.summary.get("rollups_since")
            if isinstance(started, int | float) and since < started < LATEST:
                out.whole = False
                out.notes.append(f"{view.name}: counted from {time.strftime('%Y-%m-%d %H:%M', time.gmtime(started))}"
                                 " UTC on (its event store keeps per-minute rollups since then).")
            continue
        mine = [e for e in events if e.get("gateway") == view.name]
        out.add_events(mine, since, window)
        out.whole = False
        if view.status is None and not mine:
            out.notes.append(f"{view.name} did not answer: not counted.")
        else:
            out.notes.append(f"{view.name} gave no summary (an older kt, or its event store is not open): its part "
                             f"covers only its newest {newest:,} events in the window.")
    return out


def _added(out: Charts, summary: Any) -> bool:
    """Whether `summary` was in the summary's shape and is now counted in `out` (else its events are)."""
    try:
        out.add_summary(summary)
    except ValueError:
        return False
    return True
