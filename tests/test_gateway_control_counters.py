"""Counters that hold across processes, replicas and restarts: SQLite (default) and Redis (--state-url).

Real parts: `kt gateway run` subprocesses, a real `redis-server` on loopback, the built-in mock
provider. Each request of `BUDGET_CONFIG` reserves and spends exactly $0.01 (max_tokens 1 at
$10,000 per output Mtok; input free), so a $0.05 day lets exactly five through, wherever they land.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gateway.control.counters_sqlite import SqliteCounters
from policies.counters import Claim, storage_key
from tests.gateway_process import GatewayProcess
from tests.kt_process import run_kt
from tests.redis_server import RedisServer
from tests.spend_budget import BUDGET_CONFIG, ask
from tests.waiting import wait_for


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "policy-config.yaml"
    path.write_text(BUDGET_CONFIG)
    return path


@pytest.fixture
def redis(tmp_path: Path):
    server = RedisServer(tmp_path / "redis", "--appendonly", "yes", "--appendfsync", "always").start()
    yield server
    server.kill()


def race(gws: list[GatewayProcess], n: int) -> list[int]:
    """`n` requests at once, spread over `gws`; their statuses."""
    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(lambda i: ask(gws[i % len(gws)])[0], range(n)))


def test_sqlite_counters_are_one_budget_for_two_connections_and_survive_reopening(tmp_path: Path) -> None:
    a, b = SqliteCounters(tmp_path / "c.db"), SqliteCounters(tmp_path / "c.db")
    claim = Claim("spend-limit:global", "day", 0.01, 0.02, hold=True)
    assert [r.applied for r in (a.reserve("p", [claim])[0], b.reserve("p", [claim])[0], a.reserve("p", [claim])[0])] \
        == [True, True, False]
    a.close()
    assert SqliteCounters(tmp_path / "c.db").value("p", "spend-limit:global", "day") == pytest.approx(0.02)
    assert b.value("other-pack", "spend-limit:global", "day") == 0  # packs never share a budget


def test_redis_script_is_all_or_nothing_and_expires_at_the_window_end(redis: RedisServer) -> None:
    from gateway.control.counters_redis import RedisCounters

    async def go() -> None:
        counters = RedisCounters(redis.url)
        ok = await counters.reserve("p", [Claim("a", "day", 0.5, 1.0), Claim("b", "hour", 1, 2)])
        assert all(r.ok and r.applied for r in ok)
        refused = await counters.reserve("p", [Claim("a", "day", 0.6, 1.0), Claim("b", "hour", 1, 2),
                                               Claim("c", "day", 0.25)])
        assert [(r.ok, r.applied) for r in refused] == [(False, False), (True, False), (True, True)]
        assert await counters.value("p", "a", "day") == pytest.approx(0.5)
        assert await counters.value("p", "b", "hour") == 1
        ttl = await counters.client.ttl(storage_key("p", "b", "hour", time.time())[0])
        assert 0 < ttl <= 3660
        await counters.close()

    asyncio.run(go())


def test_two_gateways_on_one_redis_share_a_budget_to_the_cent(tmp_path: Path, config: Path, redis: RedisServer,
                                                              gateway_process) -> None:
    gws = [gateway_process(config, "--state-url", redis.url, state=tmp_path / f"state-{i}") for i in range(2)]
    statuses = race(gws, 12)
    assert statuses.count(200) == 5 and statuses.count(409) == 7
    assert gws[0].metric("keeptrusts_state_backend_up", '{backend="redis"}') == 1


def test_two_gateways_on_one_state_dir_share_a_budget_and_a_restart_keeps_it(tmp_path: Path, config: Path,
                                                                             gateway_process) -> None:
    state = tmp_path / "state"
    gws = [gateway_process(config, state=state) for _ in range(2)]  # the workers of one host: one counters.db
    assert race(gws, 8).count(200) == 5
    for gw in gws:
        gw.stop()
    again = gateway_process(config, state=state)
    status, body = ask(again)
    assert status == 409 and body["error"]["code"] == "budget_exceeded"  # a restart forgives nothing


def test_a_restart_keeps_the_redis_budget(tmp_path: Path, config: Path, redis: RedisServer, gateway_process) -> None:
    gw = gateway_process(config, "--state-url", redis.url, state=tmp_path / "state-a")
    assert [ask(gw)[0] for _ in range(5)] == [200] * 5
    gw.stop()
    again = gateway_process(config, "--state-url", redis.url, state=tmp_path / "state-b")
    assert ask(again)[0] == 409


def test_redis_down_follows_the_fail_mode_and_a_redis_restart_keeps_the_counts(
        tmp_path: Path, config: Path, redis: RedisServer, gateway_process) -> None:
    closed = gateway_process(config, "--state-url", redis.url, state=tmp_path / "state-a")
    opened = gateway_process(config, "--state-url", redis.url, "--fail-mode", "allow", state=tmp_path / "state-b")
    assert [ask(closed)[0] for _ in range(3)] == [200] * 3
    redis.kill()  # a crash mid-load: appendfsync always loses nothing that was acknowledged
    status, body = ask(closed)
    assert status == 503 and body["error"]["code"] == "state_unavailable"
    assert f"127.0.0.1:{redis.port}" in body["error"]["message"]  # says which store
    assert ask(opened)[0] == 200  # allow: counted locally
    assert opened.metric("keeptrusts_state_backend_up", '{backend="redis"}') == 0
    assert closed.metric("keeptrusts_state_backend_errors_total") >= 1
    redis.start()
    wait_for(lambda: all(gw.metric("keeptrusts_state_backend_up", '{backend="redis"}') == 1
                         for gw in (closed, opened)), timeout=15)
    # 3 before the crash + the 1 `opened` admitted meanwhile (merged when Redis was back) + 1 = the $0.05
    assert [ask(closed)[0] for _ in range(2)] == [200, 409]


def test_the_password_never_shows(tmp_path: Path, config: Path, gateway_process) -> None:
    server = RedisServer(tmp_path / "redis", "--requirepass", "s3cret-pw").start()
    try:
        secret_file = tmp_path / "pw"
        secret_file.write_text("s3cret-pw\n")
        gw = gateway_process(config, "--state-url", server.url, "--state-password-file", str(secret_file),
                             state=tmp_path / "state")
        assert ask(gw)[0] == 200
        url_with_pw = server.url.replace("redis://", "redis://:s3cret-pw@")
        gw2 = gateway_process(config, "--state-url", url_with_pw, state=tmp_path / "state2")
        assert ask(gw2)[0] == 200
        server.kill()
        status, body = ask(gw2)
        assert status == 503 and "s3cret-pw" not in json.dumps(body)
        assert "s3cret-pw" not in gw2.logs() and "s3cret-pw" not in gw.logs()
    finally:
        server.kill()


def test_kt_doctor_reports_an_unreachable_counter_store(tmp_path: Path, config: Path, redis: RedisServer,
                                                       gateway_process) -> None:
    import subprocess

    gw = gateway_process(config, "--state-url", redis.url, state=tmp_path / "state")

    def doctor() -> subprocess.CompletedProcess[str]:
        return run_kt("doctor", "--gateway", gw.url, "--json")

    checks = {c["name"]: c for c in json.loads(doctor().stdout)["checks"]}
    assert checks["counter store"]["status"] == "ok" and "redis" in checks["counter store"]["detail"]
    redis.kill()
    assert ask(gw)[0] == 503
    run = doctor()
    checks = {c["name"]: c for c in json.loads(run.stdout)["checks"]}
    assert checks["counter store"]["status"] == "fail" and run.returncode != 0
    assert gw.get("/health")[1]["problems"] == ["counter store unreachable"]


def test_a_redis_crash_mid_load_loses_no_acknowledged_count(tmp_path: Path, redis: RedisServer,
                                                          gateway_process) -> None:
    """Under load, kill -9 Redis (appendfsync always) and start it again: every request answered 200
    has its $0.01 in Redis afterwards (at most the requests in flight at the crash are counted but
    refused); the ones in between got 503 state_unavailable (block)."""
    import threading

    import redis as redis_py

    config = tmp_path / "big.yaml"
    config.write_text(BUDGET_CONFIG.replace("max_daily_usd: 0.05", "max_daily_usd: 1000"))
    gws = [gateway_process(config, "--state-url", redis.url, state=tmp_path / f"state-{i}") for i in range(2)]
    statuses: list[int] = []
    stop = threading.Event()

    def load(gw: GatewayProcess) -> None:
        while not stop.is_set():
            statuses.append(ask(gw)[0])

    threads = [threading.Thread(target=load, args=(gws[i % 2],)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: statuses.count(200) >= 20, timeout=30)
        redis.kill()
        wait_for(lambda: 503 in statuses, timeout=30)
        redis.start()
        wait_for(lambda: all(gw.metric("keeptrusts_state_backend_up", '{backend="redis"}') == 1 for gw in gws),
                 timeout=30)
        settled = len(statuses)
        wait_for(lambda: statuses[settled:].count(200) >= 20, timeout=30)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert set(statuses) <= {200, 503}
    client = redis_py.Redis.from_url(redis.url)
    key = storage_key("budget", "spend-limit:global", "day", time.time())[0]
    counted = round(float(client.get(key) or 0) / 0.01, 6)
    # nothing answered is lost; a request in flight at the crash (4 clients) may be counted and refused
    assert statuses.count(200) <= counted <= statuses.count(200) + len(threads), (counted, statuses.count(200))


def stored_spend(redis: RedisServer) -> float:
    """Today's global spend of the `budget` pack as Redis holds it."""
    import redis as redis_py

    client = redis_py.Redis.from_url(redis.url)
    try:
        return float(client.get(storage_key("budget", "spend-limit:global", "day", time.time())[0]) or 0)
    finally:
        client.close()


