"""Submit stored decision events to the control plane: `POST $KEEPTRUSTS_API_URL/v1/events`.

At-least-once: events are sent in store order, in batches, each carrying its `id` so the
receiver can deduplicate; the cursor (the last acknowledged store sequence) is persisted in
the store, so a restart resumes where it stopped. Failures back off exponentially with jitter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import orjson
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from gateway.control import metrics
from gateway.events.store import CURSOR_KEY
from gateway.events.writer import StoreWriter
from sync.backoff import backoff
from sync.credentials import mask_url

log = logging.getLogger("kt.gateway.forwarder")


class Forwarder:
    """Background task sending the store's events to `<api_url>/v1/events`."""

    def __init__(self, writer: StoreWriter, api_url: str, token: str | None, batch: int = 500,
                 base_delay: float = 0.5, max_delay: float = 30.0, timeout: float = 10.0) -> None:
        self.writer = writer
        self.url = api_url.rstrip("/") + "/v1/events"
        self.token = token
        self.batch = batch
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.timeout = timeout
        self.cursor = 0
        self.failures = 0
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        """Stored events not yet acknowledged by the control plane."""
        return max(0, self.writer.store.last_seq - self.cursor)

    async def _send(self, events: list[dict[str, Any]]) -> None:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = HTTPRequest(self.url, method="POST", headers=headers, body=orjson.dumps({"events": events}),
                              connect_timeout=self.timeout, request_timeout=self.timeout)
        await AsyncHTTPClient().fetch(request)

    async def _run(self) -> None:
        store = self.writer.store
        self.cursor = int(await self.writer.call(store.get_meta, CURSOR_KEY) or 0)
        while True:
            rows = await self.writer.call(store.pending, self.cursor, self.batch)
            if not rows:
                self.writer.stored.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.writer.stored.wait(), 1.0)
                continue
            try:
                await self._send([event for _, event in rows])
            except Exception as exc:  # network, HTTP status, timeout: all retried
                metrics.EVENTS_SUBMIT_FAILURES.inc()
                self.failures += 1
                code = exc.code if isinstance(exc, HTTPClientError) else None
                self.last_error = f"HTTP {code}" if code else f"{type(exc).__name__}: {exc}"
                delay = backoff(self.failures - 1, self.base_delay, self.max_delay, least=self.base_delay / 2)
                log.warning("event submission failed; will retry",
                            extra={"url": mask_url(self.url), "error": self.last_error, "events": len(rows),
                                   "retry_in_s": round(delay, 2), "consecutive_failures": self.failures})
                await asyncio.sleep(delay)
                continue
            await self.writer.call(store.set_meta, CURSOR_KEY, str(rows[-1][0]))
            self.cursor = rows[-1][0]  # only once persisted: `pending == 0` means durable
            metrics.EVENTS_SUBMITTED.inc(len(rows))
            if self.failures:
                log.info("event submission recovered",
                         extra={"url": mask_url(self.url), "after_failures": self.failures})
            self.failures, self.last_error = 0, None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
