"""Metrics: derived from decision events, bounded labels, valid Prometheus text (promtool)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from gateway.control import metrics
from gateway.control.reload import load_snapshot
from gateway.control.runtime import Runtime
from tests.gitserve import config_yaml

CONFIG = config_yaml("1.2.3", name="metrics-pack")


def _event(**over):
    event = {
        "id": "evt_1", "timestamp": "2026-11-27T12:00:00Z", "request_id": "req_1", "route": "/v1/chat/completions",
        "provider": "mock", "target": "demo", "model": "demo-model", "status": 200, "verdict": "allow",
        "reason_code": "all_policies_passed", "latency_ms": 3.5, "upstream_latency_ms": 1.0,
        "input_tokens": 10, "output_tokens": 4,
        "policies": [{"policy": "audit-logger", "phase": "input", "verdict": "allow", "latency_ms": 0.01}],
    }
    event.update(over)
    return event


def _value(name: str, labels: dict[str, str]) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def runtime(tmp_path):
    path = tmp_path / "policy-config.yaml"
    path.write_text(CONFIG)
    rt = Runtime(snapshot=load_snapshot(path))
    metrics.bind(runtime=rt, version="test")
    yield rt
    metrics.bind()


def test_event_updates_request_token_and_policy_metrics(runtime):
    labels = {"route": "/v1/chat/completions", "provider": "mock", "model": "demo-model", "status": "200",
              "verdict": "allow"}
    before = _value("keeptrusts_gateway_requests_total", labels)
    tokens = _value("keeptrusts_gateway_tokens_total", {"direction": "input", "model": "demo-model"})
    policy = _value("keeptrusts_gateway_policy_evaluations_total", {"policy": "audit-logger", "result": "allow"})
    metrics.observe_event(_event())
    assert _value("keeptrusts_gateway_requests_total", labels) == before + 1
    assert _value("keeptrusts_gateway_tokens_total", {"direction": "input", "model": "demo-model"}) == tokens + 10
    assert _value("keeptrusts_gateway_policy_evaluations_total",
                  {"policy": "audit-logger", "result": "allow"}) == policy + 1


def test_unknown_values_collapse_to_bounded_labels(runtime):
    before = _value("keeptrusts_gateway_requests_total", {"route": "other", "provider": "none", "model": "other",
                                                          "status": "400", "verdict": "other"})
    metrics.observe_event(_event(route="/v1/chat/completions/../x", provider=None, model="user-chosen-123",
                                 status=400, verdict="weird", policies=[{"policy": "nope"}], latency_ms="bad"))
    after = _value("keeptrusts_gateway_requests_total", {"route": "other", "provider": "none", "model": "other",
                                                         "status": "400", "verdict": "other"})
    assert after == before + 1
    assert "user-chosen-123" not in metrics.render().decode()


def test_policy_labels_follow_the_running_config(runtime, tmp_path):
    def count(policy: str) -> float:
        return _value("keeptrusts_gateway_policy_evaluations_total", {"policy": policy, "result": "allow"})

    known, other = count("audit-logger"), count("other")
    metrics.observe_event(_event())
    assert (count("audit-logger"), count("other")) == (known + 1, other)
    path = tmp_path / "next.yaml"  # a config without audit-logger: its results are now "other"
    path.write_text(CONFIG.replace("chain: [audit-logger]", "chain: []"))
    runtime.snapshot = load_snapshot(path)
    metrics.observe_event(_event())
    assert (count("audit-logger"), count("other")) == (known + 1, other + 1)


def test_scrape_time_gauges_follow_the_runtime(runtime):
    runtime.in_flight = 3
    runtime.events.put({"id": "evt_q"})
    text = metrics.render().decode()
    assert "keeptrusts_gateway_in_flight_requests 3.0" in text
    assert 'keeptrusts_events_pending{stage="queue"} 1.0' in text
    snap = runtime.snapshot
    assert (f'keeptrusts_config_info{{pack="metrics-pack",revision="{snap.revision}",sha256="{snap.sha256}",'
            f'source="file",version="1.2.3"}} 1.0') in text
    assert 'keeptrusts_config_drift{reason="reload_failed"} 0.0' in text
    metrics.bind(runtime=runtime, drift=lambda: (True, "reload_failed"), age=lambda: 42.0)
    text = metrics.render().decode()
    assert 'keeptrusts_config_drift{reason="reload_failed"} 1.0' in text
    assert "keeptrusts_config_age_seconds 42.0" in text


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_accepts_the_exposition(runtime):
    metrics.observe_event(_event())
    out = subprocess.run(["promtool", "check", "metrics"], input=metrics.render(), capture_output=True, timeout=30)
    assert out.returncode == 0, out.stdout.decode() + out.stderr.decode()
