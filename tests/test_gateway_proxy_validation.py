"""`/v1/messages` validates like `/v1/chat/completions`: a 400 in the one envelope that names the field.

Raw HTTP for what an SDK would not send, the official anthropic SDK for what it does.
"""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any

import anthropic
import pytest

from tests.gateway_harness import GatewayThread, write_config
from tests.waiting import wait_for

USER = [{"role": "user", "content": "hello"}]


@pytest.fixture
def gw(tmp_path: Path, start_gateway: Any) -> GatewayThread:
    return start_gateway(write_config(tmp_path / "c.yaml", [{"id": "m", "provider": "mock", "model": "demo-model"}]))


def post(gw: GatewayThread, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", int(gw.url.rsplit(":", 1)[1]), timeout=10)
    conn.request("POST", "/v1/messages", body=json.dumps(body), headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = json.loads(resp.read())
    conn.close()
    return resp.status, data


def body(**fields: Any) -> dict[str, Any]:
    return {"model": "demo-model", "max_tokens": 16, "messages": USER, **fields}


def without(key: str) -> dict[str, Any]:
    out = body()
    del out[key]
    return out


def blocks(*content: Any, role: str = "user") -> list[dict[str, Any]]:
    return [{"role": role, "content": list(content)}]


TOOL_USE = {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"q": "x"}}


@pytest.mark.parametrize(("request_body", "code", "field"), [
    (without("max_tokens"), "invalid_max_tokens", "`max_tokens`"),
    (body(max_tokens=0), "invalid_max_tokens", "`max_tokens`"),
    (body(max_tokens=-5), "invalid_max_tokens", "`max_tokens`"),
    (body(max_tokens=1.5), "invalid_max_tokens", "`max_tokens`"),
    (body(max_tokens="10"), "invalid_max_tokens", "`max_tokens`"),
    (body(max_tokens=True), "invalid_max_tokens", "`max_tokens`"),
    (without("model"), "missing_model", "`model`"),
    (body(model=""), "missing_model", "`model`"),
    (without("messages"), "missing_messages", "`messages`"),
    (body(messages=[]), "invalid_messages", "`messages`"),
    (body(messages="hello"), "invalid_messages", "`messages`"),
    (body(messages=["hello"]), "invalid_messages", "`messages[0]`"),
    (body(messages=[{"role": "system", "content": "x"}]), "invalid_messages", "`messages[0].role`"),
    (body(messages=[{"content": "x"}]), "invalid_messages", "`messages[0].role`"),
    (body(messages=[{"role": "user"}]), "invalid_messages", "`messages[0].content`"),
    (body(messages=[{"role": "user", "content": 5}]), "invalid_messages", "`messages[0].content`"),
    (body(messages=[{"role": "user", "content": {"type": "text"}}]), "invalid_messages", "`messages[0].content`"),
    (body(messages=blocks("hi")), "invalid_messages", "`messages[0].content[0]`"),
    (body(messages=blocks({"type": "bogus", "text": "x"})), "invalid_messages", "`messages[0].content[0].type`"),
    (body(messages=blocks({"text": "x"})), "invalid_messages", "`messages[0].content[0].type`"),
    (body(messages=blocks({"type": {"type": "text"}, "text": "x"})), "invalid_messages",
     "`messages[0].content[0].type`"),  # found by the fuzz campaign: an unhashable type was a 500
    (body(messages=blocks({"type": ["text"], "text": "x"})), "invalid_messages", "`messages[0].content[0].type`"),
    (body(system=[{"type": {}, "text": "x"}]), "invalid_system", "`system[0].type`"),
    (body(messages=blocks({"type": "text", "text": 5})), "invalid_messages", "`messages[0].content[0].text`"),
    (body(messages=blocks({"type": "text"})), "invalid_messages", "`messages[0].content[0].text`"),
    (body(messages=blocks({"type": "image"})), "invalid_messages", "`messages[0].content[0].source`"),
    (body(messages=blocks({**TOOL_USE, "input": "{}"}, role="assistant")), "invalid_messages",
     "`messages[0].content[0].input`"),
    (body(messages=[*USER, *blocks({"type": "text", "text": "ok"}, {**TOOL_USE, "name": None}, role="assistant")]),
     "invalid_messages", "`messages[1].content[1].name`"),
    (body(messages=blocks({"type": "tool_result", "content": "x"})), "invalid_messages",
     "`messages[0].content[0].tool_use_id`"),
    (body(messages=blocks({"type": "tool_result", "tool_use_id": "toolu_1", "content": [TOOL_USE]})),
     "invalid_messages", "`messages[0].content[0].content[0].type`"),
    (body(system=5), "invalid_system", "`system`"),
    (body(system={"type": "text", "text": "x"}), "invalid_system", "`system`"),
    (body(system=["be brief"]), "invalid_system", "`system[0]`"),
    (body(system=[{"type": "image", "source": {}}]), "invalid_system", "`system[0].type`"),
    (body(system=[{"type": "text"}]), "invalid_system", "`system[0].text`"),
    (body(stream="yes"), "invalid_stream", "`stream`"),
    (body(stream=1), "invalid_stream", "`stream`"),
    (body(temperature="hot"), "invalid_temperature", "`temperature`"),
    (body(top_k=0), "invalid_top_k", "`top_k`"),
    (body(stop_sequences=[1]), "invalid_stop_sequences", "`stop_sequences`"),
    (body(tools=[{"description": "no name"}]), "invalid_tools", "`tools[0]`"),
])
def test_malformed_messages_requests_get_400_naming_the_field(gw: GatewayThread, request_body: dict[str, Any],
                                                             code: str, field: str) -> None:
    status, data = post(gw, request_body)
    assert status == 400, data
    assert data["type"] == "error" and set(data["error"]) == {"type", "code", "message", "policy"}
    assert data["error"]["type"] == "validation_error"
    assert data["error"]["code"] == code and field in data["error"]["message"], data
    wait_for(lambda: gw.runtime.in_flight == 0)  # nothing left hanging


@pytest.mark.parametrize("request_body", [
    body(),
    body(system="be brief", stream=False, temperature=0.2, top_p=1, top_k=5, stop_sequences=["END"]),
    body(system=[{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}]),
    body(messages=[
        *blocks({"type": "text", "text": "look this up"},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}),
        *blocks({"type": "thinking", "thinking": "hmm", "signature": "s"}, TOOL_USE, role="assistant"),
        *blocks({"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "42"}]},
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "42", "is_error": False}),
    ], tools=[{"name": "lookup", "description": "d", "input_schema": {"type": "object"}}]),
])
def test_well_formed_messages_requests_pass(gw: GatewayThread, request_body: dict[str, Any]) -> None:
    status, data = post(gw, request_body)
    assert status == 200 and data["type"] == "message", data


def test_the_anthropic_sdk_gets_the_400_naming_the_field(gw: GatewayThread) -> None:
    client = anthropic.Anthropic(base_url=gw.url, api_key="x", max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as err:
        client.messages.create(model="demo-model", max_tokens=0, messages=[{"role": "user", "content": "x"}])
    assert err.value.status_code == 400 and err.value.body["error"]["code"] == "invalid_max_tokens"
    with pytest.raises(anthropic.BadRequestError) as err:
        client.messages.create(model="demo-model", max_tokens=8, system=[{"type": "text"}],  # type: ignore[typeddict-item]
                               messages=[{"role": "user", "content": "x"}])
    assert "`system[0].text`" in err.value.body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError) as err:
        client.messages.create(model="demo-model", max_tokens=8,
                               messages=[{"role": "user", "content": [{"type": "text", "text": 1}]}])  # type: ignore[typeddict-item]
    assert "`messages[0].content[0].text`" in err.value.body["error"]["message"]
    reply = client.messages.create(model="demo-model", max_tokens=8, system=[{"type": "text", "text": "brief"}],
                                   messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}])
    assert reply.content[0].type == "text"
