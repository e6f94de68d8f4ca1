"""`keeptrusts_config_deploy_seconds`: from a commit's committer time to this gateway serving it.

The seed's "mean time to deploy a config change". Observed once per Git revision that a
running gateway moves to (not for the revision it starts on: a restart or a new replica is not
a config change). The committer time comes from the sync agent's `status.json`
(`applied_committed_at`), which the agent writes just after it flips `<state>/current`, so
the clock waits (a bounded while) for the status to name the revision it serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

from gateway.control import metrics
from gateway.control.runtime import Snapshot

log = logging.getLogger("kt.gateway.deploy")


class DeployClock:
    """Times each newly served Git revision against its commit; one pending revision at a time."""

    def __init__(self, state_of: Callable[[], Path | None], patience: float = 120.0, poll: float = 0.2) -> None:
        self.state_of = state_of  # the sync agent's state dir, or None for a plain file
        self.patience = patience
        self.poll = poll
        self._seen: dict[str, None] = {}  # revisions observed (insertion-ordered, bounded)
        self._task: asyncio.Task[None] | None = None

    def served(self, snap: Snapshot) -> None:
        """`snap` now serves (a `Reloader.on_new_revision` hook; loop thread)."""
        if snap.source != "git" or snap.revision in self._seen:
            return
        self._seen[snap.revision] = None
        if len(self._seen) > 1000:
            del self._seen[next(iter(self._seen))]
        if self._task is not None:  # a newer revision supersedes one whose status never came
            self._task.cancel()
        self._task = asyncio.get_running_loop().create_task(self._observe(snap.revision, time.time()))

    async def _observe(self, revision: str, served_at: float) -> None:
        from sync.clock import parse_time
        from sync.status import read_status

        loop = asyncio.get_running_loop()
        state = self.state_of()
        if state is None:
            return
        give_up = loop.time() + self.patience
        while loop.time() < give_up:
            status = await loop.run_in_executor(None, read_status, state)
            if status and status.get("applied_revision") == revision:
                committed = parse_time(status.get("applied_committed_at"))
                if committed is not None:
                    seconds = max(0.0, served_at - committed)
                    metrics.DEPLOY_SECONDS.observe(seconds)
                    log.info("config change deployed", extra={"revision": revision,
                                                              "deploy_seconds": round(seconds, 3)})
                return
            await asyncio.sleep(self.poll)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