def test_spend_admitted_during_a_redis_outage_is_merged_when_it_is_back(
        tmp_path: Path, config: Path, redis: RedisServer, gateway_process) -> None:
    """Fail-open: what a replica admitted while Redis was down counts against the budget afterwards,
    on every replica; the budget left is budget - (spend before + spend during the outage)."""
    a = gateway_process(config, "--state-url", redis.url, "--fail-mode", "allow", state=tmp_path / "state-a")
    b = gateway_process(config, "--state-url", redis.url, "--fail-mode", "allow", state=tmp_path / "state-b")
    assert ask(a)[0] == 200  # $0.01 in Redis
    redis.kill()
    assert [ask(a)[0] for _ in range(2)] == [200, 200]  # $0.02 counted in a's memory
    assert a.metric("keeptrusts_state_backend_up", '{backend="redis"}') == 0
    redis.start()  # same port, same data dir
    wait_for(lambda: a.metric("keeptrusts_state_backend_up", '{backend="redis"}') == 1, timeout=15)
    assert stored_spend(redis) == pytest.approx(0.03)
    assert a.metric("keeptrusts_state_backend_merged_keys_total") == 1
    assert "merged 1 counter(s)" in a.logs()
    assert [ask(b)[0], ask(a)[0], ask(b)[0], ask(a)[0]] == [200, 200, 409, 409]  # $0.05 - $0.03 left
    assert stored_spend(redis) == pytest.approx(0.05)


