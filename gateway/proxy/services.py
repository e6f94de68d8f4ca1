"""What every proxy handler shares, as one typed value built once at start (not string-keyed lookups)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.control.runtime import Runtime
from gateway.providers.upstream import UpstreamClient
from gateway.proxy.keys import GatewayKeys
from gateway.proxy.resilience import Breakers, RoundRobin

SETTINGS_KEY = "proxy"  # where the Tornado application's settings hold the `ProxyServices`


@dataclass(frozen=True, slots=True)
class ProxyServices:
    """The process's shared objects a proxy request uses: the runtime (snapshot, counters, events),
    the inbound keys, the body limit, the upstream client, the breakers and the round-robin state."""

    runtime: Runtime
    keys: GatewayKeys | None
    max_body_size: int
    upstream: UpstreamClient
    breakers: Breakers
    round_robin: RoundRobin


def services_of(app_settings: dict[str, Any]) -> ProxyServices:
    """The `ProxyServices` in a Tornado application's settings (what a lean handler is given)."""
    return app_settings[SETTINGS_KEY]
