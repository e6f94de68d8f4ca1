"""Output policies see every text of an answer the client gets, not only its content.

A reasoning model behind an OpenAI-compatible API answers with its reasoning next to the content
(`reasoning_content`: DeepSeek, vLLM, SGLang; `reasoning`: OpenRouter, Groq, Ollama), and a
web-search answer with `annotations`. Those reach the client as they are, so output policies check
them: in JSON answers every string of such a field, redacted in place; in streams each field's
text through its own rolling window. A plain content answer is relayed byte for byte as before.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anthropic
import openai
import orjson
import pytest

from tests.fake_upstream import FakeUpstream
from tests.fake_wire import Reply, split_text, sse
from tests.gateway_harness import GatewayThread, write_config
from tests.raw_upstream import RawUpstream, chat_answer, relayed
from tests.waiting import wait_for

KEY_ENV = "KT_TEST_UPSTREAM_KEY"
EMAIL = "alice.martin@example.com"
USER = [{"role": "user", "content": "what is my contact address?"}]
# The content is careful; the reasoning quotes the context.
THOUGHT = f"The user's record says {EMAIL}; I must not repeat it."
ANSWER = "Your address is on file; I cannot show it here."
CHUNKS = 4  # THOUGHT cut into 4 deltas splits the address across two of them (checked below)


@pytest.fixture(autouse=True)
def upstream_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-upstream")


def pii_gateway(tmp_path: Path, base_url: str, start_gateway: Any, action: str = "redact",
                **target: Any) -> GatewayThread:
    spec = {"id": "t", "provider": "openai", "model": "deepseek-reasoner", "base_url": base_url,
            "secret_key_ref": {"env": KEY_ENV}, **target}
    return start_gateway(write_config(tmp_path / "c.yaml", [spec], ["pii-detector"],
                                      {"pii-detector": {"action": action}}))


def oai(gw: GatewayThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)


def streamed(gw: GatewayThread, field: str) -> tuple[str, str, BaseException | None]:
    """(reasoning, content, the error that ended the stream) as the client saw them."""
    thought, content, error = "", "", None
    try:
        for chunk in oai(gw).chat.completions.create(model="deepseek-reasoner", messages=USER, stream=True):
            for choice in chunk.model_dump()["choices"]:
                thought += choice["delta"].get(field) or ""
                content += choice["delta"].get("content") or ""
    except openai.APIError as exc:
        error = exc
    return thought, content, error


def test_the_fake_splits_the_address_across_two_reasoning_deltas() -> None:
    pieces = split_text(THOUGHT, CHUNKS)
    assert EMAIL in THOUGHT and not any(EMAIL in piece for piece in pieces)


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_an_address_in_the_reasoning_is_redacted_in_json_and_streams(tmp_path: Path, fake_upstream: FakeUpstream,
                                                                     start_gateway: Any, field: str) -> None:
    gw = pii_gateway(tmp_path, fake_upstream.base_url, start_gateway)
    fake_upstream.queue_reply(Reply(text=ANSWER, reasoning=THOUGHT, reasoning_field=field))
    message = oai(gw).chat.completions.create(model="deepseek-reasoner", messages=USER).choices[0].message
    thought = message.model_dump()[field]
    assert EMAIL not in thought and "[REDACTED:EMAIL]" in thought
    assert thought == THOUGHT.replace(EMAIL, "[REDACTED:EMAIL]") and message.content == ANSWER
    event = wait_for(lambda: gw.events)[-1]
    assert event["verdict"] == "redact" and event["policy"] == "pii-detector"

    fake_upstream.queue_reply(Reply(text=ANSWER, reasoning=THOUGHT, reasoning_field=field, chunks=CHUNKS))
    thought, content, error = streamed(gw, field)
    assert error is None and content == ANSWER
    # The rolling window finds the address across two deltas and redacts what is not sent yet (as for
    # the content: sent text cannot be taken back; `block` is what guarantees nothing of it leaves).
    assert EMAIL not in thought and "example.com" not in thought
    assert thought == THOUGHT.replace("example.com", "[REDACTED:EMAIL]")
    assert wait_for(lambda: len(gw.events) == 2 and gw.events)[-1]["verdict"] == "redact"


def test_an_address_in_the_reasoning_blocks_the_answer_with_block(tmp_path: Path, fake_upstream: FakeUpstream,
                                                                  start_gateway: Any) -> None:
    gw = pii_gateway(tmp_path, fake_upstream.base_url, start_gateway, action="block")
    fake_upstream.queue_reply(Reply(text=ANSWER, reasoning=THOUGHT))
    with pytest.raises(openai.ConflictError) as err:
        oai(gw).chat.completions.create(model="deepseek-reasoner", messages=USER)
    assert err.value.body["code"] == "output_blocked" and err.value.body["policy"] == "pii-detector"
    assert "reasoning_content" in err.value.body["message"]  # where it was found

    fake_upstream.queue_reply(Reply(text=ANSWER, reasoning=THOUGHT, chunks=CHUNKS))
    thought, content, error = streamed(gw, "reasoning_content")
    assert error is not None and EMAIL not in thought and "example.com" not in thought  # its rest never left
    assert content == ""  # the stream ended before the content
    assert wait_for(lambda: len(gw.events) == 2 and gw.events)[-1]["verdict"] == "block"


def test_annotations_and_reasoning_details_are_checked_and_opaque_state_is_forwarded(
        tmp_path: Path, start_gateway: Any) -> None:
    details = [{"type": "reasoning.text", "text": f"look up {EMAIL}", "signature": "c2lnbmVk" + EMAIL,
                "format": "anthropic-claude-v1", "index": 0},
               {"type": "reasoning.encrypted", "data": "ZW5jcnlwdGVk" + EMAIL, "index": 1},
               {"type": "reasoning.text", "text": "ok", "data": f"note {EMAIL}", "index": 2}]  # not encrypted: read
    citation = {"type": "url_citation", "url_citation": {"start_index": 0, "end_index": 4,
                                                         "url": "https://example.org/staff", "title": f"Staff {EMAIL}"}}
    answer = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
              "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None, "message": {
                  "role": "assistant", "content": ANSWER, "reasoning_details": details, "annotations": [citation]}}]}
    with RawUpstream(lambda request, conn: conn.send_json(orjson.dumps(answer))) as up:
        gw = pii_gateway(tmp_path, up.base_url, start_gateway)
        got = oai(gw).chat.completions.create(model="deepseek-reasoner", messages=USER).model_dump()
    got = got["choices"][0]["message"]
    shown = got["reasoning_details"]
    assert shown[0]["text"] == "look up [REDACTED:EMAIL]" and shown[0]["format"] == "anthropic-claude-v1"
    assert shown[0]["signature"] == details[0]["signature"]  # signed state is not text kt can redact
    assert shown[1] == details[1]  # encrypted reasoning: forwarded as it is
    assert shown[2]["data"] == "note [REDACTED:EMAIL]"  # a `data` elsewhere is text like any other
    assert got["annotations"][0]["url_citation"] == {**citation["url_citation"], "title": "Staff [REDACTED:EMAIL]"}


PLAIN = (b'{"id": "chatcmpl-7",  "object": "chat.completion", "created": 1, "model": "m", "choices": '
         b'[{"index": 0, "message": {"role": "assistant", "content": "Hello there", "reasoning_content": '
         b'"The user greets me.", "refusal": null, "annotations": []}, "logprobs": null, "finish_reason": "stop"}], '
         b'"usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}')
CHUNK = {"id": "chatcmpl-8", "object": "chat.completion.chunk", "created": 1, "model": "m",
         "choices": [{"index": 0, "delta": {"content": "Hello"}, "logprobs": None, "finish_reason": None}]}
PLAIN_CHUNKS = [CHUNK, {**CHUNK, "choices": [{**CHUNK["choices"][0], "delta": {"content": " there"}}]},
                {**CHUNK, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]}]
STREAM = b"".join(map(sse, PLAIN_CHUNKS)) + sse(b"[DONE]")


def test_an_answer_with_nothing_to_redact_is_relayed_as_before(tmp_path: Path, start_gateway: Any) -> None:
    with RawUpstream(chat_answer(PLAIN, STREAM)) as up:
        gw = pii_gateway(tmp_path, up.base_url, start_gateway)
        assert relayed(oai(gw), model="deepseek-reasoner", messages=USER) == (PLAIN, STREAM)  # the upstream's bytes


def test_messages_clients_get_no_reasoning_so_it_is_not_what_blocks(tmp_path: Path, fake_upstream: FakeUpstream,
                                                                    start_gateway: Any) -> None:
    """/v1/messages answers carry content and tool calls only (docs/providers.md): the reasoning of an
    OpenAI-compatible upstream never reaches an Anthropic client, so it is not checked there."""
    gw = pii_gateway(tmp_path, fake_upstream.base_url, start_gateway, action="block")
    fake_upstream.queue_reply(Reply(text=ANSWER, reasoning=THOUGHT))
    client = anthropic.Anthropic(base_url=gw.url, api_key="x", max_retries=0)
    message = client.messages.create(model="deepseek-reasoner", max_tokens=64, messages=USER)
    assert [b.type for b in message.content] == ["text"] and message.content[0].text == ANSWER
    assert EMAIL not in message.model_dump_json()


def test_a_native_responses_answer_has_its_annotations_checked(tmp_path: Path, fake_upstream: FakeUpstream,
                                                               start_gateway: Any) -> None:
    citation = {"type": "url_citation", "start_index": 0, "end_index": 4, "url": "https://example.org/staff",
                "title": f"Staff page of {EMAIL}"}
    gw = pii_gateway(tmp_path, fake_upstream.base_url, start_gateway, responses_api="native", model="gpt-4o-mini")
    fake_upstream.queue_reply(Reply(text=ANSWER, annotations=(citation,)))
    resp = oai(gw).responses.create(model="gpt-4o-mini", input="who runs the staff page?")
    part = resp.output[0].content[0].model_dump()
    assert part["text"] == ANSWER
    assert part["annotations"] == [{**citation, "title": "Staff page of [REDACTED:EMAIL]"}]


def _scripted_stream(deltas: list[dict[str, Any]]) -> RawUpstream:
    chunks = [{**CHUNK, "choices": [{"index": 0, "delta": d, "logprobs": None, "finish_reason": None}]}
              for d in deltas]
    chunks.append({**CHUNK, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]})
    body = b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"
    return RawUpstream(lambda request, conn: conn.send_response(body, headers={"Content-Type": "text/event-stream"}))


def test_other_stream_fields_are_scanned_on_their_own_windows(tmp_path: Path, start_gateway: Any) -> None:
    """`reasoning_details` items streamed in pieces: their text is one channel with its rolling window
    (the address is split across two deltas). A legacy `function_call` is withheld and checked whole,
    like tool calls: its arguments redacted inside their JSON, sent in one piece."""
    deltas = [{"reasoning_details": [{"type": "reasoning.text", "text": "look up alice.martin@", "index": 0}]},
              {"reasoning_details": [{"type": "reasoning.text", "text": "example.com now", "index": 0}]},
              {"function_call": {"name": "send_mail", "arguments": '{"to": "alice.martin@'}},
              {"function_call": {"arguments": 'example.com"}'}}]
    with _scripted_stream(deltas) as up:
        gw = pii_gateway(tmp_path, up.base_url, start_gateway)
        thought, arguments = "", ""
        for chunk in oai(gw).chat.completions.create(model="deepseek-reasoner", messages=USER, stream=True):
            for choice in chunk.model_dump()["choices"]:
                thought += "".join(d["text"] for d in choice["delta"].get("reasoning_details") or ())
                arguments += (choice["delta"].get("function_call") or {}).get("arguments") or ""
    assert thought == "look up alice.martin@[REDACTED:EMAIL] now"
    assert json.loads(arguments) == {"to": "[REDACTED:EMAIL]"}


def test_a_streamed_legacy_function_call_is_checked_whole_by_tool_policies(tmp_path: Path, start_gateway: Any,
                                                                          test_kinds: None) -> None:
    deltas = [{"role": "assistant", "content": None}, {"function_call": {"name": "delete_", "arguments": ""}},
              {"function_call": {"name": "all", "arguments": "{}"}}]
    with _scripted_stream(deltas) as up:
        spec = {"id": "t", "provider": "openai", "model": "deepseek-reasoner", "base_url": up.base_url,
                "secret_key_ref": {"env": KEY_ENV}}
        gw = start_gateway(write_config(tmp_path / "c.yaml", [spec], ["test-tool"],
                                        {"test-tool": {"blocked": "delete_all"}}))
        with pytest.raises(openai.APIError):
            for chunk in oai(gw).chat.completions.create(model="deepseek-reasoner", messages=USER, stream=True):
                assert not chunk.choices or chunk.choices[0].delta.function_call is None  # nothing of it left
    assert wait_for(lambda: gw.events)[-1]["verdict"] == "block"
