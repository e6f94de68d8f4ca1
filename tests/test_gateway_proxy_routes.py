"""The proxy through real HTTP with the official SDKs: routes, formats, policies, auth, hygiene."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import http.client
import json
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from tests.fake_upstream import FakeUpstream
from tests.fake_wire import Reply, ToolCall
from tests.gateway_harness import GatewayThread, ToolKind, write_config
from tests.waiting import wait_for

KEY_ENV = "KT_TEST_UPSTREAM_KEY"
UPSTREAM_KEY = "sk-upstream-secret-123"
CLIENT_KEY = "kt_gk_client_key_456"


@pytest.fixture(autouse=True)
def upstream_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, UPSTREAM_KEY)


def target(fake: FakeUpstream, id: str = "primary", model: str = "gpt-4o-mini", **extra: Any) -> dict[str, Any]:
    return {"id": id, "provider": "openai", "model": model, "base_url": fake.base_url,
            "secret_key_ref": {"env": KEY_ENV}, **extra}


def oai(gw: GatewayThread, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=kw.pop("api_key", CLIENT_KEY), max_retries=0, **kw)


def raw(gw: GatewayThread, method: str, path: str, body: bytes | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", int(gw.url.rsplit(":", 1)[1]), timeout=10)
    conn.request(method, path, body=body, headers=headers or {"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data


def chat_body(text: str = "hello", **extra: Any) -> bytes:
    return json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], **extra}).encode()


@pytest.fixture
def plain(tmp_path: Path, fake_upstream: FakeUpstream, start_gateway: Any) -> GatewayThread:
    return start_gateway(write_config(tmp_path / "c.yaml", [target(fake_upstream)]))


# --- happy paths with the SDKs ------------------------------------------------------------------


def test_chat_json_via_openai_sdk(plain: GatewayThread, fake_upstream: FakeUpstream) -> None:
    fake_upstream.queue_reply("Hi from upstream")
    resp = oai(plain).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}])
    completion = resp.parse()
    assert completion.choices[0].message.content == "Hi from upstream"
    assert resp.headers["x-request-id"].startswith("req_")
    assert resp.headers["x-keeptrusts-config-revision"] == plain.runtime.snapshot.revision
    sent = fake_upstream.requests_to("/v1/chat/completions")[-1]
    assert sent.header("authorization") == f"Bearer {UPSTREAM_KEY}"
    assert CLIENT_KEY not in json.dumps(sent.headers)
    event = wait_for(lambda: plain.events)[-1]
    assert event["id"].startswith("evt_") and event["verdict"] == "allow" and event["status"] == 200
    assert event["target"] == "primary" and event["provider"] == "openai" and event["input_tokens"] > 0
    assert event["prompt_sha256"] == hashlib.sha256(b"hello").hexdigest()
    assert "hello" not in json.dumps(event).replace(event["prompt_sha256"], "")


def test_chat_stream_via_openai_sdk_with_usage(plain: GatewayThread, fake_upstream: FakeUpstream) -> None:
    fake_upstream.queue_reply("one two three four", chunks=4)
    stream = oai(plain).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two three four"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    event = wait_for(lambda: plain.events)[-1]
    assert event["stream"] is True and event["output_tokens"] == 4


def test_stream_without_include_usage_has_no_usage_chunk(plain: GatewayThread) -> None:
    chunks = list(oai(plain).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True))
    assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)
    assert wait_for(lambda: plain.events)[-1]["output_tokens"] > 0  # the gateway still counted


def test_async_openai_sdk_json_and_stream(plain: GatewayThread, fake_upstream: FakeUpstream) -> None:
    async def main() -> tuple[str, str]:
        client = openai.AsyncOpenAI(base_url=plain.base_url, api_key=CLIENT_KEY, max_retries=0)
        one = await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "a"}])
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "b"}], stream=True)
        parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        await client.close()
        return one.choices[0].message.content or "", "".join(parts)

    fake_upstream.set_default("async answer")
    assert asyncio.run(main()) == ("async answer", "async answer")


def test_anthropic_sdk_on_openai_target(plain: GatewayThread, fake_upstream: FakeUpstream) -> None:
    client = anthropic.Anthropic(base_url=plain.url, api_key=CLIENT_KEY, max_retries=0)
    fake_upstream.queue_reply("bonjour")
    msg = client.messages.create(model="gpt-4o-mini", max_tokens=50, system="be brief",
                                 messages=[{"role": "user", "content": "hello"}])
    assert msg.content[0].text == "bonjour" and msg.stop_reason == "end_turn"
    sent = fake_upstream.requests_to("/v1/chat/completions")[-1].body
    assert sent["messages"][0] == {"role": "system", "content": "be brief"}
    fake_upstream.queue_reply("streamed reply here", chunks=3)
    with client.messages.stream(model="gpt-4o-mini", max_tokens=50,
                                messages=[{"role": "user", "content": "hi"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "streamed reply here" and final.usage.output_tokens == 3


def test_anthropic_target_for_openai_and_anthropic_clients(
        tmp_path: Path, fake_upstream: FakeUpstream, start_gateway: Any) -> None:
    cfg = write_config(tmp_path / "c.yaml", [
        {"id": "claude", "provider": "anthropic", "model": "claude-3-5-haiku-latest", "base_url": fake_upstream.url,
         "secret_key_ref": {"env": KEY_ENV}}])
    gw = start_gateway(cfg)
    fake_upstream.set_default("from claude", chunks=2)
    resp = oai(gw).chat.completions.create(model="claude-3-5-haiku-latest",
                                           messages=[{"role": "user", "content": "hi"}])
    assert resp.choices[0].message.content == "from claude"
    sent = fake_upstream.requests_to("/v1/messages")[-1]
    assert sent.header("x-api-key") == UPSTREAM_KEY and sent.header("anthropic-version")
    assert sent.header("authorization") is None
    parts = [c.choices[0].delta.content or "" for c in oai(gw).chat.completions.create(
        model="claude-3-5-haiku-latest", messages=[{"role": "user", "content": "hi"}], stream=True) if c.choices]
    assert "".join(parts) == "from claude"
    client = anthropic.Anthropic(base_url=gw.url, api_key=CLIENT_KEY, max_retries=0)
    with client.messages.stream(model="claude-3-5-haiku-latest", max_tokens=20,
                                messages=[{"role": "user", "content": "hi"}]) as stream:
        assert "".join(stream.text_stream) == "from claude"


@pytest.mark.parametrize("stream", [False, True])
def test_chat_request_an_anthropic_target_cannot_take_is_400(
        tmp_path: Path, fake_upstream: FakeUpstream, start_gateway: Any, stream: bool) -> None:
    """Found by the fuzz suite: a content list with a bare string, sent to an anthropic target, was a 500.
    Now no target gets one: validation refuses it for every target (and upstream nothing is sent)."""
    cfg = write_config(tmp_path / "c.yaml", [
        {"id": "claude", "provider": "anthropic", "model": "claude-3-5-haiku-latest", "base_url": fake_upstream.url,
         "secret_key_ref": {"env": KEY_ENV}}])
    gw = start_gateway(cfg)
    body = json.dumps({"model": "claude-3-5-haiku-latest", "stream": stream,
                       "messages": [{"role": "user", "content": ["hi", {"type": "text", "text": "x"}]}]}).encode()
    status, _, data = raw(gw, "POST", "/v1/chat/completions", body)
    error = json.loads(data)["error"]
    assert status == 400 and error["code"] == "invalid_messages" and "messages[0].content[0]" in error["message"]
    assert fake_upstream.requests_to("/v1/messages") == []


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/embeddings", "/v1/messages"])
def test_request_nested_too_deep_is_400(plain: GatewayThread, fake_upstream: FakeUpstream, path: str) -> None:
    """Found by the fuzz suite: a body 300 levels deep parsed, then failed to re-serialise upstream (a 500)."""
    deep = "[" * 300 + "1" + "]" * 300
    body = (b'{"model": "gpt-4o-mini", "max_tokens": 5, "input": "x", "messages": [{"role": "user", "content": "x"}],'
            b' "metadata": {"deep": ' + deep.encode() + b"}}")
    status, _, data = raw(plain, "POST", path, body)
    assert status == 400 and "deeper than 128 levels" in data.decode(), data
    assert fake_upstream.requests == []
    shallow = body.replace(deep.encode(), b"[" * 100 + b"1" + b"]" * 100)
    assert raw(plain, "POST", path, shallow)[0] == 200


def test_embeddings_and_models(tmp_path: Path, fake_upstream: FakeUpstream, start_gateway: Any,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KT_TEST_MISSING", raising=False)
    cfg = write_config(tmp_path / "c.yaml", [
        target(fake_upstream, "emb", "text-embedding-3-small"),
        {"id": "demo", "provider": "mock", "model": "demo-model"},
        {"id": "nokey", "provider": "openai", "model": "gpt-4o", "secret_key_ref": {"env": "KT_TEST_MISSING"}}])
    gw = start_gateway(cfg)
    client = oai(gw)
    emb = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert len(emb.data) == 2 and emb.data[0].embedding
    assert len(client.embeddings.create(model="demo-model", input="x").data[0].embedding) > 0
    models = {m.id: m for m in client.models.list()}
    assert set(models) == {"text-embedding-3-small", "demo-model", "gpt-4o"}
    assert models["demo-model"].owned_by == "kt-mock"
    assert models["gpt-4o"].model_extra["available"] is False
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert err.value.status_code == 503 and "KT_TEST_MISSING" in err.value.message
    assert err.value.body["code"] == "no_available_target"


# --- errors and hygiene -------------------------------------------------------------------------


def test_unknown_model_lists_available(plain: GatewayThread) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        oai(plain).chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "x"}])
    assert err.value.body["code"] == "model_not_found" and "gpt-4o-mini" in err.value.body["message"]


@pytest.mark.parametrize(("body", "code", "needle"), [
    (b"{not json", "invalid_json", "not valid JSON"),
    (b"[1, 2]", "invalid_json", "JSON object"),
    (b'{"model": "gpt-4o-mini"}', "missing_messages", "messages"),
    (b'{"model": "gpt-4o-mini", "messages": "hi"}', "invalid_messages", "list"),
    (b'{"model": 5, "messages": [{"role": "user", "content": "x"}]}', "missing_model", "model"),
    (b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": 5}]}', "invalid_messages", "content"),
    # a bare string part is no OpenAI shape; forwarded, a lenient server would print it unscanned
    (b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": ["project bluebird"]}]}',
     "invalid_messages", "`messages[0].content[0]` must be a content part object"),
    (b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}',
     "invalid_stream", "stream"),
])
def test_malformed_requests_get_400_with_what_to_fix(plain: GatewayThread, body: bytes, code: str,
                                                    needle: str) -> None:
    status, headers, data = raw(plain, "POST", "/v1/chat/completions", body)
    error = json.loads(data)["error"]
    assert status == 400 and error["code"] == code and needle in error["message"]
    assert set(error) == {"type", "code", "message", "policy"}
    assert headers["x-request-id"] and headers["x-keeptrusts-config-revision"]
    assert b"Traceback" not in data


def test_messages_route_errors_are_anthropic_shaped(plain: GatewayThread) -> None:
    client = anthropic.Anthropic(base_url=plain.url, api_key=CLIENT_KEY, max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as err:
        client.messages.create(model="nope", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert err.value.body["type"] == "error" and err.value.body["error"]["code"] == "model_not_found"


def test_body_over_limit_is_413(tmp_path: Path, fake_upstream: FakeUpstream, start_gateway: Any) -> None:
    gw = start_gateway(write_config(tmp_path / "c.yaml", [target(fake_upstream)]), max_body_size=1000)
    status, _, data = raw(gw, "POST", "/v1/chat/completions", chat_body("x" * 2000))
    assert status == 413 and json.loads(data)["error"]["code"] == "request_too_large"
    with pytest.raises(openai.APIStatusError) as err:
        oai(gw).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "y" * 5000}])
    assert err.value.status_code == 413
    assert raw(gw, "POST", "/v1/chat/completions", chat_body("small"))[0] == 200
    assert fake_upstream.requests_to("/v1/chat/completions")[-1].body["messages"][0]["content"] == "small"


def test_unknown_route_and_request_id_echo(plain: GatewayThread) -> None:
    status, headers, data = raw(plain, "GET", "/v2/nothing", headers={"X-Request-ID": "abc-123"})
    assert status == 404 and json.loads(data)["error"]["code"] == "not_found"
    assert headers["x-request-id"] == "abc-123"
    assert raw(plain, "GET", "/readyz")[0] == 200 and raw(plain, "GET", "/healthz")[0] == 200


def test_gateway_keys(tmp_path: Path, fake_upstream: FakeUpstream, start_gateway: Any) -> None:
    from gateway.proxy.keys import load_keys

    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# team keys\n{hashlib.sha256(CLIENT_KEY.encode()).hexdigest()}  support-bot\n")
    gw = start_gateway(write_config(tmp_path / "c.yaml", [target(fake_upstream)]), keys=load_keys(keys_file))
    with pytest.raises(openai.AuthenticationError) as err:
        oai(gw, api_key="wrong").chat.completions.create(model="gpt-4o-mini",
                                                         messages=[{"role": "user", "content": "x"}])
    assert err.value.body["code"] == "invalid_api_key"
    assert raw(gw, "POST", "/v1/chat/completions", chat_body())[0] == 401
    assert raw(gw, "GET", "/v1/models")[0] == 401
    assert oai(gw).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    anthropic.Anthropic(base_url=gw.url, api_key=CLIENT_KEY, max_retries=0).messages.create(
        model="gpt-4o-mini", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    ok = wait_for(lambda: [e for e in gw.events if e["status"] == 200] if len(gw.events) == 4 else None)
    assert [e["key_label"] for e in ok] == ["support-bot", "support-bot"]
    for sent in fake_upstream.requests:
        assert CLIENT_KEY not in json.dumps(sent.headers)
    assert not fake_upstream.requests_to("/v1/messages")


def test_keys_file_errors(tmp_path: Path) -> None:
    from gateway.proxy.keys import KeysFileError, load_keys

    bad = tmp_path / "keys"
    bad.write_text("not-a-hash label\n")
    with pytest.raises(KeysFileError, match=r"keys:1: expected"):
        load_keys(bad)
    with pytest.raises(KeysFileError, match="cannot read"):
        load_keys(tmp_path / "missing")


# --- policies on the path -----------------------------------------------------------------------


def test_input_redaction_changes_what_goes_upstream(tmp_path: Path, fake_upstream: FakeUpstream,
                                                    start_gateway: Any, test_kinds: None) -> None:
    cfg = write_config(tmp_path / "c.yaml", [target(fake_upstream)], ["test-term"],
                       {"test-term": {"pattern": r"\d{3}-\d{4}", "verdict": "redact"}})
    gw = start_gateway(cfg)
    oai(gw).chat.completions.create(model="gpt-4o-mini",
                                    messages=[{"role": "user", "content": "call me at 555-1234 please"}])
    sent = fake_upstream.requests_to("/v1/chat/completions")[-1].body
    assert sent["messages"][0]["content"] == "call me at [REDACTED] please"
    event = wait_for(lambda: gw.events)[-1]
    assert event["verdict"] == "redact" and event["redactions"] == 1 and event["policy"] == "test-term"


def test_input_block_is_409_and_nothing_goes_upstream(tmp_path: Path, fake_upstream: FakeUpstream,
                                                      start_gateway: Any, test_kinds: None) -> None:
    gw = start_gateway(write_config(tmp_path / "c.yaml", [target(fake_upstream)], ["test-term"]))
    with pytest.raises(openai.ConflictError) as err:
        oai(gw).chat.completions.create(model="gpt-4o-mini",
                                        messages=[{"role": "user", "content": "this is forbidden"}], stream=True)
    assert err.value.body == {"type": "policy_violation", "code": "input_blocked",
                              "message": "test term found", "policy": "test-term"}
    assert not fake_upstream.requests
    event = wait_for(lambda: gw.events)[-1]
    assert event["verdict"] == "block" and event["status"] == 409 and event["reason_code"] == "test_term_found"


def test_output_block_json_and_redaction(tmp_path: Path, fake_upstream: FakeUpstream, start_gateway: Any,
                                         test_kinds: None) -> None:
    gw = start_gateway(write_config(tmp_path / "c.yaml", [target(fake_upstream)], ["test-term"]))
    fake_upstream.queue_reply("the forbidden answer")
    with pytest.raises(openai.ConflictError) as err:
        oai(gw).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "q"}])
    assert err.value.body["code"] == "output_blocked"


def test_output_redaction_rewrites_answer(tmp_path: Path, fake_upstream: FakeUpstream, start_gateway: Any,
                                          test_kinds: None) -> None:
    cfg = write_config(tmp_path / "c.yaml", [target(fake_upstream)], ["test-term"],
                       {"test-term": {"pattern": "secret", "verdict": "redact"}})
    gw = start_gateway(cfg)
    fake_upstream.queue_reply("a secret word")
    resp = oai(gw).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "q"}])
    assert resp.choices[0].message.content == "a [REDACTED] word"


def test_stream_blocks_term_split_across_chunks(tmp_path: Path, fake_upstream: FakeUpstream, start_gateway: Any,
                                                test_kinds: None) -> None:
    gw = start_gateway(write_config(tmp_path / "c.yaml", [target(fake_upstream)], ["test-term"]))
    text = "safe words first, then forbidden stuff"
    fake_upstream.queue_reply(text, chunks=len(text) // 4)  # 4-char chunks: "forbidden" spans three
    received: list[str] = []
    with pytest.raises(openai.APIError) as err:
        for chunk in oai(gw).chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "q"}], stream=True):
            received.append(chunk.choices[0].delta.content or "")
    got = "".join(received)
    assert got and text.startswith(got) and "forbidden" not in got
    assert "test term found" in str(err.value.message) or err.value.body["code"] == "output_blocked"
    event = wait_for(lambda: gw.events)[-1]
    assert event["verdict"] == "block" and event["error_code"] == "output_blocked"


def test_anthropic_stream_block_ends_with_error_event(tmp_path: Path, fake_upstream: FakeUpstream,
                                                      start_gateway: Any, test_kinds: None) -> None:
    gw = start_gateway(write_config(tmp_path / "c.yaml", [target(fake_upstream)], ["test-term"]))
    fake_upstream.queue_reply("hello there, forbidden", chunks=6)
    client = anthropic.Anthropic(base_url=gw.url, api_key=CLIENT_KEY, max_retries=0)
    got: list[str] = []
    with pytest.raises(anthropic.APIError), client.messages.stream(
            model="gpt-4o-mini", max_tokens=50, messages=[{"role": "user", "content": "q"}]) as stream:
        for piece in stream.text_stream:
            got.append(piece)
    assert "forbidden" not in "".join(got)


def test_stream_tool_call_checked_before_final_chunk(tmp_path: Path, fake_upstream: FakeUpstream,
                                                     start_gateway: Any, test_kinds: None) -> None:
    ToolKind.seen_usage.clear()
    gw = start_gateway(write_config(tmp_path / "c.yaml", [target(fake_upstream)], ["test-tool"],
                                    {"test-tool": {"blocked": "shell_exec"}}))
    fake_upstream.queue_reply(Reply(text="", tool_calls=(ToolCall("shell_exec", {"cmd": "rm -rf /"}),)))
    finish_reasons: list[str | None] = []
    with pytest.raises(openai.APIError):
        for chunk in oai(gw).chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "q"}], stream=True):
            finish_reasons += [c.finish_reason for c in chunk.choices]
    assert "tool_calls" not in finish_reasons
    assert ToolKind.seen_usage[-1][0] > 0 and ToolKind.seen_usage[-1][1] > 0  # usage known before the check
    fake_upstream.queue_reply(Reply(text="", tool_calls=(ToolCall("search", {"q": "x"}),)))
    chunks = list(oai(gw).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "q"}], stream=True))
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize("phase", ["input", "output"])
def test_fail_mode_block_and_allow(tmp_path: Path, fake_upstream: FakeUpstream, start_gateway: Any,
                                   test_kinds: None, phase: str) -> None:
    cfg = write_config(tmp_path / "c.yaml", [target(fake_upstream)], ["test-boom"], {"test-boom": {"on": phase}})
    closed = start_gateway(cfg, fail_mode="block")
    with pytest.raises(openai.APIStatusError) as err:
        oai(closed).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "q"}])
    assert err.value.status_code == 503 and err.value.body["code"] == "policy_error"
    assert err.value.body["policy"] == "test-boom" and "Traceback" not in err.value.message
    opened = start_gateway(cfg, fail_mode="allow")
    assert oai(opened).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "q"}])
    event = wait_for(lambda: opened.events)[-1]
    assert event["policy_error"] is True and event["fail_mode"] == "allow" and event["status"] == 200


def test_pack_disabled_passes_without_policies(tmp_path: Path, fake_upstream: FakeUpstream, start_gateway: Any,
                                               test_kinds: None) -> None:
    gw = start_gateway(write_config(tmp_path / "c.yaml", [target(fake_upstream)], ["test-term"], enabled=False))
    resp = oai(gw).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "forbidden"}])
    assert resp.headers["x-keeptrusts-policies"] == "disabled"
    event = wait_for(lambda: gw.events)[-1]
    assert event["policies_enabled"] is False and event["reason_code"] == "policies_disabled"


def test_identity_headers_reach_policies_and_event(plain: GatewayThread) -> None:
    oai(plain).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}],
        extra_headers={"X-User-ID": "u-1", "X-Agent-ID": "bot-7", "X-User-Role": "admin", "X-Session-ID": "s-9"})
    event = wait_for(lambda: plain.events)[-1]
    assert (event["user_id"], event["agent_id"], event["user_role"], event["session_id"]) == \
        ("u-1", "bot-7", "admin", "s-9")


def test_agent_rate_limit_and_budget(tmp_path: Path, fake_upstream: FakeUpstream, start_gateway: Any) -> None:
    cfg = write_config(tmp_path / "c.yaml", [target(fake_upstream)],
                       agents={"bot": {"max_requests_per_hour": 1}, "spender": {"max_cost_usd_per_day": 0.0000001}})
    gw = start_gateway(cfg)

    def ask(agent: str | None) -> Any:
        headers = {"X-Agent-ID": agent} if agent else {}
        return oai(gw).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                               extra_headers=headers)

    ask("bot")
    with pytest.raises(openai.RateLimitError) as err:
        ask("bot")
    assert err.value.body["policy"] == "agents" and int(err.value.response.headers["retry-after"]) > 0
    ask(None)  # no agent id: not limited
    ask("spender")
    with pytest.raises(openai.ConflictError) as err:
        ask("spender")
    assert err.value.body["code"] == "budget_exceeded"
    events = wait_for(lambda: len(gw.events) == 5 and gw.events)
    assert events[0]["cost_usd"] > 0 and events[1]["reason_code"] == "agent_rate_limited"


def test_real_kinds_on_the_path(tmp_path: Path, fake_upstream: FakeUpstream, start_gateway: Any) -> None:
    cfg = write_config(tmp_path / "c.yaml", [target(fake_upstream)], ["pii-detector", "dlp-filter"],
                       {"pii-detector": {"action": "redact"},
                        "dlp-filter": {"blocked_terms": ["project-bluebird"], "action": "block"}})
    gw = start_gateway(cfg)
    oai(gw).chat.completions.create(model="gpt-4o-mini",
                                    messages=[{"role": "user", "content": "mail jane.doe@example.com now"}])
    sent = fake_upstream.requests_to("/v1/chat/completions")[-1].body["messages"][0]["content"]
    assert "jane.doe@example.com" not in sent and sent.startswith("mail ")
    text = "status of project-bluebird is green"
    fake_upstream.queue_reply(text, chunks=len(text) // 3)
    got: list[str] = []
    with pytest.raises(openai.APIError):
        for c in oai(gw).chat.completions.create(model="gpt-4o-mini", stream=True,
                                                 messages=[{"role": "user", "content": "status?"}]):
            got += [c.choices[0].delta.content or ""] if c.choices else []
    assert "bluebird" not in "".join(got)


def test_wrong_method_is_an_envelope(plain: GatewayThread) -> None:
    status, _, data = raw(plain, "GET", "/v1/chat/completions")
    assert status == 405 and json.loads(data)["error"]["code"] == "method_not_allowed"


def test_every_route_carries_request_id_and_revision(plain: GatewayThread) -> None:
    for path in ("/metrics", "/health", "/keeptrusts/status", "/readyz", "/nope"):
        _, headers, _ = raw(plain, "GET", path)
        assert headers["x-request-id"] and headers["x-keeptrusts-config-revision"] == plain.runtime.snapshot.revision


def test_async_anthropic_sdk(plain: GatewayThread, fake_upstream: FakeUpstream) -> None:
    async def main() -> tuple[str, str]:
        client = anthropic.AsyncAnthropic(base_url=plain.url, api_key=CLIENT_KEY, max_retries=0)
        msg = await client.messages.create(model="gpt-4o-mini", max_tokens=20,
                                           messages=[{"role": "user", "content": "a"}])
        async with client.messages.stream(model="gpt-4o-mini", max_tokens=20,
                                          messages=[{"role": "user", "content": "b"}]) as stream:
            text = "".join([t async for t in stream.text_stream])
        await client.close()
        return msg.content[0].text, text

    fake_upstream.set_default("async claude-style", chunks=3)
    assert asyncio.run(main()) == ("async claude-style", "async claude-style")


def test_embeddings_input_redaction(tmp_path: Path, fake_upstream: FakeUpstream, start_gateway: Any,
                                    test_kinds: None) -> None:
    cfg = write_config(tmp_path / "c.yaml", [target(fake_upstream, model="text-embedding-3-small")], ["test-term"],
                       {"test-term": {"pattern": "secret", "verdict": "redact"}})
    gw = start_gateway(cfg)
    oai(gw).embeddings.create(model="text-embedding-3-small", input=["a secret", "plain"])
    assert fake_upstream.requests_to("/v1/embeddings")[-1].body["input"] == ["a [REDACTED]", "plain"]
    # beside token ids the texts are redacted where they stand too (before, the whole input went unredacted)
    status, _, _ = raw(gw, "POST", "/v1/embeddings", json.dumps(
        {"model": "text-embedding-3-small", "input": ["a secret", [1, 2, 3], "more secret"]}).encode())
    assert status == 200
    assert fake_upstream.requests_to("/v1/embeddings")[-1].body["input"] == [
        "a [REDACTED]", [1, 2, 3], "more [REDACTED]"]
    status, _, data = raw(gw, "POST", "/v1/embeddings", json.dumps(
        {"model": "text-embedding-3-small", "input": ["a secret", {"text": "a secret"}]}).encode())
    assert status == 400 and json.loads(data)["error"]["code"] == "invalid_input"
    assert "`input[1]`" in json.loads(data)["error"]["message"]
    assert len(fake_upstream.requests_to("/v1/embeddings")) == 2  # the unreadable object was not forwarded


def test_requests_leave_no_reference_cycles(tmp_path: Path, fake_upstream: FakeUpstream, start_gateway: Any,
                                            test_kinds: None) -> None:
    """A finished request is freed by reference counting: a cycle would hand the handler and all it
    holds to the cyclic GC, whose collections cost every request time and stall the loop. The rules
    that keep it so: docs/gateway.md, "Requests and the garbage collector"."""
    from gateway.http.handler import Handler

    gw = start_gateway(write_config(tmp_path / "c.yaml", [target(fake_upstream)], ["test-term"],
                                    fallback={"strategy": "ordered", "max_retries": 0}))

    def traffic() -> None:
        fake_upstream.add_fault("status", status=500)
        with pytest.raises(openai.APIStatusError):  # the upstream failed
            oai(gw).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        oai(gw).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        list(oai(gw).chat.completions.create(model="gpt-4o-mini", stream=True,
                                             messages=[{"role": "user", "content": "hi"}]))
        with pytest.raises(openai.ConflictError):  # blocked by a policy
            oai(gw).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "forbidden"}])
        assert raw(gw, "POST", "/v1/chat/completions", b"{nope")[0] == 400
        assert raw(gw, "POST", "/v1/messages", chat_body(model="nope"))[0] == 400
        anthropic.Anthropic(base_url=gw.url, api_key=CLIENT_KEY, max_retries=0).messages.create(
            model="gpt-4o-mini", max_tokens=10, messages=[{"role": "user", "content": "hi"}])

    traffic()  # first requests: one-time caches, the pool's connections
    wait_for(lambda: len(gw.events) >= 7)
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        traffic()
        wait_for(lambda: len(gw.events) >= 14)
        gc.collect()
        leaked = [type(o).__name__ for o in gc.garbage if isinstance(o, Handler)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert leaked == []


@pytest.mark.parametrize("name", ["X-User-ID", "X-Agent-ID", "X-User-Role", "X-Session-ID"])
def test_identity_header_given_twice_is_refused(plain: GatewayThread, fake_upstream: FakeUpstream, name: str) -> None:
    """Policies decide on one value: a second line (say, appended by a front proxy) must not pick it."""
    from tests.http_wire import Wire

    body = chat_body()
    wire = Wire(int(plain.url.rsplit(":", 1)[1]))
    wire.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
              + f"{name}: admin\r\n{name.lower()}: viewer\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    resp = wire.response()
    wire.close()
    assert resp.status == 400
    error = resp.json()["error"]
    assert error["code"] == "duplicate_identity_header" and name.lower() in error["message"].lower()
    assert not fake_upstream.requests_to("/v1/chat/completions")
