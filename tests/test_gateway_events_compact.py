"""Compact event storage: events read back byte for byte as before compression (golden JSON, built
from the store of commit 384bb02), old plain-JSON rows stay readable, and a bench event costs at
most 400 bytes on disk."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import orjson

from bench.event_samples import sample_events
from gateway.events.store import EventStore

GOLDEN = orjson.loads((Path(__file__).parent / "data" / "events_golden.json").read_bytes())


def read_back(store: EventStore) -> list[str]:
    listed = store.query(limit=1000)
    assert listed == [event for _, event in store.pending(0, 1000)]
    return [orjson.dumps(event).decode() for event in listed]


def test_events_read_back_exactly_as_the_store_before_compression_gave_them(tmp_path):
    store = EventStore(tmp_path / "events.db")
    store.add(GOLDEN["written"])
    assert read_back(store) == GOLDEN["read_back_bytes"]
    assert store.policy_names() == GOLDEN["policy_names"]
    with contextlib.closing(sqlite3.connect(tmp_path / "events.db")) as db:  # the file as written
        body = db.execute("SELECT body FROM events LIMIT 1").fetchone()[0]
    assert body[:1] == b"\x01"  # compressed


def test_rows_written_before_compression_read_back_identical(tmp_path):
    path = tmp_path / "events.db"
    EventStore(path).close()
    db = sqlite3.connect(path)  # rows as the store before compression wrote them: plain JSON bodies
    with db:
        for n, event in enumerate(GOLDEN["written"]):
            db.execute("INSERT INTO events (id, ts, verdict, body) VALUES (?, ?, ?, ?)",
                       (event["id"], 1765000000.0 + n, event.get("verdict"), orjson.dumps(event)))
    db.close()
    store = EventStore(path, readonly=True)
    assert read_back(store) == GOLDEN["read_back_bytes"]
    assert store.policy_names() == GOLDEN["policy_names"]


def test_a_bench_event_costs_at_most_400_bytes_on_disk(tmp_path):
    store = EventStore(tmp_path / "events.db", max_bytes=1024**3)
    events = list(sample_events(20_000, seed=5))  # not the dictionary's training seed
    for start in range(0, len(events), 500):
        store.add(events[start:start + 500])
    with contextlib.closing(sqlite3.connect(tmp_path / "events.db")) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    per_event = (tmp_path / "events.db").stat().st_size / len(events)
    assert per_event <= 400, per_event
