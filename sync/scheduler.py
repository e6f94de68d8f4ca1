"""When syncs run: APScheduler, one run at a time, jittered interval, backoff after errors, triggers.

The next run is always one date job (`id="sync"`, `max_instances=1`, `coalesce=True`) that each
run replaces when it ends: the normal interval (+-10 % jitter) after a success, noop or rejected
commit (the remote is healthy: a fix must land within one interval), and exponential backoff with
jitter after errors, capped at `max_backoff`. `trigger()` runs a sync now; triggers that arrive
while a run is in progress collapse into exactly one follow-up run, which fetches the newest head.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, JobExecutionEvent
from apscheduler.schedulers.background import BackgroundScheduler

from sync.agent import SyncAgent, SyncResult

log = logging.getLogger("kt.sync")
JOB = "sync"


def next_delay(result: SyncResult, interval: float, max_backoff: float, rng: random.Random) -> float:
    """Seconds until the next run after `result`."""
    if result.result != "error":
        return interval * rng.uniform(0.9, 1.1)
    backoff = min(interval * 2 ** (max(result.consecutive_failures, 1) - 1), max_backoff)
    return backoff * rng.uniform(0.5, 1.0)  # jitter spreads a fleet that failed together


class SyncScheduler:
    """Drives one `SyncAgent`. `done` is set when `--max-failures` is reached or after `stop()`."""

    def __init__(self, agent: SyncAgent, interval: float = 60.0, max_failures: int | None = None,
                 max_backoff: float | None = None, on_result: Callable[[SyncResult], None] | None = None) -> None:
        if interval <= 0:
            raise ValueError("--interval must be positive")
        self.agent = agent
        self.interval = interval
        self.max_failures = max_failures
        self.max_backoff = max_backoff if max_backoff is not None else max(interval, min(10 * interval, 600.0))
        self.on_result = on_result
        self.done = threading.Event()
        self.failed = False
        self.last: SyncResult | None = None
        self._lock = threading.Lock()
        self._running = False
        self._pending = False
        self._rng = random.Random()
        self._sched = BackgroundScheduler(
            timezone=UTC, job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": None}
        )
        self._sched.add_listener(self._after, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)

    def start(self, first_delay: float = 0.0) -> None:
        """Start the scheduler; the first sync runs after `first_delay` seconds."""
        self._sched.start()
        with self._lock:
            self._schedule(first_delay)

    def trigger(self) -> None:
        """Sync as soon as possible (safe from any thread and from signal handlers' helper threads)."""
        with self._lock:
            if self.done.is_set():
                return
            if self._running:
                self._pending = True
            else:
                self._schedule(0.0)

    def stop(self, wait: bool = True) -> None:
        """Stop scheduling; with `wait`, let a running sync finish (bounded by the sync timeout)."""
        with self._lock:
            self.done.set()
        if self._sched.running:
            self._sched.shutdown(wait=wait)

    def _schedule(self, delay: float) -> None:
        when = datetime.now(UTC) + timedelta(seconds=delay)
        self._sched.add_job(self._run, "date", run_date=when, id=JOB, replace_existing=True)

    def _run(self) -> None:
        with self._lock:
            if self.done.is_set():
                return
            self._running = True
            self._pending = False
        self.last = SyncResult("error", error="sync did not finish", error_kind="internal")
        self.last = self.agent.sync_once()
        if self.on_result is not None:
            try:
                self.on_result(self.last)
            except Exception:
                log.exception("sync result callback failed")

    def _after(self, event: JobExecutionEvent) -> None:
        """Schedule the next run. Runs after APScheduler released the job's instance slot, so a
        follow-up run at delay 0 is never skipped as 'maximum number of instances reached'."""
        if event.job_id != JOB:
            return
        with self._lock:
            if not self._running:
                return
            self._running = False
            result = self.last
            if result is None:
                return
            if self.max_failures and result.consecutive_failures >= self.max_failures:
                log.error("giving up after %d consecutive failed syncs", result.consecutive_failures)
                self.failed = True
                self.done.set()
            elif not self.done.is_set():
                delay = 0.0 if self._pending else next_delay(result, self.interval, self.max_backoff, self._rng)
                self._pending = False
                self._schedule(delay)
