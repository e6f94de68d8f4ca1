"""A Git-triggered reload compiles the config once: the embedded agent's compile is what the gateway swaps in.

Real bare repository, the in-process gateway with its embedded sync agent, real HTTP through the
OpenAI SDK. Compiles are counted by wrapping `policies.config.compile_document`, which every
load (agent validation, gateway reload) goes through.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from openai import OpenAI

import policies.config
from gateway.control.reload import Reloader
from gateway.control.runtime import Runtime
from policies import PolicyState
from sync.agent import SyncAgent, SyncResult, SyncSettings
from sync.repo import Remote
from tests.gateway_harness import GatewayThread
from tests.gitserve import CFG, Upstream, config_yaml
from tests.reloading import started
from tests.state_dir import publish
from tests.waiting import async_wait_for, wait_for


class Compiles:
    """Counts `compile_document` calls in this process (any thread), with the pack version compiled."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.versions: list[str] = []
        real = policies.config.compile_document

        def counted(doc, *args, **kwargs):
            self.versions.append(str(doc["pack"]["version"]))
            return real(doc, *args, **kwargs)

        monkeypatch.setattr(policies.config, "compile_document", counted)

    def since(self, mark: int) -> list[str]:
        return self.versions[mark:]


@pytest.fixture
def compiles(monkeypatch: pytest.MonkeyPatch) -> Compiles:
    return Compiles(monkeypatch)


@pytest.fixture
def gateway(upstream: Upstream, tmp_path: Path, start_gateway: Callable[..., GatewayThread]) -> GatewayThread:
    """A gateway with its embedded agent (`kt gateway run --git-repo`), serving the first commit."""
    from gateway.control.gitsync import EmbeddedSync

    sync = EmbeddedSync(SyncSettings(Remote(upstream.url), tmp_path / "state", CFG), interval=3600)
    gw = start_gateway(None, sync=sync, state_dir=tmp_path / "gw")
    wait_for(lambda: served(gw) == upstream.head(), timeout=30)
    return gw


def served(gw: GatewayThread) -> str | None:
    snap = gw.runtime.snapshot
    return snap.revision if snap is not None else None


def chat_revision(gw: GatewayThread) -> str:
    """The revision a real request is served with (X-Keeptrusts-Config-Revision)."""
    client = OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="demo-model", messages=[{"role": "user", "content": "hello"}])
    raw.parse()
    return raw.headers["X-Keeptrusts-Config-Revision"]


def status(gw: GatewayThread) -> dict:
    with urllib.request.urlopen(f"{gw.url}/keeptrusts/status", timeout=10) as resp:
        return json.loads(resp.read())


def sync_now(gw: GatewayThread) -> SyncResult:
    """Trigger the agent (as the webhook does) and wait until that sync has finished."""
    assert gw.gateway is not None and gw.gateway.sync is not None
    scheduler = gw.gateway.sync.scheduler
    before = scheduler.last
    gw.gateway.sync.trigger()
    wait_for(lambda: scheduler.last is not before and not scheduler.busy, timeout=30)
    return scheduler.last


def test_a_commit_that_changes_the_config_is_compiled_once_and_serves(gateway, upstream, compiles):
    mark = len(compiles.versions)
    sha = upstream.commit({CFG: config_yaml("2.0.0")})
    sync_now(gateway)
    wait_for(lambda: served(gateway) == sha, timeout=30)
    assert chat_revision(gateway) == sha
    body = status(gateway)
    assert body["config"]["pack"] == {"name": "sync-test", "version": "2.0.0"}
    assert body["reload"]["last_result"] != "error" and body["drift"]["drifted"] is False
    assert compiles.since(mark) == ["2.0.0"]  # the agent's validation; the gateway swapped that in
    assert sync_now(gateway).result == "noop"  # nothing new: no compile anywhere
    assert compiles.since(mark) == ["2.0.0"]


def test_same_bytes_under_a_new_commit_move_the_revision_with_one_compile(gateway, upstream, compiles):
    first = gateway.runtime.snapshot
    mark = len(compiles.versions)
    sha = upstream.commit({"README.md": "the config is unchanged\n"})
    sync_now(gateway)
    wait_for(lambda: served(gateway) == sha, timeout=30)
    assert chat_revision(gateway) == sha
    assert gateway.runtime.snapshot.config is first.config  # the running compile is kept
    assert compiles.since(mark) == ["1.0.0"]  # the agent validates every commit it publishes


