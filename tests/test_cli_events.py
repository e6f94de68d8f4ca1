"""`kt events list` as a subprocess, against a store file and an unreachable gateway."""

from __future__ import annotations

import json
import time

from gateway.events.store import EventStore
from tests.kt_process import run_kt


def test_list_reads_a_store_file_as_a_table_and_as_json(tmp_path):
    db = tmp_path / "events.db"
    store = EventStore(db)
    now = time.time()
    store.add([
        {"id": "evt_old", "timestamp": now - 7200, "verdict": "allow", "reason_code": "all_policies_passed"},
        {"id": "evt_blk", "timestamp": now - 30, "verdict": "block", "reason_code": "dlp_blocked_term",
         "model": "demo-model", "latency_ms": 2.25},
        {"id": "evt_new", "timestamp": now, "verdict": "allow", "reason_code": "all_policies_passed"},
    ])
    store.close()
    out = run_kt("events", "list", "--db", str(db), "--since", "1h")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["TIME", "ID", "VERDICT", "REASON", "MODEL", "LATENCY"]
    assert [line.split()[2] for line in lines[1:]] == ["evt_blk", "evt_new"]
    assert "dlp_blocked_term" in lines[1] and "2.2ms" in lines[1]
    out = run_kt("events", "list", "--db", str(db), "--verdict", "block", "--json")
    assert [json.loads(line)["id"] for line in out.stdout.splitlines()] == ["evt_blk"]
    out = run_kt("events", "list", "--db", str(db), "--limit", "1", "--json")
    assert [json.loads(line)["id"] for line in out.stdout.splitlines()] == ["evt_new"]


def test_bad_input_and_unreachable_gateway_are_clear_errors(tmp_path, closed_port):
    out = run_kt("events", "list", "--db", str(tmp_path / "none.db"), "--since", "yesterday")
    assert out.returncode == 1 and "duration like 5m" in out.stderr and "Traceback" not in out.stderr
    out = run_kt("events", "list", "--gateway", f"http://127.0.0.1:{closed_port}")
    assert out.returncode == 1 and "cannot reach the gateway" in out.stderr and "Traceback" not in out.stderr
    out = run_kt("events", "list", "--db", str(tmp_path / "none.db"))
    assert out.returncode == 1 and "cannot open event store" in out.stderr
