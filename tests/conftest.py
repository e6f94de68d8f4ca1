"""Shared fixtures. Append new fixtures below; keep each small and documented."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.fake_upstream import FakeUpstream


@pytest.fixture
def fake_upstream() -> Iterator[FakeUpstream]:
    """The test upstream on a free loopback port (own thread and IOLoop); `.base_url` for OpenAI SDKs."""
    fake = FakeUpstream().start()
    yield fake
    fake.stop()


@pytest.fixture
def test_kinds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Register the test-only policy kinds (test-term, test-boom, test-tool) for one test."""
    from policies.kinds import KINDS
    from tests.gateway_harness import TEST_KINDS

    for name, cls in TEST_KINDS.items():
        monkeypatch.setitem(KINDS, name, cls)


@pytest.fixture
def start_gateway(tmp_path: Any) -> Iterator[Any]:
    """`start_gateway(config_path, **settings)` -> a running in-process `GatewayThread`; all stopped after.

    The event store goes to a fresh `state_dir` under `tmp_path` unless the test passes one."""
    from tests.gateway_harness import GatewayThread

    started: list[GatewayThread] = []

    def start(config_path: Any, **settings: Any) -> GatewayThread:
        settings.setdefault("state_dir", tmp_path / f"state-{len(started)}")
        gw = GatewayThread(config_path, **settings).start()
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()


@pytest.fixture(autouse=True)
def _kt_state_in_tmp(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test (and every `kt` subprocess it starts) keeps its state dir under `tmp_path`, never in ~."""
    monkeypatch.setenv("KEEPTRUSTS_STATE_DIR", str(tmp_path / "kt-state"))
