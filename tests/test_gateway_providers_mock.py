"""gateway/providers/mock.py: the deterministic local demo provider."""

from __future__ import annotations

import base64
import math
import re
import struct

import orjson
import pytest
from anthropic.types import Message
from openai.lib.streaming.chat._completions import ChatCompletionStreamState
from openai.types import CreateEmbeddingResponse, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from gateway.providers import mock
from gateway.providers.anthropic_request import anthropic_request_to_openai
from gateway.providers.anthropic_response import openai_response_to_anthropic
from gateway.providers.anthropic_stream import OpenAIStreamToAnthropic

TOOLS = [
    {"type": "function", "function": {"name": "read_file", "parameters": {"type": "object"}}},
    {"type": "function", "function": {"name": "send_email", "parameters": {"type": "object"}}},
]


def _body(text: str, **extra) -> dict:
    return {
        "model": "demo",
        "messages": [{"role": "system", "content": "Be nice."}, {"role": "user", "content": text}],
        **extra,
    }


def test_complete_echoes_the_last_user_message_deterministically():
    body = _body("Hello   there,\n world")
    out = mock.complete(body)
    completion = ChatCompletion.model_validate(out)
    assert completion.choices[0].message.content == "[mock] You said: Hello there, world"
    assert completion.choices[0].finish_reason == "stop" and completion.model == "demo"
    assert completion.system_fingerprint == "kt-mock" and completion.id.startswith("chatcmpl-mock-")
    assert mock.complete(body)["id"] == out["id"] and mock.complete(_body("other"))["id"] != out["id"]
    usage = completion.usage
    assert (
        usage.prompt_tokens > 0
        and usage.completion_tokens == mock.estimate_tokens(completion.choices[0].message.content)
        and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    )


def test_long_messages_are_shortened_and_content_parts_read():
    out = mock.complete(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "x" * 500}, {"type": "image_url", "image_url": {"url": "u"}}],
                }
            ]
        }
    )
    text = out["choices"][0]["message"]["content"]
    assert text == "[mock] You said: " + "x" * 197 + "..." and out["model"] == "mock"


def test_max_tokens_truncates_with_finish_length():
    out = mock.complete(_body("a fairly long message for a tiny budget", max_tokens=3))
    assert out["choices"][0]["finish_reason"] == "length" and len(out["choices"][0]["message"]["content"]) == 12


@pytest.mark.parametrize(
    "text, name, arguments",
    [
        ('Please call read_file with {"path": "/etc/passwd"}', "read_file", {"path": "/etc/passwd"}),
        ("use the tool `send_email` now", "send_email", {}),
        ("Run READ_FILE", "read_file", {}),
        ("invoke read_file {not json}", "read_file", {}),
    ],
)
def test_obvious_tool_requests_become_tool_calls(text, name, arguments):
    out = mock.complete(_body(text, tools=TOOLS))
    completion = ChatCompletion.model_validate(out)
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]
    assert call.function.name == name and orjson.loads(call.function.arguments) == arguments
    assert call.id.startswith("call_mock_")


def test_no_tool_call_without_an_obvious_request():
    assert "tool_calls" not in mock.complete(_body("what can read_file do?", tools=TOOLS))["choices"][0]["message"]
    assert "tool_calls" not in mock.complete(_body("call read_file"))["choices"][0]["message"]  # no tools declared
    assert (
        "tool_calls"
        not in mock.complete(_body("call read_file", tools=TOOLS, tool_choice="none"))["choices"][0]["message"]
    )
    assert "tool_calls" not in mock.complete(_body("call delete_all", tools=TOOLS))["choices"][0]["message"]


def test_tool_choice_forces_a_call():
    forced = {"type": "function", "function": {"name": "send_email"}}
    call = mock.complete(_body("hi", tools=TOOLS, tool_choice=forced))["choices"][0]["message"]["tool_calls"][0]
    assert call["function"]["name"] == "send_email"
    call = mock.complete(_body("hi", tools=TOOLS, tool_choice="required"))["choices"][0]["message"]["tool_calls"][0]
    assert call["function"]["name"] == "read_file"


def test_after_a_tool_result_it_answers_in_text():
    first = mock.complete(_body("call read_file", tools=TOOLS))["choices"][0]["message"]
    body = _body("call read_file", tools=TOOLS)
    body["messages"] += [first, {"role": "tool", "tool_call_id": first["tool_calls"][0]["id"], "content": "root:x:0"}]
    out = mock.complete(body)
    assert out["choices"][0]["message"]["content"] == "[mock] Tool read_file returned: root:x:0"
    assert out["choices"][0]["finish_reason"] == "stop"


