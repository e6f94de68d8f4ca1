"""The event store's bound on disk (--events-max-size): order of sacrifice, outages, a full disk."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from gateway.control import metrics
from gateway.control.runtime import Runtime
from gateway.events.disk import file_bytes
from gateway.events.store import CURSOR_KEY, MAX_BYTES_KEY, EventStore
from gateway.events.times import parse_time
from gateway.events.writer import StoreWriter
from tests.waiting import async_wait_for

MIB = 1024**2


def ev(n: int) -> dict:
    """An event of about 1.5 KB, about 750 bytes stored (random hex, as ids and hashes are, compresses 2:1)."""
    return {"id": f"evt_{n:010d}", "event_type": "decision", "timestamp": "2026-12-06T01:00:00.000Z",
            "verdict": "allow", "prompt_sha256": os.urandom(700).hex()}


def seqs(store: EventStore) -> list[int]:
    return [seq for seq, _ in store.pending(0, store.count())]


def test_a_capped_store_fills_under_load_stays_under_its_cap_and_evicts_delivered_first(tmp_path):
    store = EventStore(tmp_path / "events.db", max_bytes=2 * MIB, forwarding=True)
    assert store.get_meta(MAX_BYTES_KEY) == str(2 * MIB)
    n = 0
    for _ in range(20):  # ~3 MB stored: past the cap, nothing delivered yet
        store.add([ev(n + i) for i in range(200)])
        n += 200
        assert store.size_bytes() <= 2 * MIB
    assert store.dropped > 0 and store.evicted == 0  # undelivered go only when nothing else is left
    kept = seqs(store)
    delivered = kept[len(kept) // 2]  # the control plane acknowledged the older half
    store.set_meta(CURSOR_KEY, str(delivered))
    undelivered = [s for s in kept if s > delivered]
    dropped = store.dropped
    store.add([ev(n + i) for i in range(100)])  # needs room: the delivered half pays
    assert store.dropped == dropped and store.evicted > 0
    assert set(undelivered) <= set(seqs(store))
    assert store.size_bytes() <= 2 * MIB
    assert store.count() + store.evicted + store.dropped == n + 100


def test_without_a_control_plane_the_oldest_go_first_and_none_counts_as_dropped(tmp_path):
    store = EventStore(tmp_path / "events.db", max_bytes=MIB, forwarding=False)
    for b in range(10):
        store.add([ev(b * 100 + i) for i in range(100)])
        assert store.size_bytes() <= MIB
    assert store.dropped == 0 and store.evicted > 0
    assert seqs(store) == list(range(1001 - store.count(), 1001))  # a contiguous newest tail


def test_an_outage_longer_than_the_cap_holds_is_survived_with_the_counts_right(tmp_path):
    metrics.EVENTS_DROPPED_DISK.value = 0
    store = EventStore(tmp_path / "events.db", max_bytes=2 * MIB, forwarding=True)

    async def main() -> None:
        runtime = Runtime()
        writer = StoreWriter(runtime, store, batch=50, linger=0)
        writer.start()
        for n in range(5000):  # ~7.5 MB while the control plane is unreachable (the cursor stays at 0)
            runtime.record_event(ev(n))
            if n % 500 == 0:
                await asyncio.sleep(0)
        await async_wait_for(lambda: store.count() + store.dropped == 5000 and runtime_dropped() == store.dropped,
                             timeout=60)
        await writer.stop()

    asyncio.run(main())
    assert store.size_bytes() <= 2 * MIB
    assert runtime_dropped() == store.dropped > 0
    assert store.evicted == 0
    assert store.query(limit=1)[0]["id"] == "evt_0000004999"  # the newest are kept


def runtime_dropped() -> float:
    return metrics.EVENTS_DROPPED_DISK.value


def test_metrics_show_the_store_size_its_cap_and_disk_full_drops(tmp_path):
    store = EventStore(tmp_path / "events.db", max_bytes=3 * MIB)
    runtime = Runtime()
    metrics.bind(runtime=runtime, store_size=lambda: (store.size_bytes(), store.max_bytes))
    metrics.EVENTS_DROPPED_DISK.value = 3
    try:
        get = metrics.REGISTRY.get_sample_value
        assert get("keeptrusts_events_store_max_bytes") == 3 * MIB
        assert 0 < get("keeptrusts_events_store_bytes") == store.size_bytes()
        assert get("keeptrusts_events_dropped_total", {"reason": "disk_full"}) == 3
        assert get("keeptrusts_events_dropped_total", {"reason": "queue_full"}) == 0
    finally:
        metrics.bind()


@pytest.fixture
def tiny_fs(tmp_path):
    """A 4 MB tmpfs (root only; skipped where mount is not permitted)."""
    mount = tmp_path / f"fs-{uuid.uuid4().hex[:8]}"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip() or done.returncode}")
    yield Path(mount)
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_loses_no_batch_silently(tiny_fs, caplog):
    caplog.set_level(logging.INFO)
    metrics.EVENTS_DROPPED_DISK.value = 0
    store = EventStore(tiny_fs / "events.db", forwarding=True)  # the default cap: far more than the disk
    total = 9000  # ~6.5 MB stored onto 4 MB

    async def main() -> None:
        runtime = Runtime()
        writer = StoreWriter(runtime, store, batch=100, linger=0)
        writer.start()
        for n in range(total):
            runtime.record_event(ev(n))
            if n % 200 == 0:
                await async_wait_for(lambda: len(runtime.events) < 2000, timeout=60)
        await async_wait_for(lambda: store.count() + store.dropped + store.evicted == total
                             and not writer.holding and not len(runtime.events), timeout=60)
        assert runtime.events.dropped == 0  # nothing lost in memory: the batch waited for room
        await writer.stop()

    asyncio.run(main())
    assert store.dropped > 0 and runtime_dropped() == store.dropped
    assert "disk full" in caplog.text and "undelivered decision events dropped" in caplog.text
    assert store.query(limit=1)[0]["id"] == f"evt_{total - 1:010d}"
    store.close()


def test_doctor_warns_when_the_store_is_over_80_percent_of_its_cap(tmp_path):
    from kt.doctor import state_dir_check

    store = EventStore(tmp_path / "events.db", max_bytes=MIB)
    [check] = state_dir_check(str(tmp_path))
    assert check.status == "ok" and "MiB cap" in check.detail
    for b in range(16):  # ~2.4 MB of events, ~1.2 MB compressed: at the cap
        store.add([ev(b * 100 + i) for i in range(100)])
    store.close()
    [check] = state_dir_check(str(tmp_path))
    assert check.status == "warn" and "of its cap" in check.detail, check


def test_kt_gateway_run_takes_the_cap_from_its_env_and_refuses_one_too_small(tmp_path, gateway_process):
    import signal

    from tests import EXAMPLE_CONFIG
    from tests.kt_process import run_kt

    config = str(EXAMPLE_CONFIG)
    small = run_kt("gateway", "run", "--config", config, "--events-max-size", "10KiB",
                   env={**os.environ, "KEEPTRUSTS_STATE_DIR": str(tmp_path)})
    out, err = small.stdout, small.stderr
    assert small.returncode != 0 and "--events-max-size" in out + err and "at least 1MiB" in out + err
    gw = gateway_process(None, "--config", config, env={"KEEPTRUSTS_EVENTS_MAX_SIZE": "3MiB"}, timeout=15)
    text = gw.get("/metrics")[1]
    values = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert float(values["keeptrusts_events_store_max_bytes"]) == 3 * MIB
    assert 0 < float(values["keeptrusts_events_store_bytes"]) < 3 * MIB
    assert float(values['keeptrusts_events_dropped_total{reason="disk_full"}']) == 0
    store = EventStore(gw.state_dir / "events.db", readonly=True)
    assert store.get_meta(MAX_BYTES_KEY) == str(3 * MIB)  # what kt doctor compares against
    gw.signal(signal.SIGINT)
    assert gw.proc.wait(timeout=20) == 0


class PeakSize:
    """The largest size on disk of the store at `path`, sampled as fast as a thread can, while in a `with`."""

    def __init__(self, path: Path) -> None:
        self.path, self.peak, self._stop = path, 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, file_bytes(self.path))

    def __enter__(self) -> PeakSize:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_two_writers_of_one_store_keep_it_under_its_cap_together(tmp_path):
    """--workers: each worker's writer has its own connection to the one file; they take turns, and
    the WAL is checkpointed before it runs past its share (peaks were 0.7-29 % over the cap before)."""
    stores = [EventStore(tmp_path / "events.db", max_bytes=2 * MIB, forwarding=True) for _ in range(2)]

    def write(store: EventStore, base: int) -> None:
        for b in range(15):
            store.add([ev(base + b * 100 + i) for i in range(100)])

    threads = [threading.Thread(target=write, args=(s, n * 1_000_000)) for n, s in enumerate(stores)]
    with PeakSize(tmp_path / "events.db") as size:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert 0 < size.peak <= 2 * MIB
    assert sum(s.dropped for s in stores) > 0
    assert stores[0].count() + sum(s.dropped + s.evicted for s in stores) == 3000


WRITER = """
import json, os, sys
from gateway.events.store import CURSOR_KEY, EventStore
path, index = sys.argv[1], int(sys.argv[2])
store = EventStore(path, max_bytes=2 * 1024**2, forwarding=True)

