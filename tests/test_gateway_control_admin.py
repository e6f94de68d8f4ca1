"""Health and admin endpoints over real HTTP on loopback (in-process server)."""

from __future__ import annotations

import asyncio
import time

import orjson
import tornado.httpserver
import tornado.netutil
import tornado.web
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from gateway.control.admin import admin_routes
from gateway.control.ops import Ops
from gateway.control.runtime import Runtime
from tests.reloading import INVALID, config
from tests.waiting import async_wait_for


def run_admin(tmp_path, body, token: str | None = None) -> None:
    """Serve the admin routes of an `Ops` on a free port and run `body(ops, fetch)`."""
    path = tmp_path / "policy-config.yaml"
    path.write_text(config("1.0.0"))

    async def main():
        ops = Ops(Runtime(), str(path), state_dir=tmp_path / "state", version="9.9.9", admin_token=token,
                  api_url=None, watch=False)
        ops.load_initial()
        await ops.start()
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        server = tornado.httpserver.HTTPServer(tornado.web.Application(admin_routes(ops)))
        server.add_sockets(sockets)
        base = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
        client = AsyncHTTPClient()

        async def fetch(path, method="GET", headers=None):
            body = b"" if method == "POST" else None
            response = await client.fetch(HTTPRequest(base + path, method=method, headers=headers, body=body),
                                          raise_error=False)
            is_json = response.headers.get("Content-Type", "").startswith("application/json")
            return response.code, orjson.loads(response.body) if is_json else response.body.decode()

        try:
            await body(ops, fetch)
        finally:
            server.stop()
            await ops.stop()

    asyncio.run(main())


def test_health_status_config_and_metrics(tmp_path):
    async def body(ops, fetch):
        assert await fetch("/healthz") == (200, {"status": "ok"})
        code, ready = await fetch("/readyz")
        assert code == 200 and ready["revision"] == ops.runtime.snapshot.revision
        code, health = await fetch("/health")
        assert code == 200 and health["status"] == "healthy" and health["version"] == "9.9.9"
        assert health["providers"] == {"demo": {"provider": "mock", "circuit": "closed", "unavailable": None}}
        code, status = await fetch("/keeptrusts/status")
        assert code == 200 and set(status) >= {"config", "reload", "sync", "age_seconds", "drift"}
        assert status["config"]["pack"] == {"name": "reload-pack", "version": "1.0.0"}
        assert status["config"]["source"] == "file" and status["sync"] is None
        assert status["drift"] == {"drifted": False, "reason": None}
        code, view = await fetch("/keeptrusts/config")
        assert code == 200 and view["config"]["pack"]["name"] == "reload-pack" and view["sha256"]
        code, text = await fetch("/metrics")
        assert code == 200 and "keeptrusts_config_info{" in text
        ops.runtime.draining = True
        assert (await fetch("/readyz"))[0] == 503

    run_admin(tmp_path, body)


def test_invalid_reload_is_refused_and_visible(tmp_path):
    async def body(ops, fetch):
        before = ops.runtime.snapshot
        (tmp_path / "policy-config.yaml").write_text(INVALID)
        code, answer = await fetch("/keeptrusts/config/reload", "POST")
        assert code == 422 and answer["error"]["code"] == "config_invalid" and answer["error"]["findings"]
        assert ops.runtime.snapshot is before
        _, status = await fetch("/keeptrusts/status")
        assert status["reload"]["last_result"] == "error" and "no-such-kind" in status["reload"]["last_error"]
        assert status["drift"] == {"drifted": True, "reason": "reload_failed"}
        _, health = await fetch("/health")
        assert health["status"] == "degraded"
        _, text = await fetch("/metrics")
        assert 'keeptrusts_config_drift{reason="reload_failed"} 1.0' in text
        (tmp_path / "policy-config.yaml").write_text(config("2.0.0"))
        code, answer = await fetch("/keeptrusts/config/reload", "POST")
        assert code == 200 and answer["result"] == "ok"
        _, status = await fetch("/keeptrusts/status")
        assert status["drift"]["drifted"] is False and status["config"]["pack"]["version"] == "2.0.0"

    run_admin(tmp_path, body)


