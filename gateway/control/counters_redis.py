"""The shared counter backend: Redis, for every replica of a fleet (`--state-url redis://...`).

One Lua script per call checks every checked claim and, only when all fit, adds them (claims
without a limit are always added), so a check and its reservation are one atomic step on the
server: two replicas racing for the last dollar cannot both win. Each key expires at its
window's end (`EXPIREAT`). Keys are `kt:{<pack>}:<policy key>:<bucket>`: the pack is a Redis
Cluster hash tag, so one call's keys share a slot. `redis.asyncio` keeps the event loop free;
the script is sent once and then called by its SHA (reloaded after a Redis restart).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from policies.counters import EPSILON, Claim, ClaimResult, storage_key

SCHEMES = ("redis://", "rediss://", "unix://")

# KEYS: the counters; ARGV per key: add, need, limit ('' = none), expire-at (unix s).
# Returns {all_ok, passed_1, value_1, passed_2, value_2, ...}; values as strings (Lua numbers
# returned to Redis are truncated to integers).
RESERVE_LUA = f"""
local n = #KEYS
local vals, passed, ok = {{}}, {{}}, 1
for i = 1, n do
  local b = (i - 1) * 4
  local v = tonumber(redis.call('GET', KEYS[i]) or '0')
  local p = 1
  if ARGV[b + 3] ~= '' then
    local need, limit = tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3])
    if need > 0 then
      if v + need > limit + {EPSILON} then p = 0 end
    elseif v >= limit then p = 0 end
  end
  vals[i], passed[i] = v, p
  if p == 0 then ok = 0 end
end
local out = {{ok}}
for i = 1, n do
  local b = (i - 1) * 4
  if tonumber(ARGV[b + 1]) ~= 0 and (ok == 1 or ARGV[b + 3] == '') then
    redis.call('INCRBYFLOAT', KEYS[i], ARGV[b + 1])
    redis.call('EXPIREAT', KEYS[i], ARGV[b + 4])
  end
  out[#out + 1] = passed[i]
  out[#out + 1] = string.format('%.17g', vals[i])
end
return out
"""


def read_password(path: str | Path | None) -> str | None:
    """The Redis password from a file (first line), or None."""
    if path is None:
        return None
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise ValueError(f"cannot read the state password file {path}: {exc.strerror}") from None


class RedisCounters:
    """Async counters on one Redis (see the module docstring)."""

    def __init__(self, url: str, password: str | None = None, timeout_s: float = 0.5) -> None:
        import redis.asyncio as aioredis  # imported here: only a gateway with --state-url needs it

        if not url.startswith(SCHEMES):
            raise ValueError(f"--state-url must start with {', '.join(SCHEMES)}")
        kwargs: dict[str, Any] = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s,
                                  "health_check_interval": 0}
        if password is not None:
            kwargs["password"] = password
        self.client = aioredis.Redis.from_url(url, **kwargs)
        self.script = self.client.register_script(RESERVE_LUA)

    async def reserve(self, namespace: str, claims: Sequence[Claim], now: float | None = None) -> list[ClaimResult]:
        now = time.time() if now is None else now
        keys: list[str] = []
        args: list[str] = []
        for c in claims:
            key, expires = storage_key(namespace, c.key, c.window, now)
            keys.append(key)
            need = c.add if c.need is None else c.need
            args += [repr(c.add), repr(need), "" if c.limit is None else repr(c.limit), str(math.ceil(expires))]
        out = await self.script(keys=keys, args=args)
        all_ok = out[0] == 1
        return [ClaimResult(out[1 + 2 * i] == 1, float(out[2 + 2 * i]), all_ok or c.limit is None)
                for i, c in enumerate(claims)]

    async def value(self, namespace: str, key: str, window: str, now: float | None = None) -> float:
        raw = await self.client.get(storage_key(namespace, key, window, time.time() if now is None else now)[0])
        return float(raw) if raw is not None else 0.0

    async def ping(self) -> bool:
        return bool(await self.client.ping())

    async def close(self) -> None:
        await self.client.aclose()
