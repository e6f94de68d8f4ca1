"""Per-minute rollups in the event store: exact counts and bounded-error percentiles over windows of far more
than the console's 1,000 newest events, each event counted once, deleted with retention and under the cap,
and a store from before rollups opening and filling from then on. Real SQLite files."""

from __future__ import annotations

import math
import sqlite3
import time

import orjson
import pytest

from gateway.events import latency_histogram as lh
from gateway.events import store as store_module
from gateway.events.rollup import SummaryQuery
from gateway.events.store import EventStore
from gateway.events.times import event_time
from sync.clock import rfc3339
from tests.synthetic_events import POLICIES, expected, synthetic


def _ts(event: dict) -> float:
    return event_time(event)


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def close(estimate: float, exact: float) -> bool:
    return abs(estimate - exact) <= exact * lh.RELATIVE_ERROR + 1e-9


def test_counts_are_exact_and_percentiles_within_the_bucket_error_over_5000_events(tmp_path):
    start = (time.time() // 60 - 120) * 60  # two hours ago, on a minute
    events = synthetic(5000, start, 3600)
    store = EventStore(tmp_path / "events.db")
    for i in range(0, len(events), 500):  # batches, as the writer gives them
        store.add(events[i:i + 500])
    got = store.summary(SummaryQuery(since=start, until=start + 3600, slices=24))
    assert got["rollups_since"] == 0  # a store made with rollups counts every event it holds
    want = expected(events)
    assert got["requests"] == 5000 and got["verdicts"] == want["verdicts"]
    assert {p["policy"]: (p["requests"], p["blocks"], p["redactions"]) for p in got["policies"]} == want["policies"]
    assert got["redactions"] == sum(e["redactions"] for e in events)
    latencies = [e["latency_ms"] for e in events]
    assert close(got["latency"]["p50_ms"], nearest_rank(latencies, 0.5))
    assert close(got["latency"]["p99_ms"], nearest_rank(latencies, 0.99))
    assert sum(s["requests"] for s in got["series"]) == 5000 and len(got["series"]) == 24
    # slice 0: the minutes that start in its first 150 s (a minute is counted whole, in the slice of its start)
    first = [e["latency_ms"] for e in events if _ts(e) // 60 * 60 < start + 150]
    assert got["series"][0]["requests"] == len(first)
    assert close(lh.percentile_ms({int(k): v for k, v in got["series"][0]["histogram"].items()}, 0.99),
                 nearest_rank(first, 0.99))
    # the filters rollups serve: verdict, policy (requests it ran on), model/provider substrings
    blocks = store.summary(SummaryQuery(since=start, until=start + 3600, verdict="block"))
    assert blocks["requests"] == want["verdicts"]["block"] and set(blocks["verdicts"]) == {"block"}
    dlp = store.summary(SummaryQuery(since=start, until=start + 3600, policy="dlp-filter"))
    ran = [e for e in events if any(r["policy"] == "dlp-filter" for r in e["policies"])]
    assert dlp["requests"] == len(ran) and [p["policy"] for p in dlp["policies"]] == ["dlp-filter"]
    assert close(dlp["latency"]["p99_ms"], nearest_rank([e["latency_ms"] for e in ran], 0.99))
    claude = store.summary(SummaryQuery(since=start, until=start + 3600, model="CLAUDE", provider="anthrop"))
    assert claude["requests"] == sum(e["model"] == "claude-3-haiku" and e["provider"] == "anthropic" for e in events)
    # a window is whole minutes: the last half hour
    half = store.summary(SummaryQuery(since=start + 1800, until=start + 3600))
    assert half["requests"] == sum(_ts(e) >= start + 1800 for e in events)
    store.close()


def test_a_retried_batch_and_an_id_twice_are_counted_once(tmp_path):
    start = time.time() - 600
    events = synthetic(300, start, 300)
    store = EventStore(tmp_path / "events.db")
    assert store.add(events[:200]) == 200
    assert store.add(events) == 100  # the first 200 again (a batch retried after a failed checkpoint)
    assert store.add([events[0], {**events[0]}]) == 0
    twice = {**events[0], "id": "evt_twice"}  # a new id twice in one batch: stored and counted once
    assert store.add([twice, {**twice}]) == 1
    got = store.summary(SummaryQuery(since=start - 60, until=time.time()))
    assert got["requests"] == 301 and got["verdicts"] == expected([*events, twice])["verdicts"]
    store.close()


def test_retention_deletes_the_rollups_of_older_minutes(tmp_path):
    now = time.time()
    old, new = synthetic(100, now - 3 * 86400, 600, seed=1), synthetic(50, now - 3600, 600, seed=2)
    store = EventStore(tmp_path / "events.db")
    store.add(old + new)
    assert store.summary(SummaryQuery(since=now - 4 * 86400, until=now))["requests"] == 150
    assert store.prune(now - 86400) == 100
    assert store.summary(SummaryQuery(since=now - 4 * 86400, until=now))["requests"] == 50
    db = sqlite3.connect(tmp_path / "events.db")
    oldest = min(db.execute("SELECT MIN(minute) FROM rollup_requests").fetchone()[0],
                 db.execute("SELECT MIN(minute) FROM rollup_policies").fetchone()[0])
    db.close()
    assert oldest * 60 >= now - 86400 - 60
    store.close()


def test_rollups_count_in_the_cap_and_the_oldest_hours_go_when_over_their_share(tmp_path, monkeypatch):
    now = time.time()
    store = EventStore(tmp_path / "events.db", max_bytes=2 * 1024**2)
    for hour in range(6):  # six hours of one request a minute: rollup rows of 360 minutes
        store.add(synthetic(60, now - (6 - hour) * 3600, 3600, seed=10 + hour))
    total = store.summary(SummaryQuery(since=now - 7 * 3600, until=now))["requests"]
    assert total == 360
    monkeypatch.setattr(store_module, "ROLLUP_SHARE", 0.0)  # any rollup is over its share
    assert store.bound_rollups() >= 6
    assert store.summary(SummaryQuery(since=now - 7 * 3600, until=now))["requests"] == 0
    # with no event left to delete, room for a batch is made from the oldest rollups, not refused
    monkeypatch.setattr(store_module, "ROLLUP_SHARE", 0.125)
    store.add(synthetic(60, now - 3 * 3600, 3600, seed=30))
    store._db.execute("DELETE FROM events")
    assert store._drop_oldest_rollups()
    assert store.summary(SummaryQuery(since=now - 7 * 3600, until=now))["requests"] == 0
    store.close()


OLD_SCHEMA = """
CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, ts REAL NOT NULL,
                     verdict TEXT, body BLOB NOT NULL);
CREATE INDEX events_ts ON events (ts);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def test_a_store_from_before_rollups_opens_and_counts_from_then_on(tmp_path):
    path = tmp_path / "events.db"
    db = sqlite3.connect(path)
    db.executescript(OLD_SCHEMA)
    before = synthetic(20, time.time() - 1800, 60, seed=3)
    db.executemany("INSERT INTO events (id, ts, verdict, body) VALUES (?, ?, ?, ?)",
                   [(e["id"], _ts(e), e["verdict"], orjson.dumps(e)) for e in before])
    db.commit()
    db.close()
    reader = EventStore(path, readonly=True)  # read-only, before any gateway added the tables: no rollups yet
    empty = reader.summary(SummaryQuery(since=time.time() - 3600, until=time.time()))
    assert empty["requests"] == 0 and empty["rollups_since"] is None
    reader.close()
    opened = time.time()
    store = EventStore(path)
    assert [e["id"] for e in store.query(limit=100)] == [e["id"] for e in before]
    after = synthetic(30, time.time() - 60, 30, seed=4)
    store.add(after)
    got = store.summary(SummaryQuery(since=time.time() - 3600, until=time.time()))
    assert got["requests"] == 30 and got["rollups_since"] >= opened - 1
    store.close()


@pytest.mark.parametrize("ms", [0.0, 0.004, 0.01, 0.3, 1.0, 57.3, 1234.5, 9e7, 1e300, float("inf"), float("nan"), -1.0])
def test_a_bucket_stands_for_its_values_within_the_stated_error(ms):
    assert lh.histogram_of([ms]) == {lh.bucket(ms): 1}
    middle = lh.middle_ms(lh.bucket(ms))
    if not ms >= lh.BASE_MS:  # NaN and negatives too
        assert middle == lh.BASE_MS / 2
    elif lh.bucket(ms) < lh.TOP:
        assert abs(middle - ms) <= ms * lh.RELATIVE_ERROR * (1 + 1e-9)
    hist = {3: 1, 9: 200, 60: 70000}
    decoded: dict[int, int] = {}
    lh.add_encoded(decoded, lh.encode(hist))
    assert decoded == hist
    assert lh.merge_encoded(lh.encode(hist), lh.encode({9: 1})) == lh.encode({3: 1, 9: 201, 60: 70000})


def test_events_of_odd_shape_are_stored_and_counted_without_breaking_the_batch(tmp_path):
    now = time.time()
    odd = [{"id": "evt_odd1", "timestamp": rfc3339(now), "verdict": None, "model": ["a", "list"], "redactions": "2",
            "latency_ms": "slow",
            "policies": [{"policy": "dlp-filter", "verdict": None}, "junk", {"verdict": "block"}]},
           {"id": "evt_odd2", "timestamp": rfc3339(now), "verdict": "block", "provider": 7, "redactions": 1,
            "policies": [{"policy": "dlp-filter", "verdict": "block", "redactions": "x"}]},
           {"id": "evt_odd3", "timestamp": rfc3339(now), "verdict": "allow", "policies": "not a list"}]
    no_time = [{"id": f"evt_when{n}", "timestamp": ts, "verdict": "allow"}  # counted now: they name no time
               for n, ts in enumerate(("nan", "inf", "-inf", float("nan"), 1e300, "1e300"))]
    store = EventStore(tmp_path / "events.db")
    assert store.add([*odd, *no_time, *synthetic(10, now - 30, 20)]) == 19
    got = store.summary(SummaryQuery(since=now - 120, until=time.time() + 60))
    assert got["requests"] == 19 and got["verdicts"][""] == 1
    assert {p["policy"] for p in got["policies"]} == {"dlp-filter", *POLICIES}
    store.close()