def test_admin_endpoints_need_the_token_health_and_metrics_stay_open(tmp_path):
    async def body(ops, fetch):
        for path in ("/keeptrusts/status", "/keeptrusts/config", "/keeptrusts/events", "/keeptrusts/events/summary"):
            code, answer = await fetch(path)
            assert code == 401 and answer["error"]["code"] == "invalid_admin_token"
            assert (await fetch(path, headers={"Authorization": "Bearer wrong"}))[0] == 401
            assert (await fetch(path, headers={"Authorization": "Bearer s3cret"}))[0] == 200
        assert (await fetch("/keeptrusts/config/reload", "POST"))[0] == 401
        for path in ("/healthz", "/readyz", "/health", "/metrics"):
            assert (await fetch(path))[0] == 200

    run_admin(tmp_path, body, token="s3cret")


def test_events_endpoint_filters_and_pages(tmp_path):
    async def body(ops, fetch):
        now = time.time()
        for n, verdict in enumerate(["allow", "block", "allow", "redact"]):
            ops.runtime.record_event({"id": f"evt_{n}", "timestamp": now - 10 + n, "verdict": verdict})
        await async_wait_for(lambda: ops.store.count() == 4, timeout=20)
        _, page = await fetch("/keeptrusts/events?limit=2")
        assert [e["id"] for e in page["events"]] == ["evt_2", "evt_3"] and page["next_after"] == "evt_3"
        _, page = await fetch("/keeptrusts/events?verdict=block&since=1h")
        assert [e["id"] for e in page["events"]] == ["evt_1"]
        _, page = await fetch("/keeptrusts/events?after=evt_1")
        assert [e["id"] for e in page["events"]] == ["evt_2", "evt_3"]
        code, answer = await fetch("/keeptrusts/events?since=yesterday")
        assert code == 400 and "5m" in answer["error"]["message"]
        code, answer = await fetch("/keeptrusts/events?limit=-3")
        assert code == 400 and "whole number" in answer["error"]["message"]

    run_admin(tmp_path, body)


def test_events_summary_counts_every_event_of_the_window_not_the_newest_1000(tmp_path):
    async def body(ops, fetch):
        now = time.time()
        verdicts = ["allow", "allow", "block", "redact"] * 400  # 1,600 events in the last 20 minutes
        for n, verdict in enumerate(verdicts):
            ops.runtime.record_event({"id": f"evt_{n}", "timestamp": now - 1200 + n * 0.7, "verdict": verdict,
                                      "model": "demo-model", "provider": "mock", "latency_ms": 1.0 + n % 50,
                                      "policies": [{"policy": "dlp-filter", "verdict": verdict}]})
        await async_wait_for(lambda: ops.store.count() == 1600, timeout=20)
        assert len((await fetch("/keeptrusts/events?since=1h&limit=5000"))[1]["events"]) == 1000  # the old limit
        code, summary = await fetch("/keeptrusts/events/summary?since=1h&slices=12")
        assert code == 200 and summary["requests"] == 1600 and summary["slices"] == 12
        assert summary["verdicts"] == {"allow": 800, "block": 400, "redact": 400}
        assert summary["policies"] == [{"policy": "dlp-filter", "requests": 1600, "blocks": 400, "redactions": 0}]
        assert 45 <= summary["latency"]["p99_ms"] <= 55 and summary["histogram"]["relative_error"] < 0.1
        _, blocks = await fetch("/keeptrusts/events/summary?since=1h&verdict=block&model=DEMO")
        assert blocks["requests"] == 400
        _, other = await fetch("/keeptrusts/events/summary?since=1h&provider=openai")
        assert other["requests"] == 0 and other["latency"]["p50_ms"] is None
        code, answer = await fetch("/keeptrusts/events/summary?slices=0")
        assert code == 400 and "slices" in answer["error"]["message"]
        code, answer = await fetch("/keeptrusts/events/summary?until=soon")
        assert code == 400 and "5m" in answer["error"]["message"]
        for query in ("since=nan", "until=inf", "since=-inf", "since=1e300", "since=99999999999999w",
                      "slices=%C2%B2", "slices=" + "9" * 5000, "limit=" + "9" * 5000):  # no time, no number: not a 500
            path = "/keeptrusts/events" if query.startswith("limit") else "/keeptrusts/events/summary"
            code, answer = await fetch(f"{path}?{query}")
            assert code == 400 and answer["error"]["code"] == "invalid_query", query

    run_admin(tmp_path, body)