def test_bytes_swapped_after_validation_are_refused_by_the_digest(gateway, upstream, compiles, monkeypatch):
    """A hostile host rewrites the exported file right after the agent validated it: the published
    revision no longer matches its `<sha>.digest`, so the agent's compile is never swapped in."""
    from sync import agent

    good = served(gateway)
    real_digest = agent.content_digest

    def swap_then_digest(root: Path, path: str):  # runs between validation and publish
        (root / path).write_text(config_yaml("6.6.6"))
        return real_digest(root, path)

    monkeypatch.setattr(agent, "content_digest", swap_then_digest)
    mark = len(compiles.versions)
    sha = upstream.commit({CFG: config_yaml("2.0.0")})
    sync_now(gateway)
    wait_for(lambda: gateway.gateway.ops.reloader.last.result == "error", timeout=30)
    last = gateway.gateway.ops.reloader.last
    assert [f.code for f in last.findings] == ["E111"] and "modified after publishing" in last.error
    assert served(gateway) == good and chat_revision(gateway) == good  # the last good config keeps serving
    assert gateway.runtime.snapshot.config.pack.version == "1.0.0"
    assert compiles.since(mark) == ["2.0.0"]  # the agent's; the gateway compiled nothing it refused

    monkeypatch.setattr(agent, "content_digest", real_digest)
    assert sync_now(gateway).restored  # the agent puts the tampered revision back from Git
    wait_for(lambda: served(gateway) == sha, timeout=30)
    assert gateway.runtime.snapshot.config.pack.version == "2.0.0"
    assert compiles.since(mark) == ["2.0.0"]  # what the agent validated, swapped in once the digest matches


def test_a_standalone_agent_and_a_watching_gateway_compile_once_each(upstream, tmp_path, compiles):
    """`kt sync run` and `kt gateway run --config <state>/current/...` are two processes: each compiles once."""
    state = tmp_path / "state"
    agent = SyncAgent(SyncSettings(Remote(upstream.url), state, CFG))
    assert agent.sync_once().result == "success"
    path = state / "current" / CFG

    async def main() -> None:
        async with started(path, sighup=False) as (runtime, _):
            mark = len(compiles.versions)
            sha = upstream.commit({CFG: config_yaml("2.0.0")})
            assert agent.sync_once().result == "success"
            assert compiles.since(mark) == ["2.0.0"]  # the agent: validation and status from one compile
            await async_wait_for(lambda: runtime.snapshot.revision == sha, timeout=20)
            assert compiles.since(mark) == ["2.0.0", "2.0.0"]  # the gateway's own

    try:
        asyncio.run(main())
    finally:
        agent.release()


def test_only_the_agents_compile_of_the_very_published_bytes_is_taken(tmp_path, compiles):
    """Taken: same sha256 as the bytes on disk that matched `<sha>.digest`, same `PolicyState`. Compiled
    by the reload itself: other bytes, another `PolicyState`, a plain file (no published digest)."""
    from gateway.control.handover import Handover

    state = tmp_path / "state"
    publish(state, "a" * 40, config_yaml("1.0.0"))
    path = state / "current" / CFG
    other = tmp_path / "other.yaml"
    other.write_text(config_yaml("6.6.6"))
    runtime = Runtime()
    handover = Handover()
    handover.policy_state = runtime.policy_state

    def load(at: Path, offered: Path | None, policy_state: PolicyState | None = None) -> str:
        """Offer the agent's compile of `offered` (if any), load `at`: who compiled what runs."""
        handover.policy_state = policy_state or runtime.policy_state
        if offered is not None:
            handover.load(offered)
        mark = len(compiles.versions)
        reloader = Reloader(runtime, at)
        reloader.handover = handover
        snap = reloader.load_initial()
        assert snap.config.source == str(at)
        return "reload" if compiles.since(mark) else "agent"

    assert load(path, other) == "reload"  # other bytes
    assert runtime.snapshot.config.pack.version == "1.0.0"
    assert load(path, path, PolicyState()) == "reload"  # compiled against counters the gateway does not use
    assert load(other, other) == "reload"  # a plain file has no digest that vouches for it
    assert load(path, path) == "agent"
    assert runtime.snapshot.config.pack.version == "1.0.0" and runtime.snapshot.revision == "a" * 40
    assert load(path, None) == "reload"  # the offer was taken: the slot is empty
