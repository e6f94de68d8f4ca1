"""--max-concurrency: past the limit a proxied request gets 503 overloaded at once; health never refused."""

from __future__ import annotations

import http.client
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fake_upstream import FakeUpstream
from tests.gateway_harness import write_config
from tests.waiting import wait_for

KEY_ENV = "KT_TEST_CAPACITY_KEY"


def post(port: int, body: bytes = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}'
         ) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data


def get(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", path)
    status = conn.getresponse().status
    conn.close()
    return status


def test_over_max_concurrency_is_503_overloaded_at_once_and_health_still_answers(
        tmp_path: Path, fake_upstream: FakeUpstream, start_gateway: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-upstream")
    cfg = write_config(tmp_path / "c.yaml", [{"id": "p", "provider": "openai", "model": "gpt-4o-mini",
                                               "base_url": fake_upstream.base_url, "secret_key_ref": {"env": KEY_ENV}}])
    gw = start_gateway(cfg, max_concurrency=2)
    port = int(gw.url.rsplit(":", 1)[1])
    fake_upstream.add_fault("slow", times=2, delay=3.0)
    held = [threading.Thread(target=post, args=(port,)) for _ in range(2)]
    for t in held:
        t.start()
    wait_for(lambda: gw.runtime.in_flight == 2, timeout=10)
    started = time.perf_counter()
    status, headers, body = post(port)
    assert time.perf_counter() - started < 1.0  # refused at once, not queued behind the two
    assert status == 503 and b'"overloaded"' in body and headers["retry-after"] == "1"
    assert [get(port, p) for p in ("/healthz", "/readyz", "/health", "/metrics")] == [200] * 4
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/metrics")
    metrics = conn.getresponse().read().decode()
    assert "keeptrusts_gateway_max_concurrency 2.0" in metrics
    assert "keeptrusts_gateway_in_flight_requests 2.0" in metrics
    for t in held:
        t.join(30)
    assert post(port)[0] == 200  # capacity is back once they finished


def test_max_concurrency_sizes_the_upstream_pool(tmp_path: Path, gateway_process: Any) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("pack: {name: cap, version: 1.0.0, enabled: true}\nproviders:\n  targets:\n"
                      "    - {id: demo, provider: mock, model: demo-model}\npolicies:\n  chain: [audit-logger]\n"
                      "policy:\n  audit-logger: {retention_days: 30}\n")
    gw = gateway_process(config, "--max-concurrency", "3000", "--log-format", "text")
    assert "at most 3000 requests in flight (--max-concurrency), 3000 upstream connections" in gw.logs()
