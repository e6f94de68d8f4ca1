"""Helpers for the tests of the sync agent: an agent holding its state dir, the config it serves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sync.agent import SyncAgent, SyncSettings
from sync.repo import Remote
from tests.gitserve import CFG, Upstream


def make_agent(up: Upstream, state: Path, path: str = CFG, **kw: Any) -> SyncAgent:
    """A SyncAgent of `up`'s branch (depth 1 unless `depth=`; another ref with `ref=`, another URL of `up`,
    e.g. over HTTP, with `url=`) into `state`, holding its lock; other `kw` are SyncSettings fields."""
    remote = Remote(kw.pop("url", up.url), kw.pop("ref", up.branch), kw.pop("depth", 1))
    agent = SyncAgent(SyncSettings(remote, state, path, **kw))
    agent.acquire()
    return agent


def served(state: Path, path: str = CFG) -> str:
    """The config text a gateway would read through `current`."""
    return (state / "current" / path).read_text()
