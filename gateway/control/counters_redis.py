"""The shared counter backend: Redis, for every replica of a fleet (`--state-url redis://...`).

One Lua script per call checks every checked claim and, only when all fit, adds them (claims
without a limit are always added), so a check and its reservation are one atomic step on the
server: two replicas racing for the last dollar cannot both win. Each key expires at its
window's end (`EXPIREAT`). Keys are `kt:{<pack>}:<policy key>:<bucket>`: the pack is a Redis
Cluster hash tag, so one call's keys share a slot. `redis.asyncio` keeps the event loop free;
the script is sent once and then called by its SHA (reloaded after a Redis restart).

Each reply also updates `seen` (the counter's value, for the fail-open fallback to start from),
and `merge` adds what the fallback counted during an outage, one batch once (a second Lua
script; see `gateway.control.counters_fallback`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.control.counters_fallback import MergeBatch, Merged
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


# KEYS[1]: the batch's marker; KEYS[2..]: counters; ARGV[1]: the marker's expire-at; ARGV per counter:
# amount, expire-at. Adds a batch once (the marker says it was), skips counters whose window ended and
# keys that hold no finite number (another writer's; INCRBYFLOAT would fail midway, and a script is not
# rolled back: the marker and the counters before it would stay), never shortens an expiry (a session's
# may have moved on). Returns {1, new value or '' per counter}, or {0} when the batch was merged before.
MERGE_LUA = """
if redis.replicate_commands then redis.replicate_commands() end
local function numeric(key)
  local kind = redis.call('TYPE', key)['ok']
  if kind == 'none' then return true end
  if kind ~= 'string' then return false end
  local n = tonumber(redis.call('GET', key))
  return n ~= nil and n == n and n ~= math.huge and n ~= -math.huge
end
if not redis.call('SET', KEYS[1], '1', 'NX') then return {0} end
redis.call('EXPIREAT', KEYS[1], ARGV[1])
local now = tonumber(redis.call('TIME')[1])
local out = {1}
for i = 2, #KEYS do
  local expires = tonumber(ARGV[2 * i - 1])
  if expires > now and numeric(KEYS[i]) then
    out[i] = redis.call('INCRBYFLOAT', KEYS[i], ARGV[2 * i - 2])
    local ttl = redis.call('TTL', KEYS[i])
    if ttl < 0 or now + ttl < expires then redis.call('EXPIREAT', KEYS[i], ARGV[2 * i - 1]) end
  else
    out[i] = ''
  end
end
return out
"""
SEEN_MAX = 100_000  # counter values remembered for the fail-open fallback (bounded memory)
SEEN_PRUNE_S = 60.0  # a full `seen` forgets expired values at most this often


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
        self.merge_script = self.client.register_script(MERGE_LUA)
        self.seen: dict[str, tuple[float, float]] = {}  # key -> (value after the last reply, expires_at)
        self._pruned_at = 0.0

    async def reserve(self, namespace: str, claims: Sequence[Claim], now: float | None = None) -> list[ClaimResult]:
        now = time.time() if now is None else now
        keys: list[tuple[str, float]] = []
        args: list[str] = []
        for c in claims:
            key, expires = storage_key(namespace, c.key, c.window, now)
            keys.append((key, expires))
            need = c.add if c.need is None else c.need
            args += [repr(c.add), repr(need), "" if c.limit is None else repr(c.limit), str(math.ceil(expires))]
        out = await self.script(keys=[k for k, _ in keys], args=args)
        all_ok = out[0] == 1
        results = []
        for i, c in enumerate(claims):
            value, applied = float(out[2 + 2 * i]), all_ok or c.limit is None
            results.append(ClaimResult(out[1 + 2 * i] == 1, value, applied))
            key, expires = keys[i]
            self._see(key, value + c.add if applied else value, expires, now)
        return results

    def _see(self, key: str, value: float, expires: float, now: float) -> None:
        """Remember `key`'s value for the fail-open fallback; a full memory takes no new keys."""
        seen = self.seen
        if key not in seen and len(seen) >= SEEN_MAX:
            if now - self._pruned_at < SEEN_PRUNE_S:
                return
            self._pruned_at = now
            for k in [k for k, (_, e) in seen.items() if e <= now]:
                del seen[k]
            if len(seen) >= SEEN_MAX:
                return
        seen[key] = (value, expires)

    async def merge(self, batch: MergeBatch) -> Merged | None:
        """Add `batch` (counted during an outage) to Redis; None when Redis had already applied it."""
        marker = f"kt:{{{batch.namespace}}}:merged:{batch.id}"
        args = [str(math.ceil(max(e for _, _, e in batch.entries)))]
        for _, amount, expires in batch.entries:
            args += [repr(amount), str(math.ceil(expires))]
        out = await self.merge_script(keys=[marker, *(k for k, _, _ in batch.entries)], args=args)
        if out[0] != 1:
            return None
        keys, amount, now = 0, 0.0, time.time()
        for (key, add, expires), value in zip(batch.entries, out[1:], strict=True):
            if value:
                keys, amount = keys + 1, amount + add
                self._see(key, float(value), expires, now)
        return Merged(keys, amount, len(batch.entries) - keys)

    async def value(self, namespace: str, key: str, window: str, now: float | None = None) -> float:
        raw = await self.client.get(storage_key(namespace, key, window, time.time() if now is None else now)[0])
        return float(raw) if raw is not None else 0.0

    @staticmethod
    def answered(exc: Exception) -> bool:
        """Whether `exc` is an error reply (Redis is reachable) rather than a connection failure."""
        from redis.exceptions import ResponseError

        return isinstance(exc, ResponseError)

    async def ping(self) -> bool:
        return bool(await self.client.ping())

    async def close(self) -> None:
        await self.client.aclose()
