"""The gateway's status, drift and age when its config comes from the sync agent's state dir."""

from __future__ import annotations

import asyncio

from gateway.control.ops import Ops
from gateway.control.runtime import Runtime
from sync.agent import SyncAgent, SyncSettings
from sync.repo import Remote
from tests.gitserve import CFG, INVALID_YAML, Upstream, config_yaml


def test_status_reports_the_agent_and_drift_follows_it(tmp_path):
    up = Upstream(tmp_path / "remote")
    first = up.commit({CFG: config_yaml("1.0.0")}, "first")
    state = tmp_path / "state"
    agent = SyncAgent(SyncSettings(Remote(up.url, up.branch, 1), state, CFG))
    agent.acquire()
    assert agent.sync_once().result == "success"

    async def main():
        ops = Ops(Runtime(), str(state / "current" / CFG), state_dir=tmp_path / "events", watch=False)
        ops.load_initial()
        status = ops.status()
        assert status["config"]["revision"] == first and status["config"]["source"] == "git"
        assert status["sync"]["applied_revision"] == first and status["sync"]["branch"] == "main"
        assert status["drift"] == {"drifted": False, "reason": None} and status["age_seconds"] is not None

        second = up.commit({CFG: config_yaml("2.0.0")})
        assert agent.sync_once().result == "success"
        assert ops.status()["drift"] == {"drifted": True, "reason": "pending"}  # published, not yet loaded
        assert (await ops.reloader.reload("test")).result == "ok"
        assert ops.status()["config"]["revision"] == second and ops.drift() == (False, None)

        up.commit({CFG: INVALID_YAML}, "break it")
        assert agent.sync_once().result == "rejected"
        status = ops.status()
        assert status["drift"] == {"drifted": True, "reason": "rejected"}
        assert status["config"]["revision"] == second  # the last good one keeps serving
        assert ops.health()["status"] == "degraded"

    asyncio.run(main())
