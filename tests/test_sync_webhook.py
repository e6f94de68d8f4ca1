"""`POST /keeptrusts/sync/webhook` over real HTTP: signatures, triggers, storms (the embedded agent)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import tornado.web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from gateway.control.gitsync import WEBHOOK_PATH, EmbeddedSync, webhook_routes
from sync.agent import SyncSettings
from sync.repo import Remote
from sync.status import read_status
from tests.gitserve import CFG, GitHttpServer, config_yaml, push_signature
from tests.waiting import wait_for

SECRET = b"webhook-secret"


class Server:
    """A Tornado app with only the webhook route, on its own loop thread."""

    def __init__(self, sync: EmbeddedSync) -> None:
        self.loop = asyncio.new_event_loop()
        sockets = bind_sockets(0, "127.0.0.1")
        self.port = sockets[0].getsockname()[1]

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            server = HTTPServer(tornado.web.Application(webhook_routes(sync)))
            server.add_sockets(sockets)
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def post(self, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{WEBHOOK_PATH}", data=body, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def env(upstream, tmp_path: Path):
    sync = EmbeddedSync(SyncSettings(Remote(upstream.url), tmp_path / "state", CFG), interval=3600,
                        webhook_secret=SECRET)
    sync.start()
    server = Server(sync)
    wait_for(lambda: (read_status(sync.settings.state_dir) or {}).get("applied_revision") == upstream.head(),
             timeout=30)
    yield upstream, sync, server
    server.stop()
    sync.stop()


def github(body: bytes, secret: bytes = SECRET, delivery: str | None = None) -> dict[str, str]:
    return {"X-Hub-Signature-256": push_signature(secret, body), "X-GitHub-Event": "push",
            "Content-Type": "application/json", "X-GitHub-Delivery": delivery or str(uuid.uuid4())}


def no_sync_due(sync: EmbeddedSync) -> bool:
    """Nothing runs and the next run is the far-away poll: no trigger is pending."""
    next_run = sync.scheduler.next_run_at()
    return not sync.scheduler.running and next_run is not None and next_run > time.time() + 3000


def applied(sync: EmbeddedSync) -> str | None:
    return (read_status(sync.settings.state_dir) or {}).get("applied_revision")


def test_github_push_triggers_a_sync(env):
    up, sync, server = env
    sha = up.commit({CFG: config_yaml("2.0.0")})
    body = json.dumps({"ref": "refs/heads/main", "after": sha}).encode()
    assert server.post(body, github(body)) == (202, {"triggered": True})
    wait_for(lambda: applied(sync) == sha, timeout=30)
    assert "2.0.0" in sync.config_path.read_text()


def test_gitlab_token_triggers_a_sync(env):
    up, sync, server = env
    sha = up.commit({CFG: config_yaml("2.0.0")})
    body = json.dumps({"object_kind": "push", "ref": "refs/heads/main"}).encode()
    status, _ = server.post(body, {"X-Gitlab-Token": SECRET.decode(), "X-Gitlab-Event": "Push Hook"})
    assert status == 202
    wait_for(lambda: applied(sync) == sha, timeout=30)


def test_wrong_or_missing_signature_is_refused(env):
    up, sync, server = env
    before = applied(sync)
    up.commit({CFG: config_yaml("2.0.0")})
    body = b'{"ref": "refs/heads/main"}'
    status, answer = server.post(body, github(body, b"wrong-secret"))
    assert status == 401 and answer["error"]["code"] == "invalid_signature"
    assert server.post(body, {"X-Gitlab-Token": "nope"})[0] == 401
    assert server.post(body, {})[0] == 401
    assert SECRET.decode() not in json.dumps(answer)
    # A trigger schedules the job for "now" before the answer is sent: none was.
    next_run = sync.scheduler.next_run_at()
    assert not sync.scheduler.running and next_run is not None and next_run > time.time() + 3000
    assert applied(sync) == before


def test_other_branch_and_ping_do_not_trigger(env):
    _, _, server = env
    body = b'{"ref": "refs/heads/feature"}'
    assert server.post(body, github(body)) == (202, {"triggered": False, "reason": "push to another branch"})
    ping = b'{"zen": "Keep it logically awesome."}'
    headers = {**github(ping), "X-GitHub-Event": "ping"}
    assert server.post(ping, headers) == (200, {"triggered": False, "reason": "ping"})


def test_webhook_storm_applies_only_the_newest_head(env):
    up, sync, server = env
    heads = [up.commit({CFG: config_yaml(f"{i}.0.0")}) for i in range(2, 7)]
    body = b'{"ref": "refs/heads/main"}'
    for _ in range(30):
        assert server.post(body, github(body))[0] == 202
    wait_for(lambda: applied(sync) == heads[-1], timeout=30)
    names = {p.name for p in (sync.settings.state_dir / "revisions").iterdir()}
    assert not names & set(heads[:-1])


def test_webhook_disabled_without_secret(upstream, tmp_path):
    sync = EmbeddedSync(SyncSettings(Remote(upstream.url), tmp_path / "state", CFG), interval=3600)
    server = Server(sync)
    try:
        status, answer = server.post(b"{}", {"X-Gitlab-Token": "x"})
        assert status == 404 and "KEEPTRUSTS_WEBHOOK_SECRET" in answer["error"]["message"]
    finally:
        server.stop()


def test_replayed_delivery_is_answered_but_triggers_nothing(env):
    up, sync, server = env
    sha = up.commit({CFG: config_yaml("2.0.0")})
    body = json.dumps({"ref": "refs/heads/main", "after": sha}).encode()
    delivery = str(uuid.uuid4())
    assert server.post(body, github(body, delivery=delivery)) == (202, {"triggered": True})
    wait_for(lambda: applied(sync) == sha and no_sync_due(sync), timeout=30)
    runs_before = sync.scheduler.last
    replay = server.post(body, github(body, delivery=delivery))
    assert replay == (200, {"triggered": False, "duplicate": True, "reason": "duplicate delivery"})
    assert no_sync_due(sync) and sync.scheduler.last is runs_before  # nothing scheduled, nothing ran
    assert server.post(body, github(body, b"wrong", delivery=str(uuid.uuid4())))[0] == 401
    gitlab = {"X-Gitlab-Token": SECRET.decode(), "X-Gitlab-Event": "Push Hook", "X-Gitlab-Event-UUID": delivery}
    assert server.post(body, gitlab)[0] == 202  # the same id under GitLab's header is another delivery
    wait_for(lambda: no_sync_due(sync), timeout=30)
    assert server.post(body, gitlab)[1].get("duplicate") is True and no_sync_due(sync)


def test_signed_burst_runs_one_fetch_in_flight_plus_one_trailing(upstream, tmp_path: Path):
    http = GitHttpServer(upstream.root)
    sync = EmbeddedSync(SyncSettings(Remote(http.url(upstream.bare.name)), tmp_path / "state", CFG), interval=3600,
                        webhook_secret=SECRET)
    sync.start()
    server = Server(sync)
    try:
        wait_for(lambda: applied(sync) == upstream.head() and no_sync_due(sync), timeout=30)
        before = http.fetches
        head = upstream.commit({CFG: config_yaml("2.0.0")})
        body = json.dumps({"ref": "refs/heads/main", "after": head}).encode()
        started = time.monotonic()

        def deliver(i: int) -> int:  # 200 deliveries spread over 2 s (the load's shape, not a synchronisation)
            time.sleep(max(0.0, started + i * 0.01 - time.monotonic()))
            return server.post(body, github(body))[0]

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(deliver, range(200)))
        assert answers.count(202) == 200 and time.monotonic() - started < 10
        wait_for(lambda: applied(sync) == head and no_sync_due(sync), timeout=30)
        assert 1 <= http.fetches - before <= 2, f"{http.fetches - before} fetches for one burst"
    finally:
        server.stop()
        sync.stop()
        http.stop()
