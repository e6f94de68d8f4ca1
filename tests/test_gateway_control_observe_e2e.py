"""End to end over a real `kt gateway run` process: hot reload under traffic, refusal, symlink
flip, SIGHUP, events through kill -9 and a control-plane outage, admin auth, metrics, `kt events`."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading

import orjson
import pytest
import tornado.httpserver
import tornado.ioloop
import tornado.netutil
import tornado.web

from tests.gitserve import config_yaml
from tests.kt_process import run_kt
from tests.state_dir import publish
from tests.waiting import wait_for

ALLOW = config_yaml("1.0.0", name="e2e")
BLOCK = ALLOW.replace("1.0.0", "2.0.0").replace(
    "chain: [audit-logger]", "chain: [dlp-filter, audit-logger]"
).replace("policy:\n", "policy:\n  dlp-filter: {blocked_terms: [project-bluebird], action: block}\n")
INVALID = ALLOW.replace("chain: [audit-logger]", "chain: [audit-logger, no-such-kind]")
PROMPT = "tell me about project-bluebird"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def write_atomic(path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_fifty_reloads_under_a_steady_stream_of_requests(tmp_path, gateway_process):
    path = tmp_path / "policy-config.yaml"
    path.write_text(ALLOW)
    gw = gateway_process(path)
    expected = {sha(ALLOW): 200, sha(BLOCK): 409}
    seen: list[tuple[int, str]] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            status, headers, _ = gw.chat(PROMPT)
            seen.append((status, headers.get("X-Keeptrusts-Config-Revision", "")))

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    try:
        for i in range(50):
            text = BLOCK if i % 2 == 0 else ALLOW
            if i % 4 < 2:
                write_atomic(path, text)  # rename over the file
            else:
                with open(path, "r+") as fh:  # edit in place
                    fh.truncate(0)
                    fh.write(text)
            mark = len(seen)
            wait_for(lambda mark=mark, text=text: any(rev == sha(text) for _, rev in seen[mark:]), timeout=1.0,
                     message=f"reload {i}: revision did not move within 1 s")
    finally:
        stop.set()
        thread.join(timeout=20)
    assert len(seen) > 50
    wrong = [(status, rev[:12]) for status, rev in seen if expected.get(rev) != status]
    assert not wrong, f"{len(wrong)} responses did not match the config in force: {wrong[:5]}"
    assert gw.metric("keeptrusts_config_reloads_total", '{result="ok"}') >= 50


def test_invalid_config_is_refused_whole_and_visible(tmp_path, gateway_process):
    path = tmp_path / "policy-config.yaml"
    path.write_text(ALLOW)
    gw = gateway_process(path)
    write_atomic(path, INVALID)
    wait_for(lambda: gw.get("/keeptrusts/status")[1]["reload"]["last_result"] == "error", timeout=10)
    status = gw.get("/keeptrusts/status")[1]
    assert "no-such-kind" in status["reload"]["last_error"] and status["reload"]["findings"]
    assert status["drift"] == {"drifted": True, "reason": "reload_failed"}
    assert status["config"]["revision"] == sha(ALLOW)
    code, headers, _ = gw.chat(PROMPT)  # the old config keeps serving
    assert code == 200 and headers["X-Keeptrusts-Config-Revision"] == sha(ALLOW)
    assert gw.metric("keeptrusts_config_drift", '{reason="reload_failed"}') == 1
    assert gw.metric("keeptrusts_config_reloads_total", '{result="error"}') >= 1
    assert gw.get("/health")[1]["status"] == "degraded"
    refused = wait_for(lambda: [ln for ln in gw.log_lines() if ln.get("msg", "").startswith("config reload refused")])
    assert refused[0]["level"] == "error" and refused[0]["findings"][0]["code"]
    write_atomic(path, BLOCK)
    wait_for(lambda: gw.chat(PROMPT)[0] == 409, timeout=10)
    assert gw.get("/keeptrusts/status")[1]["drift"] == {"drifted": False, "reason": None}


def test_a_symlink_flip_of_current_reloads_with_the_git_revision(tmp_path, gateway_process):
    state = tmp_path / "sync-state"
    commit_a, commit_b = "a" * 40, "b" * 40
    publish(state, commit_a, ALLOW)
    gw = gateway_process(state / "current" / "policy-config.yaml")
    code, headers, _ = gw.chat(PROMPT)
    assert code == 200 and headers["X-Keeptrusts-Config-Revision"] == commit_a
    publish(state, commit_b, BLOCK)
    wait_for(lambda: gw.chat(PROMPT)[1]["X-Keeptrusts-Config-Revision"] == commit_b, timeout=10)
    assert gw.chat(PROMPT)[0] == 409
    config = gw.get("/keeptrusts/status")[1]["config"]
    assert (config["revision"], config["source"], config["sha256"]) == (commit_b, "git", sha(BLOCK))


def test_sighup_reloads_when_watching_is_off(tmp_path, gateway_process):
    path = tmp_path / "policy-config.yaml"
    path.write_text(ALLOW)
    gw = gateway_process(path, "--no-watch")
    write_atomic(path, BLOCK)
    gw.signal(signal.SIGHUP)
    wait_for(lambda: gw.chat(PROMPT)[0] == 409, timeout=10)
    assert gw.get("/keeptrusts/status")[1]["reload"]["last_trigger"] == "sighup"
    write_atomic(path, ALLOW)
    code = gw.request("POST", "/keeptrusts/config/reload")[0]
    assert code == 200 and gw.chat(PROMPT)[0] == 200


def kt(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return run_kt(*args, env={**os.environ, **(env or {})})


def test_events_acknowledged_by_the_store_survive_kill_9(tmp_path, gateway_process):
    path = tmp_path / "policy-config.yaml"
    path.write_text(ALLOW)
    gw = gateway_process(path)
    request_ids = [gw.chat(f"hello {n}")[1]["X-Request-Id"] for n in range(20)]
    wait_for(lambda: gw.metric("keeptrusts_events_stored_total") >= 20, timeout=10)
    gw.kill9()
    out = kt("events", "list", "--db", str(tmp_path / "state" / "events.db"), "--json", "--limit", "1000")
    assert out.returncode == 0, out.stderr
    stored = [json.loads(line) for line in out.stdout.splitlines()]
    assert {e["request_id"] for e in stored} >= set(request_ids)
    assert all("hello" not in line for line in out.stdout.splitlines())  # never the prompt text


class Receiver(tornado.web.RequestHandler):
    def initialize(self, state: dict) -> None:
        self.state = state

    def post(self) -> None:
        self.state["auth"].add(self.request.headers.get("Authorization"))
        if self.state["failing"]:
            self.set_status(503)
            return
        self.state["events"].extend(orjson.loads(self.request.body)["events"])


@pytest.fixture
def receiver():
    """A control plane on its own thread: `state["failing"]` decides whether it answers 503."""
    state = {"failing": True, "events": [], "auth": set()}
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    loops: list[tornado.ioloop.IOLoop] = []

    def serve() -> None:
        import asyncio

        asyncio.set_event_loop(asyncio.new_event_loop())
        server = tornado.httpserver.HTTPServer(tornado.web.Application([(r"/v1/events", Receiver, {"state": state})]))
        server.add_sockets(sockets)
        loops.append(tornado.ioloop.IOLoop.current())
        loops[0].start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    wait_for(lambda: loops)
    state["url"] = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
    yield state
    loops[0].add_callback(loops[0].stop)
    thread.join(timeout=10)


def test_a_receiver_that_fails_then_recovers_gets_every_event(tmp_path, gateway_process, receiver):
    path = tmp_path / "policy-config.yaml"
    path.write_text(ALLOW)
    gw = gateway_process(path, env={"KEEPTRUSTS_API_URL": receiver["url"], "KEEPTRUSTS_GATEWAY_TOKEN": "gw-tok"})
    request_ids = {gw.chat(f"n{n}")[1]["X-Request-Id"] for n in range(10)}
    backlog = '{stage="submission"}'
    wait_for(lambda: gw.metric("keeptrusts_events_pending", backlog) >= 10, timeout=10)  # rises
    wait_for(lambda: gw.metric("keeptrusts_events_submission_failures_total") >= 1, timeout=10)
    receiver["failing"] = False
    wait_for(lambda: {e["request_id"] for e in receiver["events"]} >= request_ids, timeout=30)
    wait_for(lambda: gw.metric("keeptrusts_events_pending", backlog) == 0, timeout=10)  # falls
    assert gw.metric("keeptrusts_events_submitted_total") >= 10
    assert receiver["auth"] == {"Bearer gw-tok"}
    assert "gw-tok" not in gw.logs()


def test_admin_token_guards_admin_endpoints_and_metrics_pass_promtool(tmp_path, gateway_process):
    path = tmp_path / "policy-config.yaml"
    path.write_text(BLOCK)
    gw = gateway_process(path, env={"KEEPTRUSTS_ADMIN_TOKEN": "adm-s3cret"})
    assert gw.chat(PROMPT)[0] == 409 and gw.chat("hello")[0] == 200
    for admin_path in ("/keeptrusts/status", "/keeptrusts/config", "/keeptrusts/events"):
        code, body = gw.get(admin_path, admin=False)
        assert code == 401 and body["error"]["code"] == "invalid_admin_token"
        assert gw.get(admin_path)[0] == 200
    assert gw.request("POST", "/keeptrusts/config/reload", admin=False)[0] == 401
    for open_path in ("/healthz", "/readyz", "/health", "/metrics"):
        assert gw.get(open_path, admin=False)[0] == 200
    _, config = gw.get("/keeptrusts/config")
    assert config["config"]["policy"]["dlp-filter"]["blocked_terms"] == ["project-bluebird"]
    # a request's metrics follow its response within the record batch (gateway.control.runtime.RECORD_BATCH_S)
    text = wait_for(lambda: next((t for t in [gw.get("/metrics")[1]] if "duration_seconds_bucket" in t), None))
    for name in ("keeptrusts_gateway_requests_total", "keeptrusts_gateway_request_duration_seconds_bucket",
                 "keeptrusts_gateway_policy_evaluation_seconds_bucket", "keeptrusts_config_info",
                 "keeptrusts_config_age_seconds", "keeptrusts_events_pending", "keeptrusts_gateway_in_flight_requests"):
        assert name in text
    assert 'verdict="block"' in text and 'policy="dlp-filter",result="block"' in text
    if shutil.which("promtool"):
        out = subprocess.run(["promtool", "check", "metrics"], input=text.encode(), capture_output=True, timeout=30)
        assert out.returncode == 0, out.stdout.decode() + out.stderr.decode()


def test_kt_events_list_and_tail_against_a_running_gateway(tmp_path, gateway_process):
    path = tmp_path / "policy-config.yaml"
    path.write_text(BLOCK)
    env = {"KEEPTRUSTS_ADMIN_TOKEN": "adm"}
    gw = gateway_process(path, env=env)
    blocked = gw.chat(PROMPT)[1]["X-Request-Id"]
    allowed = gw.chat("hello")[1]["X-Request-Id"]
    wait_for(lambda: gw.metric("keeptrusts_events_stored_total") >= 2, timeout=10)
    out = kt("events", "list", "--gateway", gw.url, "--json", env=env)
    assert out.returncode == 0, out.stderr
    assert [json.loads(line)["request_id"] for line in out.stdout.splitlines()] == [blocked, allowed]
    out = kt("events", "list", "--gateway", gw.url, "--verdict", "block", "--since", "1h", env=env)
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["TIME", "ID", "VERDICT", "REASON", "MODEL", "LATENCY"] and len(lines) == 2
    assert " block " in lines[1] and "demo-model" in lines[1]
    assert "refused the admin token" in kt("events", "list", "--gateway", gw.url).stderr

    tail = subprocess.Popen([sys.executable, "-m", "kt", "events", "tail", "--gateway", gw.url, "--json",
                             "--interval", "0.1"], stdout=subprocess.PIPE, text=True, env={**os.environ, **env})
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.extend(iter(tail.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        wait_for(lambda: any(blocked in line for line in got), timeout=20)
        later = gw.chat("hello again")[1]["X-Request-Id"]
        wait_for(lambda: any(later in line for line in got), timeout=20)
    finally:
        tail.send_signal(signal.SIGINT)
        assert tail.wait(timeout=20) == 0
    assert sum(later in line for line in got) == 1
