"""Images, audio and files a text policy cannot read, through the real gateway and the official SDKs.

With `on_unscannable_input: block` such a request is refused in the input phase (409 `input_blocked`,
reason `unscannable_input` in the decision event and the message, nothing sent upstream); with `allow`
(the default) it is forwarded as before; a text-only request is unaffected either way.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from tests.fake_upstream import FakeUpstream
from tests.gateway_harness import GatewayThread, write_config
from tests.waiting import wait_for

KEY_ENV = "KT_TEST_UPSTREAM_KEY"
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n customer list pixels").decode()
WAV = base64.b64encode(b"RIFF....WAVEfmt customer list spoken").decode()
PDF = base64.b64encode(b"%PDF-1.4 customer list").decode()
IMAGE_URL = f"data:image/png;base64,{PNG}"


@pytest.fixture(autouse=True)
def upstream_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-upstream")


def gateway(tmp_path: Path, fake: FakeUpstream, start_gateway: Any, mode: str | None,
            kind: str = "dlp-filter") -> GatewayThread:
    target = {"id": "t", "provider": "openai", "model": "gpt-4o-mini", "base_url": fake.base_url,
              "secret_key_ref": {"env": KEY_ENV}}
    options: dict[str, Any] = {"dlp-filter": {"blocked_terms": ["project-bluebird"], "action": "block"},
                               "prompt-injection": {}, "pii-detector": {}, "safety-filter": {}}[kind]
    if mode is not None:
        options["on_unscannable_input"] = mode
    return start_gateway(write_config(tmp_path / f"{mode}.yaml", [target], [kind], {kind: options}))


def oai(gw: GatewayThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)


def ant(gw: GatewayThread) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key="x", max_retries=0)


def chat_image(gw: GatewayThread) -> Any:
    return oai(gw).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": [
        {"type": "text", "text": "What does this screenshot say?"},
        {"type": "image_url", "image_url": {"url": IMAGE_URL}}]}])


def chat_audio(gw: GatewayThread) -> Any:
    return oai(gw).chat.completions.create(model="gpt-4o-mini", messages=[
        {"role": "system", "content": "Transcribe."},
        {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": WAV, "format": "wav"}}]}])


def chat_pdf(gw: GatewayThread) -> Any:
    return oai(gw).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": [
        {"type": "file", "file": {"filename": "customers.pdf", "file_data": f"data:application/pdf;base64,{PDF}"}},
        {"type": "text", "text": "Summarise."}]}])


def responses_image(gw: GatewayThread) -> Any:
    return oai(gw).responses.create(model="gpt-4o-mini", input=[{"role": "user", "content": [
        {"type": "input_text", "text": "What is in this image?"},
        {"type": "input_image", "image_url": IMAGE_URL, "detail": "auto"}]}])


def messages_image(gw: GatewayThread) -> Any:
    return ant(gw).messages.create(model="gpt-4o-mini", max_tokens=50, system="Be brief.", messages=[
        {"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}]}])


def messages_document(gw: GatewayThread) -> Any:
    return ant(gw).messages.create(model="gpt-4o-mini", max_tokens=50, messages=[
        {"role": "user", "content": [
            {"type": "document", "title": "customers.pdf",
             "source": {"type": "base64", "media_type": "application/pdf", "data": PDF}},
            {"type": "text", "text": "Summarise."}]}])


# call, where the part stands in the canonical request, its type there, what the upstream must receive
CASES = {
    "chat image_url": (chat_image, "messages[0].content[1]", "image_url", PNG),
    "chat input_audio": (chat_audio, "messages[1].content[0]", "input_audio", WAV),
    "chat file (PDF)": (chat_pdf, "messages[0].content[0]", "file", PDF),
    "responses input_image": (responses_image, "messages[0].content[1]", "image_url", PNG),
    "messages image": (messages_image, "messages[1].content[1]", "image_url", PNG),
    "messages document (PDF)": (messages_document, "messages[0].content[0]", "file", PDF),
}


@pytest.mark.parametrize("case", list(CASES))
def test_block_refuses_what_the_policy_cannot_read_and_sends_nothing(
        tmp_path: Path, fake_upstream: FakeUpstream, start_gateway: Any, case: str) -> None:
    send, where, part, data = CASES[case]
    gw = gateway(tmp_path, fake_upstream, start_gateway, "block")
    conflict = anthropic.ConflictError if "messages" in case.split()[0] else openai.ConflictError
    with pytest.raises(conflict) as err:
        send(gw)
    body = err.value.body
    body = body.get("error", body) if isinstance(body, dict) else body
    assert body["code"] == "input_blocked" and body["policy"] == "dlp-filter"
    assert f"{where} ({part})" in body["message"] and "unscannable_input" in body["message"]
    assert data not in json.dumps(body) and "customer" not in body["message"]
    assert not fake_upstream.requests
    event = wait_for(lambda: gw.events)[-1]
    assert (event["status"], event["verdict"], event["reason_code"], event["policy"]) == (
        409, "block", "unscannable_input", "dlp-filter")
    assert data not in json.dumps(event)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("mode", [None, "allow"])
def test_allow_forwards_the_part_unscanned(tmp_path: Path, fake_upstream: FakeUpstream, start_gateway: Any,
                                           case: str, mode: str | None) -> None:
    send, _, _, data = CASES[case]
    gw = gateway(tmp_path, fake_upstream, start_gateway, mode)
    send(gw)
    assert data in json.dumps(fake_upstream.requests_to("/v1/chat/completions")[-1].body)
    assert wait_for(lambda: gw.events)[-1]["verdict"] == "allow"


@pytest.mark.parametrize("kind", ["prompt-injection", "pii-detector", "dlp-filter", "safety-filter"])
def test_every_text_kind_blocks_an_image_and_passes_text(tmp_path: Path, fake_upstream: FakeUpstream,
                                                        start_gateway: Any, kind: str) -> None:
    gw = gateway(tmp_path, fake_upstream, start_gateway, "block", kind)
    answer = oai(gw).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}])
    assert answer.choices[0].message.content
    answer = oai(gw).chat.completions.create(model="gpt-4o-mini", messages=[
        {"role": "user", "content": [{"type": "text", "text": "hello"}]}])
    assert answer.choices[0].message.content
    assert len(fake_upstream.requests_to("/v1/chat/completions")) == 2
    with pytest.raises(openai.ConflictError) as err:
        chat_image(gw)
    assert err.value.body["policy"] == kind
    assert wait_for(lambda: len(gw.events) == 3 and gw.events)[-1]["reason_code"] == "unscannable_input"
    assert len(fake_upstream.requests_to("/v1/chat/completions")) == 2


def test_a_real_kt_gateway_blocks_an_image_and_records_why(tmp_path: Path, fake_upstream: FakeUpstream,
                                                           gateway_process: Any) -> None:
    target = {"id": "t", "provider": "openai", "model": "gpt-4o-mini", "base_url": fake_upstream.base_url,
              "secret_key_ref": {"env": KEY_ENV}}
    config = write_config(tmp_path / "policy-config.yaml", [target], ["pii-detector", "dlp-filter"],
                          {"pii-detector": {}, "dlp-filter": {"blocked_terms": ["x"], "on_unscannable_input": "block"}})
    gp = gateway_process(config, env={KEY_ENV: "sk-upstream"})
    client = openai.OpenAI(base_url=f"{gp.url}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.ConflictError) as err:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": [
            {"type": "text", "text": "read this"}, {"type": "image_url", "image_url": {"url": IMAGE_URL}}]}])
    assert err.value.body["policy"] == "dlp-filter" and "unscannable_input" in err.value.body["message"]
    assert client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert len(fake_upstream.requests) == 1

    def blocked() -> list[dict[str, Any]]:
        return gp.get("/keeptrusts/events?verdict=block")[1]["events"]

    event = wait_for(blocked)[0]
    assert event["reason_code"] == "unscannable_input" and event["policy"] == "dlp-filter"
    assert [(p["policy"], p["reason_code"]) for p in event["policies"]] == [
        ("pii-detector", "passed"), ("dlp-filter", "unscannable_input")]
    assert PNG not in gp.logs() and PNG not in json.dumps(event)


def test_token_ids_for_embeddings_are_refused_with_block_and_forwarded_with_allow(
        tmp_path: Path, fake_upstream: FakeUpstream, start_gateway: Any) -> None:
    blocking = gateway(tmp_path, fake_upstream, start_gateway, "block")
    for tokens in ([15339, 1917], [[15339, 1917], [9906]], ["hello", [15339]]):
        with pytest.raises(openai.ConflictError) as err:
            oai(blocking).embeddings.create(model="gpt-4o-mini", input=tokens)
        assert "(input_tokens)" in err.value.body["message"] and "unscannable_input" in err.value.body["message"]
    assert oai(blocking).embeddings.create(model="gpt-4o-mini", input=["hello"]).data
    assert len(fake_upstream.requests_to("/v1/embeddings")) == 1
    allowing = gateway(tmp_path, fake_upstream, start_gateway, None)
    assert len(oai(allowing).embeddings.create(model="gpt-4o-mini", input=[[15339, 1917], [9906]]).data) == 2
    assert fake_upstream.requests_to("/v1/embeddings")[-1].body["input"] == [[15339, 1917], [9906]]


def test_a_streamed_request_is_refused_before_any_chunk(tmp_path: Path, fake_upstream: FakeUpstream,
                                                        start_gateway: Any) -> None:
    gw = gateway(tmp_path, fake_upstream, start_gateway, "block")
    with pytest.raises(openai.ConflictError) as err:
        oai(gw).chat.completions.create(model="gpt-4o-mini", stream=True, messages=[{"role": "user", "content": [
            {"type": "text", "text": "read"}, {"type": "input_audio", "input_audio": {"data": WAV, "format": "wav"}}]}])
    assert "messages[0].content[1] (input_audio)" in err.value.body["message"]
    image = {"type": "image", "source": {"type": "url", "url": "https://example.org/customers.png"}}
    with pytest.raises(anthropic.ConflictError), ant(gw).messages.stream(
            model="gpt-4o-mini", max_tokens=50, messages=[{"role": "user", "content": [image]}]) as s:
        list(s)
    assert not fake_upstream.requests
    assert [e["reason_code"] for e in wait_for(lambda: len(gw.events) == 2 and gw.events)] == [
        "unscannable_input"] * 2
