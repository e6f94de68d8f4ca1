"""The test upstream speaks the real wire formats: the official SDKs, pointed straight at it, parse it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import anthropic
import openai
import pytest

from tests.fake_upstream import FakeUpstream, Fault
from tests.fake_wire import Reply, ToolCall
from tests.waiting import wait_for

MSG = [{"role": "user", "content": "Say hello"}]


@pytest.fixture
def oai(fake_upstream: FakeUpstream) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake_upstream.base_url, api_key="sk-upstream", max_retries=0, timeout=5)


@pytest.fixture
def ant(fake_upstream: FakeUpstream) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=fake_upstream.url, api_key="sk-ant-upstream", max_retries=0, timeout=5)


def http(fake: FakeUpstream, method: str, path: str, body: object = None, headers: dict | None = None):
    """Raw HTTP: (status, headers, bytes)."""
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    req = urllib.request.Request(fake.url + path, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


# -- OpenAI ------------------------------------------------------------------------------------


def test_openai_chat_non_stream(fake_upstream: FakeUpstream, oai: openai.OpenAI) -> None:
    resp = oai.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    assert resp.object == "chat.completion"
    assert resp.id.startswith("chatcmpl-")
    assert resp.model == "gpt-4o-mini"
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].message.content == "Hello from the fake upstream."
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens == 2 + 5
    [req] = fake_upstream.requests
    assert (req.method, req.path) == ("POST", "/v1/chat/completions")
    assert req.header("Authorization") == "Bearer sk-upstream"
    assert req.body["messages"] == MSG


def test_openai_chat_stream_with_usage(fake_upstream: FakeUpstream, oai: openai.OpenAI) -> None:
    fake_upstream.queue_reply("one two three four", chunks=4)
    stream = oai.chat.completions.create(model="gpt-4o-mini", messages=MSG, stream=True,
                                         stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two three four"
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) == 4
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_openai_stream_without_usage_ends_with_done(fake_upstream: FakeUpstream) -> None:
    status, headers, raw = http(fake_upstream, "POST", "/v1/chat/completions",
                                {"model": "m", "messages": MSG, "stream": True},
                                {"Authorization": "Bearer k", "Content-Type": "application/json"})
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    events = [line for line in raw.decode().split("\n\n") if line]
    assert events[-1] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events)
    assert "usage" not in json.loads(events[-2][6:])


def test_openai_tool_calls(fake_upstream: FakeUpstream, oai: openai.OpenAI) -> None:
    call = ToolCall("get_weather", {"city": "Paris"})
    fake_upstream.queue_reply(Reply(tool_calls=(call,)), times=2)
    msg = oai.chat.completions.create(model="gpt-4o", messages=MSG).choices[0]
    assert msg.finish_reason == "tool_calls"
    assert msg.message.content is None
    assert msg.message.tool_calls[0].function.name == "get_weather"
    assert json.loads(msg.message.tool_calls[0].function.arguments) == {"city": "Paris"}
    args, names, finish = "", [], None
    for chunk in oai.chat.completions.create(model="gpt-4o", messages=MSG, stream=True):
        delta = chunk.choices[0].delta
        for tc in delta.tool_calls or []:
            names += [tc.function.name] if tc.function.name else []
            args += tc.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert names == ["get_weather"] and json.loads(args) == {"city": "Paris"} and finish == "tool_calls"


def test_openai_async_and_embeddings_and_models(fake_upstream: FakeUpstream) -> None:
    async def run() -> tuple:
        client = openai.AsyncOpenAI(base_url=fake_upstream.base_url, api_key="k", max_retries=0, timeout=5)
        resp = await client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
        stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MSG, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream])
        emb = await client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])  # base64 by default
        emb_float = await client.embeddings.create(model="text-embedding-3-small", input="a",
                                                   encoding_format="float", dimensions=4)
        models = await client.models.list()
        await client.close()
        return resp, text, emb, emb_float, models

    resp, text, emb, emb_float, models = asyncio.run(run())
    assert resp.choices[0].message.content == text == "Hello from the fake upstream."
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == 8
    assert emb.data[0].embedding[:4] == pytest.approx(emb_float.data[0].embedding, abs=1e-5)
    assert "gpt-4o-mini" in [m.id for m in models.data]


def test_openai_validation_errors(fake_upstream: FakeUpstream, oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        oai.chat.completions.create(model="gpt-4o-mini", messages=[])
    assert err.value.body["param"] == "messages"
    status, _, raw = http(fake_upstream, "POST", "/v1/chat/completions", {"model": "m"},
                          {"Authorization": "Bearer k"})
    assert status == 400
    assert json.loads(raw)["error"] == {"message": "Missing required parameter: 'messages'.",
                                        "type": "invalid_request_error", "param": "messages",
                                        "code": "missing_required_parameter"}
    status, _, raw = http(fake_upstream, "POST", "/v1/chat/completions", b"{not json", {"Authorization": "Bearer k"})
    assert status == 400 and json.loads(raw)["error"]["type"] == "invalid_request_error"
    status, _, _ = http(fake_upstream, "POST", "/v1/chat/completions", {"model": "m", "messages": MSG})
    assert status == 401
    assert http(fake_upstream, "POST", "/v1/completions", {}, {"Authorization": "Bearer k"})[0] == 404


def test_api_key_enforced_when_set() -> None:
    with FakeUpstream(api_key="sk-right") as fake:
        wrong = openai.OpenAI(base_url=fake.base_url, api_key="sk-wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            wrong.chat.completions.create(model="m", messages=MSG)
        bad = anthropic.Anthropic(base_url=fake.url, api_key="sk-wrong", max_retries=0)
        with pytest.raises(anthropic.AuthenticationError):
            bad.messages.create(model="m", max_tokens=5, messages=MSG)
        ok = openai.OpenAI(base_url=fake.base_url, api_key="sk-right", max_retries=0)
        assert ok.chat.completions.create(model="m", messages=MSG).choices


# -- Anthropic ---------------------------------------------------------------------------------


def test_anthropic_non_stream(fake_upstream: FakeUpstream, ant: anthropic.Anthropic) -> None:
    msg = ant.messages.create(model="claude-3-5-haiku-latest", max_tokens=64, system="Be brief.", messages=MSG)
    assert msg.type == "message" and msg.role == "assistant" and msg.id.startswith("msg_")
    assert msg.content[0].type == "text" and msg.content[0].text == "Hello from the fake upstream."
    assert msg.stop_reason == "end_turn"
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (4, 5)
    [req] = fake_upstream.requests
    # this SDK generation sends the key as a bearer token; older ones (and curl users) send x-api-key
    assert "sk-ant-upstream" in (req.header("x-api-key"), (req.header("authorization") or "")[7:])
    assert req.header("anthropic-version")


def test_anthropic_stream_helper(fake_upstream: FakeUpstream, ant: anthropic.Anthropic) -> None:
    fake_upstream.queue_reply("alpha beta gamma", chunks=3)
    with ant.messages.stream(model="claude-3-5-haiku-latest", max_tokens=64, messages=MSG) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert pieces == ["alpha ", "beta ", "gamma"]
    assert final.content[0].text == "alpha beta gamma"
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 3
    raw_types = []
    for event in ant.messages.create(model="c", max_tokens=5, messages=MSG, stream=True):
        raw_types.append(event.type)
    assert raw_types[:3] == ["message_start", "content_block_start", "ping"] or raw_types[:2] == [
        "message_start", "content_block_start"]  # some SDK versions swallow pings
    assert raw_types[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert "content_block_delta" in raw_types


def test_anthropic_ping_on_the_wire(fake_upstream: FakeUpstream) -> None:
    status, _, raw = http(fake_upstream, "POST", "/v1/messages",
                          {"model": "c", "max_tokens": 5, "messages": MSG, "stream": True},
                          {"x-api-key": "k", "anthropic-version": "2023-06-01"})
    names = [block.split("\n")[0] for block in raw.decode().split("\n\n") if block]
    assert status == 200
    assert names[:3] == ["event: message_start", "event: content_block_start", "event: ping"]
    assert names[-2:] == ["event: message_delta", "event: message_stop"]


def test_anthropic_tool_use_stream_and_async(fake_upstream: FakeUpstream) -> None:
    fake_upstream.queue_reply(Reply(text="Let me check.", tool_calls=(ToolCall("lookup", {"q": "x"}),)), times=2)

    async def run() -> tuple:
        client = anthropic.AsyncAnthropic(base_url=fake_upstream.url, api_key="k", max_retries=0, timeout=5)
        plain = await client.messages.create(model="c", max_tokens=5, messages=MSG)
        async with client.messages.stream(model="c", max_tokens=5, messages=MSG) as stream:
            final = await stream.get_final_message()
        await client.close()
        return plain, final

    plain, final = asyncio.run(run())
    for msg in (plain, final):
        assert [b.type for b in msg.content] == ["text", "tool_use"]
        assert msg.content[1].name == "lookup" and msg.content[1].input == {"q": "x"}
        assert msg.stop_reason == "tool_use"


def test_anthropic_validation_errors(fake_upstream: FakeUpstream, ant: anthropic.Anthropic) -> None:
    status, _, raw = http(fake_upstream, "POST", "/v1/messages", {"model": "c", "messages": MSG},
                          {"x-api-key": "k", "anthropic-version": "2023-06-01"})
    assert status == 400
    body = json.loads(raw)
    assert body["type"] == "error"
    assert body["error"] == {"type": "invalid_request_error", "message": "max_tokens: Field required"}
    status, _, raw = http(fake_upstream, "POST", "/v1/messages", {"model": "c", "max_tokens": 5, "messages": MSG},
                          {"x-api-key": "k"})
    assert status == 400 and "anthropic-version" in json.loads(raw)["error"]["message"]
    with pytest.raises(anthropic.BadRequestError) as err:
        ant.messages.create(model="c", max_tokens=5, messages=[{"role": "system", "content": "x"}])
    assert "system" in str(err.value)
    models = ant.models.list()
    assert "claude-3-5-haiku-latest" in [m.id for m in models.data]


# -- per-request control -----------------------------------------------------------------------


def test_reply_by_header_and_directive(fake_upstream: FakeUpstream, oai: openai.OpenAI) -> None:
    resp = oai.chat.completions.create(model="m", messages=MSG, extra_headers={"X-Fake-Reply": "from header"})
    assert resp.choices[0].message.content == "from header"
    prompt = 'please [[fake {"text": "from directive", "chunks": 2}]]'
    stream = oai.chat.completions.create(model="m", messages=[{"role": "user", "content": prompt}], stream=True)
    pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert pieces == ["from di", "rective"]
    fake_upstream.set_default("new default")
    assert oai.chat.completions.create(model="m", messages=MSG).choices[0].message.content == "new default"


# -- faults ------------------------------------------------------------------------------------


def test_status_faults(fake_upstream: FakeUpstream, oai: openai.OpenAI, ant: anthropic.Anthropic) -> None:
    fake_upstream.add_fault("status", status=503)
    fake_upstream.add_fault(Fault("status", status=429, retry_after=7))
    with pytest.raises(openai.InternalServerError) as err5:
        oai.chat.completions.create(model="m", messages=MSG)
    assert err5.value.status_code == 503 and err5.value.body["type"] == "server_error"
    with pytest.raises(openai.RateLimitError) as err429:
        oai.chat.completions.create(model="m", messages=MSG)
    assert err429.value.response.headers["retry-after"] == "7"
    assert err429.value.body["code"] == "rate_limit_exceeded"
    fake_upstream.add_fault("status", status=529)
    with pytest.raises(anthropic.APIStatusError) as err529:
        ant.messages.create(model="c", max_tokens=5, messages=MSG)
    assert err529.value.status_code == 529 and err529.value.body["error"]["type"] == "overloaded_error"
    assert oai.chat.completions.create(model="m", messages=MSG).choices  # faults are used up


def test_fault_path_filter_and_times(fake_upstream: FakeUpstream, oai: openai.OpenAI) -> None:
    fake_upstream.add_fault(Fault("status", status=500, path="/v1/embeddings"), times=2)
    assert oai.chat.completions.create(model="m", messages=MSG).choices
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            oai.embeddings.create(model="e", input="x")
    assert oai.embeddings.create(model="e", input="x").data


def test_malformed_and_disconnect(fake_upstream: FakeUpstream, oai: openai.OpenAI) -> None:
    fake_upstream.add_fault("malformed")
    with pytest.raises((openai.APIError, json.JSONDecodeError, ValueError)):
        oai.chat.completions.create(model="m", messages=MSG)
    fake_upstream.add_fault("malformed", after_chunks=1)
    with pytest.raises((openai.APIError, json.JSONDecodeError, ValueError)):
        list(oai.chat.completions.create(model="m", messages=MSG, stream=True))
    fake_upstream.add_fault("disconnect", after_chunks=2)
    fake_upstream.queue_reply("a b c d e f", chunks=6)
    got = []
    with pytest.raises(Exception):  # noqa: B017 - httpx/SDK raise different types for a cut stream
        for chunk in oai.chat.completions.create(model="m", messages=MSG, stream=True):
            got.append(chunk)
    assert len(got) <= 2
    fake_upstream.add_fault("disconnect")
    with pytest.raises(openai.APIConnectionError):
        oai.chat.completions.create(model="m", messages=MSG)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/responses"])
def test_a_json_fault_answers_a_stream_request_with_json(fake_upstream: FakeUpstream, path: str) -> None:
    body = {"model": "m", "stream": True,
            **({"input": "hi"} if path == "/v1/responses" else {"messages": MSG})}
    fake_upstream.add_fault("json")
    status, headers, data = http(fake_upstream, "POST", path, body, {"Authorization": "Bearer k"})
    answer = json.loads(data)
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert answer["object"] == ("response" if path == "/v1/responses" else "chat.completion")
    status, headers, _ = http(fake_upstream, "POST", path, body, {"Authorization": "Bearer k"})
    assert headers["Content-Type"].startswith("text/event-stream")  # the fault applied once


def test_an_empty_responses_body_is_the_apis_missing_parameter_400(fake_upstream: FakeUpstream) -> None:
    status, _, data = http(fake_upstream, "POST", "/v1/responses", {}, {"Authorization": "Bearer k"})
    error = json.loads(data)["error"]
    assert status == 400 and (error["code"], error["param"]) == ("missing_required_parameter", "model")


def test_slow_and_hang_trip_client_timeouts(fake_upstream: FakeUpstream) -> None:
    client = openai.OpenAI(base_url=fake_upstream.base_url, api_key="k", max_retries=0, timeout=0.2)
    fake_upstream.add_fault("slow", delay=2)
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model="m", messages=MSG)
    fake_upstream.add_fault("hang")
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model="m", messages=MSG)
    assert len(fake_upstream.requests) == 2


def test_hang_is_released_by_stop() -> None:
    fake = FakeUpstream().start()
    fake.add_fault("hang")
    client = openai.OpenAI(base_url=fake.base_url, api_key="k", max_retries=0, timeout=5)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            client.chat.completions.create(model="m", messages=MSG)
        except BaseException as exc:  # the point: it ends
            errors.append(exc)

    t = threading.Thread(target=call)
    t.start()
    wait_for(lambda: fake.requests)
    fake.stop()
    t.join(5)
    assert not t.is_alive() and isinstance(errors[0], openai.APIConnectionError)


# -- control API and process mode --------------------------------------------------------------


def test_control_api_over_http_as_a_process() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "tests.fake_upstream", "--port", "0", "--text", "proc"],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        url = line.strip().rsplit(" ", 1)[-1]
        fake = FakeUpstream()
        fake.port = int(url.rsplit(":", 1)[1])
        client = openai.OpenAI(base_url=url + "/v1", api_key="sk-x", max_retries=0, timeout=5)
        assert client.chat.completions.create(model="m", messages=MSG).choices[0].message.content == "proc"
        assert http(fake, "POST", "/_fake/faults", {"faults": [{"kind": "status", "status": 502, "times": 2}]})[0] \
            == 204
        assert http(fake, "POST", "/_fake/replies", {"replies": [{"text": "queued"}]})[0] == 204
        for _ in range(2):
            with pytest.raises(openai.APIStatusError):
                client.chat.completions.create(model="m", messages=MSG)
        assert client.chat.completions.create(model="m", messages=MSG).choices[0].message.content == "queued"
        _, _, raw = http(fake, "GET", "/_fake/requests")
        reqs = json.loads(raw)["requests"]
        assert len(reqs) == 4 and reqs[0]["headers"]["authorization"] == "Bearer sk-x"
        assert reqs[0]["body"]["messages"] == MSG
        assert http(fake, "POST", "/_fake/reset")[0] == 204
        assert json.loads(http(fake, "GET", "/_fake/requests")[2])["requests"] == []
    finally:
        proc.terminate()
        proc.wait(5)
        proc.stdout.close()


def test_fast_server_speaks_the_same_formats() -> None:
    """The benchmark's bare asyncio server: the SDKs parse its answers too."""
    proc = subprocess.Popen([sys.executable, "-m", "tests.fake_upstream", "--fast", "--text", "quick reply"],
                            stdout=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip().rsplit(" ", 1)[-1]
        oai = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0, timeout=5)
        assert oai.chat.completions.create(model="m", messages=MSG).choices[0].message.content == "quick reply"
        stream = oai.chat.completions.create(model="m", messages=MSG, stream=True,
                                             stream_options={"include_usage": True})
        chunks = list(stream)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "quick reply"
        assert chunks[-1].usage.completion_tokens == 2
        with pytest.raises(openai.BadRequestError):
            oai.chat.completions.create(model="m", messages=[])
        ant = anthropic.Anthropic(base_url=url, api_key="k", max_retries=0, timeout=5)
        with ant.messages.stream(model="c", max_tokens=5, messages=MSG) as s:
            assert s.get_final_message().content[0].text == "quick reply"
        with pytest.raises(anthropic.BadRequestError):
            ant.messages.create(model="c", max_tokens=0, messages=MSG)
    finally:
        proc.terminate()
        proc.wait(5)
        proc.stdout.close()
