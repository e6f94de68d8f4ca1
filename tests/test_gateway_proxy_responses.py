"""Issue 16 §2: `POST /v1/responses`, driven with the official openai SDK's `client.responses`.

A real gateway (in-process, loopback) in front of the fake upstream, serving Responses clients
from OpenAI-format and Anthropic-format targets, with the chain applied to every text.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.fake_upstream import FakeUpstream
from tests.fake_wire import ToolCall
from tests.gateway_harness import write_config

KEY_ENV = "KT_TEST_RESPONSES_KEY"
TOOL = {"type": "function", "name": "lookup", "description": "look up an order",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}


@pytest.fixture(autouse=True)
def upstream_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-up-responses")


def targets(fake: FakeUpstream) -> list[dict[str, Any]]:
    return [{"id": "oa", "provider": "openai", "model": "gpt-4o-mini", "base_url": fake.base_url,
             "secret_key_ref": {"env": KEY_ENV}},
            {"id": "an", "provider": "anthropic", "model": "claude-3-5-haiku-latest", "base_url": fake.url,
             "secret_key_ref": {"env": KEY_ENV}}]


def client(gw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key="client-key", max_retries=0, timeout=20)


@pytest.fixture
def gw(tmp_path: Path, fake_upstream: FakeUpstream, start_gateway: Any) -> Any:
    return start_gateway(write_config(tmp_path / "c.yaml", targets(fake_upstream)))


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-3-5-haiku-latest"])
def test_text_answer_from_any_provider(gw: Any, fake_upstream: FakeUpstream, model: str) -> None:
    resp = client(gw).responses.create(model=model, input="hi there", instructions="be brief",
                                       max_output_tokens=50)
    assert resp.status == "completed" and resp.output_text == "Hello from the fake upstream."
    assert resp.model == model and resp.usage is not None and resp.usage.output_tokens > 0
    sent = fake_upstream.requests[-1].body
    if model.startswith("gpt"):
        assert sent["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}]
        assert sent["max_completion_tokens"] == 50
    else:
        assert sent["system"] == "be brief" and sent["max_tokens"] == 50


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-3-5-haiku-latest"])
def test_stream_has_the_typed_events(gw: Any, model: str) -> None:
    events = list(client(gw).responses.create(model=model, input="hi", stream=True))
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed"
    assert "response.output_item.added" in types and "response.output_text.done" in types
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == \
        "Hello from the fake upstream."
    assert [e.sequence_number for e in events] == list(range(len(events)))
    done = events[-1].response
    assert done.output_text == "Hello from the fake upstream." and done.usage.total_tokens > 0


@pytest.mark.parametrize("stream", [False, True])
def test_function_call_round_trip(gw: Any, fake_upstream: FakeUpstream, stream: bool) -> None:
    fake_upstream.queue_reply(tool_calls=(ToolCall("lookup", {"q": "A-1"}, id="call_1"),))
    c = client(gw)
    if stream:
        with c.responses.stream(model="gpt-4o-mini", input="where is A-1?", tools=[TOOL]) as s:
            for _ in s:
                pass
            first = s.get_final_response()
    else:
        first = c.responses.create(model="gpt-4o-mini", input="where is A-1?", tools=[TOOL])
    (call,) = [item for item in first.output if item.type == "function_call"]
    assert (call.name, json.loads(call.arguments), call.call_id) == ("lookup", {"q": "A-1"}, "call_1")
    assert fake_upstream.requests[-1].body["tools"] == [
        {"type": "function", "function": {k: TOOL[k] for k in ("name", "description", "parameters")}}]
    second = c.responses.create(model="gpt-4o-mini", tools=[TOOL], input=[
        {"role": "user", "content": "where is A-1?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "shipped"}])
    assert second.output_text
    sent = fake_upstream.requests[-1].body["messages"]
    assert sent[1]["tool_calls"][0]["id"] == "call_1" and sent[2] == {"role": "tool", "tool_call_id": "call_1",
                                                                       "content": "shipped"}


def test_the_chain_sees_every_text(tmp_path: Path, fake_upstream: FakeUpstream, start_gateway: Any,
                                   test_kinds: None) -> None:
    cfg = write_config(tmp_path / "c.yaml", targets(fake_upstream), ["test-term"],
                       {"test-term": {"pattern": r"\d{3}-\d{4}", "verdict": "redact"}})
    gw = start_gateway(cfg)
    client(gw).responses.create(model="gpt-4o-mini", instructions="office 555-0001", tools=[
        {**TOOL, "description": "call 555-0002"}], input=[
        {"role": "user", "content": [{"type": "input_text", "text": "me 555-0003"}]},
        {"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": '{"q": "555-0004"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "desk 555-0005"}],
        text={"format": {"type": "json_schema", "name": "r", "schema": {"type": "object",
                                                                         "description": "fax 555-0006"}}})
    sent = json.dumps(fake_upstream.requests[-1].body)
    assert "555-" not in sent and sent.count("[REDACTED]") == 6


def test_output_block_is_409_and_a_stream_ends_with_an_error_event(tmp_path: Path, fake_upstream: FakeUpstream,
                                                                     start_gateway: Any, test_kinds: None) -> None:
    cfg = write_config(tmp_path / "c.yaml", targets(fake_upstream), ["test-term"],
                       {"test-term": {"pattern": "forbidden", "verdict": "block"}})
    gw = start_gateway(cfg)
    fake_upstream.queue_reply("this is forbidden text", times=2)
    with pytest.raises(openai.ConflictError) as err:
        client(gw).responses.create(model="gpt-4o-mini", input="hi")
    assert err.value.body["code"] == "output_blocked"
    events = list(client(gw).responses.create(model="gpt-4o-mini", input="hi", stream=True))
    assert events[-1].type == "error" and events[-1].code == "output_blocked"
    assert "forbidden" not in "".join(e.delta for e in events if e.type == "response.output_text.delta")


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"previous_response_id": "resp_1"}, "previous_response_id"),
    ({"store": True}, "store"),
    ({"tools": [{"type": "web_search"}]}, "tools[0]"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0]"),
])
def test_what_kt_cannot_honour_is_a_400_naming_the_field(gw: Any, kwargs: dict[str, Any], field: str) -> None:
    kwargs.setdefault("input", "hi")
    with pytest.raises(openai.BadRequestError) as err:
        client(gw).responses.create(model="gpt-4o-mini", **kwargs)
    assert f"`{field}`" in err.value.body["message"]


def test_retrieving_a_stored_response_is_a_400_naming_store(gw: Any) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client(gw).responses.retrieve("resp_123")
    assert "`store`" in err.value.body["message"]
    request = urllib.request.Request(gw.url + "/v1/responses/resp_1", method="DELETE")
    with pytest.raises(urllib.error.HTTPError) as http:
        urllib.request.urlopen(request, timeout=5)
    assert http.value.code == 400


def test_fallback_serves_a_responses_stream_from_the_next_provider(tmp_path: Path, fake_upstream: FakeUpstream,
                                                                    start_gateway: Any) -> None:
    both = [{**t, "model": "shared"} for t in targets(fake_upstream)]
    gw = start_gateway(write_config(tmp_path / "c.yaml", both))
    fake_upstream.add_fault("status", status=503, path="/v1/chat/completions")
    events = list(client(gw).responses.create(model="shared", input="hi", stream=True))
    assert events[-1].type == "response.completed" and events[-1].response.output_text
    assert fake_upstream.requests[-1].path == "/v1/messages"


def test_the_mock_provider_serves_responses(tmp_path: Path, start_gateway: Any) -> None:
    gw = start_gateway(write_config(tmp_path / "c.yaml", [{"id": "m", "provider": "mock", "model": "demo"}]))
    assert client(gw).responses.create(model="demo", input="hello").output_text == "[mock] You said: hello"
    events = list(client(gw).responses.create(model="demo", input="hello", stream=True))
    assert events[-1].response.output_text == "[mock] You said: hello"
