"""Event store and forwarder: batches to SQLite, queries, retention, delivery through an outage."""

from __future__ import annotations

import asyncio
import os
import time

import openai
import orjson
import pytest
import tornado.httpserver
import tornado.netutil
import tornado.web

from gateway.control.runtime import Runtime
from gateway.events.forwarder import Forwarder, mask_url
from gateway.events.store import EventStore
from gateway.events.times import parse_time
from gateway.events.writer import StoreWriter
from tests.waiting import async_wait_for


def ev(n: int, verdict: str = "allow", ts: float | None = None) -> dict:
    return {"id": f"evt_{n:04d}", "timestamp": ts if ts is not None else time.time(), "verdict": verdict,
            "reason_code": "all_policies_passed", "model": "demo-model", "latency_ms": 1.5}




class Rec:
    """A finished request's record, as the runtime sees one: it only knows its event."""

    made = 0

    def __init__(self, n: int) -> None:
        self.n = n

    def to_event(self) -> dict:
        Rec.made += 1
        return ev(self.n)


def test_records_become_events_in_one_batch_after_the_batch_delay():
    async def main():
        runtime = Runtime()
        seen: list[str] = []
        runtime.observers.append(lambda e: seen.append(e["id"]))
        Rec.made = 0
        for n in range(3):
            runtime.record(Rec(n))
        assert Rec.made == 0 and seen == [] and len(runtime.events) == 0  # nothing on the request path
        await async_wait_for(lambda: len(runtime.events) == 3)
        assert Rec.made == 3 and seen == ["evt_0000", "evt_0001", "evt_0002"]  # observed, then queued, in order
        runtime.record(Rec(3))
        runtime.flush_records()  # at shutdown: at once
        assert seen[-1] == "evt_0003" and len(runtime.events) == 4

    asyncio.run(main())


def test_an_observer_that_raises_costs_no_event(caplog):
    async def main():
        runtime = Runtime()
        seen: list[dict] = []
        runtime.observers[:] = [lambda e: 1 / 0, seen.append]
        runtime.record(Rec(1))
        runtime.record(Rec(2))
        await async_wait_for(lambda: len(runtime.events) == 2)
        assert [e["id"] for e in seen] == ["evt_0001", "evt_0002"]

    asyncio.run(main())
    assert "event observer" in caplog.text and "ZeroDivisionError" in caplog.text


def test_writer_stop_stores_the_batch_it_was_lingering_on(tmp_path):
    async def main():
        runtime = Runtime()
        store = EventStore(tmp_path / "events.db")
        writer = StoreWriter(runtime, store, linger=3600.0)
        writer.start()
        runtime.record_event(ev(1))
        runtime.record_event(ev(2))
        await async_wait_for(lambda: len(runtime.events) == 0)  # taken from the queue, waiting for more
        await writer.stop()
        assert store.count() == 2

    asyncio.run(main())


def test_drain_stores_the_events_of_requests_that_just_finished(tmp_path, start_gateway, monkeypatch):
    from gateway.control import runtime as runtime_module
    from tests.gateway_harness import write_config

    monkeypatch.setattr(runtime_module, "RECORD_BATCH_S", 3600.0)  # only the drain can publish them
    config = write_config(tmp_path / "policy-config.yaml", [{"id": "demo", "provider": "mock", "model": "demo-model"}])
    gw = start_gateway(config, state_dir=tmp_path / "state")
    client = openai.OpenAI(base_url=gw.base_url, api_key="sk-client", max_retries=0)
    chat = client.chat.completions.with_raw_response.create
    ids = [chat(model="demo-model", messages=[{"role": "user", "content": "hi"}]).headers["x-request-id"]
           for _ in range(3)]
    assert len(gw.runtime.events) == 0
    gw.stop()
    stored = EventStore(tmp_path / "state" / "events.db", readonly=True).query(limit=10)
    assert sorted(e["request_id"] for e in stored) == sorted(ids)


def test_parse_time_accepts_durations_rfc3339_and_epoch():
    now = 1_000_000.0
    assert parse_time("5m", now) == now - 300
    assert parse_time("7d", now) == now - 7 * 86400
    assert parse_time("2026-11-27T12:00:00Z") == parse_time("2026-11-27T12:00:00+00:00")
    assert parse_time("12.5") == 12.5
    with pytest.raises(ValueError, match="duration like 5m"):
        parse_time("yesterday")


def test_store_adds_once_queries_and_prunes(tmp_path):
    store = EventStore(tmp_path / "events.db")
    now = time.time()
    assert store.add([ev(1, ts=now - 7200), ev(2, "block", now - 60), ev(3, ts=now)]) == 3
    assert store.add([ev(3, ts=now)]) == 0  # at-least-once upstream of us: ids deduplicate
    assert [e["id"] for e in store.query(limit=2)] == ["evt_0002", "evt_0003"]  # newest two, oldest first
    assert [e["id"] for e in store.query(since=now - 3600)] == ["evt_0002", "evt_0003"]
    assert [e["id"] for e in store.query(verdict="block")] == ["evt_0002"]
    assert [e["id"] for e in store.query(after="evt_0001")] == ["evt_0002", "evt_0003"]
    assert store.query(until=now - 3600)[0]["id"] == "evt_0001"
    assert store.prune(now - 3600) == 1 and store.count() == 2
    readonly = EventStore(tmp_path / "events.db", readonly=True)
    assert len(readonly.query()) == 2


