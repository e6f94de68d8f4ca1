"""An audio answer (`modalities: ["text", "audio"]`) passes the output policies like a text one.

Its transcript is what the sound says, so output policies scan it; a redaction there blocks
(kt cannot redact the sound). In streams the sound (`audio.data`) is withheld until the choice
passed, then sent whole: no sound of a blocked answer reaches the client.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest

from tests.fake_upstream import FakeUpstream
from tests.fake_wire import Reply, audio_sound
from tests.gateway_harness import GatewayThread, write_config
from tests.waiting import wait_for

KEY_ENV = "KT_TEST_UPSTREAM_KEY"
AUDIO = {"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}}
USER = [{"role": "user", "content": "read me my code"}]


@pytest.fixture(autouse=True)
def upstream_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-upstream")


def gateway(tmp_path: Path, fake: FakeUpstream, start_gateway: Any, chain: list[str],
            options: dict[str, Any]) -> GatewayThread:
    target = {"id": "t", "provider": "openai", "model": "gpt-4o-audio-preview", "base_url": fake.base_url,
              "secret_key_ref": {"env": KEY_ENV}}
    return start_gateway(write_config(tmp_path / "c.yaml", [target], chain, options))


def oai(gw: GatewayThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)


def streamed(gw: GatewayThread) -> tuple[str, list[str], BaseException | None]:
    """(transcript, sound pieces, the error that ended the stream) as the client saw them."""
    words, sounds, error = "", [], None
    try:
        for chunk in oai(gw).chat.completions.create(model="gpt-4o-audio-preview", messages=USER, stream=True,
                                                     **AUDIO):
            for choice in chunk.model_dump()["choices"]:
                audio = choice["delta"].get("audio") or {}
                words += audio.get("transcript") or ""
                sounds += [audio["data"]] if audio.get("data") else []
    except openai.APIError as exc:
        error = exc
    return words, sounds, error


@pytest.mark.parametrize("verdict", ["block", "redact"])
def test_a_transcript_a_policy_matches_is_blocked_with_its_sound(tmp_path: Path, fake_upstream: FakeUpstream,
                                                                start_gateway: Any, test_kinds: None,
                                                                verdict: str) -> None:
    gw = gateway(tmp_path, fake_upstream, start_gateway, ["test-term"],
                 {"test-term": {"pattern": r"secret-\d+", "verdict": verdict}})
    fake_upstream.queue_reply(Reply(audio="Your code is secret-42, keep it safe"))
    with pytest.raises(openai.ConflictError) as err:
        oai(gw).chat.completions.create(model="gpt-4o-audio-preview", messages=USER, **AUDIO)
    assert err.value.body["code"] == "output_blocked" and err.value.body["policy"] == "test-term"
    if verdict == "redact":
        assert "cannot redact the sound" in err.value.body["message"]
    event = wait_for(lambda: gw.events)[-1]
    assert event["verdict"] == "block" and event["policy"] == "test-term"

    fake_upstream.queue_reply(Reply(audio="Your code is secret-42, keep it safe", chunks=6))
    words, sounds, error = streamed(gw)
    assert error is not None and sounds == []  # not one piece of the sound went out
    assert "secret-42" not in words
    assert wait_for(lambda: len(gw.events) == 2 and gw.events)[-1]["verdict"] == "block"


def test_a_real_pii_policy_blocks_an_email_spoken_in_an_audio_answer(tmp_path: Path, fake_upstream: FakeUpstream,
                                                                    start_gateway: Any) -> None:
    gw = gateway(tmp_path, fake_upstream, start_gateway, ["pii-detector"], {"pii-detector": {"action": "redact"}})
    fake_upstream.queue_reply(Reply(audio="Write to jane.doe@example.com for your refund"))
    with pytest.raises(openai.ConflictError) as err:
        oai(gw).chat.completions.create(model="gpt-4o-audio-preview", messages=USER, **AUDIO)
    assert err.value.body["policy"] == "pii-detector"
    assert "jane.doe" not in str(err.value.body)


def test_a_clean_audio_answer_arrives_whole(tmp_path: Path, fake_upstream: FakeUpstream, start_gateway: Any,
                                           test_kinds: None) -> None:
    gw = gateway(tmp_path, fake_upstream, start_gateway, ["test-term"],
                 {"test-term": {"pattern": r"secret-\d+", "verdict": "redact"}})
    text = "Your order ships on Monday, thank you for waiting"
    fake_upstream.queue_reply(Reply(audio=text))
    message = oai(gw).chat.completions.create(model="gpt-4o-audio-preview", messages=USER, **AUDIO) \
        .choices[0].message
    assert message.audio is not None
    assert (message.audio.transcript, message.audio.data) == (text, audio_sound(text))

    fake_upstream.queue_reply(Reply(audio=text, chunks=5))
    words, sounds, error = streamed(gw)
    assert error is None and words == text
    assert sounds == [audio_sound(text)]  # withheld while the transcript passed, then sent in one piece
