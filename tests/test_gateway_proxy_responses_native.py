"""Issue 16 §2: `POST /v1/responses` to an OpenAI target that speaks it natively is passed through
as Responses (`responses_api: native`), with every policy still applied.

Driven with the official openai SDK's `client.responses` through a real gateway (in-process,
loopback) in front of the fake upstream's `POST /v1/responses`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest

from policies.config import load_config
from policies.lint import validate_document
from tests.fake_upstream import FakeUpstream
from tests.fake_wire import Reply, ToolCall, responses_events, responses_response, sse
from tests.gateway_harness import assert_responses_blocked, write_config
from tests.raw_upstream import RawUpstream
from tests.waiting import wait_for

KEY_ENV = "KT_TEST_RESPONSES_NATIVE_KEY"
KEY = "sk-up-native-0123456789abcdef"
TOOL = {"type": "function", "name": "lookup", "description": "look up an order",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}
HI = "Hello from the fake upstream."


@pytest.fixture(autouse=True)
def upstream_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)


def native_to(base_url: str, **extra: Any) -> dict[str, Any]:
    return {"id": "oa", "provider": "openai", "model": "gpt-4o-mini", "base_url": base_url,
            "secret_key_ref": {"env": KEY_ENV}, "responses_api": "native", **extra}


def native(fake: FakeUpstream, **extra: Any) -> dict[str, Any]:
    return native_to(fake.base_url, **extra)


def anthropic(fake: FakeUpstream, **extra: Any) -> dict[str, Any]:
    return {"id": "an", "provider": "anthropic", "model": "claude-3-5-haiku-latest", "base_url": fake.url,
            "secret_key_ref": {"env": KEY_ENV}, **extra}


def client(gw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key="client-key", max_retries=0, timeout=20)


def redacting(tmp_path: Path, fake: FakeUpstream, pattern: str, verdict: str = "redact",
              targets: list[dict[str, Any]] | None = None) -> Path:
    return write_config(tmp_path / "c.yaml", targets or [native(fake)], ["test-term"],
                        {"test-term": {"pattern": pattern, "verdict": verdict}})


@pytest.fixture
def gw(tmp_path: Path, fake_upstream: FakeUpstream, start_gateway: Any) -> Any:
    return start_gateway(write_config(tmp_path / "c.yaml", [native(fake_upstream)]))


def test_the_fake_speaks_responses_as_the_sdk_reads_it(fake_upstream: FakeUpstream) -> None:
    direct = openai.OpenAI(base_url=fake_upstream.base_url, api_key="k", max_retries=0, timeout=20)
    fake_upstream.queue_reply(tool_calls=(ToolCall("lookup", {"q": "A-1"}, id="call_9"),))
    resp = direct.responses.create(model="gpt-4o-mini", input="hi", tools=[TOOL])
    (call,) = resp.output
    assert (call.type, call.call_id, json.loads(call.arguments)) == ("function_call", "call_9", {"q": "A-1"})
    with direct.responses.stream(model="gpt-4o-mini", input="hi") as stream:
        types = [event.type for event in stream]
        final = stream.get_final_response()
    assert final.output_text == HI and final.usage.output_tokens > 0
    assert types[:2] == ["response.created", "response.in_progress"] and types[-1] == "response.completed"


@pytest.mark.parametrize("stream", [False, True])
def test_the_request_reaches_the_target_as_responses(gw: Any, fake_upstream: FakeUpstream, stream: bool) -> None:
    kwargs: dict[str, Any] = {"model": "gpt-4o-mini", "input": "hi there", "instructions": "be brief",
                              "max_output_tokens": 50, "metadata": {"ticket": "T-1"}}
    if stream:
        events = list(client(gw).responses.create(**kwargs, stream=True))
        assert [e.sequence_number for e in events] == list(range(len(events)))
        assert events[0].type == "response.created" and events[-1].type == "response.completed"
        resp = events[-1].response
    else:
        resp = client(gw).responses.create(**kwargs)
    (sent,) = fake_upstream.requests
    assert sent.path == "/v1/responses" and sent.header("authorization") == f"Bearer {KEY}"
    assert sent.body == {**kwargs, "store": False, **({"stream": True} if stream else {})}
    assert resp.output_text == HI and resp.status == "completed"
    assert resp.id.startswith("resp_") and resp.model == "gpt-4o-mini-2024-07-18"  # the upstream's, as it sent them
    assert resp.usage.input_tokens > 0 and resp.usage.output_tokens == 5
    event = wait_for(lambda: [e for e in gw.events if e.get("output_tokens")])[0]
    assert (event["target"], event["input_tokens"], event["output_tokens"]) == ("oa", resp.usage.input_tokens, 5)
    assert event["cost_usd"] > 0


def test_input_redaction_is_done_in_place_in_the_responses_body(tmp_path: Path, fake_upstream: FakeUpstream,
                                                                 start_gateway: Any, test_kinds: None) -> None:
    gw = start_gateway(redacting(tmp_path, fake_upstream, r"\d{3}-\d{4}"))
    client(gw).responses.create(
        model="gpt-4o-mini", instructions="office 555-0001", tools=[{**TOOL, "description": "call 555-0002"}],
        tool_choice={"type": "function", "name": "lookup"}, include=["message.output_text.logprobs"], input=[
            {"role": "user", "content": [{"type": "input_text", "text": "me 555-0003"},
                                         {"type": "input_text", "text": "and 555-0007"}]},
            {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "555-0008"}]},
            {"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": '{"q": "555-0004"}'},
            {"type": "function_call_output", "call_id": "c1", "output": "desk 555-0005"},
            {"role": "assistant", "content": "ok 555-0009"}],
        text={"format": {"type": "json_schema", "name": "r", "schema": {"type": "object",
                                                                         "description": "fax 555-0006"}}})
    (sent,) = fake_upstream.requests
    body = sent.body
    assert sent.path == "/v1/responses" and "555-" not in json.dumps(body)
    assert body["instructions"] == "office [REDACTED]"
    assert body["input"] == [
        {"role": "user", "content": [{"type": "input_text", "text": "me [REDACTED]"},
                                     {"type": "input_text", "text": "and [REDACTED]"}]},
        {"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": '{"q":"[REDACTED]"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "desk [REDACTED]"},
        {"role": "assistant", "content": "ok [REDACTED]"}]  # the reasoning item is not forwarded
    assert body["tools"] == [{**TOOL, "description": "call [REDACTED]"}]
    assert body["text"]["format"]["schema"] == {"type": "object", "description": "fax [REDACTED]"}
    assert "include" not in body and body["tool_choice"] == {"type": "function", "name": "lookup"}


@pytest.mark.parametrize("stream", [False, True])
def test_an_output_block_applies_to_json_and_stream(tmp_path: Path, fake_upstream: FakeUpstream,
                                                    start_gateway: Any, test_kinds: None, stream: bool) -> None:
    gw = start_gateway(redacting(tmp_path, fake_upstream, "forbidden", "block"))
    fake_upstream.queue_reply("this is forbidden text", chunks=6)
    assert_responses_blocked(client(gw), stream)
    assert [r.path for r in fake_upstream.requests] == ["/v1/responses"]


@pytest.mark.parametrize("stream", [False, True])
def test_an_output_redaction_applies_to_text_and_tool_arguments(tmp_path: Path, fake_upstream: FakeUpstream,
                                                                start_gateway: Any, test_kinds: None,
                                                                stream: bool) -> None:
    gw = start_gateway(redacting(tmp_path, fake_upstream, r"\d{3}-\d{4}"))
    # one text delta: a stream's `redact` covers what is unsent (docs/policies.md), `block` what is not
    fake_upstream.queue_reply("call 555-0100 now", tool_calls=(ToolCall("lookup", {"q": "555-0200"}, id="c7"),),
                              chunks=1)
    if stream:
        with client(gw).responses.stream(model="gpt-4o-mini", input="hi", tools=[TOOL]) as s:
            deltas = "".join(e.delta for e in s if e.type == "response.output_text.delta")
            resp = s.get_final_response()
        assert deltas == "call [REDACTED] now"
    else:
        resp = client(gw).responses.create(model="gpt-4o-mini", input="hi", tools=[TOOL])
    message, call = resp.output
    assert message.content[0].text == resp.output_text == "call [REDACTED] now"
    assert (call.call_id, json.loads(call.arguments)) == ("c7", {"q": "[REDACTED]"})


@pytest.mark.parametrize("stream", [False, True])
def test_a_function_call_round_trips(gw: Any, fake_upstream: FakeUpstream, stream: bool) -> None:
    fake_upstream.queue_reply(tool_calls=(ToolCall("lookup", {"q": "A-1"}, id="call_1"),))
    c = client(gw)
    if stream:
        with c.responses.stream(model="gpt-4o-mini", input="where is A-1?", tools=[TOOL]) as s:
            types = [e.type for e in s]
            first = s.get_final_response()
        assert "response.function_call_arguments.delta" in types
    else:
        first = c.responses.create(model="gpt-4o-mini", input="where is A-1?", tools=[TOOL])
    (call,) = first.output
    assert (call.type, call.name, json.loads(call.arguments), call.call_id) == (
        "function_call", "lookup", {"q": "A-1"}, "call_1")
    assert fake_upstream.requests[-1].body["tools"] == [TOOL]
    second = c.responses.create(model="gpt-4o-mini", tools=[TOOL], input=[
        {"role": "user", "content": "where is A-1?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "shipped"}])
    assert second.output_text == HI
    sent = fake_upstream.requests[-1]
    assert sent.path == "/v1/responses" and sent.body["input"][1:] == [
        {"type": "function_call", "call_id": "call_1", "name": "lookup", "arguments": call.arguments},
        {"type": "function_call_output", "call_id": "call_1", "output": "shipped"}]


@pytest.mark.parametrize("stream", [False, True])
def test_fallback_from_a_native_target_to_a_translated_one(tmp_path: Path, fake_upstream: FakeUpstream,
                                                           start_gateway: Any, stream: bool) -> None:
    both = [native(fake_upstream, model="shared"), anthropic(fake_upstream, model="shared")]
    gw = start_gateway(write_config(tmp_path / "c.yaml", both))
    if stream:  # cut after response.created and in_progress: nothing reached the client, so the next target
        fake_upstream.add_fault("disconnect", after_chunks=2, path="/v1/responses")
        events = list(client(gw).responses.create(model="shared", input="hi", stream=True))
        assert events[-1].type == "response.completed"
        resp = events[-1].response
    else:
        fake_upstream.add_fault("status", status=503, path="/v1/responses")
        resp = client(gw).responses.create(model="shared", input="hi")
    assert resp.output_text == HI and resp.status == "completed"
    assert resp.model == "shared"  # kt's own Response for a translated answer, nothing of the failed attempt
    assert [r.path for r in fake_upstream.requests] == ["/v1/responses", "/v1/messages"]
    event = wait_for(lambda: [e for e in gw.events if e.get("target")])[0]
    assert (event["target"], event["attempts"]) == ("an", 2)


@pytest.mark.parametrize("stream", [False, True])
def test_fallback_from_a_translated_target_to_a_native_one(tmp_path: Path, fake_upstream: FakeUpstream,
                                                           start_gateway: Any, stream: bool) -> None:
    both = [anthropic(fake_upstream, model="shared"), native(fake_upstream, model="shared")]
    gw = start_gateway(write_config(tmp_path / "c.yaml", both))
    fake_upstream.add_fault("status", status=529, path="/v1/messages")
    if stream:
        events = list(client(gw).responses.create(model="shared", input="hi", stream=True))
        resp = events[-1].response
    else:
        resp = client(gw).responses.create(model="shared", input="hi")
    assert resp.output_text == HI and resp.model == "shared-2024-07-18"  # the native answer, as the upstream sent it
    assert [r.path for r in fake_upstream.requests] == ["/v1/messages", "/v1/responses"]


def test_an_input_block_stops_the_request_before_the_native_target(tmp_path: Path, fake_upstream: FakeUpstream,
                                                                   start_gateway: Any, test_kinds: None) -> None:
    gw = start_gateway(redacting(tmp_path, fake_upstream, "bluebird", "block"))
    with pytest.raises(openai.ConflictError) as err:
        client(gw).responses.create(model="gpt-4o-mini", input=[
            {"role": "user", "content": "hi"},
            {"type": "function_call_output", "call_id": "c1", "output": "project bluebird files"}])
    assert err.value.body["code"] == "input_blocked" and fake_upstream.requests == []


def test_upstream_errors_are_scrubbed(gw: Any, fake_upstream: FakeUpstream) -> None:
    fake_upstream.add_fault("status", status=400, message=f"Invalid value for input: your key {KEY} is odd.")
    with pytest.raises(openai.BadRequestError) as err:
        client(gw).responses.create(model="gpt-4o-mini", input="hi")
    assert KEY not in json.dumps(err.value.body) and "is odd" in err.value.body["message"]


def test_a_stream_request_answered_with_one_response_object_is_relayed_as_a_stream(gw: Any,
                                                                                   fake_upstream: FakeUpstream) -> None:
    fake_upstream.add_fault("json", path="/v1/responses")  # an upstream that ignores `stream: true`
    fake_upstream.queue_reply("here it is", tool_calls=(ToolCall("lookup", {"q": "A-1"}, id="call_5"),))
    events = list(client(gw).responses.create(model="gpt-4o-mini", input="hi", tools=[TOOL], stream=True))
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"] and types[-1] == "response.completed"
    assert "response.output_text.delta" in types and "response.function_call_arguments.delta" in types
    assert [e.sequence_number for e in events] == list(range(len(events)))
    resp = events[-1].response
    message, call = resp.output
    assert message.type == "message" and resp.output_text == "here it is" and resp.status == "completed"
    assert (call.call_id, call.name, json.loads(call.arguments)) == ("call_5", "lookup", {"q": "A-1"})
    assert resp.id.startswith("resp_") and resp.model == "gpt-4o-mini-2024-07-18"  # the upstream's Response
    assert events[0].response.id == resp.id and resp.usage.output_tokens > 0
    (sent,) = fake_upstream.requests
    assert sent.path == "/v1/responses" and sent.body["stream"] is True
    event = wait_for(lambda: [e for e in gw.events if e.get("output_tokens")])[0]
    assert (event["target"], event["output_tokens"]) == ("oa", resp.usage.output_tokens) and event["cost_usd"] > 0


@pytest.mark.parametrize("verdict", ["block", "redact"])
def test_the_output_chain_applies_to_a_response_object_answering_a_stream(
        tmp_path: Path, fake_upstream: FakeUpstream, start_gateway: Any, test_kinds: None, verdict: str) -> None:
    gw = start_gateway(redacting(tmp_path, fake_upstream, "forbidden", verdict))
    fake_upstream.add_fault("json", path="/v1/responses")
    fake_upstream.queue_reply("this is forbidden text")
    if verdict == "redact":
        events = list(client(gw).responses.create(model="gpt-4o-mini", input="hi", stream=True))
        assert events[-1].type == "response.completed"
        assert events[-1].response.output_text == "this is [REDACTED] text"
        return
    try:
        events = list(client(gw).responses.create(model="gpt-4o-mini", input="hi", stream=True))
    except openai.ConflictError as err:  # blocked before the stream started: the usual JSON error
        assert err.body["code"] == "output_blocked"
    else:
        assert events[-1].type == "error" and events[-1].code == "output_blocked"
        assert "forbidden" not in "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert [r.path for r in fake_upstream.requests] == ["/v1/responses"]


def _answering(answer: dict[str, Any]) -> RawUpstream:
    """An upstream that answers every request (a stream request too) with the JSON `answer`, status 200."""
    return RawUpstream(lambda request, conn: conn.send_json(json.dumps(answer).encode()))


@pytest.mark.parametrize("answer", [
    {"error": {"message": f"quota exceeded for {KEY}", "type": "insufficient_quota"}},
    {**responses_response({"model": "gpt-4o-mini", "input": "hi"}, Reply(text=HI)), "status": "failed",
     "output": [], "error": {"code": "server_error", "message": f"quota exceeded for {KEY}"}},
    {"id": "chatcmpl-1", "object": "chat.completion", "choices": []},
], ids=["error body", "failed response", "not a response"])
def test_a_json_error_answering_a_native_stream_is_a_scrubbed_502(tmp_path: Path, start_gateway: Any,
                                                                  answer: dict[str, Any]) -> None:
    with _answering(answer) as up:
        gw = start_gateway(write_config(tmp_path / "c.yaml", [native_to(up.base_url)]))
        with pytest.raises(openai.InternalServerError) as err:
            list(client(gw).responses.create(model="gpt-4o-mini", input="hi", stream=True))
    assert err.value.status_code == 502 and KEY not in json.dumps(err.value.body)
    if "error" in answer:
        assert "quota exceeded for [REDACTED]" in err.value.body["message"]
    else:
        assert "not a Response object" in err.value.body["message"]


def _scripted(events: list[bytes]) -> RawUpstream:
    """An upstream whose stream body is `events`, complete as sent (Content-Length)."""

    def respond(request: Any, conn: Any) -> bool:
        conn.send_response(b"".join(events), headers={"Content-Type": "text/event-stream"})
        return False

    return RawUpstream(respond)


@pytest.mark.parametrize("ending", ["cut", "failed"])
def test_a_stream_without_response_completed_ends_with_an_error_event(tmp_path: Path, start_gateway: Any,
                                                                      ending: str) -> None:
    response = responses_response({"model": "gpt-4o-mini", "input": "hi"}, Reply(text=HI))
    events = responses_events(response, 4)[:6]  # created, in_progress, item, part, 2 deltas
    if ending == "failed":
        failed = {**response, "status": "failed", "output": [],
                  "error": {"code": "server_error", "message": f"boom near {KEY}"}}
        events.append(sse({"type": "response.failed", "sequence_number": 6, "response": failed}, "response.failed"))
    with _scripted(events) as up:
        gw = start_gateway(write_config(tmp_path / "c.yaml", [native_to(up.base_url)]))
        if ending == "failed":  # in the read that carried the deltas: nothing was sent, so a plain 502
            with pytest.raises(openai.InternalServerError) as err:
                list(client(gw).responses.create(model="gpt-4o-mini", input="hi", stream=True))
            assert "boom near [REDACTED]" in err.value.message and KEY not in err.value.message
            return
        got = list(client(gw).responses.create(model="gpt-4o-mini", input="hi", stream=True))
    assert "".join(e.delta for e in got if e.type == "response.output_text.delta") == HI[:len(HI) // 2 + 1]
    assert got[-1].type == "error" and all(e.type != "response.completed" for e in got)
    assert "before response.completed" in got[-1].message


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"previous_response_id": "resp_1"}, "previous_response_id"),
    ({"store": True}, "store"),
    ({"tools": [{"type": "web_search"}]}, "tools[0]"),
])
def test_what_kt_cannot_honour_is_a_400_on_a_native_target_too(gw: Any, fake_upstream: FakeUpstream,
                                                                kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client(gw).responses.create(model="gpt-4o-mini", input="hi", **kwargs)
    assert f"`{field}`" in err.value.body["message"] and fake_upstream.requests == []


def test_kt_gateway_run_passes_responses_through_with_pii_redacted(tmp_path: Path, fake_upstream: FakeUpstream,
                                                                    gateway_process: Any) -> None:
    cfg = write_config(tmp_path / "c.yaml", [native(fake_upstream)], ["pii-detector"],
                       {"pii-detector": {"action": "redact"}})
    gw = gateway_process(cfg, env={KEY_ENV: KEY})
    sdk = openai.OpenAI(base_url=gw.url + "/v1", api_key="client-key", max_retries=0, timeout=20)
    events = list(sdk.responses.create(model="gpt-4o-mini", stream=True, input=[
        {"role": "user", "content": [{"type": "input_text", "text": "mail jane.doe@example.com please"}]}]))
    assert events[-1].type == "response.completed" and events[-1].response.output_text == HI
    (sent,) = fake_upstream.requests
    assert sent.path == "/v1/responses" and sent.body["stream"] is True and sent.body["store"] is False
    (part,) = sent.body["input"][0]["content"]
    assert part["type"] == "input_text" and "jane.doe@example.com" not in part["text"] and part["text"] != ""
    assert wait_for(lambda: gw.metric("keeptrusts_gateway_tokens_total",
                                      '{direction="output",model="gpt-4o-mini"}') == 5)
    assert wait_for(lambda: gw.metric("keeptrusts_gateway_redactions_total") == 1)
    assert KEY not in gw.logs()


def _lint(target: dict[str, Any]) -> list[tuple[str, str, str]]:
    doc = {"pack": {"name": "p", "version": "1.0.0", "enabled": True}, "policies": {"chain": []},
           "providers": {"targets": [target]}}
    return [(f.code, f.path, f"{f.message} {f.suggestion}") for f in validate_document(doc)]


def test_lint_and_the_default_of_responses_api(tmp_path: Path) -> None:
    (code, path, text), = _lint({"id": "a", "provider": "openai", "model": "m", "responses_api": "natve"})
    assert (code, path) == ("E006", "providers.targets[0].responses_api") and "did you mean 'native'" in text
    (code, path, text), = _lint({"id": "a", "provider": "anthropic", "model": "m", "responses_api": "native"})
    assert (code, path) == ("E023", "providers.targets[0].responses_api") and "openai" in text
    (code, path, text), = _lint({"id": "a", "provider": "openai", "model": "m", "response_api": "native"})
    assert (code, path) == ("E002", "providers.targets[0].response_api") and "did you mean 'responses_api'" in text
    assert _lint({"id": "a", "provider": "openai", "model": "m", "responses_api": "translate"}) == []
    targets = [{"id": "official", "provider": "openai", "model": "m"},
               {"id": "spelled", "provider": "openai", "model": "m", "base_url": "https://api.openai.com/v1"},
               {"id": "compatible", "provider": "openai", "model": "m", "base_url": "http://127.0.0.1:8000"},
               {"id": "forced", "provider": "openai", "model": "m", "base_url": "http://127.0.0.1:8000",
                "responses_api": "native"},
               {"id": "off", "provider": "openai", "model": "m", "responses_api": "translate"},
               {"id": "other", "provider": "vllm", "model": "m"}]
    config = load_config(write_config(tmp_path / "c.yaml", targets))
    assert {t.id: t.responses_native for t in config.targets} == {
        "official": True, "spelled": True, "compatible": False, "forced": True, "off": False, "other": False}
