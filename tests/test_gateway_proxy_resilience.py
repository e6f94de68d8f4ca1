"""Routing and resilience: fallback on 5xx/429/timeout, Retry-After, breakers, round-robin, streams."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import openai
import pytest

from gateway.providers.upstream import Timeouts
from gateway.proxy.resilience import (
    BACKOFF_CAP_S,
    CircuitBreaker,
    RoundRobin,
    attempt_plan,
    backoff_delay,
    parse_retry_after,
)
from policies.model import Target
from tests.fake_upstream import FakeUpstream
from tests.gateway_harness import GatewayThread, write_config
from tests.waiting import wait_for

KEY_ENV = "KT_TEST_UPSTREAM_KEY"
PATH = "/v1/chat/completions"


@pytest.fixture(autouse=True)
def upstream_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-up")


def targets(fake: FakeUpstream, *ids: str) -> list[dict[str, Any]]:
    return [{"id": i, "provider": "openai", "model": "gpt-4o-mini", "base_url": fake.base_url,
             "secret_key_ref": {"env": KEY_ENV}} for i in ids]


def ask(gw: GatewayThread, **kw: Any) -> Any:
    client = openai.OpenAI(base_url=gw.base_url, api_key="k", max_retries=0)
    return client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], **kw)


# --- units ---------------------------------------------------------------------------------------


def test_backoff_is_jittered_and_capped() -> None:
    assert backoff_delay(1, lambda: 1.0) == pytest.approx(0.05)
    assert backoff_delay(3, lambda: 1.0) == pytest.approx(0.2)
    assert backoff_delay(30, lambda: 1.0) == BACKOFF_CAP_S
    assert backoff_delay(3, lambda: 0.0) == 0.0


def test_retry_after_parsing() -> None:
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("Thu, 01 Jan 1970 00:00:10 GMT", now=4.0) == pytest.approx(6.0)
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_circuit_breaker_states() -> None:
    now = [0.0]
    breaker = CircuitBreaker(threshold=2, cooldown_s=10, clock=lambda: now[0])
    breaker.failure()
    assert breaker.state == "closed" and breaker.allow()
    breaker.failure()
    assert breaker.state == "open" and not breaker.allow()
    now[0] = 10.0
    assert breaker.state == "half_open"
    assert breaker.allow() and not breaker.allow()  # exactly one probe
    breaker.failure()
    assert breaker.state == "open"
    now[0] = 20.0
    assert breaker.allow()
    breaker.success()
    assert breaker.state == "closed" and breaker.allow()


def test_attempt_plan_and_round_robin() -> None:
    a, b = Target("a", "openai", "m"), Target("b", "openai", "m")
    assert [t.id for t in attempt_plan([a, b], 2)] == ["a", "b", "a"]
    assert [t.id for t in attempt_plan([a], 0)] == ["a"]
    rr = RoundRobin()
    assert [rr.rotate("m", [a, b])[0].id for _ in range(4)] == ["a", "b", "a", "b"]


# --- through the gateway ---------------------------------------------------------------------------


@pytest.mark.parametrize("fault", [{"kind": "status", "status": 503}, {"kind": "status", "status": 429,
                                                                       "retry_after": 0}])
def test_fallback_to_next_target(tmp_path: Path, fake_upstream: FakeUpstream, start_gateway: Any,
                                 fault: dict[str, Any]) -> None:
    gw = start_gateway(write_config(tmp_path / "c.yaml", targets(fake_upstream, "first", "second")))
    fake_upstream.add_fault(fault.pop("kind"), **fault)
    fake_upstream.queue_reply("from the second")
    assert ask(gw).choices[0].message.content == "from the second"
    assert len(fake_upstream.requests_to(PATH)) == 2
    event = wait_for(lambda: gw.events)[-1]
    assert event["attempts"] == 2 and event["target"] == "second" and event["status"] == 200


def test_timeout_falls_back_and_exhaustion_is_504(tmp_path: Path, fake_upstream: FakeUpstream,
                                                  start_gateway: Any) -> None:
    cfg = write_config(tmp_path / "c.yaml", targets(fake_upstream, "slow", "fast"),
                       fallback={"strategy": "ordered", "max_retries": 1, "retry_on": ["timeout"]})
    gw = start_gateway(cfg, timeouts=Timeouts(connect_s=1.0, read_s=0.3))
    fake_upstream.add_fault("hang")
    assert ask(gw).choices[0].message.content
    fake_upstream.add_fault("hang", times=2)
    with pytest.raises(openai.APIStatusError) as err:
        ask(gw)
    assert err.value.status_code == 504 and err.value.body["code"] == "upstream_timeout"


def test_5xx_not_in_retry_on_is_not_retried(tmp_path: Path, fake_upstream: FakeUpstream,
                                           start_gateway: Any) -> None:
    cfg = write_config(tmp_path / "c.yaml", targets(fake_upstream, "a", "b"),
                       fallback={"strategy": "ordered", "max_retries": 2, "retry_on": ["timeout"]})
    gw = start_gateway(cfg)
    fake_upstream.add_fault("status", status=500)
    with pytest.raises(openai.APIStatusError) as err:
        ask(gw)
    assert err.value.status_code == 502 and err.value.body["type"] == "upstream_error"
    assert len(fake_upstream.requests_to(PATH)) == 1


def test_long_retry_after_is_passed_to_the_client(tmp_path: Path, fake_upstream: FakeUpstream,
                                                  start_gateway: Any) -> None:
    gw = start_gateway(write_config(tmp_path / "c.yaml", targets(fake_upstream, "only")))
    fake_upstream.add_fault("status", status=429, retry_after=30)
    with pytest.raises(openai.RateLimitError) as err:
        ask(gw)
    assert err.value.response.headers["retry-after"] == "30"
    assert len(fake_upstream.requests_to(PATH)) == 1  # not retried: the wait is longer than we hold a request


def test_upstream_4xx_is_not_retried_and_keeps_its_status(tmp_path: Path, fake_upstream: FakeUpstream,
                                                          start_gateway: Any) -> None:
    gw = start_gateway(write_config(tmp_path / "c.yaml", targets(fake_upstream, "a", "b")))
    fake_upstream.add_fault("status", status=400, message="bad temperature")
    with pytest.raises(openai.BadRequestError) as err:
        ask(gw)
    assert "bad temperature" in err.value.body["message"]
    assert len(fake_upstream.requests_to(PATH)) == 1


def test_circuit_breaker_opens_then_probes(tmp_path: Path, fake_upstream: FakeUpstream,
                                           start_gateway: Any) -> None:
    cfg = write_config(tmp_path / "c.yaml", targets(fake_upstream, "flaky"),
                       fallback={"strategy": "ordered", "max_retries": 0, "retry_on": ["5xx"]})
    gw = start_gateway(cfg, breaker_threshold=2, breaker_cooldown_s=3600)
    fake_upstream.add_fault("status", status=500, times=2)
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            ask(gw)
    with pytest.raises(openai.APIStatusError) as err:
        ask(gw)
    assert err.value.status_code == 503 and err.value.body["code"] == "circuit_open"
    assert len(fake_upstream.requests_to(PATH)) == 2  # the open breaker kept the third away
    breaker = gw.services().breakers.get("flaky")
    gw.call(lambda: setattr(breaker, "opened_at", time.monotonic() - 3600))  # cool-down over: half-open
    assert ask(gw).choices[0].message.content
    assert gw.call(lambda: breaker.state) == "closed"


def test_round_robin_spreads_requests(tmp_path: Path, fake_upstream: FakeUpstream, start_gateway: Any) -> None:
    cfg = write_config(tmp_path / "c.yaml", targets(fake_upstream, "a", "b"),
                       fallback={"strategy": "round-robin", "max_retries": 1, "retry_on": ["5xx"]})
    gw = start_gateway(cfg)
    for _ in range(4):
        ask(gw)
    assert [e["target"] for e in wait_for(lambda: len(gw.events) == 4 and gw.events)] == ["a", "b", "a", "b"]


def test_stream_retried_before_first_byte_but_not_after(tmp_path: Path, fake_upstream: FakeUpstream,
                                                        start_gateway: Any) -> None:
    gw = start_gateway(write_config(tmp_path / "c.yaml", targets(fake_upstream, "a", "b")))
    fake_upstream.add_fault("status", status=502)
    fake_upstream.queue_reply("streamed after a retry", chunks=3)
    text = "".join(c.choices[0].delta.content or "" for c in ask(gw, stream=True) if c.choices)
    assert text == "streamed after a retry"
    fake_upstream.reset()
    fake_upstream.queue_reply("this stream breaks in the middle", chunks=6)
    fake_upstream.add_fault("disconnect", after_chunks=3)
    got: list[str] = []
    with pytest.raises(openai.APIError):
        for c in ask(gw, stream=True):
            got += [c.choices[0].delta.content or "" for c in [c] if c.choices]
    assert "".join(got) and len(fake_upstream.requests_to(PATH)) == 1  # no second attempt
    event = wait_for(lambda: gw.events[-1]["error_code"] and gw.events)[-1]
    assert event["error_code"] == "upstream_error" and event["attempts"] == 1


def test_malformed_upstream_answer_is_retried_then_502(tmp_path: Path, fake_upstream: FakeUpstream,
                                                      start_gateway: Any) -> None:
    gw = start_gateway(write_config(tmp_path / "c.yaml", targets(fake_upstream, "a", "b")))
    fake_upstream.add_fault("malformed")
    assert ask(gw).choices[0].message.content  # the second target answered
    fake_upstream.add_fault("malformed", times=3)
    with pytest.raises(openai.APIStatusError) as err:
        ask(gw)
    assert err.value.status_code == 502 and "invalid JSON" in err.value.body["message"]


def test_client_leaving_mid_stream_is_recorded(tmp_path: Path, fake_upstream: FakeUpstream,
                                               start_gateway: Any) -> None:
    import socket

    gw = start_gateway(write_config(tmp_path / "c.yaml", targets(fake_upstream, "a")))
    fake_upstream.queue_reply("a long answer " * 20, chunks=20, chunk_delay=0.05)
    body = b'{"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "hi"}]}'
    with socket.create_connection(("127.0.0.1", int(gw.url.rsplit(":", 1)[1])), timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        assert b"data: " in sock.recv(65536)
    event = wait_for(lambda: gw.events and gw.events[-1], timeout=10)
    assert event["status"] == 499 and event["error_code"] == "client_closed"
    assert wait_for(lambda: gw.runtime.in_flight == 0 or None) is True
