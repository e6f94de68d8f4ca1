"""The store's writer: background tasks that drain the in-memory queue into the event store in
batches (off the request path, on one low-priority thread) and prune it by retention."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson

from gateway.control import metrics
from gateway.control.runtime import Runtime
from gateway.events.disk import is_disk_full
from gateway.events.store import EventStore

log = logging.getLogger("kt.gateway.events")


def retention_days(runtime: Runtime, default: int = 365) -> int:
    """audit-logger's `retention_days` in the running config, else `default`."""
    snap = runtime.snapshot
    if snap is None:
        return default
    for policy in snap.config.chain.policies:
        if policy.kind == "audit-logger":
            return int(getattr(policy, "retention_days", default))
    return default


def background_thread() -> None:
    """Lower this thread's scheduling priority (Linux: per thread), so the event loop's thread wins the core.

    The gateway's helper threads (event store, log writer) batch work that can wait; on a busy
    core the request path should not wait behind a commit.
    """
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


class StoreWriter:
    """Background tasks: drain the in-memory queue into the store; prune by retention."""

    def __init__(self, runtime: Runtime, store: EventStore, batch: int = 500,
                 prune_interval: float = 3600.0, linger: float = 0.1) -> None:
        self.runtime = runtime
        self.store = store
        self.batch = batch
        # After the first event of a batch, wait this long for more: one transaction per ~100 ms
        # instead of one per request at low traffic (a commit is ~100 us of the same core).
        self.linger = linger
        self.prune_interval = prune_interval
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kt-events", initializer=background_thread)
        self.stored = asyncio.Event()  # set after each commit (the forwarder waits on it)
        self.error: str | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # The batch taken from the queue and not yet committed: kept here, not in `_drain`'s frame,
        # so a stop while it lingers or retries stores it rather than losing it (ids deduplicate).
        self._held: list[dict[str, Any]] = []
        self._dropped_logged = 0
        self._counted = (store.evicted, store.dropped)  # the store's counts already in the metrics
        self._full_logged = (store.dropped, -60.0)  # disk_full drops last logged, and when (monotonic)
        self._full_tries = 0  # SQLITE_FULL in a row on the held batch

    @property
    def holding(self) -> int:
        """How many events this writer took from the queue and has not committed yet."""
        return len(self._held)

    async def call(self, fn: Any, *args: Any) -> Any:
        """Run a blocking store call on the store's worker thread."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def _drain(self) -> None:
        delay = 0.1
        while True:
            if not self._held:
                self._held = await self.runtime.events.get_batch(self.batch)
                if self._held and len(self._held) < self.batch and self.linger:
                    await asyncio.sleep(self.linger)
                    self._held += await self.runtime.events.get_batch(self.batch - len(self._held), timeout=0)
            self._log_drops()
            if not self._held:
                continue
            try:
                added = await self.call(self.store.add, self._held)
            except sqlite3.Error as exc:
                if is_disk_full(exc):  # make room below what fits and retry now: the batch stays held
                    self._full_tries += 1
                    if self._full_tries > 3:  # no room even so: this batch is dropped, counted and logged
                        self.store.dropped += len(self._held)
                        self._held, self._full_tries = [], 0
                        self.count_room()
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, 5.0)
                        continue
                    size = sum(len(orjson.dumps(e, default=str)) for e in self._held)
                    await self.call(self.store.disk_full, size)
                    if self.error is None:
                        log.error("event store: disk full; keeping it at what fits",
                                  extra={"path": str(self.store.path), "error": str(exc)})
                    self.error = str(exc)
                    continue
                if self.error is None:
                    log.error("event store write failed; events wait in memory", extra={"error": str(exc)})
                self.error = str(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if self.error is not None:
                log.info("event store writable again", extra={"path": str(self.store.path)})
            self.error, delay, self._held, self._full_tries = None, 0.1, [], 0
            metrics.EVENTS_STORED.inc(added)
            self.count_room()
            self.stored.set()

    def count_room(self, now: float | None = None) -> None:
        """Move the store's eviction and disk_full counts into the metrics; log drops at most once a minute
        (`now`: a monotonic time, for tests)."""
        store = self.store
        evicted, dropped = store.evicted - self._counted[0], store.dropped - self._counted[1]
        self._counted = (store.evicted, store.dropped)
        if evicted:
            metrics.EVENTS_EVICTED.inc(evicted)
        if dropped:
            metrics.EVENTS_DROPPED_DISK.inc(dropped)
        now = time.monotonic() if now is None else now
        since = store.dropped - self._full_logged[0]
        if since and now - self._full_logged[1] >= 60.0:
            log.warning("event store full: undelivered decision events dropped, oldest first",
                        extra={"dropped": since, "dropped_total": store.dropped, "max_bytes": store.max_bytes,
                               "path": str(store.path)})
            self._full_logged = (store.dropped, now)

    def _log_drops(self) -> None:
        dropped = self.runtime.events.dropped
        if dropped > self._dropped_logged:
            log.warning("event queue full: decision events dropped",
                        extra={"dropped": dropped - self._dropped_logged, "dropped_total": dropped})
            self._dropped_logged = dropped

    async def _prune(self) -> None:
        while True:
            days = retention_days(self.runtime)
            try:
                removed = await self.call(self.store.prune, time.time() - days * 86400)
            except sqlite3.Error as exc:
                log.warning("event retention pruning failed", extra={"error": str(exc)})
            else:
                if removed:
                    metrics.EVENTS_PRUNED.inc(removed)
                    log.info("events pruned by retention", extra={"removed": removed, "retention_days": days})
                    with contextlib.suppress(sqlite3.Error):
                        await self.call(self.store.vacuum)
            try:
                hours = await self.call(self.store.bound_rollups)
            except sqlite3.Error as exc:
                log.warning("bounding the event rollups failed", extra={"error": str(exc)})
            else:
                if hours:
                    log.info("oldest event rollups deleted for room", extra={"hours": hours})
            await asyncio.sleep(self.prune_interval)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._drain()), loop.create_task(self._prune())]

    async def flush(self, timeout: float = 5.0) -> None:
        """Store what is held and queued now (used at shutdown, after `_drain` stopped)."""
        deadline = time.monotonic() + timeout
        while (self._held or len(self.runtime.events)) and time.monotonic() < deadline:
            batch, self._held = self._held or await self.runtime.events.get_batch(self.batch, timeout=0), []
            try:
                metrics.EVENTS_STORED.inc(await self.call(self.store.add, batch))
            except sqlite3.Error as exc:
                self.store.dropped += len(batch)  # at exit there is no later: counted, logged
                log.error("event store write failed at shutdown; events dropped",
                          extra={"events": len(batch), "error": str(exc)})
            self.count_room(now=float("inf"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self.flush()
