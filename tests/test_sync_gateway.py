"""`kt gateway run --git-repo`: the embedded agent end to end, over real processes and real HTTP."""

from __future__ import annotations

import json
import signal
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.gitserve import CFG, config_yaml, dlp_config
from tests.kt_process import clean_env, run_kt
from tests.redis_server import RedisServer
from tests.sync_gateway import SECRET, Gateway
from tests.waiting import wait_for


def test_merge_reaches_the_gateway_by_webhook_and_is_enforced(upstream, tmp_path):
    gw = Gateway(upstream, tmp_path / "state", "--sync-interval", "3600")
    try:
        wait_for(lambda: gw.revision() == upstream.head(), timeout=30)
        assert gw.get("/readyz")[0] == 200
        assert gw.chat_status("status of project-bluebird?") == 200
        sha = upstream.commit({CFG: dlp_config("2.0.0")}, "block bluebird")
        assert gw.push_webhook(SECRET) == 202
        wait_for(lambda: gw.revision() == sha, timeout=30, message="webhook merge did not reach the gateway")
        assert gw.chat_status("status of project-bluebird?") == 409
        assert gw.chat_status("hello") == 200
        status = gw.status()
        assert status["sync"]["applied_revision"] == sha and status["drift"] == {"drifted": False, "reason": None}
        cli = run_kt("sync", "status", "--gateway", gw.url, "--json")
        assert cli.returncode == 0 and json.loads(cli.stdout)["config"]["revision"] == sha
        bad_sig = urllib.request.Request(gw.url + "/keeptrusts/sync/webhook", data=b"{}",
                                         headers={"X-Hub-Signature-256": "sha256=" + "0" * 64})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(bad_sig, timeout=5)
        assert refused.value.code == 401
        reverted = upstream.revert()  # rollback by revert
        gw.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: gw.revision() == reverted, timeout=30)
        assert gw.chat_status("status of project-bluebird?") == 200
    finally:
        gw.stop()


def test_polling_picks_up_a_merge_and_refuses_a_bad_one(upstream, tmp_path):
    gw = Gateway(upstream, tmp_path / "state", "--sync-interval", "0.2")
    try:
        wait_for(lambda: gw.revision() == upstream.head(), timeout=30)
        good = upstream.commit({CFG: dlp_config("2.0.0")})
        wait_for(lambda: gw.revision() == good, timeout=30)
        upstream.commit({CFG: "pack: {name: broken"})
        wait_for(lambda: gw.status()["drift"]["reason"] == "rejected", timeout=30)
        status = gw.status()
        assert status["config"]["revision"] == good and status["sync"]["last_error"]
        assert gw.get("/readyz")[0] == 200 and gw.chat_status("project-bluebird") == 409
    finally:
        gw.stop()


def test_cold_and_warm_start_with_the_remote_down(upstream, tmp_path):
    state = tmp_path / "state"
    away = upstream.bare.with_name("away.git")
    upstream.bare.rename(away)
    gw = Gateway(upstream, state, "--sync-interval", "3600")
    try:  # cold start: nothing published, remote down -> not ready, status says why
        wait_for(lambda: (gw.status().get("sync") or {}).get("last_error"), timeout=30)
        assert gw.get("/readyz")[0] == 503
        assert gw.status()["drift"] == {"drifted": True, "reason": "unreachable"}
        away.rename(upstream.bare)
        gw.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: gw.get("/readyz")[0] == 200, timeout=30)
        assert gw.revision() == upstream.head()
    finally:
        gw.stop()
    upstream.bare.rename(away)
    gw = Gateway(upstream, state, "--sync-interval", "3600")
    try:  # warm start: the last published revision serves at once, age comes from the recorded success
        assert gw.get("/readyz")[0] == 200 and gw.revision() == upstream.head()
        wait_for(lambda: gw.status()["drift"]["reason"] == "unreachable", timeout=30)
        assert gw.chat_status("hello") == 200
    finally:
        gw.stop()


