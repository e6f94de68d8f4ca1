"""The console page as HTML: rendered whole on the server, so it works without JavaScript.

Every value that came from a gateway or a client (model names, user ids, reasons, config text)
goes through `esc` (html.escape with quotes). The small script in console_assets/ only re-fetches
the `#live` part (`?fragment=1`) every few seconds and opens an event's trace without a reload.
Charts are hand-written SVG.
"""

from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Any

from gateway.control.console_charts import Charts, charts
from gateway.control.console_data import (
    EVENTS_PER_GATEWAY,
    TEXT_FILTERS,
    VERDICTS,
    WINDOWS,
    Filters,
    GatewayView,
    config_diffs,
    config_text,
    disagreement,
    merged_events,
    problems,
)
from gateway.events.latency_histogram import RELATIVE_ERROR

ASSETS = Path(__file__).with_name("console_assets")
STYLE = (ASSETS / "console.css").read_text()
SCRIPT = (ASSETS / "console.js").read_text()
REFRESH_SECONDS = 5
EVENTS_SHOWN = 200
BARS_SHOWN = 12


def esc(value: Any) -> str:
    """Text for HTML (element content or a quoted attribute); None is an empty string."""
    return "" if value is None else html.escape(str(value), quote=True)


def page(views: list[GatewayView], filters: Filters, title: str = "kt console", nonce: str = "") -> str:
    """The whole document: head, the filter form, and the live part."""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title>
