"""The bounded in-memory queue between the request path and the event store.

`put` never blocks and does no I/O: when the queue is full the event is dropped and
counted. A background consumer drains it in batches.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any


class EventQueue:
    """A bounded FIFO of decision events (plain dicts)."""

    def __init__(self, maxsize: int = 10_000) -> None:
        self.maxsize = maxsize
        self._items: deque[dict[str, Any]] = deque()
        self._ready: asyncio.Event | None = None
        self.dropped = 0
        self.submitted = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, event: dict[str, Any]) -> bool:
        """Enqueue `event`; False (and `dropped` + 1) when full."""
        if len(self._items) >= self.maxsize:
            self.dropped += 1
            return False
        self._items.append(event)
        self.submitted += 1
        if self._ready is not None:
            self._ready.set()
        return True

    async def get_batch(self, max_items: int = 500, timeout: float = 0.5) -> list[dict[str, Any]]:
        """Wait up to `timeout` for at least one event; return up to `max_items`."""
        if not self._items:
            if self._ready is None:
                self._ready = asyncio.Event()
            self._ready.clear()
            try:
                await asyncio.wait_for(self._ready.wait(), timeout)
            except TimeoutError:
                return []
        batch = []
        while self._items and len(batch) < max_items:
            batch.append(self._items.popleft())
        return batch