def say(what):
    sys.stdout.write(json.dumps(what) + "\\n")
    sys.stdout.flush()

def write(first, batches):
    for b in range(first, first + batches):
        store.add([{"id": f"evt_{index}_{b:04d}_{i:03d}", "event_type": "decision", "verdict": "allow",
                    "timestamp": "2026-12-06T01:00:00.000Z", "prompt_sha256": os.urandom(700).hex()}
                   for i in range(100)])

say("open")
for line in sys.stdin:
    step = line.split()
    if step[0] == "write":
        write(int(step[1]), int(step[2]))
    elif step[0] == "ack":  # the control plane is back: the forwarder sends every stored event, it acknowledges
        store.set_meta(CURSOR_KEY, str(store.pending(0, 10**6)[-1][0]))
    say({"evicted": store.evicted, "dropped": store.dropped})
"""


def test_three_writer_processes_through_an_outage_backlog_keep_the_store_under_its_cap(tmp_path):
    """--workers 3 and a control-plane outage: three processes fill one store past its cap with
    undelivered events (dropped oldest first, counted), then the control plane acknowledges them and
    the writers go on (delivered ones evicted, none dropped); the store is under its cap at every
    moment, and every event is kept, evicted or counted as dropped."""
    path = tmp_path / "events.db"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(n)], text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=Path(__file__).parent.parent)
             for n in range(3)]

    def step(targets: list[subprocess.Popen], line: str) -> list[dict]:
        for proc in targets:
            proc.stdin.write(line + "\n")
            proc.stdin.flush()
        return [json.loads(proc.stdout.readline()) for proc in targets]

    try:
        assert [json.loads(proc.stdout.readline()) for proc in procs] == ["open"] * 3
        with PeakSize(path) as size:
            outage = step(procs, "write 0 8")  # 2,400 events, ~1.8 MB stored: past what the cap leaves
            step(procs[:1], "ack")
            after = step(procs, "write 8 3")  # 900 more: the delivered ones make room
        for proc in procs:
            proc.stdin.close()
            assert proc.wait(timeout=30) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert 0 < size.peak <= 2 * MIB
    dropped, evicted = sum(r["dropped"] for r in after), sum(r["evicted"] for r in after)
    assert sum(r["dropped"] for r in outage) == dropped > 0  # the backlog outgrew the cap; none dropped after
    assert evicted > 0 and sum(r["evicted"] for r in outage) == 0
    store = EventStore(path, readonly=True)
    assert store.count() + dropped + evicted == 3 * 11 * 100


def test_disk_full_drops_are_logged_at_most_once_a_minute_and_all_counted(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="kt.gateway.events")
    metrics.EVENTS_DROPPED_DISK.value = 0
    store = EventStore(tmp_path / "events.db")
    writer = StoreWriter(Runtime(), store)
    for now, dropped in ((100.0, 5), (110.0, 3), (159.0, 1), (161.0, 2)):
        store.dropped += dropped
        writer.count_room(now=now)
    lines = [r for r in caplog.records if "undelivered decision events dropped" in r.getMessage()]
    assert [r.dropped for r in lines] == [5, 6]  # at 100 s, then at 161 s the 6 since
    assert metrics.EVENTS_DROPPED_DISK.value == 11


HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(600)  # holds the lock until killed
"""


