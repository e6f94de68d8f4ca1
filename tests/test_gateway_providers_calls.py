"""Issue 12 §4: upstream calls are not duplicated, and not orphaned.

A real gateway (in-process, loopback sockets) in front of `tests.raw_upstream`; the clients are
the official openai and anthropic SDKs.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from tests.fake_wire import sse
from tests.gateway_harness import GatewayThread, write_config
from tests.raw_upstream import RawConn, RawRequest, RawUpstream
from tests.waiting import wait_for

KEY_ENV = "KT_TEST_UPSTREAM_KEY"
MESSAGES = [{"role": "user", "content": "hi"}]
COMPLETION = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "billed answer"},
                           "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}}
NO_RETRY = {"strategy": "ordered", "max_retries": 0, "retry_on": []}


@pytest.fixture(autouse=True)
def upstream_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-up")


@pytest.fixture
def serve(tmp_path: Path, start_gateway: Any) -> Iterator[Callable[..., tuple[GatewayThread, RawUpstream]]]:
    """`serve(respond, fallback=NO_RETRY)` -> (gateway, raw upstream) wired together."""
    ups: list[RawUpstream] = []

    def start(respond: Callable[[RawRequest, RawConn], bool],
              fallback: dict[str, Any] = NO_RETRY) -> tuple[GatewayThread, RawUpstream]:
        up = RawUpstream(respond).__enter__()
        ups.append(up)
        target = {"id": "t", "provider": "openai", "model": "gpt-4o-mini", "base_url": up.base_url,
                  "secret_key_ref": {"env": KEY_ENV}}
        return start_gateway(write_config(tmp_path / f"c{len(ups)}.yaml", [target], fallback=fallback)), up

    yield start
    for up in ups:
        up.__exit__()


def oai(gw: GatewayThread, timeout: float = 20) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key="k", max_retries=0, timeout=timeout)


def stored(gw: GatewayThread, status: int) -> dict[str, Any]:
    """The newest event with `status` from the gateway's /keeptrusts/events (the SQLite store)."""
    def find() -> dict[str, Any] | None:
        with urllib.request.urlopen(gw.url + "/keeptrusts/events?limit=50", timeout=5) as resp:
            events = json.loads(resp.read())
        events = events.get("events", events) if isinstance(events, dict) else events
        return next((e for e in events if e.get("status") == status), None)

    return wait_for(find, timeout=10)


# --- never twice ----------------------------------------------------------------------------------------


def broken_second_request(up_ref: list[RawUpstream]) -> Callable[[RawRequest, RawConn], bool]:
    """Answers, keeping the connection; the second request is read (a generation starts) and the connection breaks."""
    def respond(req: RawRequest, conn: RawConn) -> bool:
        if len(up_ref[0].requests) == 2:
            return False
        return conn.send_json(COMPLETION)

    return respond


def test_a_post_that_reached_the_upstream_is_never_sent_again(serve: Any) -> None:
    up_ref: list[RawUpstream] = []
    gw, up = serve(broken_second_request(up_ref))
    up_ref.append(up)
    assert oai(gw).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES).choices[0].message.content
    with pytest.raises(openai.APIStatusError) as err:
        oai(gw).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert err.value.status_code == 502
    assert len(up.requests) == 2  # the broken one went out once
    assert stored(gw, 502)["attempts"] == 1


def test_the_configured_fallback_is_the_one_retry_and_it_is_counted(serve: Any) -> None:
    up_ref: list[RawUpstream] = []
    gw, up = serve(broken_second_request(up_ref), fallback={"strategy": "ordered", "max_retries": 1,
                                                            "retry_on": ["5xx"]})
    up_ref.append(up)
    for _ in range(2):
        assert oai(gw).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES).choices[0].message.content
    assert len(up.requests) == 3  # the second request: once, then once more by the fallback
    events = wait_for(lambda: len(gw.events) >= 2 and gw.events)
    assert [e["attempts"] for e in events] == [1, 2] and events[-1]["status"] == 200


# --- not orphaned ---------------------------------------------------------------------------------------


def holding(first: bytes = b"") -> Callable[[RawRequest, RawConn], bool]:
    """Sends `first` (maybe nothing), then holds the rest of the answer until the gateway hangs up."""
    def respond(req: RawRequest, conn: RawConn) -> bool:
        if first:
            conn.send(first)
        conn.wait_closed(timeout=60)
        return False

    return respond


def test_a_client_that_leaves_before_the_answer_cancels_the_upstream_call(serve: Any) -> None:
    gw, up = serve(holding())
    with pytest.raises(openai.APITimeoutError):
        oai(gw, timeout=1.0).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    gone = time.monotonic()
    wait_for(lambda: 1 in up.closed_at, timeout=10, message="the upstream connection stayed open")
    assert up.closed_at[1] - gone < 2.0
    event = stored(gw, 499)
    assert event["error_code"] == "client_closed" and event["upstream_latency_ms"] >= 500
    assert event["attempts"] == 1 and event["target"] == "t"
    assert wait_for(lambda: gw.call(lambda: gw.services().upstream.pool.in_use) == 0 or None)


def test_an_anthropic_client_that_leaves_cancels_the_upstream_call(serve: Any) -> None:
    gw, up = serve(holding())
    with pytest.raises(anthropic.APITimeoutError):
        anthropic.Anthropic(base_url=gw.url, api_key="k", max_retries=0, timeout=1.0).messages.create(
            model="gpt-4o-mini", max_tokens=10, messages=MESSAGES)
    gone = time.monotonic()
    wait_for(lambda: 1 in up.closed_at, timeout=10, message="the upstream connection stayed open")
    assert up.closed_at[1] - gone < 2.0
    assert stored(gw, 499)["route"] == "/v1/messages"


def test_a_client_that_leaves_mid_stream_closes_the_upstream_stream(serve: Any) -> None:
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
             "choices": [{"index": 0, "delta": {"role": "assistant", "content": "first words"}}]}
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    event = sse(chunk)
    gw, up = serve(holding(head + b"%x\r\n%s\r\n" % (len(event), event)))
    stream = oai(gw).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    first = next(iter(stream))
    assert first.choices[0].delta.content == "first words"
    stream.close()
    gone = time.monotonic()
    wait_for(lambda: 1 in up.closed_at, timeout=10, message="the upstream stream stayed open")
    assert up.closed_at[1] - gone < 2.0
    assert stored(gw, 499)["stream"] is True
