"""`/v1/embeddings` served by google (`:batchEmbedContents`) and bedrock (InvokeModel on Titan / Cohere).

The fakes are first proven faithful with the providers' own SDKs (google-genai, boto3); then the
official `openai` SDK's `client.embeddings.create` goes through kt (in-process, real loopback
sockets) with the policy chain on the input, as for OpenAI targets.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import openai
import pytest
from google import genai
from google.genai import types

from tests.fake_bedrock import FakeBedrock
from tests.fake_google import FakeGoogle
from tests.fake_wire import count_tokens, embedding
from tests.gateway_harness import write_config

GOOGLE_KEY = "AIzaSyD-embeddings-test-key-0123456789ab"
TITAN = "amazon.titan-embed-text-v2:0"
COHERE = "cohere.embed-english-v3"
AWS_KEY = ("AKIAEMBEDDINGS000000", "embeddings-secret/000000000000000000000000")
REDACT = {"test-term": {"pattern": r"secret-\w+", "verdict": "redact"}}


@pytest.fixture(autouse=True)
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KT_TEST_GEMINI_KEY", GOOGLE_KEY)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", AWS_KEY[0])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_KEY[1])
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)


@pytest.fixture
def fake_google() -> Iterator[FakeGoogle]:
    fake = FakeGoogle("unused", api_key=GOOGLE_KEY).start()
    yield fake
    fake.stop()


@pytest.fixture
def fake_bedrock() -> Iterator[FakeBedrock]:
    fake = FakeBedrock("unused").start()
    fake.aws_keys = dict([AWS_KEY])
    yield fake
    fake.stop()


def oai(gw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key="client-key", max_retries=0, timeout=20)


def close(got: list[float], want: list[float]) -> bool:
    return len(got) == len(want) and all(abs(a - b) < 1e-5 for a, b in zip(got, want, strict=True))


# --- the fakes speak the providers' formats ---------------------------------------------------------


def test_fake_google_embeddings_are_accepted_by_google_genai(fake_google: FakeGoogle) -> None:
    client = genai.Client(api_key=GOOGLE_KEY, http_options=types.HttpOptions(base_url=fake_google.url))
    got = client.models.embed_content(model="gemini-embedding-001", contents=["a", "b"],
                                      config=types.EmbedContentConfig(output_dimensionality=4))
    assert [e.values for e in got.embeddings] == [embedding("a", 4), embedding("b", 4)]
    assert fake_google.requests[-1].path.endswith("/models/gemini-embedding-001:batchEmbedContents")


def test_fake_bedrock_embeddings_are_accepted_by_boto3(fake_bedrock: FakeBedrock) -> None:
    client = boto3.client("bedrock-runtime", region_name="us-east-1", endpoint_url=fake_bedrock.url,
                          aws_access_key_id=AWS_KEY[0], aws_secret_access_key=AWS_KEY[1])
    answer = client.invoke_model(modelId=TITAN, body=json.dumps({"inputText": "a", "dimensions": 4}))
    titan = json.loads(answer["body"].read())
    assert titan["embedding"] == embedding("a", 4) and titan["inputTextTokenCount"] > 0
    assert int(answer["ResponseMetadata"]["HTTPHeaders"]["x-amzn-bedrock-input-token-count"]) > 0
    answer = client.invoke_model(modelId=COHERE, body=json.dumps({"texts": ["a", "b"], "input_type": "search_query"}))
    assert json.loads(answer["body"].read())["embeddings"] == [embedding("a", 8), embedding("b", 8)]
    with pytest.raises(client.exceptions.ValidationException):
        client.invoke_model(modelId=COHERE, body=json.dumps({"texts": ["a"]}))
    assert fake_bedrock.signed_with[-1][0] == AWS_KEY[0], "boto3's own signature verifies"


# --- through kt ----------------------------------------------------------------------------------------


def test_google_embeddings_through_kt_with_the_chain(tmp_path: Path, fake_google: FakeGoogle, start_gateway: Any,
                                                     test_kinds: None) -> None:
    target = {"id": "gemb", "provider": "google", "model": "gemini-embedding-001", "base_url": fake_google.url,
              "secret_key_ref": {"env": "KT_TEST_GEMINI_KEY"}}
    gw = start_gateway(write_config(tmp_path / "c.yaml", [target], ["test-term"], REDACT))
    got = oai(gw).embeddings.create(model="gemini-embedding-001", input=["hello", "my secret-abc"])  # base64
    assert close(got.data[0].embedding, embedding("hello", 8)) and [d.index for d in got.data] == [0, 1]
    assert got.model == "gemini-embedding-001" and got.usage.prompt_tokens > 0
    sent = fake_google.requests[-1]
    assert sent.path == "/v1beta/models/gemini-embedding-001:batchEmbedContents"
    assert sent.header("x-goog-api-key") == GOOGLE_KEY and sent.header("authorization") is None
    assert [r["content"]["parts"][0]["text"] for r in sent.body["requests"]] == ["hello", "my [REDACTED]"]
    assert {r["model"] for r in sent.body["requests"]} == {"models/gemini-embedding-001"}
    floats = oai(gw).embeddings.create(model="gemini-embedding-001", input="x", dimensions=4, encoding_format="float")
    assert floats.data[0].embedding == embedding("x", 4)
    assert fake_google.requests[-1].body["requests"][0]["outputDimensionality"] == 4
    with pytest.raises(openai.BadRequestError) as err:
        oai(gw).embeddings.create(model="gemini-embedding-001", input=[[1, 2, 3]])
    assert "token-id lists" in err.value.message


def test_bedrock_titan_and_cohere_embeddings_through_kt(tmp_path: Path, fake_bedrock: FakeBedrock,
                                                       start_gateway: Any, test_kinds: None) -> None:
    targets = [{"id": "titan", "provider": "bedrock", "model": TITAN, "region": "us-east-1",
                "base_url": fake_bedrock.url},
               {"id": "cohere", "provider": "bedrock", "model": COHERE, "region": "us-east-1",
                "base_url": fake_bedrock.url}]
    gw = start_gateway(write_config(tmp_path / "c.yaml", targets, ["test-term"], REDACT))
    got = oai(gw).embeddings.create(model=TITAN, input=["a", "b", "my secret-x"], dimensions=4)
    assert [close(d.embedding, embedding(t, 4)) for d, t in zip(got.data, ["a", "b", "my [REDACTED]"],
                                                                  strict=True)] == [True] * 3
    calls = fake_bedrock.requests_to(f"/model/{TITAN.replace(':', '%3A')}/invoke")
    assert sorted(c.body["inputText"] for c in calls) == ["a", "b", "my [REDACTED]"]  # Titan: one text a call
    assert {c.body["dimensions"] for c in calls} == {4}
    assert got.usage.prompt_tokens == sum(count_tokens(t) for t in ("a", "b", "my [REDACTED]")), "Titan counts"
    assert len(fake_bedrock.signed_with) == 3 and {k for k, _ in fake_bedrock.signed_with} == {AWS_KEY[0]}

    texts = [f"text {i}" for i in range(100)]
    got = oai(gw).embeddings.create(model=COHERE, input=texts, encoding_format="float",
                                    extra_body={"input_type": "search_query"})
    assert [d.embedding for d in got.data] == [embedding(t, 8) for t in texts] and got.usage.prompt_tokens > 0
    calls = fake_bedrock.requests_to(f"/model/{COHERE}/invoke")
    assert [len(c.body["texts"]) for c in calls] == [96, 4] and {c.body["input_type"] for c in calls} == {
        "search_query"}
    oai(gw).embeddings.create(model=COHERE, input="x")
    assert fake_bedrock.requests[-1].body == {"texts": ["x"], "input_type": "search_document"}


def test_a_blocked_embeddings_input_never_reaches_google_or_bedrock(tmp_path: Path, fake_google: FakeGoogle,
                                                                    fake_bedrock: FakeBedrock, start_gateway: Any,
                                                                    test_kinds: None) -> None:
    targets = [{"id": "gemb", "provider": "google", "model": "text-embedding-004", "base_url": fake_google.url,
                "secret_key_ref": {"env": "KT_TEST_GEMINI_KEY"}},
               {"id": "titan", "provider": "bedrock", "model": TITAN, "region": "us-east-1",
                "base_url": fake_bedrock.url}]
    gw = start_gateway(write_config(tmp_path / "c.yaml", targets, ["test-term"],
                                    {"test-term": {"pattern": "forbidden", "verdict": "block"}}))
    for model in ("text-embedding-004", TITAN):
        with pytest.raises(openai.ConflictError):
            oai(gw).embeddings.create(model=model, input=["fine", "forbidden words"])
    assert not fake_google.requests and not fake_bedrock.requests
    for model in ("text-embedding-004", TITAN):  # and what passes the chain is served
        assert oai(gw).embeddings.create(model=model, input=["fine"]).data[0].embedding


def test_chat_models_of_google_and_bedrock_are_skipped_for_embeddings(tmp_path: Path, fake_bedrock: FakeBedrock,
                                                                      start_gateway: Any) -> None:
    target = {"id": "claude", "provider": "bedrock", "model": "anthropic.claude-3-5-haiku-20241022-v1:0",
              "region": "us-east-1", "base_url": fake_bedrock.url}
    gw = start_gateway(write_config(tmp_path / "c.yaml", [target]))
    with pytest.raises(openai.APIStatusError):
        oai(gw).embeddings.create(model="claude", input="x")
    assert not fake_bedrock.requests
