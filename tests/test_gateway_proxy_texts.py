"""Every text a model reads passes the policies, on both routes, through the real gateway and the SDKs.

Input: a term anywhere a model reads it blocks (409, nothing sent upstream) or is redacted where
it stands (the fake upstream receives the redacted text; JSON arguments stay JSON). Output: every
choice, refusal and tool call, in JSON answers and streams.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from gateway.control import metrics
from tests.fake_upstream import FakeUpstream
from tests.fake_wire import Reply, ToolCall
from tests.gateway_harness import GatewayThread, ToolKind, write_config
from tests.waiting import wait_for

KEY_ENV = "KT_TEST_UPSTREAM_KEY"
S = "secret-42"
PATTERN = r"secret-\d+"


@pytest.fixture(autouse=True)
def upstream_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-upstream")


def gateway(tmp_path: Path, fake: FakeUpstream, start_gateway: Any, verdict: str,
            provider: str = "openai", chain: list[str] | None = None, name: str = "c", **policy: Any) -> GatewayThread:
    base = fake.base_url if provider == "openai" else fake.url
    target = {"id": "t", "provider": provider, "model": "gpt-4o-mini", "base_url": base,
              "secret_key_ref": {"env": KEY_ENV}}
    chain = chain or ["test-term"]
    options = {"test-term": {"pattern": PATTERN, "verdict": verdict}, **policy}
    return start_gateway(write_config(tmp_path / f"{name}.yaml", [target], chain, options))


def oai(gw: GatewayThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)


def ant(gw: GatewayThread) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key="x", max_retries=0)


def params_schema(word: str) -> dict[str, Any]:
    return {"type": "object", "properties": {
        f"city_{word}": {"type": "string", "description": f"the city {word}", "enum": ["Paris", f"Rome {word}"]}},
        "required": [f"city_{word}"]}


def call(arguments: str) -> dict[str, Any]:
    return {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": arguments}}


USER = {"role": "user", "content": "hello"}
# Per location on /v1/chat/completions: the request's extra arguments with the term only there.
CHAT = {
    "tools.description": {"tools": [{"type": "function", "function": {
        "name": "lookup", "description": f"Looks up {S}", "parameters": params_schema("x")}}]},
    "tools.name": {"tools": [{"type": "function", "function": {"name": f"lookup_{S}", "parameters": {}}}]},
    "tools.parameters": {"tools": [{"type": "function", "function": {
        "name": "lookup", "description": "Looks up", "parameters": params_schema(S)}}]},
    "tool_calls.arguments": {"messages": [USER, {"role": "assistant", "content": None,
                                                 "tool_calls": [call(json.dumps({"q": f"find {S}"}))]},
                                          {"role": "tool", "tool_call_id": "call_1", "content": "none"}]},
    "message.name": {"messages": [{"role": "user", "name": f"user_{S}", "content": "hello"}]},
    "refusal part": {"messages": [USER, {"role": "assistant", "content": [{"type": "refusal",
                                                                           "refusal": f"no {S}"}]}, USER]},
    "prediction": {"prediction": {"type": "content", "content": f"draft {S}"}},
    "response_format": {"response_format": {"type": "json_schema", "json_schema": {
        "name": "answer", "schema": params_schema(S)}}},
    "a field kt does not know": {"extra_body": {"documents": [{"title": "q3", "text": f"report {S}"}]}},
}


@pytest.mark.parametrize("place", list(CHAT))
def test_chat_term_anywhere_is_blocked_and_nothing_is_sent(tmp_path: Path, fake_upstream: FakeUpstream,
                                                          start_gateway: Any, test_kinds: None, place: str) -> None:
    gw = gateway(tmp_path, fake_upstream, start_gateway, "block")
    kwargs = {"messages": [USER], **copy.deepcopy(CHAT[place])}
    with pytest.raises(openai.ConflictError) as err:
        oai(gw).chat.completions.create(model="gpt-4o-mini", **kwargs)
    assert err.value.body["code"] == "input_blocked" and err.value.body["policy"] == "test-term"
    assert not fake_upstream.requests
    assert wait_for(lambda: gw.events)[-1]["status"] == 409


def test_chat_redaction_reaches_the_upstream_where_each_text_stands(
        tmp_path: Path, fake_upstream: FakeUpstream, start_gateway: Any, test_kinds: None) -> None:
    gw = gateway(tmp_path, fake_upstream, start_gateway, "redact")
    kwargs: dict[str, Any] = {}
    for place in CHAT:
        for key, value in copy.deepcopy(CHAT[place]).items():
            kwargs[key] = kwargs.get(key, []) + value if isinstance(value, list) else value
    kwargs["tools"] = kwargs["tools"][:1] + [
        {"type": "function", "function": {"name": f"other_{i}", "parameters": params_schema(S)}} for i in range(2)]
    oai(gw).chat.completions.create(model="gpt-4o-mini", **kwargs)
    sent = fake_upstream.requests_to("/v1/chat/completions")[-1].body
    assert S not in json.dumps(sent)
    arguments = next(m for m in sent["messages"] if m.get("tool_calls"))["tool_calls"][0]["function"]["arguments"]
    assert json.loads(arguments) == {"q": "find [REDACTED]"}  # still JSON, redacted inside the string
    assert sent["tools"][1]["function"]["parameters"]["required"] == ["city_[REDACTED]"]
    assert sent["prediction"]["content"] == "draft [REDACTED]"
    assert sent["documents"] == [{"title": "q3", "text": "report [REDACTED]"}]
    assert sent["response_format"]["json_schema"]["schema"]["properties"]["city_[REDACTED]"]["enum"] == [
        "Paris", "Rome [REDACTED]"]
    event = wait_for(lambda: gw.events)[-1]
    assert event["verdict"] == "redact" and event["redactions"] >= 10


def test_invalid_json_arguments_are_scanned_as_text(tmp_path: Path, fake_upstream: FakeUpstream,
                                                    start_gateway: Any, test_kinds: None) -> None:
    gw = gateway(tmp_path, fake_upstream, start_gateway, "redact")
    messages = [USER, {"role": "assistant", "content": None, "tool_calls": [call(f'{{"q": "{S}"')]},
                {"role": "tool", "tool_call_id": "call_1", "content": "ok"}]
    oai(gw).chat.completions.create(model="gpt-4o-mini", messages=messages)
    sent = fake_upstream.requests_to("/v1/chat/completions")[-1].body
    assert sent["messages"][1]["tool_calls"][0]["function"]["arguments"] == '{"q": "[REDACTED]"'


# --- /v1/messages -------------------------------------------------------------------------------

TOOL_USE = {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "lookup",
                                              "input": {"q": f"find {S}"}}]}


def tool_result(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": content}]}


PLAIN_USE = {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {}}]}
MESSAGES = {
    "system blocks": {"system": [{"type": "text", "text": f"be kind {S}"}]},
    "tools.description": {"tools": [{"name": "lookup", "description": f"Looks up {S}",
                                     "input_schema": params_schema("x")}]},
    "tools.input_schema": {"tools": [{"name": "lookup", "description": "Looks up",
                                      "input_schema": params_schema(S)}]},
    "tool_use.input": {"messages": [USER, TOOL_USE, tool_result("none")]},
    "tool_result string": {"messages": [USER, PLAIN_USE, tool_result(f"found {S}")]},
    "tool_result blocks": {"messages": [USER, PLAIN_USE, tool_result([{"type": "text", "text": f"found {S}"}])]},
    "document text": {"messages": [{"role": "user", "content": [
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": f"report {S}"}},
        {"type": "text", "text": "summarise"}]}]},
}


@pytest.mark.parametrize("place", list(MESSAGES))
def test_messages_term_anywhere_is_blocked_and_nothing_is_sent(tmp_path: Path, fake_upstream: FakeUpstream,
                                                              start_gateway: Any, test_kinds: None,
                                                              place: str) -> None:
    gw = gateway(tmp_path, fake_upstream, start_gateway, "block")
    kwargs = {"messages": [USER], **copy.deepcopy(MESSAGES[place])}
    with pytest.raises(anthropic.ConflictError):
        ant(gw).messages.create(model="gpt-4o-mini", max_tokens=50, **kwargs)
    assert not fake_upstream.requests


def all_messages_places() -> dict[str, Any]:
    messages = [USER, TOOL_USE, tool_result([{"type": "text", "text": f"found {S}"}]),
                {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_2", "name": "lookup",
                                                   "input": {"q": "again"}}]},
                tool_result(f"found {S}"), MESSAGES["document text"]["messages"][0]]
    return {"system": MESSAGES["system blocks"]["system"], "messages": messages,
            "tools": MESSAGES["tools.description"]["tools"] + [
                {"name": "other", "description": "d", "input_schema": params_schema(S)}]}


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_messages_redaction_reaches_the_upstream(tmp_path: Path, fake_upstream: FakeUpstream, start_gateway: Any,
                                                 test_kinds: None, provider: str) -> None:
    gw = gateway(tmp_path, fake_upstream, start_gateway, "redact", provider=provider)
    ant(gw).messages.create(model="gpt-4o-mini", max_tokens=50, **copy.deepcopy(all_messages_places()))
    path = "/v1/chat/completions" if provider == "openai" else "/v1/messages"
    sent = fake_upstream.requests_to(path)[-1].body
    assert S not in json.dumps(sent)
    assert json.dumps(sent).count("[REDACTED]") >= 7
    if provider == "anthropic":  # tool_use.input is an object again, redacted inside
        uses = [b for m in sent["messages"] if isinstance(m["content"], list) for b in m["content"]
                if b.get("type") == "tool_use"]
        assert uses[0]["input"] == {"q": "find [REDACTED]"}
        assert sent["tools"][1]["input_schema"]["required"] == ["city_[REDACTED]"]
    else:
        calls = [c for m in sent["messages"] for c in m.get("tool_calls") or ()]
        assert json.loads(calls[0]["function"]["arguments"]) == {"q": "find [REDACTED]"}


# --- output -------------------------------------------------------------------------------------


def args_reply(arguments: dict[str, Any], **kw: Any) -> Reply:
    return Reply(text="", tool_calls=(ToolCall("lookup", arguments),), **kw)


@pytest.mark.parametrize("stream", [False, True])
def test_output_tool_call_arguments_are_blocked(tmp_path: Path, fake_upstream: FakeUpstream, start_gateway: Any,
                                                test_kinds: None, stream: bool) -> None:
    gw = gateway(tmp_path, fake_upstream, start_gateway, "block")
    fake_upstream.queue_reply(args_reply({"q": f"the {S}"}))
    seen: list[Any] = []
    with pytest.raises(openai.APIError):
        if stream:
            for chunk in oai(gw).chat.completions.create(model="gpt-4o-mini", messages=[USER], stream=True):
                seen += [c.delta.tool_calls for c in chunk.choices if c.delta.tool_calls]
        else:
            oai(gw).chat.completions.create(model="gpt-4o-mini", messages=[USER])
    assert not seen  # not a piece of the blocked call reached the client
    assert wait_for(lambda: gw.events)[-1]["verdict"] == "block"


@pytest.mark.parametrize("stream", [False, True])
def test_output_tool_call_arguments_are_redacted_and_stay_json(tmp_path: Path, fake_upstream: FakeUpstream,
                                                               start_gateway: Any, test_kinds: None,
                                                               stream: bool) -> None:
    gw = gateway(tmp_path, fake_upstream, start_gateway, "redact")
    fake_upstream.queue_reply(args_reply({"q": f"the {S}", S: [1, S]}, chunks=7))
    if stream:
        arguments, names = "", ""
        for chunk in oai(gw).chat.completions.create(model="gpt-4o-mini", messages=[USER], stream=True):
            for choice in chunk.choices:
                for delta in choice.delta.tool_calls or ():
                    arguments += delta.function.arguments or ""
                    names += delta.function.name or ""
        assert names == "lookup"
    else:
        resp = oai(gw).chat.completions.create(model="gpt-4o-mini", messages=[USER])
        arguments = resp.choices[0].message.tool_calls[0].function.arguments
    assert json.loads(arguments) == {"q": "the [REDACTED]", "[REDACTED]": [1, "[REDACTED]"]}


def test_anthropic_client_gets_redacted_tool_use_in_a_stream(tmp_path: Path, fake_upstream: FakeUpstream,
                                                             start_gateway: Any, test_kinds: None) -> None:
    gw = gateway(tmp_path, fake_upstream, start_gateway, "redact")
    fake_upstream.queue_reply(args_reply({"q": f"the {S}"}, chunks=5))
    with ant(gw).messages.stream(model="gpt-4o-mini", max_tokens=50, messages=[USER]) as stream:
        message = stream.get_final_message()
    assert [b.input for b in message.content if b.type == "tool_use"] == [{"q": "the [REDACTED]"}]


@pytest.mark.parametrize("stream", [False, True])
def test_output_refusal_is_checked(tmp_path: Path, fake_upstream: FakeUpstream, start_gateway: Any,
                                   test_kinds: None, stream: bool) -> None:
    gw = gateway(tmp_path, fake_upstream, start_gateway, "block")
    fake_upstream.queue_reply(Reply(text="", refusal=f"I cannot share {S}"))
    with pytest.raises(openai.APIError):
        if stream:
            list(oai(gw).chat.completions.create(model="gpt-4o-mini", messages=[USER], stream=True))
        else:
            oai(gw).chat.completions.create(model="gpt-4o-mini", messages=[USER])
    gw2 = gateway(tmp_path, fake_upstream, start_gateway, "redact", name="redact")
    fake_upstream.queue_reply(Reply(text="", refusal=f"I cannot share {S}"))
    resp = oai(gw2).chat.completions.create(model="gpt-4o-mini", messages=[USER])
    assert resp.choices[0].message.refusal == "I cannot share [REDACTED]"


def twelve_choices(blocked_at: int, name: str = "shell_exec") -> Reply:
    choices = [Reply(text=f"answer {i}") for i in range(1, 12)]
    choices[blocked_at - 1] = Reply(text="", tool_calls=(ToolCall(name, {"cmd": "ls"}),))
    return Reply(text="answer 0", choices=tuple(choices))


@pytest.mark.parametrize("stream", [False, True])
def test_every_choice_is_checked(tmp_path: Path, fake_upstream: FakeUpstream, start_gateway: Any,
                                 test_kinds: None, stream: bool) -> None:
    target = {"id": "t", "provider": "openai", "model": "gpt-4o-mini", "base_url": fake_upstream.base_url,
              "secret_key_ref": {"env": KEY_ENV}}
    gw = start_gateway(write_config(tmp_path / "c.yaml", [target], ["test-tool"],
                                    {"test-tool": {"blocked": "shell_exec"}}))
    fake_upstream.queue_reply(twelve_choices(11))
    finishes: list[Any] = []
    with pytest.raises(openai.APIError):
        if stream:
            for chunk in oai(gw).chat.completions.create(model="gpt-4o-mini", messages=[USER], n=12, stream=True):
                finishes += [c.finish_reason for c in chunk.choices if c.finish_reason]
        else:
            oai(gw).chat.completions.create(model="gpt-4o-mini", messages=[USER], n=12)
    assert not finishes
    event = wait_for(lambda: gw.events)[-1]
    assert event["verdict"] == "block" and event["reason_code"] == "tool_blocked"
    assert len(event["policies"]) <= 9 and event["outcomes_unlisted"] >= 3  # small, yet every choice was checked
    fake_upstream.queue_reply(twelve_choices(11, "search"))
    chunks = list(oai(gw).chat.completions.create(model="gpt-4o-mini", messages=[USER], n=12, stream=True))
    assert sorted({c.index for chunk in chunks for c in chunk.choices}) == list(range(12))
    assert wait_for(lambda: len(gw.events) == 2 and gw.events)[-1]["outcomes_unlisted"] == 12 - 7


@pytest.mark.parametrize("stream", [False, True])
def test_a_redacted_answer_loses_the_logprobs_that_spell_it(tmp_path: Path, fake_upstream: FakeUpstream,
                                                            start_gateway: Any, test_kinds: None, stream: bool) -> None:
    gw = gateway(tmp_path, fake_upstream, start_gateway, "redact")
    fake_upstream.queue_reply(Reply(text=f"your code is {S} today", chunks=1))
    if stream:
        seen = json.dumps([c.model_dump() for c in oai(gw).chat.completions.create(
            model="gpt-4o-mini", messages=[USER], logprobs=True, top_logprobs=1, stream=True)])
    else:
        seen = oai(gw).chat.completions.create(model="gpt-4o-mini", messages=[USER], logprobs=True,
                                               top_logprobs=1).model_dump_json()
    assert "[REDACTED]" in seen and "secret" not in seen
    fake_upstream.queue_reply(Reply(text="all clear today"))
    logprobs = oai(gw).chat.completions.create(model="gpt-4o-mini", messages=[USER], logprobs=True,
                                               top_logprobs=1).choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None  # an answer left as it is keeps them
    assert [t.token for t in logprobs.content] == ["all ", "clear ", "today"]


def _evaluations(result: str | None = None) -> float:
    results = [result] if result else ["allow", "block", "redact", "escalate", "error", "other"]
    return sum(metrics.REGISTRY.get_sample_value("keeptrusts_gateway_policy_evaluations_total",
                                                 {"policy": "test-tool", "result": r}) or 0.0 for r in results)


@pytest.mark.parametrize("stream", [False, True])
def test_the_evaluation_metric_counts_every_choice_checked(tmp_path: Path, fake_upstream: FakeUpstream,
                                                           start_gateway: Any, test_kinds: None, stream: bool) -> None:
    """An answer of 12 choices lists 8 outcomes in its event; the metric still counts all 12 evaluations."""
    target = {"id": "t", "provider": "openai", "model": "gpt-4o-mini", "base_url": fake_upstream.base_url,
              "secret_key_ref": {"env": KEY_ENV}}
    gw = start_gateway(write_config(tmp_path / "c.yaml", [target], ["test-tool"],
                                    {"test-tool": {"blocked": "shell_exec"}}))
    for blocked, answers in (("search", 1), ("shell_exec", 2)):
        before, blocks, ran = _evaluations(), _evaluations("block"), len(ToolKind.seen_usage)
        fake_upstream.queue_reply(twelve_choices(11, blocked))
        try:
            answer = oai(gw).chat.completions.create(model="gpt-4o-mini", messages=[USER], n=12, stream=stream)
            if stream:
                list(answer)
        except openai.APIError:
            assert blocked == "shell_exec"
        event = wait_for(lambda n=answers: len(gw.events) == n and gw.events)[-1]
        assert event["outcomes_unlisted"] > 0 and "_unlisted_results" not in event  # the event stays small
        ran = len(ToolKind.seen_usage) - ran
        assert ran == 12  # one evaluation per choice
        assert wait_for(lambda b=before, r=ran: _evaluations() - b == r, timeout=5)
        assert _evaluations("block") - blocks == (blocked == "shell_exec")
