"""Issue 16 §1: `provider: google` (the Gemini API natively).

The fake Gemini upstream (`tests.fake_google`) is first proven faithful with Google's own
`google-genai` SDK; then kt is put in front of it and driven with the OpenAI and Anthropic SDKs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from gateway.providers import google as google_provider
from kt.doctor import provider_check
from policies.config import load_config
from policies.lint import validate_document
from tests.fake_google import FakeGoogle
from tests.fake_upstream import FakeUpstream
from tests.fake_wire import ToolCall
from tests.gateway_harness import write_config

KEY_ENV = "KT_TEST_GOOGLE_KEY"
KEY = "AIzaSyTestKeyForTheFakeGemini0123456789"
HI = [{"role": "user", "content": "hi"}]
TOOL = {"type": "function", "function": {"name": "lookup", "description": "look up",
                                         "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}


@pytest.fixture(autouse=True)
def google_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)


@pytest.fixture
def fake_google() -> Iterator[FakeGoogle]:
    fake = FakeGoogle("Hello from Gemini.", api_key=KEY).start()
    yield fake
    fake.stop()


def google_target(fake: FakeGoogle, **extra: Any) -> dict[str, Any]:
    return {"id": "gm", "provider": "google", "model": "gemini-2.5-flash", "base_url": fake.url,
            "secret_key_ref": {"env": KEY_ENV}, **extra}


def oai(gw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key="client-key", max_retries=0, timeout=20)


def sdk(fake: FakeGoogle, key: str = KEY) -> genai.Client:
    return genai.Client(api_key=key, http_options=types.HttpOptions(base_url=fake.url))


# --- the fake speaks Gemini: google-genai accepts it ---------------------------------------------


def test_fake_google_is_accepted_by_the_google_genai_sdk(fake_google: FakeGoogle) -> None:
    client = sdk(fake_google)
    config = types.GenerateContentConfig(system_instruction="be brief")
    answer = client.models.generate_content(model="gemini-2.5-flash", contents="hi", config=config)
    assert answer.text == "Hello from Gemini." and answer.usage_metadata.total_token_count > 0
    assert "".join(c.text or "" for c in client.models.generate_content_stream(
        model="gemini-2.5-flash", contents="hi")) == "Hello from Gemini."
    fake_google.queue_reply(tool_calls=(ToolCall("lookup", {"q": "x"}),))
    tool = types.Tool(function_declarations=[types.FunctionDeclaration(name="lookup", description="look up")])
    called = client.models.generate_content(model="gemini-2.5-flash", contents="hi",
                                            config=types.GenerateContentConfig(tools=[tool]))
    assert called.function_calls[0].name == "lookup" and called.function_calls[0].args == {"q": "x"}
    blocked = client.models.generate_content(model="gemini-2.5-flash", contents="block-me")
    assert blocked.prompt_feedback.block_reason == "SAFETY" and not blocked.candidates
    wrong = sdk(fake_google, "AIzaWrong")  # kept: a collected Client closes its connection pool
    with pytest.raises(genai_errors.ClientError) as err:
        wrong.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert err.value.code == 400 and "API key not valid" in err.value.message
    sent = fake_google.requests[0]
    assert sent.header("x-goog-api-key") == KEY and sent.body["systemInstruction"]["parts"][0]["text"] == "be brief"


# --- through kt -----------------------------------------------------------------------------------


def test_chat_and_stream_through_kt(tmp_path: Path, fake_google: FakeGoogle, start_gateway: Any) -> None:
    gw = start_gateway(write_config(tmp_path / "c.yaml", [google_target(fake_google)]))
    answer = oai(gw).chat.completions.create(model="gemini-2.5-flash", max_tokens=40, temperature=0.2, messages=[
        {"role": "system", "content": "be brief"}, *HI])
    assert answer.choices[0].message.content == "Hello from Gemini." and answer.usage.total_tokens > 0
    sent = fake_google.requests[-1]
    assert sent.path == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert sent.header("x-goog-api-key") == KEY and sent.header("authorization") is None
    assert sent.body == {"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
                         "systemInstruction": {"parts": [{"text": "be brief"}]},
                         "generationConfig": {"maxOutputTokens": 40, "temperature": 0.2}}
    chunks = list(oai(gw).chat.completions.create(model="gemini-2.5-flash", messages=HI, stream=True,
                                                  stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from Gemini."
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens > 0
    assert fake_google.requests[-1].query == "alt=sse"


def test_tool_calls_both_ways(tmp_path: Path, fake_google: FakeGoogle, start_gateway: Any) -> None:
    gw = start_gateway(write_config(tmp_path / "c.yaml", [google_target(fake_google)]))
    fake_google.queue_reply(tool_calls=(ToolCall("lookup", {"q": "A-1"}),))
    first = oai(gw).chat.completions.create(model="gemini-2.5-flash", messages=HI, tools=[TOOL], tool_choice="auto")
    call = first.choices[0].message.tool_calls[0]
    assert first.choices[0].finish_reason == "tool_calls" and json.loads(call.function.arguments) == {"q": "A-1"}
    sent = fake_google.requests[-1].body
    assert sent["tools"] == [{"functionDeclarations": [{"name": "lookup", "description": "look up",
                                                        "parametersJsonSchema": TOOL["function"]["parameters"]}]}]
    assert sent["toolConfig"] == {"functionCallingConfig": {"mode": "AUTO"}}
    oai(gw).chat.completions.create(model="gemini-2.5-flash", tools=[TOOL], messages=[
        *HI, {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "shipped"}])
    contents = fake_google.requests[-1].body["contents"]
    assert contents[1] == {"role": "model", "parts": [{"functionCall": {"name": "lookup", "id": call.id,
                                                                        "args": {"q": "A-1"}}}]}
    assert contents[2]["parts"][0]["functionResponse"] == {"name": "lookup", "id": call.id,
                                                          "response": {"content": "shipped"}}
    fake_google.queue_reply(tool_calls=(ToolCall("lookup", {"q": "B"}),))
    chunks = list(oai(gw).chat.completions.create(model="gemini-2.5-flash", messages=HI, tools=[TOOL], stream=True))
    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or ()]
    assert deltas[0].function.name == "lookup" and json.loads(deltas[0].function.arguments) == {"q": "B"}


def test_anthropic_and_responses_clients_are_served_by_google(tmp_path: Path, fake_google: FakeGoogle,
                                                               start_gateway: Any) -> None:
    gw = start_gateway(write_config(tmp_path / "c.yaml", [google_target(fake_google)]))
    ant = anthropic.Anthropic(base_url=gw.url, api_key="client-key", max_retries=0, timeout=20)
    assert ant.messages.create(model="gemini-2.5-flash", max_tokens=50, messages=HI).content[0].text == \
        "Hello from Gemini."
    with ant.messages.stream(model="gemini-2.5-flash", max_tokens=50, messages=HI) as stream:
        assert "".join(stream.text_stream) == "Hello from Gemini."
    assert oai(gw).responses.create(model="gemini-2.5-flash", input="hi").output_text == "Hello from Gemini."
    events = list(oai(gw).responses.create(model="gemini-2.5-flash", input="hi", stream=True))
    assert events[-1].type == "response.completed" and events[-1].response.output_text == "Hello from Gemini."


def test_safety_blocks_are_clear_400s(tmp_path: Path, fake_google: FakeGoogle, start_gateway: Any) -> None:
    gw = start_gateway(write_config(tmp_path / "c.yaml", [google_target(fake_google)]))
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as err:
            if stream:
                list(oai(gw).chat.completions.create(model="gemini-2.5-flash", stream=True,
                                                     messages=[{"role": "user", "content": "block-me"}]))
            else:
                oai(gw).chat.completions.create(model="gemini-2.5-flash",
                                                messages=[{"role": "user", "content": "block-me"}])
        assert err.value.body["code"] == "safety_block" and "blocked the prompt (SAFETY)" in err.value.body["message"]
    fake_google.queue_reply("", finish_reason="SAFETY")
    with pytest.raises(openai.BadRequestError) as err:
        oai(gw).chat.completions.create(model="gemini-2.5-flash", messages=HI)
    assert err.value.body["code"] == "safety_block" and "withheld" in err.value.body["message"]


def test_stream_falls_back_from_openai_to_google(tmp_path: Path, fake_google: FakeGoogle,
                                                 fake_upstream: FakeUpstream, start_gateway: Any) -> None:
    first = {"id": "oa", "provider": "openai", "model": "shared", "base_url": fake_upstream.base_url,
             "secret_key_ref": {"env": KEY_ENV}}
    gw = start_gateway(write_config(tmp_path / "c.yaml", [first, google_target(fake_google, model="shared")]))
    fake_upstream.add_fault("status", status=503)
    chunks = list(oai(gw).chat.completions.create(model="shared", messages=HI, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from Gemini."


def test_errors_are_scrubbed_and_a_bad_key_is_named(tmp_path: Path, fake_google: FakeGoogle,
                                                    start_gateway: Any) -> None:
    gw = start_gateway(write_config(tmp_path / "c.yaml", [google_target(fake_google)],
                                    fallback={"strategy": "ordered", "max_retries": 0, "retry_on": []}))
    fake_google.add_fault("status", status=500, message=f"internal error with key {KEY}")
    with pytest.raises(openai.InternalServerError) as err:
        oai(gw).chat.completions.create(model="gemini-2.5-flash", messages=HI)
    assert KEY not in json.dumps(err.value.body)
    fake_google.api_key = "AIzaAnotherKey"
    with pytest.raises(openai.APIStatusError) as err:
        oai(gw).chat.completions.create(model="gemini-2.5-flash", messages=HI)
    assert "key for this target was refused" in err.value.body["message"]


def test_embeddings_skip_google_targets(tmp_path: Path, fake_google: FakeGoogle, start_gateway: Any) -> None:
    gw = start_gateway(write_config(tmp_path / "c.yaml", [google_target(fake_google)]))
    with pytest.raises(openai.APIStatusError):
        oai(gw).embeddings.create(model="gemini-2.5-flash", input="x")
    assert not fake_google.requests


def test_lint_points_gemini_at_google() -> None:
    doc = {"pack": {"name": "p", "version": "1.0.0", "enabled": True}, "policies": {"chain": []},
           "providers": {"targets": [{"id": "a", "provider": "gemini", "model": "gemini-2.5-flash"},
                                     {"id": "b", "provider": "google", "model": "gemini-2.5-flash"}]}}
    (finding,) = validate_document(doc)
    assert (finding.code, finding.path) == ("W005", "providers.targets[0].provider")
    assert "did you mean 'google'" in finding.suggestion


def test_doctor_checks_the_key_without_spending_tokens(fake_google: FakeGoogle, tmp_path: Path) -> None:
    target = load_config(write_config(tmp_path / "c.yaml", [google_target(fake_google)])).targets[0]
    assert (target.api_key_header, target.api_key_prefix) == ("x-goog-api-key", "")
    (check,) = provider_check(target, {KEY_ENV: KEY}, 5)
    assert check.status == "ok" and fake_google.requests[-1].path == "/v1beta/models"
    fake_google.api_key = "AIzaAnother"
    (check,) = provider_check(target, {KEY_ENV: KEY}, 5)
    assert check.status == "fail" and "key rejected" in check.detail


def test_empty_text_parts_are_not_sent() -> None:
    """Gemini rejects an empty text part; a redaction across a message's text parts may leave one."""
    parts = [{"type": "text", "text": t} for t in ("about [REDACTED:DLP]", "", ".")]
    body = google_provider.request({"model": "gemini-2.0-flash", "messages": [{"role": "user", "content": parts}]})
    assert body["contents"][0]["parts"] == [{"text": "about [REDACTED:DLP]"}, {"text": "."}]
