"""Issue 16 §1 + §2: `POST /v1/responses` to an `azure-openai` target with `responses_api: native`
is passed through as Responses to Azure's v1 Responses API, with every policy still applied.

The fake Azure resource (`tests.fake_azure`) is first proven with the `openai` SDK's own clients
(`OpenAI` on the v1 API, `AzureOpenAI` on the preview route); then kt is put in front of it and
driven with `client.responses.create` (an in-process gateway, real loopback sockets).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from policies.config import load_config
from tests.fake_azure import FakeAzure
from tests.fake_upstream import FakeUpstream
from tests.gateway_harness import assert_responses_blocked, write_config
from tests.waiting import wait_for

KEY_ENV = "KT_TEST_AZURE_RESPONSES_KEY"
KEY = "az-resp-secret-5e1d7c9a3b2f4e6d"
HI = "Hello from Azure."
MODEL = "gpt-4o-mini-2024-07-18"  # the model behind the fake's `chat` deployment
V1 = "/openai/v1/responses"


@pytest.fixture(autouse=True)
def azure_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)


@pytest.fixture
def fake_azure() -> Iterator[FakeAzure]:
    fake = FakeAzure(HI, api_key=KEY).start()
    yield fake
    fake.stop()


def native(fake: FakeAzure, **extra: Any) -> dict[str, Any]:
    return {"id": "az", "provider": "azure-openai", "model": "gpt-4o-mini", "deployment": "chat",
            "base_url": fake.url, "secret_key_ref": {"env": KEY_ENV}, "responses_api": "native", **extra}


def translated(fake: FakeUpstream, **extra: Any) -> dict[str, Any]:
    return {"id": "oa", "provider": "openai", "model": "gpt-4o-mini", "base_url": fake.base_url,
            "secret_key_ref": {"env": KEY_ENV}, "responses_api": "translate", **extra}


def client(gw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key="client-key", max_retries=0, timeout=20)


def term(tmp_path: Path, targets: list[dict[str, Any]], pattern: str, verdict: str) -> Path:
    return write_config(tmp_path / "c.yaml", targets, ["test-term"],
                        {"test-term": {"pattern": pattern, "verdict": verdict}})


# --- the fake speaks Azure's Responses API: the official clients accept it ---------------------------


def test_the_fake_azure_responses_api_is_accepted_by_the_openai_sdk(fake_azure: FakeAzure) -> None:
    v1 = openai.OpenAI(base_url=fake_azure.url + "/openai/v1/", api_key=KEY, max_retries=0, timeout=20)
    resp = v1.responses.create(model="chat", input="hi")
    assert (resp.output_text, resp.model, resp.status) == (HI, MODEL, "completed")
    with v1.responses.stream(model="chat", input="hi") as stream:
        types = [event.type for event in stream]
        assert stream.get_final_response().output_text == HI
    assert types[0] == "response.created" and types[-1] == "response.completed"
    preview = openai.AzureOpenAI(azure_endpoint=fake_azure.url, api_version="2025-03-01-preview", api_key=KEY,
                                 max_retries=0, timeout=20)
    assert preview.responses.create(model="chat", input="hi").output_text == HI
    assert [(r.path, r.query) for r in fake_azure.requests] == [
        (V1, ""), (V1, ""), ("/openai/responses", "api-version=2025-03-01-preview")]
    assert fake_azure.requests[-1].header("api-key") == KEY
    with pytest.raises(openai.BadRequestError) as err:
        v1.responses.create(model="chat", input="please filter-me")
    assert err.value.code == "content_filter"
    fake_azure.queue_reply("", finish_reason="content_filter")
    withheld = v1.responses.create(model="chat", input="hi")
    assert withheld.status == "incomplete" and withheld.incomplete_details.reason == "content_filter"
    assert withheld.output == []
    with pytest.raises(openai.NotFoundError):
        v1.responses.create(model="no-such-deployment", input="hi")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=fake_azure.url + "/openai/v1/", api_key="wrong", max_retries=0).responses.create(
            model="chat", input="hi")
    dated = openai.OpenAI(base_url=fake_azure.url + "/openai/v1/", api_key=KEY, max_retries=0,
                          default_query={"api-version": "2024-10-21"})
    with pytest.raises(openai.BadRequestError):
        dated.responses.create(model="chat", input="hi")


# --- through kt ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_the_request_reaches_azure_as_responses(tmp_path: Path, fake_azure: FakeAzure, start_gateway: Any,
                                                stream: bool) -> None:
    gw = start_gateway(write_config(tmp_path / "c.yaml", [native(fake_azure)]))
    kwargs: dict[str, Any] = {"model": "gpt-4o-mini", "input": "hi there", "instructions": "be brief",
                              "max_output_tokens": 50, "metadata": {"ticket": "T-1"}}
    if stream:
        events = list(client(gw).responses.create(**kwargs, stream=True))
        assert events[0].type == "response.created" and events[-1].type == "response.completed"
        resp = events[-1].response
    else:
        resp = client(gw).responses.create(**kwargs)
    (sent,) = fake_azure.requests
    assert (sent.path, sent.query) == (V1, "")
    assert sent.header("api-key") == KEY and sent.header("authorization") is None  # the client's key stays
    assert sent.body == {**kwargs, "model": "chat", "store": False, **({"stream": True} if stream else {})}
    assert (resp.output_text, resp.status, resp.model) == (HI, "completed", MODEL)
    event = wait_for(lambda: [e for e in gw.events if e.get("output_tokens")])[0]
    assert event["target"] == "az" and event["cost_usd"] > 0  # priced as the target's model


def test_an_entra_id_token_goes_as_a_bearer(tmp_path: Path, fake_azure: FakeAzure, start_gateway: Any,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    fake_azure.entra_token = "entra-token-7"
    monkeypatch.setenv("KT_TEST_AZURE_ENTRA", "entra-token-7")
    target = native(fake_azure, secret_key_ref={"env": "KT_TEST_AZURE_ENTRA"}, api_key_header="Authorization")
    gw = start_gateway(write_config(tmp_path / "c.yaml", [target]))
    assert client(gw).responses.create(model="gpt-4o-mini", input="hi").output_text == HI
    (sent,) = fake_azure.requests
    assert sent.path == V1 and sent.header("authorization") == "Bearer entra-token-7"


def test_input_redaction_is_done_in_place(tmp_path: Path, fake_azure: FakeAzure, start_gateway: Any,
                                          test_kinds: None) -> None:
    gw = start_gateway(term(tmp_path, [native(fake_azure)], r"\d{3}-\d{4}", "redact"))
    client(gw).responses.create(model="gpt-4o-mini", instructions="office 555-0001", input=[
        {"role": "user", "content": [{"type": "input_text", "text": "me 555-0003"}]},
        {"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": '{"q": "555-0004"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "desk 555-0005"}])
    (sent,) = fake_azure.requests
    assert sent.path == V1 and "555-" not in json.dumps(sent.body)
    assert sent.body["instructions"] == "office [REDACTED]"
    assert sent.body["input"] == [
        {"role": "user", "content": [{"type": "input_text", "text": "me [REDACTED]"}]},
        {"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": '{"q":"[REDACTED]"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "desk [REDACTED]"}]


@pytest.mark.parametrize("stream", [False, True])
def test_an_output_block_applies_to_json_and_stream(tmp_path: Path, fake_azure: FakeAzure, start_gateway: Any,
                                                    test_kinds: None, stream: bool) -> None:
    gw = start_gateway(term(tmp_path, [native(fake_azure)], "forbidden", "block"))
    fake_azure.queue_reply("this is forbidden text", chunks=6)
    assert_responses_blocked(client(gw), stream)
    assert [r.path for r in fake_azure.requests] == [V1]


@pytest.mark.parametrize("stream", [False, True])
def test_fallback_from_native_azure_to_a_translated_target(tmp_path: Path, fake_azure: FakeAzure,
                                                           fake_upstream: FakeUpstream, start_gateway: Any,
                                                           stream: bool) -> None:
    both = [native(fake_azure, model="shared"), translated(fake_upstream, model="shared")]
    gw = start_gateway(write_config(tmp_path / "c.yaml", both))
    if stream:  # cut after response.created and in_progress: nothing reached the client yet
        fake_azure.add_fault("disconnect", after_chunks=2, path=V1)
        events = list(client(gw).responses.create(model="shared", input="hi", stream=True))
        assert events[-1].type == "response.completed"
        resp = events[-1].response
    else:
        fake_azure.add_fault("status", status=503, path=V1)
        resp = client(gw).responses.create(model="shared", input="hi")
    assert resp.output_text == "Hello from the fake upstream." and resp.model == "shared"
    assert [r.path for r in fake_azure.requests] == [V1]
    assert [r.path for r in fake_upstream.requests] == ["/v1/chat/completions"]
    event = wait_for(lambda: [e for e in gw.events if e.get("target")])[0]
    assert (event["target"], event["attempts"]) == ("oa", 2)


def test_a_filtered_prompt_is_a_clear_400_not_retried(tmp_path: Path, fake_azure: FakeAzure,
                                                      fake_upstream: FakeUpstream, start_gateway: Any) -> None:
    both = [native(fake_azure, model="shared"), translated(fake_upstream, model="shared")]
    gw = start_gateway(write_config(tmp_path / "c.yaml", both))
    with pytest.raises(openai.BadRequestError) as err:
        client(gw).responses.create(model="shared", input="please filter-me")
    assert err.value.body["code"] == "content_filter" and "violence (medium)" in err.value.body["message"]
    assert [r.path for r in fake_azure.requests] == [V1] and fake_upstream.requests == []


@pytest.mark.parametrize("stream", [False, True])
def test_a_withheld_answer_is_as_on_chat(tmp_path: Path, fake_azure: FakeAzure, start_gateway: Any,
                                         stream: bool) -> None:
    gw = start_gateway(write_config(tmp_path / "c.yaml", [native(fake_azure)]))
    fake_azure.queue_reply("", finish_reason="content_filter")
    if stream:  # a stream keeps the reason, as chat streams keep `finish_reason: content_filter`
        events = list(client(gw).responses.create(model="gpt-4o-mini", input="hi", stream=True))
        assert events[-1].type == "response.incomplete"
        assert events[-1].response.incomplete_details.reason == "content_filter"
        return
    with pytest.raises(openai.BadRequestError) as err:
        client(gw).responses.create(model="gpt-4o-mini", input="hi")
    assert err.value.body["code"] == "content_filter" and "withheld the answer" in err.value.body["message"]


@pytest.mark.parametrize("withheld", [False, True])
def test_a_response_object_answering_a_stream_is_read_as_a_json_answer(tmp_path: Path, fake_azure: FakeAzure,
                                                                       start_gateway: Any, withheld: bool) -> None:
    gw = start_gateway(write_config(tmp_path / "c.yaml", [native(fake_azure)]))
    fake_azure.add_fault("json", path=V1)  # the stream request answered with one Response object
    if withheld:  # Azure's filter checks apply as to a JSON answer: the 400, before any event
        fake_azure.queue_reply("", finish_reason="content_filter")
        with pytest.raises(openai.BadRequestError) as err:
            list(client(gw).responses.create(model="gpt-4o-mini", input="hi", stream=True))
        assert err.value.body["code"] == "content_filter"
        return
    events = list(client(gw).responses.create(model="gpt-4o-mini", input="hi", stream=True))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert (events[-1].response.output_text, events[-1].response.model) == (HI, MODEL)
    (sent,) = fake_azure.requests  # answered at the first attempt, not by a retry
    assert sent.body["stream"] is True


def test_azure_errors_are_scrubbed_of_the_key(tmp_path: Path, fake_azure: FakeAzure, start_gateway: Any) -> None:
    gw = start_gateway(write_config(tmp_path / "c.yaml", [native(fake_azure)]))
    fake_azure.add_fault("status", status=400, message=f"Invalid input: key {KEY} is odd.", path=V1)
    with pytest.raises(openai.BadRequestError) as err:
        client(gw).responses.create(model="gpt-4o-mini", input="hi")
    assert KEY not in json.dumps(err.value.body) and "is odd" in err.value.body["message"]


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"previous_response_id": "resp_1"}, "previous_response_id"),
    ({"store": True}, "store"),
])
def test_stored_state_is_a_400_on_native_azure_too(tmp_path: Path, fake_azure: FakeAzure, start_gateway: Any,
                                                   kwargs: dict[str, Any], field: str) -> None:
    gw = start_gateway(write_config(tmp_path / "c.yaml", [native(fake_azure)]))
    with pytest.raises(openai.BadRequestError) as err:
        client(gw).responses.create(model="gpt-4o-mini", input="hi", **kwargs)
    assert f"`{field}`" in err.value.body["message"] and fake_azure.requests == []


def test_translate_is_the_default_on_azure(tmp_path: Path, fake_azure: FakeAzure, start_gateway: Any) -> None:
    default = {k: v for k, v in native(fake_azure).items() if k != "responses_api"}
    targets = [default, {**default, "id": "on", "responses_api": "native"},
               {**default, "id": "off", "responses_api": "translate"}]
    config = load_config(write_config(tmp_path / "c.yaml", targets))
    assert {t.id: t.responses_native for t in config.targets} == {"az": False, "on": True, "off": False}
    gw = start_gateway(write_config(tmp_path / "d.yaml", [default]))
    assert client(gw).responses.create(model="gpt-4o-mini", input="hi").output_text == HI
    assert [r.path for r in fake_azure.requests] == ["/openai/deployments/chat/chat/completions"]