def test_during_a_redis_outage_a_replica_starts_from_the_spend_it_last_saw(
        tmp_path: Path, config: Path, redis: RedisServer, gateway_process) -> None:
    gw = gateway_process(config, "--state-url", redis.url, "--fail-mode", "allow")
    assert [ask(gw)[0] for _ in range(2)] == [200, 200]
    redis.kill()
    assert [ask(gw)[0] for _ in range(4)] == [200, 200, 200, 409]  # $0.02 seen: $0.03 left, not $0.05
    redis.start()
    wait_for(lambda: gw.metric("keeptrusts_state_backend_up", '{backend="redis"}') == 1, timeout=15)
    assert stored_spend(redis) == pytest.approx(0.05)
    assert ask(gw)[0] == 409


def test_a_gateway_restarted_during_a_redis_outage_merges_what_it_admitted_when_redis_is_back(
        tmp_path: Path, config: Path, redis: RedisServer, gateway_process) -> None:
    gw = gateway_process(config, "--state-url", redis.url, "--fail-mode", "allow")
    assert ask(gw)[0] == 200
    redis.kill()
    assert [ask(gw)[0] for _ in range(2)] == [200, 200]  # journalled in <state>/counters-journal.db
    gw.stop()
    redis.start()
    again = gateway_process(config, "--state-url", redis.url, "--fail-mode", "allow", state=tmp_path / "state")
    wait_for(lambda: again.metric("keeptrusts_state_backend_merged_keys_total") == 1, timeout=15)
    assert stored_spend(redis) == pytest.approx(0.03)
    assert [ask(again)[0] for _ in range(3)] == [200, 200, 409]
    assert "1 counter(s) counted during an outage are not merged into Redis yet" in gw.logs()


def test_the_workers_of_a_host_share_one_journal_and_merge_it_once(tmp_path: Path, redis: RedisServer,
                                                                  gateway_process) -> None:
    import sqlite3

    config = tmp_path / "big.yaml"
    config.write_text(BUDGET_CONFIG.replace("max_daily_usd: 0.05", "max_daily_usd: 1000"))
    gw = gateway_process(config, "--workers", "2", "--state-url", redis.url, "--fail-mode", "allow")
    wait_for(lambda: len([w for w in gw.get("/health")[1].get("workers") or () if w.get("ready")]) == 2, timeout=20)
    assert race([gw], 4) == [200] * 4
    redis.kill()
    assert race([gw], 16) == [200] * 16  # counted by whichever worker took each, journalled in one file
    redis.start()

    def unmerged() -> int:
        with contextlib.closing(sqlite3.connect(tmp_path / "state" / "counters-journal.db")) as db:
            return db.execute("SELECT (SELECT count(*) FROM journal) + (SELECT count(*) FROM batches)").fetchone()[0]

    wait_for(lambda: unmerged() == 0 and gw.metric("keeptrusts_state_backend_up", '{backend="redis"}') == 1,
             timeout=15)
    assert stored_spend(redis) == pytest.approx(0.20)