def test_mask_url_hides_credentials():
    assert mask_url("https://user:pw@api.example.com:8443/v1/events") == "https://***@api.example.com:8443/v1/events"


class Receiver(tornado.web.RequestHandler):
    """A control plane that fails the first `fail` requests, then records events."""

    def initialize(self, state: dict) -> None:
        self.state = state

    def post(self) -> None:
        self.state["auth"].add(self.request.headers.get("Authorization"))
        if self.state["fail"] > 0:
            self.state["fail"] -= 1
            self.set_status(503)
            return
        for event in orjson.loads(self.request.body)["events"]:
            self.state["ids"].append(event["id"])


def test_forwarder_delivers_every_event_through_an_outage_and_resumes_from_its_cursor(tmp_path):
    state = {"fail": 10**9, "ids": [], "auth": set()}

    async def main():
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        server = tornado.httpserver.HTTPServer(tornado.web.Application([(r"/v1/events", Receiver, {"state": state})]))
        server.add_sockets(sockets)
        url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
        runtime = Runtime()
        store = EventStore(tmp_path / "events.db")
        writer = StoreWriter(runtime, store, batch=7)
        forwarder = Forwarder(writer, url, "gw-token", batch=7, base_delay=0.02, max_delay=0.1)
        writer.start()
        forwarder.start()
        for n in range(40):
            runtime.record_event(ev(n))
        await async_wait_for(lambda: store.last_seq == 40 and forwarder.failures >= 3, timeout=20)
        assert forwarder.pending == 40 and forwarder.last_error == "HTTP 503"
        state["fail"] = 0  # the control plane recovers
        await async_wait_for(lambda: len(set(state["ids"])) == 40, timeout=20)
        await async_wait_for(lambda: forwarder.pending == 0, timeout=20)
        assert forwarder.failures == 0
        assert state["auth"] == {"Bearer gw-token"}
        await forwarder.stop()
        # a restarted forwarder resumes after its persisted cursor: nothing is sent twice
        sent = len(state["ids"])
        runtime.record_event(ev(99))
        again = Forwarder(writer, url, None, base_delay=0.02)
        again.start()
        await async_wait_for(lambda: "evt_0099" in state["ids"], timeout=20)
        assert len(state["ids"]) == sent + 1
        await again.stop()
        await writer.stop()
        server.stop()

    asyncio.run(main())
    assert sorted(set(state["ids"])) == sorted([f"evt_{n:04d}" for n in range(40)] + ["evt_0099"])


def test_writer_keeps_events_in_memory_while_the_store_is_unwritable_and_counts_overflow(tmp_path, caplog):
    from gateway.control import metrics
    from gateway.events.queue import EventQueue

    async def main():
        runtime = Runtime(events=EventQueue(maxsize=3))
        metrics.bind(runtime=runtime)
        store = EventStore(tmp_path / "events.db")
        writer = StoreWriter(runtime, store)
        real_add = store.add
        broken = {"on": True}

        def add(events):
            if broken["on"]:
                import sqlite3

                raise sqlite3.OperationalError("disk I/O error")
            return real_add(events)

        store.add = add
        writer.start()
        runtime.record_event(ev(1))
        await async_wait_for(lambda: writer.error is not None, timeout=20)
        for n in range(2, 12):  # the writer holds evt 1; the queue takes 3 more; 7 are lost, requests unaffected
            runtime.record_event(ev(n))
        assert runtime.events.dropped == 7
        assert metrics.REGISTRY.get_sample_value("keeptrusts_events_dropped_total", {"reason": "queue_full"}) == 7
        await async_wait_for(lambda: "decision events dropped" in caplog.text, timeout=20)
        broken["on"] = False
        await async_wait_for(lambda: store.count() == 4, timeout=20)
        assert writer.error is None
        await writer.stop()
        metrics.bind()

    asyncio.run(main())


def test_retention_comes_from_audit_logger(tmp_path):
    from gateway.control.reload import load_snapshot
    from gateway.events.writer import retention_days
    from tests.reloading import config

    path = tmp_path / "policy-config.yaml"
    path.write_text(config("1.0.0", retention=7))
    assert retention_days(Runtime(snapshot=load_snapshot(path))) == 7
    no_audit = config("1.0.0").replace("[audit-logger]", "[]")
    no_audit = no_audit.replace("policy:\n  audit-logger: {retention_days: 30}\n", "")
    path.write_text(no_audit)
    assert retention_days(Runtime(snapshot=load_snapshot(path))) == 365
    assert retention_days(Runtime()) == 365


def test_closing_a_store_twice_closes_no_file_of_someone_else(tmp_path):
    store = EventStore(tmp_path / "events.db")
    store.close()
    other = os.open(tmp_path / "other", os.O_RDWR | os.O_CREAT)  # may take the lock's old number
    try:
        store.close()
        os.fstat(other)  # still open
    finally:
        os.close(other)
