"""Reloading a config file: `config(version)` (a valid one), `INVALID` (one lint refuses) and `started`, a
loaded and started Reloader of a file on a fresh Runtime (shared by the reload, admin and event tests)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from gateway.control.reload import Reloader
from gateway.control.runtime import Runtime
from tests.waiting import async_wait_for


def config(version: str, retention: int = 30) -> str:
    return (
        f"pack: {{name: reload-pack, version: {version}, enabled: true}}\n"
        "providers:\n  targets:\n    - {id: demo, provider: mock, model: demo-model}\n"
        f"policies:\n  chain: [audit-logger]\npolicy:\n  audit-logger: {{retention_days: {retention}}}\n"
    )


INVALID = "pack: {name: broken, version: 1.0.0, enabled: true}\npolicies:\n  chain: [no-such-kind]\n"


@contextlib.asynccontextmanager
async def started(path: Path, watch: bool = True, sighup: bool = False,
                  first_tick: bool = False) -> AsyncIterator[tuple[Runtime, Reloader]]:
    """A Reloader of `path` on a fresh Runtime, loaded and started (`first_tick`: once the watcher's
    first tick has re-checked the file, a change missed while it started); stopped after."""
    runtime = Runtime()
    reloader = Reloader(runtime, path)
    reloader.load_initial()
    reloader.start(watch=watch, sighup=sighup)
    try:
        if first_tick:
            await async_wait_for(lambda: reloader.last.trigger == "watch", timeout=20)
        yield runtime, reloader
    finally:
        await reloader.stop()
