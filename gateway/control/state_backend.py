"""The gateway's counter backend, chosen at start, and what it does when Redis is unreachable.

- no `--state-url`: `SqliteCounters` in `<state dir>/counters.db` (shared by the workers of a host,
  kept across restarts);
- `--state-url redis://...`: `RedisCounters`, shared by every replica.

Redis unreachable (a call fails or times out): the backend is marked down
(`keeptrusts_state_backend_up 0`) and a probe reconnects with backoff; until it succeeds no
request waits on Redis. Meanwhile `--fail-mode block` answers requests that need a counter
with 503 `state_unavailable`; `allow` counts them in this process's memory (logged once per
outage; `FallbackCounters`: each counter starts from the last value this process saw in Redis).
When the probe reaches Redis again, what was counted locally is merged into Redis (each batch
once) before requests go back to Redis, so the next request sees the combined count; what a
process did not merge before it ended is merged by the next one to start on the state dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.control.counters_fallback import JOURNAL_NAME, FallbackCounters, Journal, Merged
from policies.counters import Claim, ClaimResult, Counters, MemoryCounters
from sync.backoff import backoff
from sync.credentials import mask_url

log = logging.getLogger("kt.gateway.state")


def _shown(exc: Exception) -> str:
    """An error of the counter store as status and logs show it: its type and text, URL credentials masked."""
    return f"{type(exc).__name__}: {mask_url(str(exc))}"[:300]


class StateUnavailable(Exception):
    """The shared counters cannot be reached and `--fail-mode block` refuses to guess."""


class StateBackend:
    """Reserve claims on the configured backend; see the module docstring."""

    def __init__(self, local: Counters, fail_mode: str = "block", redis: Any = None, url: str | None = None) -> None:
        self.local = local  # the sync backend (SQLite, or memory); with Redis: the fail-open fallback
        self.redis = redis
        self.url = mask_url(url) if url else None
        self.fail_mode = fail_mode
        self.up = True
        self.last_error: str | None = None
        self.failures = 0  # calls that found Redis unreachable
        self.merged_keys = 0  # counters the fallback added to Redis after outages
        self._probe: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[Any]] = set()

    @property
    def kind(self) -> str:
        if self.redis is not None:
            return "redis"
        return "sqlite" if type(self.local).__name__ == "SqliteCounters" else "memory"

    def describe(self) -> dict[str, Any]:
        """For /health, /keeptrusts/status and `kt doctor` (the URL's credentials masked)."""
        return {"backend": self.kind, "url": self.url, "up": self.up, "last_error": self.last_error,
                "path": str(getattr(self.local, "path", "")) or None if self.redis is None else None}

    async def reserve(self, namespace: str, claims: Sequence[Claim]) -> list[ClaimResult]:
        """Check and add `claims` in one step (one round trip to Redis); raises `StateUnavailable`."""
        if self.redis is None:
            return self.local.reserve(namespace, claims)
        if self.up:
            try:
                return await self.redis.reserve(namespace, claims)
            except Exception as exc:  # ConnectionError, TimeoutError, a Redis error reply
                self._down(exc)
        if self.fail_mode == "block":
            raise StateUnavailable(f"the shared counter store ({self.url}) is unreachable: {self.last_error}")
        return self.local.reserve(namespace, claims)

    def apply_later(self, namespace: str, claims: Sequence[Claim]) -> None:
        """Add `claims` (settlements, releases) without making the request wait for it."""
        if self.redis is None:
            self.local.reserve(namespace, claims)
            return
        task = asyncio.ensure_future(self._apply(namespace, list(claims)))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _apply(self, namespace: str, claims: list[Claim]) -> None:
        if self.up:
            try:
                await self.redis.reserve(namespace, claims)
                return
            except Exception as exc:
                self._down(exc)
        self.local.reserve(namespace, claims)  # either fail mode: merged into Redis when it is back

    def _down(self, exc: Exception) -> None:
        self.failures += 1
        self.last_error = _shown(exc)
        if not self.up:
            return
        self.up = False
        action = "refusing requests that need a counter (503 state_unavailable)" if self.fail_mode == "block" \
            else "counting in this process only until it is back"
        log.warning("state backend %s unreachable (%s): %s", self.url, self.last_error, action)
        if self._probe is None or self._probe.done():
            self._probe = asyncio.ensure_future(self._reconnect())

    def resume(self) -> None:
        """At start (in the event loop): merge what an earlier process journalled and did not merge."""
        if self.redis is not None and self.unmerged and (self._probe is None or self._probe.done()):
            log.info("state backend %s: %d counter(s) counted during an earlier outage are not merged yet; "
                     "merging them", self.url, self.unmerged)
            self._probe = asyncio.ensure_future(self._reconnect())

    @property
    def unmerged(self) -> int:
        """Counters counted during an outage (by any worker of the host) that Redis has not confirmed yet."""
        return self.local.unmerged if isinstance(self.local, FallbackCounters) else 0

    async def _reconnect(self, base: float = 0.1, cap: float = 5.0, passes: int = 8) -> None:
        """Probe with backoff; once Redis answers, merge the fallback's counts, then send requests there again.

        Requests keep counting locally while a merge pass awaits Redis; after `passes` passes
        what the last one let in is merged right after requests went back to Redis."""
        attempt = 0
        while True:
            if self.up:
                if not self.unmerged:
                    return
                try:
                    await self._merge(1)
                except Exception as exc:
                    if self._refused(exc):
                        return
                    self._down(exc)  # down again: the batches wait for the next recovery
                continue
            await asyncio.sleep(backoff(attempt, base, cap, least=base / 2))
            attempt += 1
            refused = False
            try:
                await self.redis.ping()
                await self._merge(passes)
            except Exception as exc:
                refused = self._refused(exc)
                if not refused:
                    self.last_error = _shown(exc)
                    continue
            self.up = True
            attempt = 0
            log.info("state backend %s reachable again", self.url)
            if refused:  # kept for the next recovery, not retried against a server that refuses them
                return

    async def _merge(self, passes: int) -> None:
        """Add what the fallback counted to Redis, batch by batch, and log it; raises when Redis fails
        (what is not confirmed stays in the fallback)."""
        total = Merged()
        local = self.local
        if not isinstance(local, FallbackCounters):
            return
        try:
            for _ in range(passes):
                batches = local.cut(time.time())
                if not batches:
                    break
                for batch in batches:
                    done = await self.redis.merge(batch)
                    local.merged(batch)
                    if done is not None:
                        total += done
                        self.merged_keys += done.keys
        finally:
            if total.keys or total.expired:
                log.info("state backend %s: merged %d counter(s) counted while it was unreachable "
                         "(amounts summed: %.6g; %d skipped: their window had ended, or the key held no number)",
                         self.url, total.keys, total.amount, total.expired)

    def _refused(self, exc: Exception) -> bool:
        """Whether a merge failed with Redis reachable: Redis answered with an error, or the outage journal
        (a local file: a full or read-only state dir) failed. Then requests go to Redis; the batches wait."""
        if isinstance(exc, sqlite3.Error):
            log.error("state backend %s: the outage journal cannot be read (%s): its counts wait for the next "
                      "recovery; counting in Redis meanwhile", self.url, str(exc)[:300])
            return True
        if not self.redis.answered(exc):
            return False
        log.error("state backend %s refused to merge %d counter(s) counted during the outage (%s): kept in "
                  "the outage journal for the next recovery", self.url, self.unmerged, mask_url(str(exc))[:300])
        return True


    async def close(self) -> None:
        if self._pending:
            await asyncio.wait(list(self._pending), timeout=2.0)
        if self.unmerged:
            path = self.local.journal.path
            log.warning("state backend %s: %d counter(s) counted during an outage are not merged into Redis yet: %s",
                        self.url, self.unmerged, f"the next gateway to start with {path} merges them" if path
                        else "lost (no state dir)")
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        if self.redis is not None:
            await self.redis.close()
        close = getattr(self.local, "close", None)
        if close is not None:
            close()


def open_state_backend(state_dir: Path | None, url: str | None = None, password_file: str | None = None,
                       fail_mode: str = "block") -> StateBackend:
    """The backend `kt gateway run` uses: Redis with `url`, else the SQLite file in `state_dir`
    (in memory when `state_dir` is None: tests and embedding)."""
    if url:
        from gateway.control.counters_redis import RedisCounters, read_password

        redis = RedisCounters(url, read_password(password_file))
        journal = Journal(Path(state_dir) / JOURNAL_NAME if state_dir is not None else None)
        return StateBackend(FallbackCounters(redis.seen, journal), fail_mode, redis, url)
    if state_dir is None:
        return StateBackend(MemoryCounters(), fail_mode)
    from gateway.control.counters_sqlite import DB_NAME, SqliteCounters

    return StateBackend(SqliteCounters(Path(state_dir) / DB_NAME), fail_mode)
