"""A Git-triggered reload compiles the config once: the embedded agent's compile is what the gateway swaps in.

Real bare repository, the in-process gateway with its embedded sync agent, real HTTP through the
OpenAI SDK. Compiles are counted by wrapping `policies.config.compile_document`, which every
load (agent validation, gateway reload) goes through.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import policies.config
from gateway.control.reload import Reloader
from gateway.control.runtime import Runtime
from sync.agent import SyncAgent, SyncSettings
from sync.repo import Remote
from tests.gitserve import Upstream, config_yaml
from tests.waiting import async_wait_for

CFG = "policy-config.yaml"


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
def upstream(tmp_path: Path) -> Upstream:
    up = Upstream(tmp_path / "remote")
    up.commit({CFG: config_yaml("1.0.0")})
    return up


def test_a_standalone_agent_and_a_watching_gateway_compile_once_each(upstream, tmp_path, compiles):
    """`kt sync run` and `kt gateway run --config <state>/current/...` are two processes: each compiles once."""
    state = tmp_path / "state"
    agent = SyncAgent(SyncSettings(Remote(upstream.url), state, CFG))
    assert agent.sync_once().result == "success"
    path = state / "current" / CFG

    async def main() -> None:
        runtime = Runtime()
        reloader = Reloader(runtime, path)
        reloader.load_initial()
        reloader.start(sighup=False)
        try:
            mark = len(compiles.versions)
            sha = upstream.commit({CFG: config_yaml("2.0.0")})
            assert agent.sync_once().result == "success"
            assert compiles.since(mark) == ["2.0.0"]  # the agent: validation and status from one compile
            await async_wait_for(lambda: runtime.snapshot.revision == sha, timeout=20)
            assert compiles.since(mark) == ["2.0.0", "2.0.0"]  # the gateway's own
        finally:
            await reloader.stop()

    try:
        asyncio.run(main())
    finally:
        agent.release()
