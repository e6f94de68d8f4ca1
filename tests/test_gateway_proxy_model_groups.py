"""Issue 16 §3: `providers.model_groups`, one logical model over weighted targets across providers."""

from __future__ import annotations

import json
import random
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from policies.lint import validate_document
from policies.model import Target
from policies.model_groups import ModelGroup
from tests.fake_azure import FakeAzure
from tests.fake_upstream import FakeUpstream
from tests.gateway_harness import write_config

KEY_ENV = "KT_TEST_GROUP_KEY"
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(autouse=True)
def key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-group-key")


@pytest.fixture
def fake_azure() -> Iterator[FakeAzure]:
    fake = FakeAzure("Hello from Azure.").start()
    yield fake
    fake.stop()


def test_order_draws_the_first_by_weight_and_falls_back_heaviest_first() -> None:
    a, b, c = Target("a", "openai", "m1"), Target("b", "azure-openai", "m2"), Target("c", "google", "m3")
    group = ModelGroup("g", (a, b, c), (70, 20, 10))
    assert group.order([a, b, c], 0.0) == [a, b, c]
    assert group.order([a, b, c], 0.75) == [b, a, c]
    assert group.order([a, b, c], 0.95) == [c, a, b]
    assert group.order([b, c], 0.0) == [b, c]  # the policies left two: drawn among them
    assert group.order([c], 0.5) == [c]


@pytest.fixture
def gw(tmp_path: Path, fake_upstream: FakeUpstream, fake_azure: FakeAzure, start_gateway: Any) -> Any:
    path = write_config(tmp_path / "c.yaml", [
        {"id": "openai-primary", "provider": "openai", "model": "gpt-4o-mini", "base_url": fake_upstream.base_url,
         "secret_key_ref": {"env": KEY_ENV}},
        {"id": "azure-east", "provider": "azure-openai", "model": "gpt-4o-mini", "deployment": "chat",
         "base_url": fake_azure.url, "secret_key_ref": {"env": KEY_ENV}}])
    doc = yaml.safe_load(path.read_text())
    doc["providers"]["model_groups"] = {"gpt-4o": [{"target": "openai-primary", "weight": 70},
                                                   {"target": "azure-east", "weight": 30}]}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return start_gateway(path)


def client(gw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key="client-key", max_retries=0, timeout=20)


def test_the_draw_routes_to_either_provider_with_its_own_model(gw: Any, fake_upstream: FakeUpstream,
                                                               fake_azure: FakeAzure,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(random, "random", lambda: 0.1)
    assert client(gw).chat.completions.create(model="gpt-4o", messages=HI).choices[0].message.content == \
        "Hello from the fake upstream."
    assert fake_upstream.requests[-1].body["model"] == "gpt-4o-mini"
    monkeypatch.setattr(random, "random", lambda: 0.9)
    chunks = list(client(gw).chat.completions.create(model="gpt-4o", messages=HI, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from Azure."
    assert fake_azure.requests[-1].path == "/openai/deployments/chat/chat/completions"


def test_a_failing_member_falls_back_to_the_other_in_a_stream(gw: Any, fake_upstream: FakeUpstream,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(random, "random", lambda: 0.1)
    fake_upstream.add_fault("status", status=503)
    chunks = list(client(gw).chat.completions.create(model="gpt-4o", messages=HI, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from Azure."


def test_models_lists_the_group(gw: Any) -> None:
    with urllib.request.urlopen(gw.base_url + "/models", timeout=5) as resp:
        models = {m["id"]: m for m in json.load(resp)["data"]}
    assert models["gpt-4o"]["owned_by"] == "kt-model-group"
    assert models["gpt-4o"]["targets"] == ["openai-primary", "azure-east"] and models["gpt-4o"]["available"]


def test_lint_names_a_member_that_is_no_target() -> None:
    doc = {"pack": {"name": "p", "version": "1.0.0", "enabled": True}, "policies": {"chain": []},
           "providers": {"targets": [{"id": "openai-primary", "provider": "openai", "model": "m"}],
                         "model_groups": {"g": [{"target": "openai-primary"}, {"target": "openai-primery"}]}}}
    (finding,) = validate_document(doc)
    assert (finding.code, finding.path) == ("E024", "providers.model_groups.g[1].target")
    assert "did you mean 'openai-primary'" in finding.suggestion
