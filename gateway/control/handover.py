"""The embedded sync agent's compiled config, handed to the reload of the same process.

The agent validates a commit by compiling its config (`Handover.load`, on the agent's thread)
against the gateway's `PolicyState`; it keeps the latest result. When the reload then reads the
published file, checks it against the revision's `<sha>.digest`, and finds the very bytes the
agent compiled (same sha256), it swaps that `Config` in (`Handover.take`) instead of compiling
again. Anything else (other bytes, another `PolicyState`, no published digest) is compiled by
the reload itself, as a gateway watching a standalone agent's state dir always does.
"""

from __future__ import annotations

import threading
from pathlib import Path

from policies import Config, PolicyState, load_config


class Handover:
    """One slot: the config the agent compiled last, and the `PolicyState` it was compiled with."""

    def __init__(self) -> None:
        self.policy_state: PolicyState | None = None  # the gateway's, set before the agent starts
        self._lock = threading.Lock()
        self._offer: tuple[Config, PolicyState] | None = None

    def load(self, path: Path) -> Config:
        """Read, validate and compile `path` (the agent's validation step) and keep the result."""
        state = self.policy_state or PolicyState()
        config = load_config(path, state)
        with self._lock:
            self._offer = (config, state)
        return config

    def take(self, sha256: str, state: PolicyState) -> Config | None:
        """The kept config if it was compiled from bytes with this `sha256` against `state`; the slot empties."""
        with self._lock:
            offer = self._offer
            if offer is None or offer[0].sha256 != sha256 or offer[1] is not state:
                return None
            self._offer = None
        return offer[0]
