"""Per-minute rollups of decision events, kept in the event store next to the events: what the console's
charts and counts are drawn from, true over a whole window however many events it held.

Two tables, one row per (minute, key), written with each batch of events (aggregated in memory,
one upsert per key and batch, in the batch's transaction):

- `rollup_requests` (minute, verdict, provider, model): requests, values redacted, latency histogram;
- `rollup_policies` (minute, verdict, provider, model, policy, outcome): requests the policy ran on
  (once per request, whatever its phases), with `outcome` the policy's verdict on the request
  (block over escalate over redact over the rest), values it redacted, latency histogram.

`verdict` is the request's. Latency histograms: gateway/events/latency_histogram.py.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from gateway.events import latency_histogram as lh

SCHEMA = """
CREATE TABLE IF NOT EXISTS rollup_requests (
    minute INTEGER NOT NULL, verdict TEXT NOT NULL, provider TEXT NOT NULL, model TEXT NOT NULL,
    requests INTEGER NOT NULL, redactions INTEGER NOT NULL, latency BLOB NOT NULL,
    PRIMARY KEY (minute, verdict, provider, model)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rollup_policies (
    minute INTEGER NOT NULL, verdict TEXT NOT NULL, provider TEXT NOT NULL, model TEXT NOT NULL,
    policy TEXT NOT NULL, outcome TEXT NOT NULL,
    requests INTEGER NOT NULL, redactions INTEGER NOT NULL, latency BLOB NOT NULL,
    PRIMARY KEY (minute, verdict, provider, model, policy, outcome)) WITHOUT ROWID;
"""
TABLES = ("rollup_requests", "rollup_policies")
SINCE_KEY = "rollups_since"  # in `meta`: from when the rollups count every event (epoch seconds; 0: always)
MAX_SLICES = 1440
_ROWS_PER_UPSERT = 100  # 900 parameters at most: below SQLite's oldest limit of 999
_OUTCOME_RANK = {"block": 4, "escalate": 3, "redact": 2, "allow": 0, "": -1}  # others: 1
_UPSERT_REQUESTS = (
    "INSERT INTO rollup_requests (minute, verdict, provider, model, requests, redactions, latency) VALUES {} "
    "ON CONFLICT (minute, verdict, provider, model) DO UPDATE SET requests = requests + excluded.requests, "
    "redactions = redactions + excluded.redactions, latency = hist_merge(latency, excluded.latency)")
_UPSERT_POLICIES = (
    "INSERT INTO rollup_policies (minute, verdict, provider, model, policy, outcome, requests, redactions, latency) "
    "VALUES {} ON CONFLICT (minute, verdict, provider, model, policy, outcome) DO UPDATE SET "
    "requests = requests + excluded.requests, redactions = redactions + excluded.redactions, "
    "latency = hist_merge(latency, excluded.latency)")


def set_up(db: sqlite3.Connection) -> None:
    """Create the tables and note from when rollups count: a new store from its start (0), a store from
    before rollups (it holds events they never counted) from now."""
    new = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'rollup_requests'").fetchone() is None
    db.executescript(SCHEMA)
    if new:
        had_events = db.execute("SELECT 1 FROM events LIMIT 1").fetchone() is not None
        db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)",
                   (SINCE_KEY, f"{time.time():.3f}" if had_events else "0"))


def register(db: sqlite3.Connection) -> None:
    """The SQL function the upserts use."""
    db.create_function("hist_merge", 2, lh.merge_encoded, deterministic=True)


Groups = dict[tuple, list]  # (minute, verdict, provider, model, signature) -> [redactions, latencies]


def note(groups: Groups, event: dict[str, Any], ts: float, pv: Any = itemgetter("policy", "verdict")) -> None:
    """Count one event into `groups`: by key and by the (policy, verdict[, redactions]) signature of its
    results, which most requests of a batch share, so the per-policy work is done once per group.

    The writer's per-event cost, so kept to the bone; called in the loop that encodes the event, while
    the event is still in the CPU's caches."""
    get = event.get
    results = get("policies")
    redactions = get("redactions")
    try:
        sig: tuple = tuple(map(pv, results)) if results else ()
        if redactions:  # the policies that redacted, and how many values each
            sig = ("r", sig, tuple([(r["policy"], r["redactions"]) for r in results if "redactions" in r]))
        gkey = (ts // 60, get("verdict"), get("provider"), get("model"), sig)
        row = groups.get(gkey)
        if row is None:
            groups[gkey] = [redactions + 0 if redactions else 0, [get("latency_ms")]]
        else:
            row[0] += redactions or 0
            row[1].append(get("latency_ms"))
    except (KeyError, TypeError, AttributeError):  # not the gateway's own shape: counted the slow way
        _note_odd(groups, event, ts)


def _note_odd(groups: Groups, event: dict[str, Any], ts: float) -> None:
    """`note` for an event not in the gateway's own shape (a list for a model, a text for a count): its
    fields as text, counts that are not whole numbers as 0, results as (policy, verdict, redactions)."""
    results = event.get("policies")
    redactions = event.get("redactions")
    redactions = redactions if isinstance(redactions, int) else 0
    sig = ("", _results(results if isinstance(results, list | tuple) else ()))
    gkey = (ts // 60, *(_text(event.get(name)) for name in ("verdict", "provider", "model")), sig)
    row = groups.setdefault(gkey, [0, []])
    row[0] += redactions
    row[1].append(event.get("latency_ms"))


def _text(value: Any) -> str:
    return value if isinstance(value, str) else "" if value is None else str(value)


def group(events: Sequence[dict[str, Any]], times: Sequence[float]) -> Groups:
    """The groups of `events` (see `note`)."""
    groups: Groups = {}
    for event, ts in zip(events, times, strict=True):
        note(groups, event, ts)
    return groups


def aggregate(groups: Groups) -> tuple[dict[tuple, list], dict[tuple, list]]:
    """The rows of `groups`: {(minute, verdict, provider, model): [requests, redactions, histogram]} and
    {(minute, verdict, provider, model, policy, outcome): [requests, redactions, histogram]}."""
    folded: dict[tuple, list] = {}
    for (minute, verdict, provider, model, sig), (redactions, latencies) in groups.items():
        key = (int(minute), _text(verdict), _text(provider), _text(model), sig)
        hist = lh.histogram_of([ms for ms in latencies if isinstance(ms, int | float)])
        row = folded.get(key)
        if row is None:
            folded[key] = [len(latencies), redactions, hist]
        else:  # a None and a "" of the same field
            row[0] += len(latencies)
            row[1] += redactions
            lh.merge(row[2], hist)
    requests: dict[tuple, list] = {}
    policies: dict[tuple, list] = {}
    outcomes: dict[tuple, list[tuple[str, str, int]]] = {}
    for (*key, sig), (n, redactions, hist) in folded.items():
        _add(requests, tuple(key), n, redactions, hist)
        found = outcomes.get(sig)
        if found is None:
            found = outcomes[sig] = _outcomes(sig)
        for policy, outcome, policy_redactions in found:
            _add(policies, (*key, policy, outcome), n, policy_redactions * n, hist)
    return requests, policies


def _results(results: Any) -> tuple:
    """(policy, verdict, redactions) of each well-formed result of an event not in the gateway's own shape."""
    return tuple((_text(r.get("policy")), _text(r.get("verdict")), _count(r.get("redactions")))
                 for r in results if isinstance(r, dict) and r.get("policy"))


def _count(value: Any) -> int:
    return value if isinstance(value, int) else 0


def _outcomes(sig: tuple) -> list[tuple[str, str, int]]:
    """(policy, outcome, values redacted) per policy of a result signature (see `aggregate`), once per policy.

    A signature is the (policy, verdict) pairs of an event's results; ("r", pairs, (policy, redactions)
    pairs) when it redacted; ("", (policy, verdict, redactions) triples) for an event not in the gateway's shape.
    """
    if not sig:
        return []
    if sig[0] == "":
        triples: tuple = sig[1]
    elif sig[0] == "r":
        triples = tuple((p, v, 0) for p, v in sig[1]) + tuple((p, "", _count(n)) for p, n in sig[2])
    else:
        triples = tuple((p, v, 0) for p, v in sig)
    triples = tuple((_text(p), _text(v), n) for p, v, n in triples if p)  # a None verdict would break the upsert
    seen: dict[str, list] = {}
    for policy, verdict, redactions in triples:
        if not policy:
            continue
        mine = seen.get(policy)
        if mine is None:
            seen[policy] = [verdict, redactions]
            continue
        if _OUTCOME_RANK.get(verdict, 1) > _OUTCOME_RANK.get(mine[0], 1):
            mine[0] = verdict
        mine[1] += redactions
    return [(policy, outcome, redactions) for policy, (outcome, redactions) in seen.items()]


def _add(rows: dict[tuple, list], key: tuple, n: int, redactions: int, hist: lh.Histogram) -> None:
    row = rows.get(key)
    if row is None:
        rows[key] = [n, redactions, dict(hist)]
        return
    row[0] += n
    row[1] += redactions
    lh.merge(row[2], hist)


def write(db: sqlite3.Connection, groups: Groups) -> None:
    """Upsert the rollups of `groups` (inside the caller's transaction)."""
    requests, policies = aggregate(groups)
    for sql, rows in ((_UPSERT_REQUESTS, requests), (_UPSERT_POLICIES, policies)):
        values = [(*key, n, red, lh.encode(hist)) for key, (n, red, hist) in rows.items()]
        width = len(values[0]) if values else 0
        for start in range(0, len(values), _ROWS_PER_UPSERT):
            chunk = values[start:start + _ROWS_PER_UPSERT]
            db.execute(sql.format(", ".join(["(" + ", ".join("?" * width) + ")"] * len(chunk))),
                       [v for row in chunk for v in row])


def oldest_minute(db: sqlite3.Connection) -> int | None:
    """The oldest minute any rollup holds (None without rollups, or without the tables)."""
    try:
        found = [db.execute(f"SELECT MIN(minute) FROM {t}").fetchone()[0] for t in TABLES]
    except sqlite3.OperationalError:
        return None
    found = [m for m in found if m is not None]
    return min(found) if found else None


def delete_before(db: sqlite3.Connection, minute: int) -> int:
    """Delete the rollups of the minutes before `minute` (inside the caller's transaction); return the rows."""
    return sum(db.execute(f"DELETE FROM {t} WHERE minute < ?", (minute,)).rowcount for t in TABLES)


def size_bytes(db: sqlite3.Connection) -> int:
    """Bytes the rollup tables take in the database file (pages, from `dbstat`; a row estimate without it)."""
    try:
        row = db.execute("SELECT SUM(pgsize) FROM dbstat WHERE name IN (?, ?)", TABLES).fetchone()
        return int(row[0] or 0)
    except sqlite3.OperationalError:
        try:
            return sum(64 * db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in TABLES)
        except sqlite3.OperationalError:
            return 0


@dataclass(frozen=True)
class SummaryQuery:
    """A window and the filters rollups can serve; `model`/`provider` match case-insensitive substrings."""

    since: float
    until: float
    slices: int = 24
    verdict: str = ""
    policy: str = ""
    model: str = ""
    provider: str = ""


def summary(db: sqlite3.Connection, q: SummaryQuery) -> dict[str, Any]:
    """Counts and latency over the window's whole minutes (the minute holding `since` included), from rollups.

    With `policy`: the requests that policy ran on, their verdicts and latency, and that policy's own
    row; without: every request, and one row per policy.
    """
    slices = max(1, min(MAX_SLICES, int(q.slices)))
    width = max(1e-9, (q.until - q.since) / slices)
    first, last = int(q.since // 60), int(q.until // 60)
    where, args = ["minute >= ?", "minute <= ?"], [first, last]
    if q.verdict:
        where.append("verdict = ?")
        args.append(q.verdict)
    for column in ("model", "provider"):
        wanted = getattr(q, column)
        if wanted:
            where.append(f"instr(lower({column}), ?) > 0")
            args.append(wanted.lower())
    if q.policy:
        where.append("policy = ?")
        args.append(q.policy)
    clause = " AND ".join(where)
    table = "rollup_policies" if q.policy else "rollup_requests"
    verdicts: dict[str, int] = {}
    series: list[list[Any]] = [[0, {}] for _ in range(slices)]
    total: lh.Histogram = {}
    requests = redactions = 0
    answer: dict[str, Any] = {"since": q.since, "until": q.until, "from": first * 60.0, "slices": slices,
                              "slice_seconds": width, "rollups_since": None}
    try:
        since_row = db.execute("SELECT value FROM meta WHERE key = ?", (SINCE_KEY,)).fetchone()
        rows = db.execute(f"SELECT minute, verdict, requests, redactions, latency FROM {table} "
                          f"WHERE {clause}", args).fetchall()
        policy_rows = db.execute(
            "SELECT policy, SUM(requests), SUM(CASE WHEN outcome = 'block' THEN requests ELSE 0 END), "
            f"SUM(redactions) FROM rollup_policies WHERE {clause} GROUP BY policy", args).fetchall()
    except sqlite3.OperationalError as exc:  # a read-only store from before rollups: nothing counted yet
        if "no such table" not in str(exc):
            raise
        since_row, rows, policy_rows = None, [], []
    for minute, verdict, n, red, latency in rows:
        requests += n
        redactions += red
        verdicts[verdict] = verdicts.get(verdict, 0) + n
        part = series[min(slices - 1, max(0, int((minute * 60 - q.since) // width)))]
        part[0] += n
        lh.add_encoded(part[1], latency)
    for _, hist in series:
        lh.merge(total, hist)
    answer.update(
        rollups_since=float(since_row[0]) if since_row else None,
        requests=requests, redactions=redactions, verdicts=verdicts,
        policies=[{"policy": p, "requests": n, "blocks": b, "redactions": r}
                  for p, n, b, r in sorted(policy_rows, key=lambda row: (-row[1], row[0]))],
        latency={"p50_ms": lh.percentile_ms(total, 0.5), "p99_ms": lh.percentile_ms(total, 0.99),
                 "histogram": lh.as_json(total)},
        series=[{"slice": i, "requests": n, "histogram": lh.as_json(h)} for i, (n, h) in enumerate(series) if n],
        histogram={"base_ms": lh.BASE_MS, "growth": lh.GROWTH, "relative_error": round(lh.RELATIVE_ERROR, 4)},
    )
    return answer
