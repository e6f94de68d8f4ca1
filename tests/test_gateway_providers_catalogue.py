"""Issue 16 "done when": one target of each provider lints clean, and `data_policy` routes across them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from policies.config import load_config
from policies.lint import validate_document
from tests.fake_azure import FakeAzure
from tests.fake_google import FakeGoogle
from tests.fake_upstream import FakeUpstream
from tests.gateway_harness import write_config

KEY_ENV = "KT_TEST_CATALOGUE_KEY"
EVERY = [
    {"id": "oa", "provider": "openai", "model": "gpt-4o-mini", "base_url": "https://api.openai.com",
     "secret_key_ref": {"env": KEY_ENV}},
    {"id": "an", "provider": "anthropic", "model": "claude-sonnet-4-20250514", "secret_key_ref": {"env": KEY_ENV}},
    {"id": "az", "provider": "azure-openai", "model": "gpt-4o-mini", "deployment": "prod", "api_version": "2024-10-21",
     "base_url": "https://r.openai.azure.com", "secret_key_ref": {"env": KEY_ENV}},
    {"id": "gm", "provider": "google", "model": "gemini-2.5-flash", "secret_key_ref": {"env": KEY_ENV}},
    {"id": "br", "provider": "bedrock", "model": "anthropic.claude-3-5-haiku-20241022-v1:0", "region": "us-east-1"},
    {"id": "mk", "provider": "mock", "model": "demo"},
]


@pytest.fixture(autouse=True)
def key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-catalogue")


def test_one_target_of_each_provider_lints_clean(tmp_path: Path) -> None:
    doc = {"pack": {"name": "p", "version": "1.0.0", "enabled": True}, "policies": {"chain": []},
           "providers": {"targets": EVERY, "model_groups": {"any": [{"target": t["id"]} for t in EVERY]}}}
    assert validate_document(doc) == []
    loaded = load_config(write_config(tmp_path / "c.yaml", EVERY))
    assert [t.provider for t in loaded.targets] == ["openai", "anthropic", "azure-openai", "google", "bedrock",
                                                "mock"]


@pytest.fixture
def fakes() -> Iterator[tuple[FakeAzure, FakeGoogle]]:
    azure, google = FakeAzure("from azure").start(), FakeGoogle("from gemini").start()
    yield azure, google
    azure.stop()
    google.stop()


def test_data_policy_routes_across_providers(tmp_path: Path, fakes: tuple[FakeAzure, FakeGoogle],
                                             fake_upstream: FakeUpstream, start_gateway: Any) -> None:
    azure, google = fakes
    targets = [
        {"id": "oa", "provider": "openai", "model": "shared", "base_url": fake_upstream.base_url,
         "secret_key_ref": {"env": KEY_ENV}, "data_policy": {"zero_data_retention": False, "retention_days": 30}},
        {"id": "az", "provider": "azure-openai", "model": "shared", "deployment": "chat", "base_url": azure.url,
         "secret_key_ref": {"env": KEY_ENV}, "data_policy": {"zero_data_retention": False, "retention_days": 30}},
        {"id": "gm", "provider": "google", "model": "shared", "base_url": google.url,
         "secret_key_ref": {"env": KEY_ENV}, "data_policy": {"zero_data_retention": True, "retention_days": 0}},
    ]
    path = write_config(tmp_path / "c.yaml", targets, ["data-routing-policy"],
                        {"data-routing-policy": {"require_zero_data_retention": True}})
    gw = start_gateway(path)
    client = openai.OpenAI(base_url=gw.base_url, api_key="client-key", max_retries=0, timeout=20)
    chunks = list(client.chat.completions.create(model="shared", stream=True,
                                                 messages=[{"role": "user", "content": "hi"}]))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "from gemini"
    assert not fake_upstream.requests and not azure.requests
