"""Issue 16 §1: `provider: azure-openai`.

The fake Azure upstream (`tests.fake_azure`) is first proven faithful with the `openai` SDK's
own `AzureOpenAI` client; then kt is put in front of it and driven with the OpenAI and the
Anthropic SDKs (real loopback sockets, an in-process gateway).
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from gateway.providers import azure
from policies.config import load_config
from policies.lint import validate_document
from policies.providers import AZURE_API_VERSION, AZURE_OPENAI
from tests.fake_azure import FakeAzure
from tests.fake_upstream import FakeUpstream
from tests.fake_wire import ToolCall
from tests.gateway_harness import write_config
from tests.kt_doctor import by_name, kt_doctor
from tests.waiting import wait_for

KEY_ENV = "KT_TEST_AZURE_KEY"
KEY = "az-secret-7f3a9c2b4e6d8f10a2c4"
HI = [{"role": "user", "content": "hi"}]
TOOL = {"type": "function", "function": {"name": "lookup", "description": "look up",
                                         "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}


@pytest.fixture(autouse=True)
def azure_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)


@pytest.fixture
def fake_azure() -> Iterator[FakeAzure]:
    fake = FakeAzure("Hello from Azure.", api_key=KEY).start()
    yield fake
    fake.stop()


def azure_target(fake: FakeAzure, **extra: Any) -> dict[str, Any]:
    return {"id": "az", "provider": "azure-openai", "model": "gpt-4o-mini", "deployment": "chat",
            "base_url": fake.url, "secret_key_ref": {"env": KEY_ENV}, **extra}


def oai(gw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key="client-key", max_retries=0, timeout=20)


def ant(gw: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key="client-key", max_retries=0, timeout=20)


def sdk(fake: FakeAzure, **kwargs: Any) -> openai.AzureOpenAI:
    kwargs.setdefault("api_key", KEY)
    return openai.AzureOpenAI(azure_endpoint=fake.url, api_version=AZURE_API_VERSION, max_retries=0, **kwargs)


# --- the fake speaks Azure: the official AzureOpenAI client accepts it ------------------------------


def test_fake_azure_is_accepted_by_the_azure_openai_sdk(fake_azure: FakeAzure) -> None:
    client = sdk(fake_azure)
    answer = client.chat.completions.create(model="chat", messages=HI)
    assert answer.choices[0].message.content == "Hello from Azure."
    assert answer.model == "gpt-4o-mini-2024-07-18"
    text = "".join(c.choices[0].delta.content or "" for c in
                   client.chat.completions.create(model="chat", messages=HI, stream=True) if c.choices)
    assert text == "Hello from Azure."
    vectors = client.embeddings.create(model="embed", input=["a", "b"])
    assert len(vectors.data) == 2
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "filter-me"}])
    assert err.value.code == "content_filter"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=HI)
    with pytest.raises(openai.AuthenticationError):
        sdk(fake_azure, api_key="wrong").chat.completions.create(model="chat", messages=HI)
    sent = fake_azure.requests_to("/openai/deployments/chat/chat/completions")[0]
    assert sent.header("api-key") == KEY and f"api-version={AZURE_API_VERSION}" in sent.query


def test_fake_azure_accepts_an_entra_id_token_like_azure(fake_azure: FakeAzure) -> None:
    fake_azure.entra_token = "entra-token-1"
    client = openai.AzureOpenAI(azure_endpoint=fake_azure.url, api_version=AZURE_API_VERSION,
                                azure_ad_token="entra-token-1", max_retries=0)
    assert client.chat.completions.create(model="chat", messages=HI).choices[0].message.content


# --- through kt -------------------------------------------------------------------------------------


def test_chat_stream_tools_and_embeddings_through_kt(tmp_path: Path, fake_azure: FakeAzure,
                                                     start_gateway: Any) -> None:
    embed = azure_target(fake_azure, id="az-embed", model="text-embedding-3-small", deployment="embed")
    gw = start_gateway(write_config(tmp_path / "c.yaml", [azure_target(fake_azure), embed]))
    client = oai(gw)
    answer = client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert answer.choices[0].message.content == "Hello from Azure."
    sent = fake_azure.requests[-1]
    assert sent.path == "/openai/deployments/chat/chat/completions"
    assert sent.query == f"api-version={AZURE_API_VERSION}"
    assert sent.header("api-key") == KEY and sent.header("authorization") is None  # the client's key stays
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=HI, stream=True,
                                                 stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from Azure."
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    fake_azure.queue_reply(tool_calls=(ToolCall("lookup", {"q": "x"}),))
    called = client.chat.completions.create(model="gpt-4o-mini", messages=HI, tools=[TOOL])
    assert called.choices[0].message.tool_calls[0].function.name == "lookup"
    assert fake_azure.requests[-1].body["tools"] == [TOOL]
    vectors = client.embeddings.create(model="text-embedding-3-small", input="x")
    assert len(vectors.data) == 1
    assert fake_azure.requests[-1].path == "/openai/deployments/embed/embeddings"
    event = wait_for(lambda: [e for e in gw.events if e.get("cost_usd")])[0]
    assert event["cost_usd"] > 0  # priced by the target's model (gpt-4o-mini), not by the deployment name


def test_anthropic_clients_are_served_by_azure(tmp_path: Path, fake_azure: FakeAzure, start_gateway: Any) -> None:
    target = azure_target(fake_azure, model="claude-via-azure")
    gw = start_gateway(write_config(tmp_path / "c.yaml", [target]))
    message = ant(gw).messages.create(model="claude-via-azure", max_tokens=50, messages=HI)
    assert message.content[0].text == "Hello from Azure."
    with ant(gw).messages.stream(model="claude-via-azure", max_tokens=50, messages=HI) as stream:
        assert "".join(stream.text_stream) == "Hello from Azure."
    fake_azure.queue_reply(tool_calls=(ToolCall("lookup", {"q": "x"}),))
    tools = [{"name": "lookup", "description": "look up", "input_schema": TOOL["function"]["parameters"]}]
    used = ant(gw).messages.create(model="claude-via-azure", max_tokens=50, messages=HI, tools=tools)
    assert used.stop_reason == "tool_use" and used.content[-1].input == {"q": "x"}


def test_prompt_content_filter_is_a_clear_400_and_not_retried(tmp_path: Path, fake_azure: FakeAzure,
                                                                fake_upstream: FakeUpstream,
                                                                start_gateway: Any) -> None:
    other = {"id": "oa", "provider": "openai", "model": "gpt-4o-mini", "base_url": fake_upstream.base_url,
             "secret_key_ref": {"env": KEY_ENV}}
    gw = start_gateway(write_config(tmp_path / "c.yaml", [azure_target(fake_azure), other]))
    with pytest.raises(openai.BadRequestError) as err:
        oai(gw).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "filter-me"}])
    body = err.value.body
    assert body["code"] == "content_filter" and "violence (medium)" in body["message"]
    assert "content filter" in body["message"] and "az" in body["message"]
    assert fake_upstream.requests_to("/v1/chat/completions") == []  # the prompt is the cause: no fallback


def test_withheld_answer_is_a_clear_400_and_a_partial_one_passes(tmp_path: Path, fake_azure: FakeAzure,
                                                                  start_gateway: Any) -> None:
    gw = start_gateway(write_config(tmp_path / "c.yaml", [azure_target(fake_azure)]))
    fake_azure.queue_reply("", finish_reason="content_filter")
    with pytest.raises(openai.BadRequestError) as err:
        oai(gw).chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert err.value.body["code"] == "content_filter" and "withheld" in err.value.body["message"]
    fake_azure.queue_reply("partial", finish_reason="content_filter")
    answer = oai(gw).chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert answer.choices[0].finish_reason == "content_filter" and answer.choices[0].message.content == "partial"
    fake_azure.queue_reply("cut", finish_reason="content_filter")
    chunks = list(oai(gw).chat.completions.create(model="gpt-4o-mini", messages=HI, stream=True))
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "content_filter"


def test_stream_falls_back_from_openai_to_azure(tmp_path: Path, fake_azure: FakeAzure, fake_upstream: FakeUpstream,
                                                start_gateway: Any) -> None:
    first = {"id": "oa", "provider": "openai", "model": "gpt-4o-mini", "base_url": fake_upstream.base_url,
             "secret_key_ref": {"env": KEY_ENV}}
    gw = start_gateway(write_config(tmp_path / "c.yaml", [first, azure_target(fake_azure)]))
    fake_upstream.add_fault("status", status=503)
    chunks = list(oai(gw).chat.completions.create(model="gpt-4o-mini", messages=HI, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from Azure."
    assert len(fake_upstream.requests_to("/v1/chat/completions")) == 1


def test_azure_error_texts_are_scrubbed_of_the_key(tmp_path: Path, fake_azure: FakeAzure, start_gateway: Any) -> None:
    gw = start_gateway(write_config(tmp_path / "c.yaml", [azure_target(fake_azure)],
                                    fallback={"strategy": "ordered", "max_retries": 0, "retry_on": []}))
    fake_azure.add_fault("status", status=500, message=f"internal error for key {KEY}")
    with pytest.raises(openai.InternalServerError) as err:
        oai(gw).chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert KEY not in json.dumps(err.value.body) and "[REDACTED]" in err.value.body["message"]


def test_entra_id_token_goes_in_authorization(tmp_path: Path, fake_azure: FakeAzure, start_gateway: Any,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KT_TEST_ENTRA", "entra-token-2")
    fake_azure.entra_token = "entra-token-2"
    target = azure_target(fake_azure, secret_key_ref={"env": "KT_TEST_ENTRA"}, api_key_header="Authorization")
    gw = start_gateway(write_config(tmp_path / "c.yaml", [target]))
    assert oai(gw).chat.completions.create(model="gpt-4o-mini", messages=HI).choices[0].message.content
    assert fake_azure.requests[-1].header("authorization") == "Bearer entra-token-2"
    assert fake_azure.requests[-1].header("api-key") is None


# --- config, lint, doctor ---------------------------------------------------------------------------


def test_config_defaults(tmp_path: Path) -> None:
    assert azure.PROVIDER == AZURE_OPENAI
    target = {"id": "az", "provider": "azure-openai", "model": "gpt-4o", "base_url": "https://r.openai.azure.com"}
    loaded = load_config(write_config(tmp_path / "c.yaml", [target])).targets[0]
    assert (loaded.deployment, loaded.api_version) == ("gpt-4o", AZURE_API_VERSION)
    assert (loaded.api_key_header, loaded.api_key_prefix) == ("api-key", "")


def _lint(target: dict[str, Any]) -> list[tuple[str, str, str]]:
    doc = {"pack": {"name": "p", "version": "1.0.0", "enabled": True}, "policies": {"chain": []},
           "providers": {"targets": [target]}}
    return [(f.code, f.path, f"{f.message} {f.suggestion}") for f in validate_document(doc)]


def test_lint_knows_azure_fields() -> None:
    (code, path, text), = _lint({"id": "a", "provider": "azure-openai", "model": "gpt-4o"})
    assert (code, path) == ("E022", "providers.targets[0].base_url") and "openai.azure.com" in text
    (code, path, text), = _lint({"id": "a", "provider": "azure_openai", "model": "m", "deployment": "d"})
    assert (code, path) == ("E023", "providers.targets[0].deployment") and "did you mean 'azure-openai'" in text
    (code, path, text), = _lint({"id": "a", "provider": "azure-openai", "model": "m",
                                 "base_url": "https://r.openai.azure.com", "api_version": "2024-10"})
    assert (code, path) == ("E019", "providers.targets[0].api_version")
    (code, path, text), = _lint({"id": "a", "provider": "azure-opena1", "model": "m"})
    assert code == "W005" and "did you mean 'azure-openai'" in text
    assert _lint({"id": "a", "provider": "openrouter", "model": "m"}) == []


def test_doctor_proves_the_deployment_exists_without_spending_tokens(fake_azure: FakeAzure, tmp_path: Path) -> None:
    """`kt doctor` (a real subprocess): deployment there, deployment missing (named), key refused; no secret shown."""
    targets = [azure_target(fake_azure), azure_target(fake_azure, id="az-gone", deployment="prod-gone")]
    config = write_config(tmp_path / "c.yaml", targets)
    code, report = kt_doctor("--config", str(config), "--state-dir", str(tmp_path / "s"), "--timeout", "5",
                             env={KEY_ENV: KEY})
    checks = by_name(report)
    there, gone = checks["provider az"], checks["provider az-gone"]
    assert there["status"] == "ok" and "deployment 'chat' exists" in there["detail"], there
    assert gone["status"] == "warn" and "deployment 'prod-gone' does not exist" in gone["detail"], gone
    assert "DeploymentNotFound" in gone["detail"] and "prod-gone" in gone["fix"] and code == 0
    sent = fake_azure.requests
    assert {(r.method, r.path) for r in sent} == {("POST", "/openai/deployments/chat/chat/completions"),
                                                 ("POST", "/openai/deployments/prod-gone/chat/completions")}
    assert all(r.raw == b"{}" for r in sent), "an empty body: Azure refuses it before generating anything"
    code, report = kt_doctor("--config", str(config), "--state-dir", str(tmp_path / "s"), "--timeout", "5",
                             env={KEY_ENV: "az-wrong-5e1d2c3b4a5f6e7d8c9b"})
    checks = by_name(report)
    assert code == 1 and {c["status"] for n, c in checks.items() if n.startswith("provider ")} == {"fail"}
    assert "key rejected" in checks["provider az"]["detail"] and "401" in checks["provider az"]["detail"]
    assert KEY_ENV in checks["provider az"]["fix"]
    assert KEY not in json.dumps(report) and "az-wrong" not in json.dumps(report)


def test_doctor_proves_a_native_responses_target_without_spending_tokens(fake_azure: FakeAzure,
                                                                        tmp_path: Path) -> None:
    """`responses_api: native`: after the deployment, `{}` to `{base_url}/openai/v1/responses` (400 = there)."""
    config = write_config(tmp_path / "c.yaml", [azure_target(fake_azure, responses_api="native")])

    def doctor() -> tuple[int, dict[str, dict[str, Any]]]:
        code, report = kt_doctor("--config", str(config), "--state-dir", str(tmp_path / "s"), "--timeout", "5",
                                 env={KEY_ENV: KEY})
        assert KEY not in json.dumps(report)
        return code, by_name(report)

    code, checks = doctor()
    there = checks["provider az responses"]
    assert code == 0 and there["status"] == "ok" and "/openai/v1/responses HTTP 400" in there["detail"], there
    assert [(r.path, r.raw) for r in fake_azure.requests][-1] == ("/openai/v1/responses", b"{}")
    assert fake_azure.requests[-1].header("api-key") == KEY
    fake_azure.add_fault("status", status=404, path="/openai/v1/responses")  # a region without Responses
    code, checks = doctor()
    missing = checks["provider az responses"]
    assert missing["status"] == "warn" and "404" in missing["detail"] and code == 0, missing
    assert "responses_api: translate" in missing["fix"] and "region" in missing["fix"]


def test_fake_azure_resolves_the_deployment_before_the_body_like_azure(fake_azure: FakeAzure) -> None:
    """The `openai` SDK sees what kt doctor relies on: 404 DeploymentNotFound before a 400 for the body."""
    with pytest.raises(openai.NotFoundError) as missing:
        sdk(fake_azure).chat.completions.create(model="gone", messages=[])
    assert missing.value.code == "DeploymentNotFound"
    with pytest.raises(openai.BadRequestError):
        sdk(fake_azure).chat.completions.create(model="chat", messages=[])
    with pytest.raises(openai.AuthenticationError):
        sdk(fake_azure, api_key="wrong").chat.completions.create(model="gone", messages=[])


def test_admin_events_record_the_azure_target(tmp_path: Path, fake_azure: FakeAzure, start_gateway: Any) -> None:
    gw = start_gateway(write_config(tmp_path / "c.yaml", [azure_target(fake_azure)]))
    oai(gw).chat.completions.create(model="gpt-4o-mini", messages=HI)
    with urllib.request.urlopen(gw.url + "/v1/models", timeout=5) as resp:
        models = json.load(resp)
    assert [m["owned_by"] for m in models["data"]] == ["azure-openai"]


def test_responses_clients_are_served_by_azure(tmp_path: Path, fake_azure: FakeAzure, start_gateway: Any) -> None:
    gw = start_gateway(write_config(tmp_path / "c.yaml", [azure_target(fake_azure)]))
    assert oai(gw).responses.create(model="gpt-4o-mini", input="hi").output_text == "Hello from Azure."
    events = list(oai(gw).responses.create(model="gpt-4o-mini", input="hi", stream=True))
    assert events[-1].type == "response.completed" and events[-1].response.output_text == "Hello from Azure."
    assert fake_azure.requests[-1].path == "/openai/deployments/chat/chat/completions"
