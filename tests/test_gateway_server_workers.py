"""`kt gateway run --workers N`: one port, one metrics view, restarts, signals, sd_notify, one budget."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.gateway_process import GatewayProcess
from tests.gitserve import config_yaml
from tests.kt_process import run_kt
from tests.notify_socket import NotifySocket
from tests.spend_budget import BUDGET_CONFIG, ask
from tests.waiting import wait_for

CONFIG = config_yaml("1.0.0", name="workers")


def start(gateway_process: Callable[..., GatewayProcess], tmp_path: Path, text: str = CONFIG, *args: str,
          env: dict[str, str] | None = None) -> GatewayProcess:
    """A gateway with two workers on `text`, once both serve."""
    config = tmp_path / "policy-config.yaml"
    config.write_text(text)
    gw = gateway_process(config, "--workers", "2", *args, env=env)
    wait_for(lambda: len(live_workers(gw)) == 2, timeout=20)
    return gw


def live_workers(gw: GatewayProcess) -> list[dict]:
    return [w for w in gw.get("/health")[1].get("workers") or () if w.get("ready")]


def test_two_workers_serve_one_port_with_one_metrics_view_and_one_event_store(tmp_path: Path, gateway_process) -> None:
    gw = start(gateway_process, tmp_path)
    workers = live_workers(gw)
    assert len({w["pid"] for w in workers}) == 2 and gw.proc.pid not in {w["pid"] for w in workers}
    assert len({w["revision"] for w in workers}) == 1
    with ThreadPoolExecutor(max_workers=8) as pool:
        assert set(pool.map(lambda _: gw.chat("hi")[0], range(40))) == {200}
    total = '{model="demo-model",provider="mock",route="/v1/chat/completions",status="200",verdict="allow"}'
    wait_for(lambda: gw.metric("keeptrusts_gateway_requests_total", total) == 40, timeout=10)
    assert gw.metric("keeptrusts_gateway_workers") == 2
    text = gw.get("/metrics")[1]
    if shutil.which("promtool"):
        out = subprocess.run(["promtool", "check", "metrics"], input=text.encode(), capture_output=True, timeout=30)
        assert out.returncode == 0, out.stdout + out.stderr
    status = gw.get("/keeptrusts/status")[1]
    assert len(status["workers"]) == 2
    gw.stop()
    out = run_kt("events", "list", "--db", str(tmp_path / "state" / "events.db"), "--limit", "100", "--json")
    assert out.returncode == 0, out.stderr
    events = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    assert len(events) == 40 and len({e["id"] for e in events}) == 40  # every worker's, in one store


def test_a_dead_worker_is_started_again_and_sigterm_drains_all(tmp_path: Path, gateway_process) -> None:
    gw = start(gateway_process, tmp_path)
    victim = live_workers(gw)[0]["pid"]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: len(live_workers(gw)) == 2 and victim not in {w["pid"] for w in live_workers(gw)},
             timeout=20)
    assert gw.metric("keeptrusts_gateway_worker_restarts_total") == 1
    assert "starting it again" in gw.logs()
    assert gw.chat("hi")[0] == 200
    pids = [w["pid"] for w in live_workers(gw)]
    assert gw.stop() == 0
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()


def test_sighup_reloads_every_worker_on_the_same_revision(tmp_path: Path, gateway_process) -> None:
    gw = start(gateway_process, tmp_path, CONFIG, "--no-watch")
    before = {w["revision"] for w in live_workers(gw)}
    (tmp_path / "policy-config.yaml").write_text(CONFIG.replace("1.0.0", "2.0.0"))
    gw.proc.send_signal(signal.SIGHUP)

    def moved() -> bool:
        revisions = {w["revision"] for w in live_workers(gw)}
        return len(live_workers(gw)) == 2 and len(revisions) == 1 and revisions != before

    wait_for(moved, timeout=20)


def test_sd_notify_ready_once_every_worker_serves(tmp_path: Path, gateway_process) -> None:
    notify = NotifySocket()
    try:
        gw = start(gateway_process, tmp_path, env={"NOTIFY_SOCKET": notify.path})
        ready = notify.wait(lambda m: m.get("READY") == "1", "READY=1")
        assert "2 worker(s)" in ready.get("STATUS", "")
        assert len(live_workers(gw)) == 2
        assert sum(1 for m in notify.messages if m.get("READY") == "1") == 1  # the workers' own go to the supervisor
    finally:
        notify.close()


def test_workers_share_one_budget(tmp_path: Path, gateway_process) -> None:
    gw = start(gateway_process, tmp_path, BUDGET_CONFIG)
    with ThreadPoolExecutor(max_workers=10) as pool:
        statuses = list(pool.map(lambda _: ask(gw)[0], range(10)))
    assert statuses.count(200) == 5 and statuses.count(409) == 5


def test_workers_auto_and_invalid(tmp_path: Path) -> None:
    from gateway.supervisor import worker_count

    assert worker_count("auto") == len(os.sched_getaffinity(0))
    assert worker_count("3") == 3
    with pytest.raises(ValueError):
        worker_count("0")
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG)
    out = run_kt("gateway", "run", "--config", str(config), "--workers", "lots")
    assert out.returncode != 0 and "--workers" in out.stderr and "Traceback" not in out.stderr


def test_git_repo_with_workers_one_agent_and_the_webhook_reaches_it(tmp_path: Path, gateway_process) -> None:

    from tests.gitserve import Upstream, config_yaml

    up = Upstream(tmp_path / "remote")
    up.commit({"policy-config.yaml": config_yaml("1.0.0")})
    secret = b"hook-secret"
    gw = gateway_process(None, "--git-repo", up.url, "--sync-interval", "3600", "--workers", "2",
                         env={"KEEPTRUSTS_WEBHOOK_SECRET": secret.decode()}, wait=False)

    def health() -> dict:
        try:
            status, body = gw.get("/health")
        except OSError:
            return {}
        return body if status == 200 else {}

    def versions() -> set[str]:
        return {w.get("revision") or "" for w in health().get("workers") or () if w.get("ready")}

    try:
        wait_for(lambda: len(versions()) == 1 and "" not in versions() and len(health()["workers"]) == 2,
                 timeout=30, message=gw.logs())
        sha = up.commit({"policy-config.yaml": config_yaml("2.0.0")})
        assert gw.push_webhook(secret, {"ref": "refs/heads/main", "after": sha}, event="push") == 202
        wait_for(lambda: versions() == {sha}, timeout=30)  # every worker on the commit the one agent published
        assert gw.logs().count("AgentLocked") == 0
    finally:
        assert gw.stop() == 0


def test_readyz_answers_for_the_whole_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, start_gateway) -> None:
    """The workers share one socket: while one live worker is not ready, the host is not (503, which one)."""
    from tests.gateway_harness import write_config
    from tests.http_wire import Wire, request

    group_dir = tmp_path / "group"
    group_dir.mkdir()
    monkeypatch.setenv("KEEPTRUSTS_GATEWAY_GROUP_DIR", str(group_dir))
    monkeypatch.setenv("KEEPTRUSTS_GATEWAY_WORKER", "0")
    gw = start_gateway(write_config(tmp_path / "c.yaml", [{"id": "m", "provider": "mock", "model": "demo-model"}]))

    def readyz() -> tuple[int, dict]:
        wire = Wire(gw.port)
        wire.send(request("GET", "/readyz", Connection="close"))
        resp = wire.response()
        wire.close()
        return resp.status, resp.json()

    other = group_dir / "worker-1.json"
    other.write_bytes(json.dumps({"index": 1, "ready": False, "revision": None, "in_flight": 0}).encode())
    status, body = readyz()
    assert status == 503 and body["ready"] is False and "[1]" in body["reason"]
    assert body["workers"] == {"ready": 1, "total": 2}
    other.write_bytes(json.dumps({"index": 1, "ready": True, "revision": "r", "in_flight": 0}).encode())
    status, body = readyz()
    assert status == 200 and body["workers"] == {"ready": 2, "total": 2}
