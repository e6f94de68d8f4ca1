"""`kt sync` as real subprocesses: daemon, triggers, signals, --once, status, kill -9 and a full disk."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from sync.publish import current_dir
from sync.status import read_status
from tests.gitserve import CFG, INVALID_YAML, Upstream, config_yaml
from tests.kt_process import run_kt
from tests.waiting import wait_for

KT = [sys.executable, "-m", "kt"]


def start_agent(up: Upstream, state: Path, *extra: str, path: str = CFG, **kw) -> subprocess.Popen:
    return subprocess.Popen([*KT, "sync", "run", "--repo", up.url, "--path", path, "--state-dir", str(state), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **kw)


def applied(state: Path) -> str | None:
    return (read_status(state) or {}).get("applied_revision")


def test_daemon_trigger_and_clean_exit(upstream, tmp_path):
    state = tmp_path / "state"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(20)
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify.sock")}
    proc = start_agent(upstream, state, "--interval", "3600", env=env)
    try:
        wait_for(lambda: applied(state) == upstream.head(), timeout=30)
        message = ""
        while "READY=1" not in message:
            message = notify.recv(4096).decode()
        assert "READY=1" in message and f"applied {upstream.head()[:12]}" in message  # systemd Type=notify
        sha = upstream.commit({CFG: config_yaml("2.0.0")})
        now = run_kt("sync", "now", "--state-dir", str(state))
        assert now.returncode == 0, now.stderr
        wait_for(lambda: applied(state) == sha, timeout=20, message="kt sync now did not trigger a sync")
        sha3 = upstream.commit({CFG: config_yaml("3.0.0")})
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: applied(state) == sha3, timeout=20, message="SIGHUP did not trigger a sync")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert not (state / "sync.pid").exists()
    finally:
        proc.kill()
        proc.wait()
        notify.close()
    gone = run_kt("sync", "now", "--state-dir", str(state))
    assert gone.returncode == 1 and "no sync agent is running" in gone.stderr


def test_polling_interval_picks_up_a_merge(upstream, tmp_path):
    state = tmp_path / "state"
    proc = start_agent(upstream, state, "--interval", "0.2")
    try:
        wait_for(lambda: applied(state) == upstream.head(), timeout=30)
        sha = upstream.commit({CFG: config_yaml("2.0.0")})
        wait_for(lambda: applied(state) == sha, timeout=30)
        second = start_agent(upstream, state, "--once")
        assert second.wait(timeout=30) == 1 and "already running" in second.stderr.read()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_once_exit_codes_and_status_output(upstream, tmp_path):
    state = tmp_path / "state"
    args = ["sync", "run", "--repo", upstream.url, "--state-dir", str(state), "--once"]
    assert run_kt(*args).returncode == 0
    good = upstream.head()
    bad = upstream.commit({CFG: INVALID_YAML})
    refused = run_kt(*args)
    assert refused.returncode == 1 and "refused" in refused.stderr
    out = run_kt("sync", "status", "--state-dir", str(state), "--json")
    data = json.loads(out.stdout)
    assert set(data) >= {"config", "sync", "age_seconds", "drift"}
    assert data["sync"]["applied_revision"] == good and data["sync"]["attempted_revision"] == bad
    assert data["drift"] == {"drifted": True, "reason": "rejected"}
    assert data["config"]["revision"] == good and data["config"]["pack"]["version"] == "1.0.0"
    human = run_kt("sync", "status", "--state-dir", str(state))
    assert human.returncode == 0 and "drifted: rejected" in human.stdout and "E001" in human.stdout
    missing = run_kt("sync", "status", "--state-dir", str(tmp_path / "nothing"))
    assert missing.returncode == 1 and "no sync status" in missing.stderr
    usage = run_kt("sync", "run", "--repo", upstream.url, "--state-dir", str(state), "--path", "../etc/passwd",
                   "--once")
    assert usage.returncode == 1 and "relative" in usage.stderr and "Traceback" not in usage.stderr


def test_max_failures_exits_non_zero(tmp_path):
    state = tmp_path / "state"
    proc = run_kt("sync", "run", "--repo", str(tmp_path / "missing.git"), "--state-dir", str(state),
                  "--interval", "0.05", "--max-failures", "2")
    assert proc.returncode == 1 and "giving up after 2" in proc.stderr
    assert read_status(state)["consecutive_failures"] == 2 and not (state / "current").exists()


def versions(state: Path) -> set[str]:
    live = current_dir(state)
    assert live is not None, "current must always point at a complete revision"
    return {line for f in sorted((live / "conf").iterdir()) for line in f.read_text().splitlines()
            if line.startswith("pack:")}


def reached(point: str, proc: subprocess.Popen, state: Path, head: str) -> bool:
    """True once the agent got to `point` for `head` (or died)."""
    if proc.poll() is not None:
        return True
    names = [p.name for p in (state / "revisions").iterdir()]
    live = current_dir(state)
    flipped = live is not None and live.name == head
    if point == "export":  # or later: a loaded machine may not see the short-lived temp dir
        return any(n.startswith(".tmp-") for n in names) or head in names or flipped
    if point == "install":
        return head in names or flipped
    return flipped


@pytest.mark.parametrize("point", ["export", "install", "flip"])
def test_kill9_leaves_old_or_new_never_a_mix(upstream, tmp_path, point):
    """Kill the agent as soon as each step is seen on disk; `current` is always one whole revision."""

    def tree(v: int) -> dict[str, str]:
        return {f"conf/p{i:03}.yaml": config_yaml(f"{v}.0.0") for i in range(100)}

    upstream.commit(tree(1))
    state = tmp_path / "state"
    once = ["sync", "run", "--repo", upstream.url, "--path", "conf", "--state-dir", str(state), "--once"]
    assert run_kt(*once).returncode == 0
    committed = {upstream.head()}
    for v in (2, 3):
        head = upstream.commit(tree(v))
        committed.add(head)
        proc = start_agent(upstream, state, "--interval", "3600", path="conf")
        wait_for(lambda p=proc, h=head: reached(point, p, state, h), timeout=30, interval=0.0005)
        proc.kill()
        proc.wait()
        assert len(versions(state)) == 1  # one version across all files: never a mix
        assert current_dir(state).name in committed
        rerun = run_kt(*once)
        assert rerun.returncode == 0, rerun.stderr
        assert applied(state) == head
        assert versions(state) == {f"pack: {{name: sync-test, version: {v}.0.0, enabled: true}}"}
        leftovers = [p for p in [*state.iterdir(), *(state / "revisions").iterdir()] if p.name.startswith(".tmp-")]
        assert leftovers == []


def test_full_state_dir_keeps_the_old_revision(upstream, tmp_path):
    state = tmp_path / "state"
    args = ["sync", "run", "--repo", upstream.url, "--state-dir", str(state), "--once"]
    assert run_kt(*args).returncode == 0
    before = os.readlink(state / "current")
    upstream.commit({CFG: config_yaml("2.0.0") + "#" * 9000 + "\n"})  # compresses to a small git object

    def small_disk() -> None:  # files may not grow past 8 KB: git's small objects fit, the exported config does not
        resource.setrlimit(resource.RLIMIT_FSIZE, (8000, 8000))

    full = run_kt(*args, preexec_fn=small_disk)
    assert full.returncode == 1 and "cannot write the state directory" in full.stderr, full.stderr
    assert os.readlink(state / "current") == before and "1.0.0" in (state / "current" / CFG).read_text()
    assert not [p for p in (state / "revisions").iterdir() if p.name.startswith(".tmp-")]
    st = read_status(state)
    assert st["error_kind"] == "publish" and st["applied_revision"] != upstream.head()
    assert run_kt(*args).returncode == 0 and applied(state) == upstream.head()


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_state_dir_keeps_the_old_revision(upstream, tmp_path):
    state = tmp_path / "state"
    args = ["sync", "run", "--repo", upstream.url, "--state-dir", str(state), "--once"]
    assert run_kt(*args).returncode == 0
    before = os.readlink(state / "current")
    upstream.commit({CFG: config_yaml("2.0.0")})
    (state / "revisions").chmod(0o555)
    try:
        assert run_kt(*args).returncode == 1
        assert os.readlink(state / "current") == before
    finally:
        (state / "revisions").chmod(0o755)


@pytest.fixture
def admin_answer():
    """A loopback HTTP server that answers every GET with the (status, body) put in `answer`."""
    import http.server
    import threading

    answer: dict = {"status": 200, "body": b"{}"}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(answer["status"])
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer["body"])))
            self.end_headers()
            self.wfile.write(answer["body"])

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    answer["url"] = f"http://127.0.0.1:{server.server_address[1]}"
    yield answer
    server.shutdown()
    server.server_close()


def test_status_from_a_gateway_says_what_to_fix(admin_answer, closed_port):
    url = admin_answer["url"]
    admin_answer.update(status=401, body=b'{"error": {"message": "bad token"}}')
    r = run_kt("sync", "status", "--gateway", url)
    assert r.returncode == 1 and f"{url} refused the admin token: set KEEPTRUSTS_ADMIN_TOKEN" in r.stderr
    admin_answer.update(status=503, body=b'{"error": {"type": "unavailable", "message": "no config loaded"}}')
    r = run_kt("sync", "status", "--gateway", url)
    assert r.returncode == 1 and f"{url} answered 503: no config loaded" in r.stderr
    closed = f"http://127.0.0.1:{closed_port}"
    r = run_kt("sync", "status", "--gateway", closed)
    assert r.returncode == 1 and f"cannot reach the gateway at {closed} (" in r.stderr
    assert "is `kt gateway run` up?" in r.stderr and "Traceback" not in r.stderr
