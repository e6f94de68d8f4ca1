"""Issue 16 §1: `provider: bedrock` (Converse / ConverseStream with the binary event-stream framing).

The fake Bedrock upstream (`tests.fake_bedrock`) is first proven faithful with boto3; then kt is
put in front of it (SigV4 with the standard AWS environment, or a Bedrock API key) and driven
with the OpenAI, Anthropic and Responses clients.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import boto3
import openai
import pytest

from gateway.providers import bedrock as bedrock_provider
from gateway.providers.bedrock import EventStreamError, EventStreamParser
from kt.doctor import provider_check
from policies.config import load_config
from policies.lint import validate_document
from tests.fake_bedrock import FakeBedrock, event
from tests.fake_upstream import FakeUpstream
from tests.fake_wire import ToolCall
from tests.gateway_harness import write_config

MODEL = "anthropic.claude-3-5-haiku-20241022-v1:0"
HI = [{"role": "user", "content": "hi"}]
TOOL = {"type": "function", "function": {"name": "lookup", "description": "look up",
                                         "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    monkeypatch.setenv("KT_TEST_BEDROCK_KEY", "bedrock-api-key-0123456789abcdef")


@pytest.fixture
def fake_bedrock() -> Iterator[FakeBedrock]:
    fake = FakeBedrock("Hello from Bedrock.").start()
    yield fake
    fake.stop()


def bedrock_target(fake: FakeBedrock, **extra: Any) -> dict[str, Any]:
    return {"id": "br", "provider": "bedrock", "model": MODEL, "region": "us-east-1", "base_url": fake.url, **extra}


def oai(gw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key="client-key", max_retries=0, timeout=20)


def test_fake_bedrock_is_accepted_by_boto3(fake_bedrock: FakeBedrock) -> None:
    client = boto3.client("bedrock-runtime", region_name="us-east-1", endpoint_url=fake_bedrock.url)
    answer = client.converse(modelId=MODEL, messages=[{"role": "user", "content": [{"text": "hi"}]}])
    assert answer["output"]["message"]["content"] == [{"text": "Hello from Bedrock."}]
    assert answer["stopReason"] == "end_turn" and answer["usage"]["totalTokens"] > 0
    stream = client.converse_stream(modelId=MODEL, messages=[{"role": "user", "content": [{"text": "hi"}]}])
    events = list(stream["stream"])
    assert "".join(e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e) == \
        "Hello from Bedrock."
    assert events[-1]["metadata"]["usage"]["outputTokens"] > 0


def test_event_stream_parser_takes_bytes_split_anywhere_and_checks_crcs() -> None:
    data = event("messageStart", {"role": "assistant"}) + event("messageStop", {"stopReason": "end_turn"})
    parser = EventStreamParser()
    got = [m for i in range(len(data)) for m in parser.feed(data[i:i + 1])]
    assert [h[":event-type"] for h, _ in got] == ["messageStart", "messageStop"]
    corrupt = bytearray(data)
    corrupt[20] ^= 0xFF
    with pytest.raises(EventStreamError):
        EventStreamParser().feed(bytes(corrupt))


def test_chat_stream_and_tools_through_kt_signed_with_sigv4(tmp_path: Path, fake_bedrock: FakeBedrock,
                                                            start_gateway: Any) -> None:
    gw = start_gateway(write_config(tmp_path / "c.yaml", [bedrock_target(fake_bedrock)]))
    answer = oai(gw).chat.completions.create(model=MODEL, max_tokens=40, messages=[
        {"role": "system", "content": "be brief"}, *HI])
    assert answer.choices[0].message.content == "Hello from Bedrock." and answer.usage.total_tokens > 0
    sent = fake_bedrock.requests[-1]
    assert sent.path == f"/model/{MODEL.replace(':', '%3A')}/converse"
    assert sent.header("authorization").startswith("AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/")
    assert "/us-east-1/bedrock/aws4_request" in sent.header("authorization") and sent.header("x-amz-date")
    assert sent.body == {"messages": [{"role": "user", "content": [{"text": "hi"}]}], "system": [{"text": "be brief"}],
                         "inferenceConfig": {"maxTokens": 40}}
    chunks = list(oai(gw).chat.completions.create(model=MODEL, messages=HI, stream=True,
                                                  stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from Bedrock."
    assert chunks[-1].usage.completion_tokens > 0
    fake_bedrock.queue_reply(tool_calls=(ToolCall("lookup", {"q": "A-1"}, id="tooluse_1"),), times=2)
    called = oai(gw).chat.completions.create(model=MODEL, messages=HI, tools=[TOOL])
    call = called.choices[0].message.tool_calls[0]
    assert called.choices[0].finish_reason == "tool_calls" and json.loads(call.function.arguments) == {"q": "A-1"}
    assert fake_bedrock.requests[-1].body["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"] == {
        "json": TOOL["function"]["parameters"]}
    chunks = list(oai(gw).chat.completions.create(model=MODEL, messages=HI, tools=[TOOL], stream=True))
    args = "".join(d.function.arguments or "" for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or ())
    assert json.loads(args) == {"q": "A-1"}
    oai(gw).chat.completions.create(model=MODEL, tools=[TOOL], messages=[
        *HI, {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "shipped"}])
    messages = fake_bedrock.requests[-1].body["messages"]
    assert messages[1]["content"] == [{"toolUse": {"toolUseId": "tooluse_1", "name": "lookup", "input": {"q": "A-1"}}}]
    assert messages[2]["content"] == [{"toolResult": {"toolUseId": "tooluse_1", "content": [{"text": "shipped"}]}}]


def test_api_key_anthropic_and_responses_clients(tmp_path: Path, fake_bedrock: FakeBedrock,
                                                 start_gateway: Any) -> None:
    fake_bedrock.api_key = "bedrock-api-key-0123456789abcdef"
    target = bedrock_target(fake_bedrock, secret_key_ref={"env": "KT_TEST_BEDROCK_KEY"})
    gw = start_gateway(write_config(tmp_path / "c.yaml", [target]))
    ant = anthropic.Anthropic(base_url=gw.url, api_key="client-key", max_retries=0, timeout=20)
    with ant.messages.stream(model=MODEL, max_tokens=50, messages=HI) as stream:
        assert "".join(stream.text_stream) == "Hello from Bedrock."
    assert fake_bedrock.requests[-1].header("authorization") == "Bearer bedrock-api-key-0123456789abcdef"
    events = list(oai(gw).responses.create(model=MODEL, input="hi", stream=True))
    assert events[-1].response.output_text == "Hello from Bedrock."


def test_guardrail_is_a_clear_400_and_errors_are_scrubbed(tmp_path: Path, fake_bedrock: FakeBedrock,
                                                          start_gateway: Any) -> None:
    gw = start_gateway(write_config(tmp_path / "c.yaml", [bedrock_target(fake_bedrock)],
                                    fallback={"strategy": "ordered", "max_retries": 0, "retry_on": []}))
    with pytest.raises(openai.BadRequestError) as err:
        oai(gw).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "guard-me"}])
    assert err.value.body["code"] == "content_filter" and "guardrail" in err.value.body["message"]
    fake_bedrock.add_fault("status", status=500, message="failure for AKIAIOSFODNN7EXAMPLE")
    with pytest.raises(openai.InternalServerError) as err:
        oai(gw).chat.completions.create(model=MODEL, messages=HI)
    assert "AKIAIOSFODNN7EXAMPLE" not in json.dumps(err.value.body)


def test_stream_falls_back_from_openai_to_bedrock(tmp_path: Path, fake_bedrock: FakeBedrock,
                                                  fake_upstream: FakeUpstream, start_gateway: Any,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KT_TEST_OA", "sk-oa")
    first = {"id": "oa", "provider": "openai", "model": "shared", "base_url": fake_upstream.base_url,
             "secret_key_ref": {"env": "KT_TEST_OA"}}
    gw = start_gateway(write_config(tmp_path / "c.yaml", [first, bedrock_target(fake_bedrock, model="shared")]))
    fake_bedrock.models = ("shared",)
    fake_upstream.add_fault("status", status=503)
    chunks = list(oai(gw).chat.completions.create(model="shared", messages=HI, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from Bedrock."


def test_lint_and_doctor(tmp_path: Path, fake_bedrock: FakeBedrock) -> None:
    doc = {"pack": {"name": "p", "version": "1.0.0", "enabled": True}, "policies": {"chain": []},
           "providers": {"targets": [{"id": "a", "provider": "bedrock", "model": MODEL},
                                     {"id": "b", "provider": "openai", "model": "m", "region": "us-east-1"}]}}
    assert [(f.code, f.path) for f in validate_document(doc)] == [
        ("E022", "providers.targets[0].region"), ("E023", "providers.targets[1].region")]
    target = load_config(write_config(tmp_path / "c.yaml", [bedrock_target(fake_bedrock)])).targets[0]
    (check,) = provider_check(target, {}, 5)
    assert check.status == "ok" and fake_bedrock.requests[-1].method == "GET"
    assert fake_bedrock.requests[-1].header("authorization").startswith("AWS4-HMAC-SHA256")


def test_empty_text_parts_are_not_sent() -> None:
    """Converse rejects a blank text block; a redaction across a message's text parts may leave one."""
    parts = [{"type": "text", "text": t} for t in ("about [REDACTED:DLP]", "", ".")]
    body = bedrock_provider.request({"model": MODEL, "messages": [{"role": "user", "content": parts}]})
    assert body["messages"][0]["content"] == [{"text": "about [REDACTED:DLP]"}, {"text": "."}]
