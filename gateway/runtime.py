"""What one gateway process holds: settings, the running snapshot, shared state, observers.

The request path reads `runtime.snapshot` once at its start and keeps that object until it
finishes; a reload replaces the attribute with a new immutable `Snapshot`. No locks: one
event loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.event_queue import EventQueue
from policies import Config, PolicyState


@dataclass(frozen=True)
class Snapshot:
    """A loaded config and where it came from."""

    config: Config
    revision: str  # the Git commit sha, or the sha256 of the file for a plain file
    source: str  # "git" | "file"
    path: str
    loaded_at: float = field(default_factory=time.time)

    @property
    def sha256(self) -> str:
        return self.config.sha256


EventObserver = Callable[[dict[str, Any]], None]


@dataclass
class Runtime:
    """Process-wide state of a running gateway."""

    fail_mode: str = "block"
    snapshot: Snapshot | None = None
    policy_state: PolicyState = field(default_factory=PolicyState)
    events: EventQueue = field(default_factory=EventQueue)
    observers: list[EventObserver] = field(default_factory=list)  # e.g. metrics; called per event
    draining: bool = False
    started_at: float = field(default_factory=time.time)
    in_flight: int = 0

    @property
    def ready(self) -> bool:
        return self.snapshot is not None and not self.draining

    def record_event(self, event: dict[str, Any]) -> None:
        """Hand one decision event to the observers and the queue. No I/O."""
        for observe in self.observers:
            observe(event)
        self.events.put(event)
