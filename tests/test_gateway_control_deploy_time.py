"""`keeptrusts_config_deploy_seconds`: committer time of a merged commit to a running gateway serving it."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from pathlib import Path

from sync.clock import parse_time
from tests.gitserve import CFG, GIT_ENV, Upstream, config_yaml
from tests.sync_gateway import Gateway
from tests.waiting import wait_for


def sample(url: str, name: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def commit_at(up: Upstream, version: str, committed: int) -> str:
    """Commit a new config with the given committer time and push it."""
    (up.work / CFG).write_text(config_yaml(version))
    env = {**GIT_ENV, "GIT_COMMITTER_DATE": f"@{committed} +0000"}
    for args in (["add", "-A"], ["commit", "--quiet", "-m", f"v{version}"]):
        subprocess.run(["git", *args], cwd=up.work, env=env, check=True, capture_output=True, timeout=60)
    up.push()
    return up.head()


def test_a_merge_is_timed_from_its_commit_to_serving(upstream, tmp_path: Path) -> None:
    gw = Gateway(upstream, tmp_path / "state", "--sync-interval", "0.2")
    count = "keeptrusts_config_deploy_seconds_count"
    try:
        wait_for(lambda: gw.revision() == upstream.head(), timeout=30)
        assert sample(gw.url, count) == 0, "the revision a gateway starts on is not a config change"

        ten_minutes_ago = int(time.time()) - 600
        slow = commit_at(upstream, "2.0.0", ten_minutes_ago)
        wait_for(lambda: gw.revision() == slow, timeout=30)
        wait_for(lambda: sample(gw.url, count) == 1, timeout=30, message="deploy time not observed")
        took = sample(gw.url, "keeptrusts_config_deploy_seconds_sum")
        assert 600 <= took < 700, took
        assert sample(gw.url, 'keeptrusts_config_deploy_seconds_bucket{le="300.0"}') == 0
        assert sample(gw.url, 'keeptrusts_config_deploy_seconds_bucket{le="900.0"}') == 1
        assert parse_time(gw.status()["sync"]["applied_committed_at"]) == ten_minutes_ago

        fast = commit_at(upstream, "3.0.0", int(time.time()))
        wait_for(lambda: gw.revision() == fast, timeout=30)
        wait_for(lambda: sample(gw.url, count) == 2, timeout=30)
        assert sample(gw.url, "keeptrusts_config_deploy_seconds_sum") - took < 60
        assert sample(gw.url, 'keeptrusts_config_deploy_seconds_bucket{le="60.0"}') == 1
    finally:
        gw.stop()
