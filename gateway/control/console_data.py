"""What the console shows, as data: each gateway's view, the merged and filtered decisions,
the chart numbers, and the masked config with the diff between gateways.

Gathering is async and never raises: a gateway that does not answer is a view with an error.
`remote_view` asks a gateway's admin endpoints (server-side, with the admin token, so a browser
never holds it); `local_view` reads one gateway's own `Ops` (its `/keeptrusts/ui`).
"""

from __future__ import annotations

import asyncio
import difflib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import orjson
import yaml
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from gateway.events.times import parse_time
from sync.credentials import mask_url

if TYPE_CHECKING:
    from gateway.control.ops import Ops

WINDOWS = {"1h": 3600, "6h": 6 * 3600, "24h": 24 * 3600, "7d": 7 * 24 * 3600}
DEFAULT_WINDOW = "1h"
EVENTS_PER_GATEWAY = 1000  # the newest events of the window asked of each gateway (/keeptrusts/events caps it)
TEXT_FILTERS = ("policy", "reason", "model", "provider", "user")
VERDICTS = ("allow", "block", "redact", "escalate", "error")
MASK = "***"


@dataclass
class GatewayView:
    """One gateway as the console sees it; `error` says why a part is missing."""

    name: str  # the URL with credentials masked, or "this gateway"
    health: dict[str, Any] | None = None
    status: dict[str, Any] | None = None
    config: dict[str, Any] | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    @property
    def revision(self) -> str | None:
        return ((self.status or {}).get("config") or {}).get("revision")

    @property
    def config_sha(self) -> str | None:
        return ((self.status or {}).get("config") or {}).get("sha256")


@dataclass(frozen=True)
class Filters:
    """The decision filters of one page view, parsed from its query string."""

    window: str = DEFAULT_WINDOW
    verdict: str = ""
    policy: str = ""
    reason: str = ""
    model: str = ""
    provider: str = ""
    user: str = ""
    event: str = ""  # the id of the event whose trace is shown

    @classmethod
    def parse(cls, arg: Any) -> Filters:
        """From a `get(name) -> str | None` (e.g. a handler's query arguments); unknown values fall back."""
        values = {name: (arg(name) or "").strip()[:200] for name in ("window", "verdict", *TEXT_FILTERS, "event")}
        if values["window"] not in WINDOWS:
            values["window"] = DEFAULT_WINDOW
        if values["verdict"] not in VERDICTS:
            values["verdict"] = ""
        return cls(**values)

    @property
    def since(self) -> float:
        return time.time() - WINDOWS[self.window]

    def query(self, **change: str) -> str:
        """This view's query string, with `change` applied (empty values left out)."""
        values = {name: getattr(self, name) for name in ("window", "verdict", *TEXT_FILTERS, "event")}
        values.update(change)
        return urlencode({k: v for k, v in values.items() if v})


# -- gathering ---------------------------------------------------------------------------------