<noscript><meta http-equiv="refresh" content="30"></noscript>
<style>{STYLE}</style></head>
<body><header><h1>{esc(title)}</h1>{_filter_form(filters)}</header>
<main id="live" data-refresh="{REFRESH_SECONDS}">{fragment(views, filters)}</main>
<script nonce="{esc(nonce)}">{SCRIPT}</script></body></html>"""


def fragment(views: list[GatewayView], filters: Filters) -> str:
    """The part that refreshes: banners, fleet, charts, decisions, trace, config."""
    events = merged_events(views, filters)
    parts = [
        f'<p class="updated">updated {esc(time.strftime("%H:%M:%S", time.gmtime()))} UTC · '
        f'window {esc(filters.window)}</p>',
        _banners(views),
        _fleet(views),
        _charts(charts(views, events, filters, EVENTS_PER_GATEWAY), filters),
        _decisions(events, filters),
        _trace(events, filters),
        _config(views),
    ]
    return "\n".join(parts)


# -- header --------------------------------------------------------------------------------------


def _filter_form(f: Filters) -> str:
    def select(name: str, options: list[str], current: str, blank: str | None) -> str:
        opts = [f'<option value="">{esc(blank)}</option>'] if blank is not None else []
        opts += [f'<option value="{esc(o)}"{" selected" if o == current else ""}>{esc(o)}</option>' for o in options]
        return f'<label>{esc(name)} <select name="{esc(name)}">{"".join(opts)}</select></label>'

    inputs = "".join(f'<label>{esc(n)} <input name="{esc(n)}" value="{esc(getattr(f, n))}" size="10"></label>'
                     for n in TEXT_FILTERS)
    return (f'<form id="filters" method="get">{select("window", list(WINDOWS), f.window, None)}'
            f'{select("verdict", list(VERDICTS), f.verdict, "any")}{inputs}'
            f'<button type="submit">Apply</button> <a href="?">reset</a></form>')


# -- fleet -----------------------------------------------------------------------------------------


def _banners(views: list[GatewayView]) -> str:
    found = problems(views)
    if not found:
        return '<div class="banner ok" id="fleet-ok">All gateways agree and none has drifted.</div>'
    items = "".join(f"<li>{esc(p)}</li>" for p in found)
    kind = "drift-banner" if disagreement(views) else "problem-banner"
    return f'<div class="banner bad" id="{kind}" role="alert"><ul>{items}</ul></div>'


def _age(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "—"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _fleet(views: list[GatewayView]) -> str:
    rows = []
    for v in views:
        status, health = v.status or {}, v.health or {}
        config = status.get("config") or {}
        pack = config.get("pack") or {}
        drift = status.get("drift") or {}
        sync = status.get("sync") or None
        reload_ = status.get("reload") or {}
        workers = status.get("workers") or health.get("workers")
        revision = config.get("revision")
        subject = (sync or {}).get("commit_subject") or (sync or {}).get("subject")
        rev_cell = (f'<code title="{esc(revision)}">{esc(revision[:12])}</code>' if revision else "—") + (
            f'<br><small>{esc(subject)}</small>' if subject else "")
        health_state = health.get("status") or ("unreachable" if v.error else "unknown")
        if sync:
            last_sync = ("error: " + esc(sync.get("last_error"))) if sync.get("last_error") else (
                f"ok {esc(sync.get('last_success_at') or '')}")
        else:
            last_sync = f"reload {esc(reload_.get('last_result') or '—')}" + (
                f": {esc(reload_.get('last_error'))}" if reload_.get("last_error") else "")
        drift_cell = (f'<span class="bad">drifted: {esc(drift.get("reason"))}</span>' if drift.get("drifted")
                      else '<span class="good">in sync</span>' if status else "—")
        rows.append(
            f'<tr><td>{esc(v.name)}{"<br><small class=bad>" + esc(v.error) + "</small>" if v.error else ""}</td>'
            f'<td><span class="health {esc(health_state)}">{esc(health_state)}</span></td>'
            f"<td>{rev_cell}</td><td>{esc(pack.get('name') or '—')} {esc(pack.get('version') or '')}</td>"
            f"<td>{_age(status.get('age_seconds'))}</td><td>{drift_cell}</td><td>{last_sync}</td>"
            f"<td>{len(workers) if isinstance(workers, list) else 1 if status else '—'}</td>"
            f"<td>{esc(health.get('in_flight', '—'))}</td></tr>")
    return ('<section><h2>Fleet</h2><div class="scroll"><table id="fleet"><thead><tr><th>Gateway</th>'
            '<th>Health</th><th>Revision</th><th>Pack</th><th>Config age</th><th>Drift</th><th>Last sync</th>'
            '<th>Workers</th><th>In flight</th></tr></thead><tbody>' + "".join(rows)
            + "</tbody></table></div></section>")


# -- charts -----------------------------------------------------------------------------------------


def _charts(numbers: Charts, filters: Filters) -> str:
    blocked = numbers.verdicts.get("block", 0)
    summary = (f'<p class="summary" id="chart-totals"><b>{numbers.requests}</b> requests · <b>{blocked}</b> blocked · '
               f"<b>{numbers.redactions}</b> values redacted</p>")
    per_verdict = " · ".join(f'{esc(v)} <b data-verdict="{esc(v)}">{numbers.verdicts.get(v, 0)}</b>' for v in VERDICTS)
    counts = f'<p class="summary" id="verdict-counts">{per_verdict}</p>'
    if numbers.whole:
        scope = (f'<p class="note" id="chart-scope">Counted over the whole {esc(filters.window)} from each gateway\'s '
                 f"per-minute rollups (whole minutes; p50/p99 within {RELATIVE_ERROR:.0%}).</p>")
    else:
        scope = '<p class="note partial" id="chart-scope">' + "<br>".join(esc(n) for n in numbers.notes) + "</p>"
    return (f'<section><h2>Charts</h2>{summary}{counts}{scope}<div class="charts"><figure>'
            f"{policy_bars(numbers)}<figcaption>Requests, blocks and redactions per policy</figcaption></figure>"
            f"<figure>{latency_chart(numbers, filters)}<figcaption>Latency p50 / p99 (ms) over the last "
            f"{esc(filters.window)}</figcaption></figure></div></section>")


def policy_bars(numbers: Charts) -> str:
    """Three bars per policy (requests, blocks, redactions), scaled to the largest count."""
    rows = numbers.policy_rows()[:BARS_SHOWN]
    if not rows:
        return '<p class="empty">no policy decisions in this window</p>'
    top = max(max(r.requests, r.blocks, r.redactions) for r in rows) or 1
    row_h, label_w, width = 30, 130, 400
    out = [f'<svg class="chart" viewBox="0 0 {width} {row_h * len(rows) + 20}" role="img" '
           'aria-label="requests, blocks and redactions per policy">']
    for i, r in enumerate(rows):
        y = i * row_h
        out.append(f'<text x="0" y="{y + 17}" class="label">{esc(r.policy[:20])}</text>')
        for j, (kind, n) in enumerate((("requests", r.requests), ("blocks", r.blocks), ("redactions", r.redactions))):
            w = (width - label_w - 40) * n / top
            out.append(f'<rect class="{kind}" x="{label_w}" y="{y + 3 + j * 8}" width="{w:.1f}" height="7">'
                       f"<title>{esc(r.policy)}: {n} {kind}</title></rect>")
            out.append(f'<text x="{label_w + w + 3:.1f}" y="{y + 10 + j * 8}" class="n">{n}</text>')
    out.append(f'<g transform="translate(0,{row_h * len(rows) + 12})"><rect class="requests" width="8" height="8"/>'
               '<text x="11" y="8" class="n">requests</text><rect class="blocks" x="70" width="8" height="8"/>'
               '<text x="81" y="8" class="n">blocks</text><rect class="redactions" x="125" width="8" height="8"/>'
               '<text x="136" y="8" class="n">redactions</text></g></svg>')
    return "".join(out)


def latency_chart(numbers: Charts, filters: Filters) -> str:
    """Two lines, p50 and p99 of request latency, over the slices of the window that had requests."""
    series = numbers.latency_series()
    buckets = len(numbers.slices)
    top = max((p99 for _, _, p99 in series), default=0.0)
    if top <= 0:
        return '<p class="empty">no requests in this window</p>'
    width, height, left, bottom = 400, 150, 40, 20
    step = (width - left - 10) / (buckets - 1)
    base = height - bottom + 5

    def points(index: int) -> list[tuple[float, float]]:
        return [(left + s[0] * step, (height - bottom) * (1 - s[index] / top) + 5) for s in series]

    def line(index: int, kind: str) -> str:
        pts = points(index)
        dots = "".join(f'<circle class="{kind}" cx="{x:.1f}" cy="{y:.1f}" r="2.5"/>' for x, y in pts)
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
        return f'<polyline class="{kind}" points="{path}"><title>{kind}</title></polyline>{dots}'

    return (f'<svg class="chart" viewBox="0 0 {width} {height + 10}" role="img" aria-label="latency p50 and p99">'
            f'<text x="0" y="12" class="n">{top:.1f} ms</text><text x="0" y="{base}" class="n">0</text>'
            f'<line x1="{left}" y1="{base}" x2="{width}" y2="{base}" class="axis"/>'
            f'{line(2, "p99")}{line(1, "p50")}'
            f'<text x="{left}" y="{height + 8}" class="n">-{esc(filters.window)}</text>'
            f'<text x="{width - 24}" y="{height + 8}" class="n">now</text>'
            f'<text x="{left + 60}" y="{height + 8}" class="n p50t">— p50</text>'
            f'<text x="{left + 120}" y="{height + 8}" class="n p99t">— p99</text></svg>')


# -- decisions ------------------------------------------------------------------------------------


def _decisions(events: list[dict[str, Any]], filters: Filters) -> str:
    rows = []
    for e in events[:EVENTS_SHOWN]:
        verdict = str(e.get("verdict") or "")
        href = "?" + filters.query(event=str(e.get("id") or ""))
        when = str(e.get("timestamp") or "")[:19].replace("T", " ")
        rows.append(
            f'<tr class="v-{esc(verdict)}" data-event="{esc(e.get("id"))}">'
            f'<td><a class="evt" href="{esc(href)}#trace">{esc(when)}</a></td>'
            f'<td><span class="verdict {esc(verdict)}">{esc(verdict)}</span></td><td>{esc(e.get("policy"))}</td>'
            f'<td>{esc(e.get("reason_code"))}</td><td>{esc(e.get("model"))}</td><td>{esc(e.get("provider"))}</td>'
            f'<td>{esc(e.get("user_id"))}</td><td>{esc(e.get("status"))}</td>'
            f'<td>{esc(e.get("latency_ms"))}</td><td>{esc(e.get("gateway"))}</td></tr>')
    more = (f'<p class="note">showing the newest {EVENTS_SHOWN} of {len(events)}</p>'
            if len(events) > EVENTS_SHOWN else "")
    body = "".join(rows) or '<tr><td colspan="10" class="empty">no decisions match</td></tr>'
    return ('<section><h2>Decisions</h2><div class="scroll"><table id="decisions"><thead><tr><th>Time (UTC)</th>'
            "<th>Verdict</th><th>Policy</th><th>Reason</th><th>Model</th><th>Provider</th><th>User</th>"
            f"<th>Status</th><th>ms</th><th>Gateway</th></tr></thead><tbody>{body}</tbody></table></div>{more}</section>")


def _trace(events: list[dict[str, Any]], filters: Filters) -> str:
    if not filters.event:
        return ""
    event = next((e for e in events if e.get("id") == filters.event), None)
    if event is None:
        return (f'<section id="trace"><h2>Trace</h2><p class="empty">event {esc(filters.event)} '
                "is not in this view</p></section>")
    rows = "".join(
        f'<tr><td>{esc(r.get("policy"))}</td><td>{esc(r.get("phase"))}</td>'
        f'<td><span class="verdict {esc(r.get("verdict"))}">{esc(r.get("verdict"))}</span></td>'
        f'<td>{esc(r.get("reason_code"))}</td><td>{esc(r.get("latency_ms"))}</td>'
        f'<td>{esc(r.get("redactions") or "")}</td><td>{esc(r.get("message") or r.get("error") or "")}</td></tr>'
        for r in event.get("policies") or () if isinstance(r, dict))
    facts = " · ".join(f"{esc(k)} <b>{esc(event.get(k))}</b>" for k in (
        "request_id", "route", "config_revision", "target", "attempts", "input_tokens", "output_tokens",
        "upstream_latency_ms", "error_code") if event.get(k) not in (None, ""))
    close = "?" + filters.query(event="")
    return (f'<section id="trace"><h2>Trace of {esc(event.get("id"))} '
            f'<a class="close" href="{esc(close)}">close</a></h2>'
            f'<p class="facts">{facts}</p><div class="scroll"><table id="trace-table"><thead><tr><th>Policy</th>'
            "<th>Phase</th><th>Verdict</th><th>Reason</th><th>ms</th><th>Redactions</th><th>Message</th></tr>"
            f"</thead><tbody>{rows}</tbody></table></div></section>")


# -- config ---------------------------------------------------------------------------------------


def _highlight(text: str) -> str:
    """YAML with keys and comments marked (escaped line by line)."""
    out = []
    for line in text.splitlines():
        stripped = line.lstrip(" -")
        key, sep, rest = stripped.partition(":")
        if sep and key and " " not in key.strip() and not stripped.startswith(("'", '"')):
            indent = line[: len(line) - len(stripped)]
            out.append(f'{esc(indent)}<span class="k">{esc(key)}</span>:{esc(rest)}')
        else:
            out.append(esc(line))
    return "\n".join(out)


def _config(views: list[GatewayView]) -> str:
    shown: dict[str, list[str]] = {}
    for v in views:
        text = config_text(v)
        if text is not None:
            shown.setdefault(text, []).append(v.name)
    if not shown:
        return '<section><h2>Running config</h2><p class="empty">no gateway gave its config</p></section>'
    blocks = []
    for i, (text, names) in enumerate(shown.items()):
        blocks.append(f'<details{" open" if i == 0 else ""}><summary>{esc(", ".join(names))}</summary>'
                      f'<pre class="yaml">{_highlight(text)}</pre></details>')
    diffs = []
    for base, other, lines in config_diffs(views):
        marked = "\n".join(f'<span class="{"add" if ln.startswith("+") else "del" if ln.startswith("-") else "ctx"}">'
                           f"{esc(ln)}</span>" for ln in lines)
        diffs.append(f"<h3>{esc(base)} → {esc(other)}</h3><pre class=\"diff\">{marked}</pre>")
    diff_part = f'<div id="config-diff"><h3>The configs differ</h3>{"".join(diffs)}</div>' if diffs else ""
    return f'<section id="config"><h2>Running config (read-only)</h2>{diff_part}{"".join(blocks)}</section>'
