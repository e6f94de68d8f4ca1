"""Shared fixtures. Append new fixtures below; keep each small and documented."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import pytest

from tests.fake_upstream import FakeUpstream

if TYPE_CHECKING:
    from tests.gateway_harness import GatewayThread
    from tests.gateway_process import GatewayProcess
    from tests.gitserve import Upstream


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


class _Stoppable(Protocol):
    def stop(self) -> object: ...


S = TypeVar("S", bound=_Stoppable)


def _stopped_after(start: Callable[..., S]) -> Iterator[Callable[..., S]]:
    """A fixture's body: `start(n, ...)` (n: how many it started before) for the test, every one stopped after."""
    started: list[S] = []

    def tracked(*args: Any, **kw: Any) -> S:
        started.append(start(len(started), *args, **kw))
        return started[-1]

    yield tracked
    for thing in started:
        thing.stop()


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[Callable[..., GatewayThread]]:
    """`start_gateway(config_path, **settings)` -> a running in-process `GatewayThread`; all stopped after.

    The event store goes to a fresh `state_dir` under `tmp_path` unless the test passes one."""
    from tests.gateway_harness import GatewayThread

    def start(n: int, config_path: Any, **settings: Any) -> GatewayThread:
        settings.setdefault("state_dir", tmp_path / f"state-{n}")
        return GatewayThread(config_path, **settings).start()

    yield from _stopped_after(start)


@pytest.fixture
def gateway_process(tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    """`gateway_process(config, *args, state=None, **kw)` -> a ready `kt gateway run` subprocess
    (`tests.gateway_process.GatewayProcess`, `kw` as it takes them); every one is stopped after the test.

    The state dir is `state` if given, else `tmp_path / "state"` for the test's first gateway and
    `tmp_path / "state-N"` for the next ones."""
    from tests.gateway_process import GatewayProcess

    def start(n: int, config: Path | None, *args: str, state: Path | None = None, **kw: Any) -> GatewayProcess:
        return GatewayProcess(config, state or tmp_path / (f"state-{n}" if n else "state"), *args, **kw)

    yield from _stopped_after(start)


@pytest.fixture
def upstream(tmp_path: Path) -> Upstream:
    """A Git remote (`tests.gitserve.Upstream`) whose first commit holds `CFG` at version 1.0.0."""
    from tests.gitserve import CFG, Upstream, config_yaml

    up = Upstream(tmp_path / "remote")
    up.commit({CFG: config_yaml("1.0.0")}, "first")
    return up


@pytest.fixture(autouse=True)
def _kt_state_in_tmp(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test (and every `kt` subprocess it starts) keeps its state dir under `tmp_path`, never in ~."""
    monkeypatch.setenv("KEEPTRUSTS_STATE_DIR", str(tmp_path / "kt-state"))


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port where nothing listens (connections are refused), held for the test (`tests.ports`)."""
    from tests.ports import closed_port

    with closed_port() as port:
        yield port