async def remote_view(url: str, token: str | None, since: float, timeout: float = 5.0,
                      verdict: str = "") -> GatewayView:
    """A gateway's /health, /keeptrusts/status, /keeptrusts/config and events since `since`, asked at once.

    With `verdict` the gateway's store picks the newest events of that verdict, so a block stays
    in view on a gateway that allowed more than `EVENTS_PER_GATEWAY` requests since."""
    view = GatewayView(mask_url(url))
    base = url.rstrip("/")
    headers = {"Accept": "application/json", "User-Agent": "kt-console"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    client = AsyncHTTPClient()

    async def get(path: str) -> Any:
        request = HTTPRequest(base + path, headers=headers, request_timeout=timeout, connect_timeout=timeout)
        try:
            response = await client.fetch(request, raise_error=False)
        except (OSError, HTTPClientError, ValueError) as exc:
            raise _Unanswered(f"unreachable: {mask_url(str(exc))}") from None
        if response.code == 599:
            raise _Unanswered(f"unreachable: {mask_url(str(response.error))}")
        if response.code == 401:
            raise _Unanswered("admin token required or rejected (HTTP 401): set KEEPTRUSTS_ADMIN_TOKEN")
        try:
            return response.code, orjson.loads(response.body or b"null")
        except orjson.JSONDecodeError:
            return response.code, None

    asked = {"since": f"{since:.3f}", "limit": EVENTS_PER_GATEWAY}
    query = urlencode({**asked, "verdict": verdict} if verdict else asked)
    answers = await asyncio.gather(get("/health"), get("/keeptrusts/status"), get("/keeptrusts/config"),
                                   get(f"/keeptrusts/events?{query}"), return_exceptions=True)
    errors = [str(a) for a in answers if isinstance(a, BaseException)]
    health, status, config, events = (None if isinstance(a, BaseException) else a for a in answers)
    view.health = health[1] if health and isinstance(health[1], dict) else None
    view.status = status[1] if status and status[0] == 200 and isinstance(status[1], dict) else None
    view.config = config[1] if config and config[0] == 200 and isinstance(config[1], dict) else None
    if events and events[0] == 200 and isinstance(events[1], dict):
        view.events = [e for e in events[1].get("events") or () if isinstance(e, dict)]
    if errors:
        view.error = errors[0]
    elif view.status is None:
        view.error = f"/keeptrusts/status answered HTTP {status[0] if status else '?'}"
    return view


class _Unanswered(Exception):
    pass


async def local_view(ops: Ops, since: float, verdict: str = "") -> GatewayView:
    """This gateway's own view, read in-process (no HTTP round trip); `verdict` as for `remote_view`."""
    view = GatewayView("this gateway", health=ops.health(), status=ops.status(), config=ops.config_view())
    writer = ops.writer
    if writer is None:
        view.error = "the event store is not open"
    else:
        view.events = await writer.call(writer.store.query, since, None, EVENTS_PER_GATEWAY, verdict or None, None)
    return view


# -- the fleet -----------------------------------------------------------------------------------


def disagreement(views: list[GatewayView]) -> list[str]:
    """The distinct revisions the gateways run, when there are more than one (else empty)."""
    revisions = sorted({v.revision for v in views if v.revision})
    return revisions if len(revisions) > 1 else []


def problems(views: list[GatewayView]) -> list[str]:
    """What a person should see first: unreachable or drifted gateways, and revision disagreement."""
    found = []
    for v in views:
        if v.error and v.status is None:
            found.append(f"{v.name}: {v.error}")
        elif v.revision is None:
            found.append(f"{v.name}: no config loaded")
        drift = (v.status or {}).get("drift") or {}
        if drift.get("drifted"):
            found.append(f"{v.name}: drifted ({drift.get('reason')})")
    revisions = disagreement(views)
    if revisions:
        found.insert(0, "gateways disagree on the revision: " + ", ".join(r[:12] for r in revisions))
    return found


# -- decisions -------------------------------------------------------------------------------------


def merged_events(views: list[GatewayView], filters: Filters) -> list[dict[str, Any]]:
    """Every gateway's events in the window that pass the filters, newest first, each with `gateway`."""
    since = filters.since
    found = []
    for view in views:
        for event in view.events:
            try:
                ts = parse_time(event.get("timestamp"))
            except ValueError:
                continue
            if ts is None or ts < since or not _passes(event, filters):
                continue
            found.append({**event, "gateway": view.name, "_ts": ts})
    found.sort(key=lambda e: e["_ts"], reverse=True)
    return found


def _passes(event: dict[str, Any], f: Filters) -> bool:
    if f.verdict and event.get("verdict") != f.verdict:
        return False
    if f.policy and f.policy != event.get("policy") and f.policy not in {
            r.get("policy") for r in event.get("policies") or () if isinstance(r, dict)}:
        return False
    for name, key in (("reason", "reason_code"), ("model", "model"), ("provider", "provider"), ("user", "user_id")):
        wanted = getattr(f, name)
        if wanted and wanted.lower() not in str(event.get(key) or "").lower():
            return False
    return True


@dataclass(frozen=True)
class PolicyCounts:
    policy: str
    requests: int
    blocks: int
    redactions: int


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


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank `q` percentile (0 < q <= 1) of `values` (0 when empty)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, int(q * len(ordered) + 0.999999) - 1))]


def latency_series(events: list[dict[str, Any]], filters: Filters,
                   buckets: int = 24) -> list[tuple[int, float, float]]:
    """(slice index, p50 ms, p99 ms) of each of the window's `buckets` equal slices that has requests."""
    start, width = filters.since, WINDOWS[filters.window] / buckets
    slices: list[list[float]] = [[] for _ in range(buckets)]
    for event in events:
        i = int((event["_ts"] - start) // width)
        if 0 <= i < buckets and isinstance(event.get("latency_ms"), int | float):
            slices[i].append(float(event["latency_ms"]))
    return [(i, percentile(s, 0.5), percentile(s, 0.99)) for i, s in enumerate(slices) if s]


# -- config ------------------------------------------------------------------------------------------


def mask_config(value: Any, under_ref: bool = False) -> Any:
    """The config document with every secret ref's value and every URL's credentials masked."""
    if isinstance(value, dict):
        return {k: mask_config(v, under_ref or str(k).endswith("_ref")) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_config(v, under_ref) for v in value]
    if under_ref and value is not None:
        return MASK
    if isinstance(value, str):
        return mask_url(value)
    return value


def config_text(view: GatewayView) -> str | None:
    """The running config as masked YAML (None when the gateway did not give it)."""
    document = (view.config or {}).get("config")
    if document is None:
        return None
    return yaml.safe_dump(mask_config(document), sort_keys=False, default_flow_style=False, allow_unicode=True)


def config_diffs(views: list[GatewayView]) -> list[tuple[str, str, list[str]]]:
    """(first gateway, other gateway, unified diff lines) for each gateway whose config differs from the first's."""
    texts = [(v.name, config_text(v)) for v in views]
    texts = [(name, text) for name, text in texts if text is not None]
    if len(texts) < 2:
        return []
    base_name, base = texts[0]
    diffs = []
    for name, text in texts[1:]:
        if text != base:
            lines = list(difflib.unified_diff(base.splitlines(), text.splitlines(), base_name, name, lineterm=""))
            diffs.append((base_name, name, lines))
    return diffs