def _chunks(body: dict) -> list[dict]:
    chunks = list(mock.stream(body))
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)
    return chunks


def _final(chunks: list[dict]):
    state = ChatCompletionStreamState()
    for chunk in chunks:
        state.handle_chunk(ChatCompletionChunk.model_validate(chunk))
    return state.get_final_completion()


def test_stream_matches_complete_in_several_deltas():
    body = _body("one two three four", stream=True, stream_options={"include_usage": True})
    chunks = _chunks(body)
    assert sum(1 for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")) >= 4
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == mock.complete(body)["usage"]
    assert all(c["system_fingerprint"] == "kt-mock" and c["id"] == chunks[0]["id"] for c in chunks)
    final = _final(chunks)
    assert final.choices[0].message.content == mock.complete(body)["choices"][0]["message"]["content"]
    assert "usage" not in _chunks(_body("x", stream=True))[-1]


def test_stream_tool_call():
    body = _body('call read_file {"path": "a.txt"}', tools=TOOLS)
    final = _final(_chunks(body))
    call = final.choices[0].message.tool_calls[0]
    assert final.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "read_file" and orjson.loads(call.function.arguments) == {"path": "a.txt"}


def test_mock_through_the_anthropic_translation():
    """An Anthropic client on a mock target: request -> OpenAI -> mock -> back to Anthropic (both ways)."""
    request = {
        "model": "demo",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "call read_file"}],
        "tools": [{"name": "read_file", "input_schema": {"type": "object"}}],
    }
    openai_body = anthropic_request_to_openai(request)
    message = Message.model_validate(openai_response_to_anthropic(mock.complete(openai_body), "demo"))
    assert message.stop_reason == "tool_use" and message.content[0].name == "read_file"
    translator = OpenAIStreamToAnthropic(model="demo")
    events = [e for c in mock.stream({**openai_body, "stream": True}) for e in translator.feed(c)] + translator.close()
    assert events[-2]["delta"]["stop_reason"] == "tool_use" and events[-1] == {"type": "message_stop"}


def test_embeddings_are_deterministic_unit_vectors():
    out = mock.embed({"model": "emb", "input": ["hello", "world", "hello"], "dimensions": 64})
    response = CreateEmbeddingResponse.model_validate(out)
    vectors = [d.embedding for d in response.data]
    assert [d.index for d in response.data] == [0, 1, 2] and response.model == "emb"
    assert len(vectors[0]) == 64 and vectors[0] == vectors[2] and vectors[0] != vectors[1]
    assert math.isclose(sum(v * v for v in vectors[1]), 1.0)
    assert response.usage.prompt_tokens == response.usage.total_tokens == 6
    single = mock.embed({"input": "hello", "dimensions": 64})
    assert (
        single["data"][0]["embedding"] == vectors[0] and len(mock.embed({"input": "x"})["data"][0]["embedding"]) == 256
    )
    tokens = mock.embed({"input": [1, 2, 3]})
    assert len(tokens["data"]) == 1 and tokens["usage"]["prompt_tokens"] == 3
    assert len(mock.embed({"input": [[1, 2], [3]]})["data"]) == 2


def test_embeddings_base64_as_the_openai_sdk_asks():
    out = mock.embed({"input": "hello", "dimensions": 8, "encoding_format": "base64"})
    decoded = struct.unpack("<8f", base64.b64decode(out["data"][0]["embedding"]))
    expected = mock.embed({"input": "hello", "dimensions": 8})["data"][0]["embedding"]
    assert all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(decoded, expected, strict=True))


@pytest.mark.parametrize(
    "body, fragment",
    [
        ({}, "`input`"),
        ({"input": []}, "`input`"),
        ({"input": [{"a": 1}]}, "input[0]"),
        ({"input": "x", "dimensions": 0}, "dimensions"),
        ({"input": "x", "dimensions": "9"}, "dimensions"),
    ],
)
def test_embedding_errors(body, fragment):
    with pytest.raises(ValueError, match=re.escape(fragment)):
        mock.embed(body)


def test_model_entry_is_labelled():
    entry = Model.model_validate(mock.model_entry("demo"))
    assert entry.owned_by == "kt-mock" and entry.id == "demo" and entry.object == "model"
