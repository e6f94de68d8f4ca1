"""Scheduling: triggers collapse into one run that applies the newest head, backoff, max failures; webhooks."""

from __future__ import annotations

import hashlib
import hmac
import random
import threading
from pathlib import Path

import pytest

from sync import webhook
from sync.agent import SyncAgent, SyncResult, SyncSettings
from sync.repo import Remote
from sync.scheduler import SyncScheduler, next_delay
from sync.status import read_status
from tests.gitserve import CFG, config_yaml
from tests.waiting import wait_for


class GatedAgent(SyncAgent):
    """An agent whose first run holds after syncing until released (so triggers arrive mid-run)."""

    def __init__(self, settings: SyncSettings) -> None:
        super().__init__(settings)
        self.runs: list[SyncResult] = []
        self.in_first_run = threading.Event()
        self.release_first = threading.Event()

    def sync_once(self) -> SyncResult:
        result = super().sync_once()
        self.runs.append(result)
        if len(self.runs) == 1:
            self.in_first_run.set()
            assert self.release_first.wait(30)
        return result


def test_trigger_burst_applies_only_the_newest_head(upstream, tmp_path: Path):
    state = tmp_path / "state"
    agent = GatedAgent(SyncSettings(Remote(upstream.url), state, CFG))
    agent.acquire()
    sched = SyncScheduler(agent, interval=3600)
    sched.start()
    try:
        wait_for(agent.in_first_run.is_set, timeout=30)
        heads = [upstream.commit({CFG: config_yaml(f"{i}.0.0")}) for i in range(2, 6)]
        for _ in range(25):
            sched.trigger()
        agent.release_first.set()
        wait_for(lambda: len(agent.runs) == 2 and read_status(state)["applied_revision"] == heads[-1], timeout=30)
        assert agent.runs[1].result == "success" and agent.runs[1].head == heads[-1]
        names = [p.name for p in (state / "revisions").iterdir()]
        assert not any(n.startswith(h) for h in heads[:-1] for n in names)  # intermediate heads never published
        wait_for(lambda: not sched.running, timeout=5)
        next_run = sched.next_run_at()
        assert next_run is not None and (next_run - __import__("time").time()) > 3000
        sched.trigger()  # an idle agent runs a trigger at once
        wait_for(lambda: len(agent.runs) == 3, timeout=30)
        assert agent.runs[2].result == "noop"
    finally:
        agent.release_first.set()
        sched.stop()


def test_polling_picks_up_commits_and_max_failures_stops(upstream, tmp_path: Path):
    state = tmp_path / "state"
    agent = SyncAgent(SyncSettings(Remote(upstream.url), state, CFG))
    agent.acquire()
    sched = SyncScheduler(agent, interval=0.05, max_failures=3, max_backoff=0.1)
    sched.start()
    try:
        sha = upstream.commit({CFG: config_yaml("2.0.0")})
        wait_for(lambda: (read_status(state) or {}).get("applied_revision") == sha, timeout=30)
        upstream.bare.rename(upstream.bare.with_name("gone.git"))
        assert sched.done.wait(20)
        assert sched.failed and read_status(state)["consecutive_failures"] == 3
    finally:
        sched.stop()


def test_backoff_grows_with_jitter_and_is_capped():
    rng = random.Random(1)
    ok = SyncResult("success")
    assert all(54 <= next_delay(ok, 60, 600, rng) <= 66 for _ in range(100))
    rejected = SyncResult("rejected", consecutive_failures=7)
    assert next_delay(rejected, 60, 600, rng) <= 66  # a refused commit: the remote is fine, keep polling
    delays = [next_delay(SyncResult("error", consecutive_failures=n), 10, 100, rng) for n in range(1, 9)]
    assert 5 <= delays[0] <= 10 and 10 <= delays[1] <= 20 and 20 <= delays[2] <= 40
    assert all(50 <= d <= 100 for d in delays[4:])


SECRET = b"hook-secret"
BODY = b'{"ref": "refs/heads/main", "after": "abc"}'


def test_github_signature():
    good = "sha256=" + hmac.new(SECRET, BODY, hashlib.sha256).hexdigest()
    assert webhook.verify(SECRET, {"X-Hub-Signature-256": good}, BODY)
    assert webhook.verify(SECRET, {"x-hub-signature-256": good}, BODY)
    assert not webhook.verify(SECRET, {"X-Hub-Signature-256": good}, BODY + b" ")
    assert not webhook.verify(b"other", {"X-Hub-Signature-256": good}, BODY)
    assert not webhook.verify(SECRET, {"X-Hub-Signature-256": good.replace("sha256=", "sha1=")}, BODY)
    assert not webhook.verify(SECRET, {}, BODY)


def test_gitlab_token():
    assert webhook.verify(SECRET, {"X-Gitlab-Token": "hook-secret"}, BODY)
    assert not webhook.verify(SECRET, {"X-Gitlab-Token": "hook-secreT"}, BODY)
    assert not webhook.verify(SECRET, {"X-Gitlab-Token": ""}, BODY)


def test_payload_branch_is_only_a_hint():
    assert webhook.concerns_branch(BODY, "main")
    assert not webhook.concerns_branch(b'{"ref": "refs/heads/dev"}', "main")
    assert webhook.concerns_branch(b'{"zen": "ping"}', "main") and webhook.concerns_branch(b"not json", "main")


def test_webhook_secret_sources(tmp_path, monkeypatch):
    monkeypatch.delenv(webhook.SECRET_ENV, raising=False)
    assert webhook.load_secret() is None
    monkeypatch.setenv(webhook.SECRET_ENV, "from-env")
    assert webhook.load_secret() == b"from-env"
    f = tmp_path / "secret"
    f.write_text("from-file\n")
    assert webhook.load_secret(str(f)) == b"from-file"
    with pytest.raises(webhook.WebhookSecretError, match="cannot read"):
        webhook.load_secret(str(tmp_path / "missing"))


class CountingAgent(SyncAgent):
    """Counts the syncs that started."""

    def __init__(self, settings: SyncSettings) -> None:
        super().__init__(settings)
        self.started: list[float] = []

    def sync_once(self) -> SyncResult:
        self.started.append(__import__("time").monotonic())
        return super().sync_once()


def test_trigger_debounce_leading_run_trailing_run_and_max_wait(upstream, tmp_path: Path):
    import time
    agent = CountingAgent(SyncSettings(Remote(upstream.url), tmp_path / "state", CFG))
    agent.acquire()
    sched = SyncScheduler(agent, interval=3600, quiet=0.3, max_wait=0.8)
    sched.start(first_delay=3600)
    try:
        t0 = time.monotonic()
        sched.trigger()  # idle: runs at once
        wait_for(lambda: len(agent.started) == 1, timeout=10)
        assert agent.started[0] - t0 < 0.5
        for _ in range(10):  # a short burst: one trailing run after 0.3 s of quiet
            sched.trigger()
        wait_for(lambda: len(agent.started) == 2 and not sched.running, timeout=10)
        burst_end = time.monotonic()
        stream_end = burst_end + 2.0
        while time.monotonic() < stream_end:  # a steady stream, never quiet: max_wait still lets runs through
            sched.trigger()
            time.sleep(0.02)  # the stream's rate, not a synchronisation
        during = [t for t in agent.started if burst_end < t <= stream_end]
        assert 2 <= len(during) <= 6, len(during)
        wait_for(lambda: not sched.busy, timeout=10)
        assert len(agent.started) - 2 - len(during) <= 1  # at most the one trailing run after the stream
    finally:
        sched.stop()