def test_hand_edited_revision_is_refused_and_restored_while_the_head_is_refused(upstream, tmp_path):
    """A hand edit under `revisions/<sha>/` is never served under the Git revision's name: the gateway
    refuses it (drift `modified`, the last good config keeps enforcing) and the agent's next run puts
    the published copy back although the branch head is still refused."""
    good = upstream.commit({CFG: dlp_config("1.0.0")}, "block bluebird")
    state = tmp_path / "state"
    gw = Gateway(upstream, state, "--sync-interval", "3600")
    try:
        wait_for(lambda: gw.revision() == good, timeout=30)
        assert gw.chat_status("status of project-bluebird?") == 409
        upstream.commit({CFG: "pack: {name: broken"}, "bad")
        assert gw.push_webhook(SECRET) == 202
        wait_for(lambda: gw.status()["drift"]["reason"] == "rejected", timeout=30)
        (state / "revisions" / good / CFG).write_text(config_yaml("6.6.6", name="by-hand"))  # no dlp-filter
        wait_for(lambda: (gw.status().get("reload") or {}).get("last_result") == "error", timeout=15,
                 message="the hand edit was loaded (or never noticed)")
        status = gw.status()
        assert f"{CFG} in revision {good[:12]} was modified after publishing" in status["reload"]["last_error"]
        assert status["drift"] == {"drifted": True, "reason": "modified"}
        assert status["config"]["revision"] == good and status["config"]["pack"]["version"] == "1.0.0"
        assert gw.chat_status("status of project-bluebird?") == 409
        assert gw.push_webhook(SECRET) == 202  # the next run: head still refused, publication restored
        wait_for(lambda: gw.status()["drift"]["reason"] == "rejected", timeout=30)
        wait_for(lambda: (gw.status().get("reload") or {}).get("last_result") != "error", timeout=15)
        assert "version: 1.0.0" in (state / "current" / CFG).read_text()
        assert gw.status()["sync"]["last_restored_at"] and gw.chat_status("status of project-bluebird?") == 409
    finally:
        gw.stop()


def test_sigterm_right_after_a_request_stops_a_synced_gateway_at_once(upstream, tmp_path):
    """The drain once hung in the config watcher's stop (a cancel swallowed inside watchfiles' thread
    call) until the process was killed; it happened about every second time, so six tries."""
    for attempt in range(6):
        gw = Gateway(upstream, tmp_path / f"state{attempt}", "--sync-interval", "0.2")
        try:
            wait_for(lambda gw=gw: gw.revision() == upstream.head(), timeout=30)
            assert gw.chat_status("hello") == 200
            gw.proc.send_signal(signal.SIGTERM)
            assert gw.proc.wait(timeout=10) == 0, f"attempt {attempt}: no clean exit"
        finally:
            gw.stop()


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_second_gateway_on_a_locked_state_dir_exits_before_it_touches_a_file(upstream, tmp_path, workers):
    """The first gateway keeps its counters in Redis, so counters.db in the state dir would be the second's."""
    redis = RedisServer(tmp_path / "redis").start()
    state = tmp_path / "state"
    gw = Gateway(upstream, state, "--sync-interval", "3600", "--state-url", redis.url)
    try:
        wait_for(lambda: gw.revision() == upstream.head(), timeout=30)
        before = _files(state)
        tmp = tmp_path / "tmp"  # where a supervisor makes its group dir
        tmp.mkdir()
        second = run_kt("gateway", "run", "--git-repo", upstream.url, "--git-path", CFG, "--state-dir", str(state),
                        "--listen", "127.0.0.1:0", "--workers", workers, "--sync-interval", "3600",
                        env=clean_env(TMPDIR=str(tmp)))
        assert second.returncode != 0
        assert f"another sync agent (pid {gw.proc.pid}) is already running for {state}" in second.stderr
        assert _files(state) == before, "the second gateway created files in the state dir"
        assert not list(tmp.iterdir())
        assert gw.get("/readyz")[0] == 200
    finally:
        gw.stop()
        redis.kill()
