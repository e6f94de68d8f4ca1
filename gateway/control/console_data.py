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

from gateway.control.console_charts import SERVED, SLICES
from gateway.events.rollup import SummaryQuery
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
    summary: dict[str, Any] | None = None  # the window's rollups (/keeptrusts/events/summary); None: not given
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

    def summary_args(self) -> dict[str, str]:
        """The `/keeptrusts/events/summary` query of this view: the window and the filters rollups serve."""
        now = time.time()
        args = {"since": f"{now - WINDOWS[self.window]:.3f}", "until": f"{now:.3f}", "slices": str(SLICES)}
        return {**args, **{name: getattr(self, name) for name in SERVED if getattr(self, name)}}

    def query(self, **change: str) -> str:
        """This view's query string, with `change` applied (empty values left out)."""
        values = {name: getattr(self, name) for name in ("window", "verdict", *TEXT_FILTERS, "event")}
        values.update(change)
        return urlencode({k: v for k, v in values.items() if v})


# -- gathering ---------------------------------------------------------------------------------


async def remote_view(url: str, token: str | None, since: float, timeout: float = 5.0,
                      verdict: str = "", summary: dict[str, str] | None = None) -> GatewayView:
    """A gateway's /health, /keeptrusts/status, /keeptrusts/config and events since `since`, asked at once,
    and with `summary` (`Filters.summary_args`) its /keeptrusts/events/summary.

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
    asks = [get("/health"), get("/keeptrusts/status"), get("/keeptrusts/config"), get(f"/keeptrusts/events?{query}")]
    if summary is not None:
        asks.append(get(f"/keeptrusts/events/summary?{urlencode(summary)}"))
    answers = await asyncio.gather(*asks, return_exceptions=True)
    errors = [str(a) for a in answers if isinstance(a, BaseException)]
    health, status, config, events, rollups = (None if isinstance(a, BaseException) else a
                                               for a in (*answers, None)[:5])
    view.health = health[1] if health and isinstance(health[1], dict) else None
    view.status = status[1] if status and status[0] == 200 and isinstance(status[1], dict) else None
    view.config = config[1] if config and config[0] == 200 and isinstance(config[1], dict) else None
    if events and events[0] == 200 and isinstance(events[1], dict):
        view.events = [e for e in events[1].get("events") or () if isinstance(e, dict)]
    if rollups and rollups[0] == 200 and isinstance(rollups[1], dict):  # an older gateway answers 404
        view.summary = rollups[1]
    if errors:
        view.error = errors[0]
    elif view.status is None:
        view.error = f"/keeptrusts/status answered HTTP {status[0] if status else '?'}"
    return view


class _Unanswered(Exception):
    pass


async def local_view(ops: Ops, since: float, verdict: str = "", summary: dict[str, str] | None = None) -> GatewayView:
    """This gateway's own view, read in-process (no HTTP round trip); `verdict` and `summary` as for `remote_view`."""
    view = GatewayView("this gateway", health=ops.health(), status=ops.status(), config=ops.config_view())
    writer = ops.writer
    if writer is None:
        view.error = "the event store is not open"
    else:
        view.events = await writer.call(writer.store.query, since, None, EVENTS_PER_GATEWAY, verdict or None, None)
        if summary is not None:
            query = SummaryQuery(since=float(summary["since"]), until=float(summary["until"]),
                                 slices=int(summary["slices"]), **{k: summary.get(k, "") for k in SERVED})
            view.summary = await writer.call(writer.store.summary, query)
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
