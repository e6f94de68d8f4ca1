"""When syncs run: APScheduler, one run at a time, jittered interval, backoff after errors, triggers.

The next run is always one date job (`id="sync"`, `max_instances=1`, `coalesce=True`) that each
run replaces when it ends: the normal interval (+-10 % jitter) after a success, noop or rejected
commit (the remote is healthy: a fix must land within one interval), and exponential backoff with
jitter after errors, capped at `max_backoff`.

`trigger()` (webhook, SIGHUP) is debounced: on an idle agent whose last run started at least
`quiet` seconds ago the trigger runs a sync at once (leading edge); every other trigger collapses
into one trailing run, held until no trigger came for `quiet` seconds (at most `max_wait` after
the first held one) and never started while another run is in flight. A burst of pushes thus
costs two fetches (one in flight plus one trailing, which fetches the newest head); a continuous
stream, two per `max_wait`.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, JobExecutionEvent
from apscheduler.schedulers.background import BackgroundScheduler

from sync.agent import SyncAgent, SyncResult
from sync.backoff import backoff

log = logging.getLogger("kt.sync")
JOB = "sync"


def next_delay(result: SyncResult, interval: float, max_backoff: float, rng: random.Random) -> float:
    """Seconds until the next run after `result`."""
    if result.result != "error":
        return interval * rng.uniform(0.9, 1.1)
    # jitter spreads a fleet that failed together; at least half the step
    return backoff(max(result.consecutive_failures, 1) - 1, interval, max_backoff, low=0.5, rng=rng.random)


class SyncScheduler:
    """Drives one `SyncAgent`. `done` is set when `--max-failures` is reached or after `stop()`."""

    def __init__(self, agent: SyncAgent, interval: float = 60.0, max_failures: int | None = None,
                 max_backoff: float | None = None, on_result: Callable[[SyncResult], None] | None = None,
                 quiet: float = 1.0, max_wait: float = 10.0) -> None:
        if interval <= 0:
            raise ValueError("--interval must be positive")
        if quiet < 0 or max_wait < quiet:
            raise ValueError("trigger debounce: need 0 <= quiet <= max_wait")
        self.quiet = quiet
        self.max_wait = max_wait
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
        self._pending = False  # triggers held for one trailing run
        self._lead_queued = False  # a leading run is scheduled but has not started yet
        self._first_held = 0.0  # monotonic time of the first held trigger
        self._last_trigger = 0.0
        self._due: float | None = None  # monotonic time the trailing run is scheduled for
        self._last_start = float("-inf")  # monotonic time the last run started
        self._rng = random.Random()
        self._sched = BackgroundScheduler(
            timezone=UTC, job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": None}
        )
        self._sched.add_listener(self._after, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)

    @property
    def busy(self) -> bool:
        """A sync runs now, or triggers are held for a trailing run."""
        return self._running or self._pending

    @property
    def running(self) -> bool:
        """A sync runs now."""
        return self._running

    def next_run_at(self) -> float | None:
        """When the next sync is scheduled (seconds since the epoch), or None when none is."""
        job = self._sched.get_job(JOB)
        return job.next_run_time.timestamp() if job is not None and job.next_run_time is not None else None

    def start(self, first_delay: float = 0.0) -> None:
        """Start the scheduler; the first sync runs after `first_delay` seconds."""
        self._sched.start()
        with self._lock:
            self._schedule(first_delay)

    def trigger(self) -> None:
        """Sync soon, debounced as the module says (safe from any thread)."""
        with self._lock:
            if self.done.is_set():
                return
            now = time.monotonic()
            self._last_trigger = now
            if not (self._running or self._pending or self._lead_queued) and now - self._last_start >= self.quiet:
                self._lead_queued = True
                self._schedule(0.0)
                return
            if not self._pending:
                self._pending, self._first_held, self._due = True, now, None
            if not (self._running or self._lead_queued):
                self._schedule_trailing(now)

    def _trailing_at(self) -> float:
        return min(self._last_trigger + self.quiet, self._first_held + self.max_wait)

    def _schedule_trailing(self, now: float) -> None:
        due = self._trailing_at()
        if self._due is None or due - self._due > 0.05:  # move it later only in steps (a storm is many triggers)
            self._due = due
            self._schedule(max(due - now, 0.0))

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
            self._last_start = time.monotonic()
            self._pending = False  # this run fetches the newest head: it serves every trigger so far
            self._lead_queued = False
            self._due = None
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
                if self._pending:
                    self._due = None
                    self._schedule_trailing(time.monotonic())
                else:
                    self._schedule(next_delay(result, self.interval, self.max_backoff, self._rng))
