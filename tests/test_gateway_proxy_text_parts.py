"""A message's text parts reach the model as one text: through the real gateway and the OpenAI SDK, a
secret split across parts is blocked (409) or reaches the upstream redacted where it stands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from tests.fake_upstream import FakeUpstream
from tests.gateway_harness import GatewayThread, write_config
from tests.waiting import wait_for

KEY_ENV = "KT_TEST_UPSTREAM_KEY"
CHAIN = ["pii-detector", "dlp-filter"]


@pytest.fixture(autouse=True)
def upstream_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-upstream")


def gateway(tmp_path: Path, fake: FakeUpstream, start_gateway: Any, action: str) -> GatewayThread:
    target = {"id": "t", "provider": "openai", "model": "gpt-4o-mini", "base_url": fake.base_url,
              "secret_key_ref": {"env": KEY_ENV}}
    policy = {"pii-detector": {"action": action},
              "dlp-filter": {"blocked_terms": ["project-bluebird"], "detect_patterns": ["AKIA[0-9A-Z]{16}"],
                             "action": action}}
    return start_gateway(write_config(tmp_path / "c.yaml", [target], CHAIN, policy))


def ask(gw: GatewayThread, content: str | list[str]) -> Any:
    """One user message: a string, or a text part per string."""
    client = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
    if isinstance(content, list):
        content = [{"type": "text", "text": t} for t in content]  # type: ignore[misc]
    return client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": content}])


def sent_parts(fake: FakeUpstream) -> Any:
    return fake.requests_to("/v1/chat/completions")[-1].body["messages"][0]["content"]


@pytest.mark.parametrize("split", [["project-blue", "bird"], ["key AKIAIOSFODNN", "7EX", "AMPLE"],
                                   ["alice.martin@", "example.com"]])
def test_a_secret_split_across_text_parts_is_blocked(tmp_path: Path, fake_upstream: FakeUpstream,
                                                     start_gateway: Any, split: list[str]) -> None:
    gw = gateway(tmp_path, fake_upstream, start_gateway, "block")
    with pytest.raises(openai.ConflictError) as err:
        ask(gw, split)
    assert err.value.body["code"] == "input_blocked"
    assert "messages[0].content" in err.value.body["message"]
    assert not fake_upstream.requests
    assert wait_for(lambda: gw.events)[-1]["status"] == 409


def test_anthropic_blocks_and_responses_parts_are_read_as_one_text(tmp_path: Path, fake_upstream: FakeUpstream,
                                                                   start_gateway: Any) -> None:
    gw = gateway(tmp_path, fake_upstream, start_gateway, "block")
    blocks: Any = [{"type": "text", "text": "project-blue"}, {"type": "text", "text": "bird"}]
    with pytest.raises(anthropic.ConflictError):
        anthropic.Anthropic(base_url=gw.url, api_key="x", max_retries=0).messages.create(
            model="gpt-4o-mini", max_tokens=16, messages=[{"role": "user", "content": blocks}])
    items: Any = [{"role": "user", "content": [{"type": "input_text", "text": "project-blue"},
                                               {"type": "input_text", "text": "bird"}]}]
    with pytest.raises(openai.ConflictError):
        openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0).responses.create(
            model="gpt-4o-mini", input=items)
    assert not fake_upstream.requests


def test_the_upstream_receives_the_redacted_concatenation(tmp_path: Path, fake_upstream: FakeUpstream,
                                                          start_gateway: Any) -> None:
    gw = gateway(tmp_path, fake_upstream, start_gateway, "redact")
    ask(gw, ["mail alice.martin@", "example.com about project-blue", "\u200bbird, key AKIAIOSFODNN", "7EXAMPLE."])
    parts = sent_parts(fake_upstream)
    assert [p["type"] for p in parts] == ["text"] * 4
    assert "".join(p["text"] for p in parts) == \
        "mail [REDACTED:EMAIL] about [REDACTED:DLP], key [REDACTED:DLP]."
    assert parts[0]["text"] == "mail [REDACTED:EMAIL]"  # each replacement where its match starts
    event = wait_for(lambda: gw.events)[-1]
    assert event["verdict"] == "redact" and event["redactions"] == 3


@pytest.mark.parametrize("content", ["about project-blue bird", ["about project-blue bird"]])
def test_a_string_or_a_single_part_is_unchanged(tmp_path: Path, fake_upstream: FakeUpstream,
                                                start_gateway: Any, content: str | list[str]) -> None:
    gw = gateway(tmp_path, fake_upstream, start_gateway, "block")
    ask(gw, content)
    expected = content if isinstance(content, str) else [{"type": "text", "text": t} for t in content]
    assert sent_parts(fake_upstream) == expected
    assert wait_for(lambda: gw.events)[-1]["verdict"] == "allow"
