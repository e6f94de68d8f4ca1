"""What a fail-open gateway counted while Redis was down is merged into Redis when it is back, once.

Real `redis-server` on loopback; `StateBackend` as `kt gateway run --state-url ... --fail-mode allow`
builds it (the end-to-end cases over `kt gateway run` are in tests/test_gateway_control_counters.py).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.control.counters_fallback import FallbackCounters, MergeBatch
from gateway.control.state_backend import StateBackend, StateUnavailable, open_state_backend
from policies.counters import Claim, storage_key
from tests.redis_server import RedisServer
from tests.waiting import async_wait_for

SPEND = "spend-limit:global"


@pytest.fixture
def redis(tmp_path: Path):
    server = RedisServer(tmp_path / "redis", "--appendonly", "yes", "--appendfsync", "always").start()
    yield server
    server.kill()


def spend(usd: float, limit: float | None = 1.0) -> list[Claim]:
    return [Claim(SPEND, "day", usd, limit)]


async def stored(backend: StateBackend, key: str = SPEND, window: str = "day") -> float:
    return await backend.redis.value("p", key, window)


class LostReplies:
    """Wraps `RedisCounters.merge`: the calls listed in `plan` fail ("before": not sent; "after": applied,
    the reply lost), the others pass; every call is recorded."""

    def __init__(self, merge: Callable[[MergeBatch], Awaitable[Any]], plan: dict[int, str]) -> None:
        self.merge, self.plan, self.calls = merge, plan, []

    async def __call__(self, batch: MergeBatch) -> Any:
        self.calls.append(batch.id)
        how = self.plan.get(len(self.calls))
        if how == "before":
            raise ConnectionError("Connection reset by peer (test)")
        result = await self.merge(batch)
        if how == "after":
            raise ConnectionError("Connection reset by peer (test)")
        return result


def test_an_outage_is_merged_once_even_when_the_merge_is_cut_off_before_and_after_redis_applied_it(
        redis: RedisServer) -> None:
    async def go() -> None:
        backend = open_state_backend(None, redis.url, fail_mode="allow")
        assert (await backend.reserve("p", spend(0.25)))[0].applied  # in Redis
        redis.kill()
        assert [r.applied for r in await backend.reserve("p", spend(0.25))] == [True]  # counted here
        assert not backend.up and backend.unmerged == 1
        backend.apply_later("p", [Claim(SPEND, "day", -0.05)])  # a settlement while down: journalled too
        await async_wait_for(lambda: not backend._pending)
        flaky = LostReplies(backend.redis.merge, {1: "before", 2: "after"})
        backend.redis.merge = flaky
        redis.start()
        await async_wait_for(lambda: backend.up, timeout=15)
        assert len(flaky.calls) == 3 and len(set(flaky.calls)) == 1  # one batch, retried under its id
        assert await stored(backend) == pytest.approx(0.45)  # 0.25 + 0.25 - 0.05, not 0.65
        assert backend.unmerged == 0
        # the next request sees the combined count: 0.45 + 0.55 fits, a cent more does not
        assert [r.applied for r in await backend.reserve("p", spend(0.56))] == [False]
        await backend.close()

    asyncio.run(go())


def test_a_redis_crash_between_two_batches_merges_the_rest_at_the_next_recovery(redis: RedisServer) -> None:
    async def go() -> None:
        backend = open_state_backend(None, redis.url, fail_mode="allow")
        backend.local.journal.batch_keys = 1
        await backend.reserve("p", spend(0.1))
        redis.kill()
        await backend.reserve("p", [Claim("a", "day", 1), Claim("b", "hour", 2), Claim("c", "session", 3)])
        real = backend.redis.merge

        async def crash_after_first(batch: MergeBatch) -> Any:
            result = await real(batch)
            redis.kill()  # Redis dies mid-merge, after the first batch
            backend.redis.merge = real
            return result

        backend.redis.merge = crash_after_first
        redis.start()
        await async_wait_for(lambda: backend.unmerged == 2, timeout=15)
        assert not backend.up
        redis.start()
        await async_wait_for(lambda: backend.up, timeout=15)
        assert [await stored(backend, k, w) for k, w in (("a", "day"), ("b", "hour"), ("c", "session"))] == [1, 2, 3]
        assert backend.merged_keys == 3
        await backend.close()

    asyncio.run(go())


def test_block_mode_keeps_settlements_made_while_down_and_merges_them(redis: RedisServer) -> None:
    async def go() -> None:
        backend = open_state_backend(None, redis.url, fail_mode="block")
        await backend.reserve("p", spend(0.5))
        redis.kill()
        with pytest.raises(StateUnavailable):
            await backend.reserve("p", spend(0.1))
        backend.apply_later("p", [Claim(SPEND, "day", -0.2)])  # the request's estimate given back
        await async_wait_for(lambda: not backend._pending)
        redis.start()
        await async_wait_for(lambda: backend.up, timeout=15)
        assert await stored(backend) == pytest.approx(0.3)
        await backend.close()

    asyncio.run(go())


def test_merging_skips_ended_windows_and_never_shortens_an_expiry(redis: RedisServer) -> None:
    async def go() -> None:
        backend = open_state_backend(None, redis.url)
        now = time.time()
        ended = FallbackCounters()
        ended.reserve("p", [Claim("old", "hour", 5)], now=now - 7200)
        assert ended.cut(now) == []  # ended before the merge: never sent
        session, expires = storage_key("p", "s1", "session", now)
        await backend.redis.client.set(session, 1, exat=int(expires) + 600)  # another replica's later action
        batch = MergeBatch("t-1", "p", ((session, 2.0, expires), (storage_key("p", "gone", "day", 0)[0], 7.0, 10.0)))
        merged = await backend.redis.merge(batch)
        assert (merged.keys, merged.amount, merged.expired) == (1, 2.0, 1)
        assert float(await backend.redis.client.get(session)) == 3
        assert await backend.redis.client.expiretime(session) == int(expires) + 600
        assert await backend.redis.client.exists(batch.entries[1][0]) == 0
        assert await backend.redis.merge(batch) is None  # the same batch again: already applied
        assert float(await backend.redis.client.get(session)) == 3
        await backend.close()

    asyncio.run(go())


def test_a_merge_cut_off_by_the_process_ending_is_finished_once_by_the_next_one(tmp_path: Path,
                                                                                 redis: RedisServer) -> None:
    async def go() -> None:
        state = tmp_path / "state"
        first = open_state_backend(state, redis.url, fail_mode="allow")
        await first.reserve("p", spend(0.25))
        redis.kill()
        await first.reserve("p", spend(0.25))
        real, applied = first.redis.merge, asyncio.Event()

        async def applied_then_dies(batch: MergeBatch) -> Any:
            await real(batch)
            applied.set()
            await asyncio.Event().wait()  # the process ends here: Redis applied it, nobody confirmed it

        first.redis.merge = applied_then_dies
        redis.start()
        await asyncio.wait_for(applied.wait(), 15)
        await first.close()
        assert await stored(open_state_backend(None, redis.url)) == pytest.approx(0.5)
        again = open_state_backend(state, redis.url, fail_mode="allow")
        assert again.unmerged == 1
        again.resume()
        await async_wait_for(lambda: again.unmerged == 0, timeout=15)
        assert await stored(again) == pytest.approx(0.5)  # sent again under its id: not 0.75
        await again.close()

    asyncio.run(go())


def test_a_journal_that_fails_to_read_does_not_keep_a_healthy_redis_marked_down(tmp_path: Path,
                                                                                redis: RedisServer) -> None:
    """A failing journal (a full or read-only state dir) is no Redis outage: requests go back to Redis and the
    journal waits for the next recovery (before, the probe retried for ever with Redis healthy)."""
    async def go() -> None:
        backend = open_state_backend(tmp_path / "state", redis.url, fail_mode="allow")
        await backend.reserve("p", spend(0.25))
        redis.kill()
        await backend.reserve("p", spend(0.25))  # journalled
        journal = backend.local.journal

        def failing(now: float) -> list[MergeBatch]:
            raise sqlite3.OperationalError("disk I/O error (test)")

        journal.cut = failing
        redis.start()
        await async_wait_for(lambda: backend.up, timeout=15)
        assert backend.unmerged == 1  # kept
        await backend.reserve("p", spend(0.1))
        assert await stored(backend) == pytest.approx(0.35)  # counted in Redis again
        await backend.close()

    asyncio.run(go())


def test_a_key_that_holds_no_number_is_skipped_and_the_rest_of_the_batch_is_merged(redis: RedisServer) -> None:
    """INCRBYFLOAT on such a key would fail midway through the script, leaving its marker and the counters
    before it while the batch stays unconfirmed; its retry then found the marker and dropped the rest."""
    async def go() -> None:
        backend = open_state_backend(None, redis.url)
        now = time.time()
        good, text, listed = (storage_key("p", name, "day", now) for name in ("good", "text", "listed"))
        await backend.redis.client.set(text[0], "not a number")
        await backend.redis.client.rpush(listed[0], "x")
        batch = MergeBatch("t-2", "p", ((text[0], 1.0, text[1]), (listed[0], 1.0, listed[1]), (good[0], 2.0, good[1])))
        merged = await backend.redis.merge(batch)
        assert (merged.keys, merged.amount, merged.expired) == (1, 2.0, 2)
        assert float(await backend.redis.client.get(good[0])) == 2
        assert await backend.redis.client.get(text[0]) == b"not a number"
        await backend.close()

    asyncio.run(go())