def test_a_writer_killed_while_it_holds_the_lock_stops_no_other_and_loses_no_batch(tmp_path):
    """The writer lock is an flock(2): while another process holds it, a batch waits in memory (the
    store answers as a busy database would, the writer retries); once the holder is killed -9 the
    kernel releases the lock and the batch goes in."""
    store = EventStore(tmp_path / "events.db", max_bytes=2 * MIB, lock_timeout=0.2)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "events.db-lock")],
                              stdout=subprocess.PIPE, text=True)

    async def main() -> None:
        runtime = Runtime()
        writer = StoreWriter(runtime, store, batch=50, linger=0)
        writer.start()
        try:
            assert holder.stdout.readline() == "held\n"
            for n in range(10):
                runtime.record_event(ev(n))
            await async_wait_for(lambda: "locked by another writer" in (writer.error or ""), timeout=10)
            assert store.count() == 0 and writer.holding == 10
            holder.kill()
            await async_wait_for(lambda: store.count() == 10 and writer.error is None, timeout=20)
        finally:
            await writer.stop()

    try:
        asyncio.run(main())
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait()
    assert store.dropped == 0


def test_retention_pruning_a_full_store_and_handing_its_pages_back_stays_under_the_cap(tmp_path):
    """Retention deleting half of a store at its cap, then the vacuum that gives the pages back: both
    go in steps checkpointed between, so the WAL never holds their pages at once (peaks were 22-48 %
    over the cap when each was one transaction)."""
    store = EventStore(tmp_path / "events.db", max_bytes=4 * MIB)
    old, new = "2026-01-01T00:00:00.000Z", "2026-12-01T00:00:00.000Z"
    n = 0
    while not store.evicted:  # at the cap, old and new events interleaved in the file
        store.add([{**ev(n + i), "timestamp": old if n // 100 % 2 else new} for i in range(100)])
        n += 100
    full = store.size_bytes()
    with PeakSize(tmp_path / "events.db") as size:
        removed = store.prune(parse_time(old) + 1)
        store.vacuum()
    assert removed > 0 and store.count() + removed + store.evicted == n
    assert 0 < size.peak <= 4 * MIB
    assert store.size_bytes() < full * 0.75  # the pages went back to the file system
    assert all(e["timestamp"] == new for e in store.query(limit=10**6))
