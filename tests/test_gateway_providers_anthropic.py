"""gateway/providers/anthropic_*.py, py: Anthropic <-> OpenAI requests, responses, streams, SSE and error envelopes."""

from __future__ import annotations

import copy
import inspect
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import anthropic
import openai
import orjson
import pydantic
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message, RawMessageStreamEvent
from openai.lib.streaming.chat._completions import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from gateway.providers import sse
from gateway.providers.anthropic_request import anthropic_request_to_openai, openai_request_to_anthropic
from gateway.providers.anthropic_response import (
    anthropic_error,
    anthropic_error_type,
    anthropic_response_to_openai,
    finish_reason_to_stop_reason,
    openai_response_to_anthropic,
    stop_reason_to_finish_reason,
)
from gateway.providers.anthropic_stream import AnthropicStreamToOpenAI, OpenAIStreamToAnthropic, anthropic_stream_error
from gateway.providers.openai_stream import OPENAI_DONE, completion_to_chunks, openai_error, openai_stream_error
from gateway.providers.translate import TranslationError

STREAM_EVENT = pydantic.TypeAdapter(RawMessageStreamEvent)

# ---------------------------------------------------------------------------------------------------- fixtures

ANTHROPIC_REQUEST = {
    "model": "claude-sonnet-4-5",
    "system": "You are terse.",
    "max_tokens": 512,
    "temperature": 0.3,
    "top_p": 0.9,
    "stop_sequences": ["END"],
    "metadata": {"user_id": "u-42"},
    "tools": [
        {
            "name": "get_weather",
            "description": "Weather for a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        }
    ],
    "tool_choice": {"type": "auto"},
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this image, and the weather in Paris?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "toolu_02", "name": "get_weather", "input": {"city": "Lyon"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01", "content": "18C, cloudy"},
                {"type": "tool_result", "tool_use_id": "toolu_02", "content": [{"type": "text", "text": "21C"}]},
                {"type": "text", "text": "Thanks, and tomorrow?"},
            ],
        },
    ],
}

OPENAI_REQUEST = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather in Paris? Look:"},
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Lyon"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "21C"}]},
        {"role": "user", "content": "Thanks"},
    ],
    "tools": [
        {
            "type": "function",
            "function": {"name": "get_weather", "description": "Weather", "parameters": {"type": "object"}},
        }
    ],
    "tool_choice": "required",
    "parallel_tool_calls": False,
    "temperature": 1.5,
    "top_p": 0.5,
    "stop": "END",
    "max_completion_tokens": 300,
    "stream": True,
    "user": "u-7",
    "presence_penalty": 0.2,
    "n": 1,
}


# ---------------------------------------------------------------------------------------------------- requests


def test_anthropic_request_to_openai_maps_every_field():
    out = anthropic_request_to_openai(copy.deepcopy(ANTHROPIC_REQUEST))
    assert out["model"] == "claude-sonnet-4-5"
    assert out["max_tokens"] == 512 and out["temperature"] == 0.3 and out["top_p"] == 0.9
    assert out["stop"] == ["END"] and out["user"] == "u-42" and out["tool_choice"] == "auto"
    assert "stream" not in out
    assert out["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": ANTHROPIC_REQUEST["tools"][0]["input_schema"],
            },
        }
    ]
    system, user, assistant, tool1, tool2, user2 = out["messages"]
    assert system == {"role": "system", "content": "You are terse."}
    assert user["content"] == [
        {"type": "text", "text": "What is in this image, and the weather in Paris?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ]
    assert assistant == {
        "role": "assistant",
        "content": "Let me check.",
        "tool_calls": [
            {
                "id": "toolu_01",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
            },
            {"id": "toolu_02", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Lyon"}'}},
        ],
    }
    assert tool1 == {"role": "tool", "tool_call_id": "toolu_01", "content": "18C, cloudy"}
    assert tool2 == {"role": "tool", "tool_call_id": "toolu_02", "content": "21C"}
    assert user2 == {"role": "user", "content": [{"type": "text", "text": "Thanks, and tomorrow?"}]}


def test_anthropic_request_system_blocks_stream_and_tool_choices():
    body = {
        "model": "c",
        "max_tokens": 10,
        "stream": True,
        "system": [
            {"type": "text", "text": "A", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "B"},
        ],
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [
            {"name": "f", "input_schema": {"type": "object"}},
            {"type": "web_search_20250305", "name": "web_search"},  # server tool: dropped
        ],
    }
    out = anthropic_request_to_openai(body)
    assert out["messages"][0] == {
        "role": "system",
        "content": [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}],
    }
    assert out["messages"][1] == {"role": "user", "content": "hi"}
    assert out["stream"] is True and out["stream_options"] == {"include_usage": True}
    assert [tool["function"]["name"] for tool in out["tools"]] == ["f"]
    for choice, expected in [
        ({"type": "auto"}, "auto"),
        ({"type": "any"}, "required"),
        ({"type": "none"}, "none"),
        ({"type": "tool", "name": "f"}, {"type": "function", "function": {"name": "f"}}),
    ]:
        assert anthropic_request_to_openai({**body, "tool_choice": choice})["tool_choice"] == expected
    out = anthropic_request_to_openai({**body, "tool_choice": {"type": "any", "disable_parallel_tool_use": True}})
    assert out["parallel_tool_calls"] is False


def test_anthropic_tool_result_with_image_and_assistant_tool_only():
    body = {
        "model": "c",
        "max_tokens": 5,
        "messages": [
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "shot", "input": {}}]},
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t1",
                        "is_error": False,
                        "content": [
                            {"type": "text", "text": "screen:"},
                            {"type": "image", "source": {"type": "base64", "media_type": "image/gif", "data": "R0lG"}},
                        ],
                    }
                ],
            },
        ],
    }
    assistant, tool = anthropic_request_to_openai(body)["messages"]
    assert assistant["content"] is None and assistant["tool_calls"][0]["function"]["arguments"] == "{}"
    assert tool == {
        "role": "tool",
        "tool_call_id": "t1",
        "content": [
            {"type": "text", "text": "screen:"},
            {"type": "image_url", "image_url": {"url": "data:image/gif;base64,R0lG"}},
        ],
    }


def test_documents_map_to_text_or_file_parts_and_back():
    pdf = {
        "type": "document",
        "title": "a.pdf",
        "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="},
    }
    body = {
        "model": "c",
        "max_tokens": 5,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "secret"}},
                    {"type": "document", "source": {"type": "content", "content": [{"type": "text", "text": "c"}]}},
                    pdf,
                    {"type": "document", "source": {"type": "file", "file_id": "f_1"}},  # no counterpart: dropped
                ],
            }
        ],
    }
    parts = anthropic_request_to_openai(body)["messages"][0]["content"]
    assert parts == [
        {"type": "text", "text": "secret"},
        {"type": "text", "text": "c"},
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"}},
    ]
    back = openai_request_to_anthropic({"messages": [{"role": "user", "content": parts}]}, "c")
    assert back["messages"][0]["content"][2] == pdf


def test_openai_request_to_anthropic_maps_every_field():
    out = openai_request_to_anthropic(copy.deepcopy(OPENAI_REQUEST), "claude-haiku")
    assert out["model"] == "claude-haiku"
    assert out["system"] == [{"type": "text", "text": "You are terse."}, {"type": "text", "text": "Use metric units."}]
    assert out["max_tokens"] == 300 and out["temperature"] == 1.0 and out["top_p"] == 0.5
    assert out["stop_sequences"] == ["END"] and out["stream"] is True and out["metadata"] == {"user_id": "u-7"}
    assert out["tools"] == [{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object"}}]
    assert out["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert "presence_penalty" not in out and "n" not in out and "user" not in out
    user, assistant, results = out["messages"]
    assert user == {
        "role": "user",
        "content": [
            {"type": "text", "text": "Weather in Paris? Look:"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQ"}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        ],
    }
    assert assistant == {
        "role": "assistant",
        "content": [
            {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {"city": "Lyon"}},
        ],
    }
    # both tool messages and the following user message fold into one user turn, results first
    assert results == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
            {"type": "tool_result", "tool_use_id": "call_2", "content": "21C"},
            {"type": "text", "text": "Thanks"},
        ],
    }


def test_openai_request_defaults_and_choices():
    base = {"model": "x", "messages": [{"role": "user", "content": "hi"}]}
    out = openai_request_to_anthropic(base, "claude")
    assert out == {"model": "claude", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4096}
    assert openai_request_to_anthropic({**base, "max_tokens": 7}, "c")["max_tokens"] == 7
    assert openai_request_to_anthropic({**base, "stop": ["a", "b"]}, "c")["stop_sequences"] == ["a", "b"]
    assert openai_request_to_anthropic({**base, "temperature": 0.2}, "c")["temperature"] == 0.2
    tools = [{"type": "function", "function": {"name": "f"}}]
    for choice, expected in [
        ("auto", {"type": "auto"}),
        ("none", {"type": "none"}),
        ("required", {"type": "any"}),
        ({"type": "function", "function": {"name": "f"}}, {"type": "tool", "name": "f"}),
    ]:
        out = openai_request_to_anthropic({**base, "tools": tools, "tool_choice": choice}, "c")
        assert out["tool_choice"] == expected
        assert out["tools"] == [{"name": "f", "input_schema": {"type": "object"}}]
    out = openai_request_to_anthropic({**base, "tools": tools, "parallel_tool_calls": False}, "c")
    assert out["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    # consecutive user messages merge (Anthropic wants alternating turns); empty text is dropped
    out = openai_request_to_anthropic(
        {
            "messages": [
                {"role": "user", "content": "a"},
                {"role": "user", "content": [{"type": "text", "text": ""}]},
                {"role": "user", "content": "b"},
            ]
        },
        "c",
    )
    assert out["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
    ]


def test_tool_ids_are_made_anthropic_safe_consistently():
    body = {
        "messages": [
            {"role": "assistant", "tool_calls": [{"id": "functions.get:0", "function": {"name": "get"}}]},
            {"role": "tool", "tool_call_id": "functions.get:0", "content": "ok"},
        ]
    }
    use, result = (m["content"][0] for m in openai_request_to_anthropic(body, "c")["messages"])
    assert use["id"] == result["tool_use_id"] == "functions_get_0"


def test_openai_assistant_text_with_tool_calls_and_invalid_arguments():
    body = {
        "messages": [
            {"role": "user", "content": "go"},
            {
                "role": "assistant",
                "content": "Calling.",
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": '}}],
            },
        ]
    }
    assistant = openai_request_to_anthropic(body, "c")["messages"][1]
    assert assistant["content"] == [
        {"type": "text", "text": "Calling."},
        {"type": "tool_use", "id": "c1", "name": "f", "input": {"_raw_arguments": '{"a": '}},
    ]


@pytest.mark.parametrize(
    "body, fragment",
    [
        ([], "JSON object"),
        ({}, "`messages` is required"),
        ({"messages": "hi"}, "`messages` is required"),
        ({"messages": [42]}, "messages[0]"),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 42}]}, "messages[0].content"),
    ],
)
def test_anthropic_request_errors_say_what_to_fix(body, fragment):
    with pytest.raises(TranslationError, match=re.escape(fragment)):
        anthropic_request_to_openai(body)


@pytest.mark.parametrize(
    "body, fragment",
    [
        ({"messages": None}, "`messages` is required"),
        ({"messages": [{"content": "x"}]}, "messages[0]"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "'robot'"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
    ],
)
def test_openai_request_errors_say_what_to_fix(body, fragment):
    with pytest.raises(TranslationError) as info:
        openai_request_to_anthropic(body, "c")
    assert fragment in str(info.value)


def _paths(value, path=()):
    yield path
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        yield from _paths(child, (*path, key))


def _replaced(value, path, new):
    if not path:
        return new
    value = copy.deepcopy(value)
    node = value
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = new
    return value


def _mutations(fixture):
    """The fixture with every value, at every depth, replaced by each wrongly-typed value."""
    for path in list(_paths(fixture)):
        for new in (None, 1, "x", [], {}, [1], True, [None]):
            yield _replaced(fixture, path, new)


def _feed_all(translator, events):
    return [translator.feed(e) for e in (events if isinstance(events, list) else [events])] + [translator.close()]


def test_malformed_input_raises_translation_error_never_anything_else():
    cases = [
        (ANTHROPIC_REQUEST, anthropic_request_to_openai),
        (OPENAI_REQUEST, lambda body: openai_request_to_anthropic(body, "c")),
        (ANTHROPIC_RESPONSE, anthropic_response_to_openai),
        (OPENAI_RESPONSE, openai_response_to_anthropic),
        (ANTHROPIC_EVENTS, lambda events: _feed_all(AnthropicStreamToOpenAI(), events)),
        (OPENAI_CHUNKS, lambda chunks: _feed_all(OpenAIStreamToAnthropic(), chunks)),
    ]
    for fixture, translate in cases:
        for mutated in _mutations(fixture):
            try:
                translate(mutated)
            except TranslationError as exc:
                assert str(exc)
    with pytest.raises(TranslationError, match=re.escape("`messages[1].tool_calls` must be a list")):
        openai_request_to_anthropic(
            {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": 3}]}, "c"
        )
    with pytest.raises(TranslationError, match="`metadata` must be an object"):
        anthropic_request_to_openai({"messages": [], "metadata": "u1"})


def _normalise_anthropic(body: dict) -> dict:
    """Structure-insensitive view: string content as a text block list, no `model`."""
    body = copy.deepcopy(body)
    body.pop("model", None)
    for message in body["messages"]:
        if isinstance(message["content"], str):
            message["content"] = [{"type": "text", "text": message["content"]}]
        for block in message["content"]:
            if block.get("type") == "tool_result" and isinstance(block["content"], list):
                block["content"] = "".join(b["text"] for b in block["content"])
    if isinstance(body.get("system"), str):
        body["system"] = [{"type": "text", "text": body["system"]}]
    return body


def test_round_trip_anthropic_openai_anthropic():
    openai_form = anthropic_request_to_openai(copy.deepcopy(ANTHROPIC_REQUEST))
    back = openai_request_to_anthropic(openai_form, ANTHROPIC_REQUEST["model"])
    assert back["model"] == ANTHROPIC_REQUEST["model"]
    assert _normalise_anthropic(back) == _normalise_anthropic(ANTHROPIC_REQUEST)


def test_round_trip_openai_anthropic_openai():
    body = {k: v for k, v in copy.deepcopy(OPENAI_REQUEST).items() if k not in ("presence_penalty", "n")}
    back = anthropic_request_to_openai(openai_request_to_anthropic(copy.deepcopy(body), "gpt-4o-mini"))
    assert back["model"] == "gpt-4o-mini"
    assert back["max_tokens"] == 300 and back["temperature"] == 1.0 and back["stop"] == ["END"]
    assert back["tool_choice"] == "required" and back["parallel_tool_calls"] is False and back["user"] == "u-7"
    assert back["stream_options"] == {"include_usage": True}
    system, user, assistant, tool1, tool2, user2 = back["messages"]
    assert system["content"] == [
        {"type": "text", "text": "You are terse."},
        {"type": "text", "text": "Use metric units."},
    ]
    assert user == body["messages"][2]
    assert assistant["tool_calls"] == body["messages"][3]["tool_calls"]
    assert (tool1["content"], tool2["content"]) == ("18C", "21C")
    assert user2["content"] == [{"type": "text", "text": "Thanks"}]


def test_translated_requests_are_accepted_by_the_sdk_param_types():
    """The SDKs' request TypedDicts validate what we send upstream."""
    from anthropic.types import MessageCreateParams
    from openai.types.chat import CompletionCreateParams

    anth = openai_request_to_anthropic(copy.deepcopy(OPENAI_REQUEST), "claude")
    pydantic.TypeAdapter(MessageCreateParams).validate_python(anth)
    oai = anthropic_request_to_openai(copy.deepcopy(ANTHROPIC_REQUEST))
    pydantic.TypeAdapter(CompletionCreateParams).validate_python(oai)


# ---------------------------------------------------------------------------------------------------- responses

ANTHROPIC_RESPONSE = {
    "id": "msg_01ABC",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5",
    "content": [
        {"type": "thinking", "thinking": "hmm", "signature": "sig"},
        {"type": "text", "text": "Checking "},
        {"type": "text", "text": "now."},
        {"type": "tool_use", "id": "toolu_9", "name": "get_weather", "input": {"city": "Paris"}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 100,
        "output_tokens": 20,
        "cache_read_input_tokens": 30,
        "cache_creation_input_tokens": 5,
    },
}


OPENAI_RESPONSE = {
    "id": "chatcmpl-xyz",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-4o-mini",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Sure.",
                "tool_calls": [
                    {"id": "call_a", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}},
                    {"id": "call_b", "type": "function", "function": {"name": "g", "arguments": ""}},
                ],
            },
            "finish_reason": "tool_calls",
        }
    ],
    "usage": {
        "prompt_tokens": 50,
        "completion_tokens": 9,
        "total_tokens": 59,
        "prompt_tokens_details": {"cached_tokens": 10},
    },
}


def test_anthropic_response_to_openai():
    Message.model_validate(ANTHROPIC_RESPONSE)
    out = anthropic_response_to_openai(ANTHROPIC_RESPONSE)
    completion = ChatCompletion.model_validate(out)
    assert completion.id == "chatcmpl-01ABC" and completion.model == "claude-sonnet-4-5"
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Checking now."
    call = choice.message.tool_calls[0]
    assert (call.id, call.function.name, orjson.loads(call.function.arguments)) == (
        "toolu_9",
        "get_weather",
        {"city": "Paris"},
    )
    assert completion.usage.prompt_tokens == 135 and completion.usage.completion_tokens == 20
    assert completion.usage.total_tokens == 155 and completion.usage.prompt_tokens_details.cached_tokens == 30


def test_openai_response_to_anthropic():
    resp = copy.deepcopy(OPENAI_RESPONSE)
    ChatCompletion.model_validate(resp)
    out = openai_response_to_anthropic(resp, "claude-alias")
    message = Message.model_validate(out)
    assert message.id == "msg_xyz" and message.model == "claude-alias" and message.stop_reason == "tool_use"
    assert [b.type for b in message.content] == ["text", "tool_use", "tool_use"]
    assert message.content[0].text == "Sure."
    assert (message.content[1].name, message.content[1].input) == ("f", {"x": 1})
    assert message.content[2].input == {}
    assert (message.usage.input_tokens, message.usage.output_tokens, message.usage.cache_read_input_tokens) == (
        40,
        9,
        10,
    )
    # without a model argument the upstream's is kept; refusal becomes text + stop_reason refusal
    refusal = {
        "id": "chatcmpl-r",
        "model": "m",
        "choices": [{"message": {"content": None, "refusal": "No."}, "finish_reason": "stop"}],
    }
    out = Message.model_validate(openai_response_to_anthropic(refusal))
    assert out.model == "m" and out.stop_reason == "refusal" and out.content[0].text == "No."


def test_response_round_trips():
    back = openai_response_to_anthropic(anthropic_response_to_openai(ANTHROPIC_RESPONSE))
    assert back["id"] == "msg_01ABC" and back["stop_reason"] == "tool_use"
    assert back["content"] == [
        {"type": "text", "text": "Checking now."},
        {"type": "tool_use", "id": "toolu_9", "name": "get_weather", "input": {"city": "Paris"}},
    ]
    assert back["usage"] == {"input_tokens": 105, "output_tokens": 20, "cache_read_input_tokens": 30}


@pytest.mark.parametrize(
    "stop_reason, finish_reason",
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("pause_turn", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("something_new", "stop"),
        (None, None),
    ],
)
def test_stop_reason_to_finish_reason(stop_reason, finish_reason):
    assert stop_reason_to_finish_reason(stop_reason) == finish_reason


@pytest.mark.parametrize(
    "finish_reason, stop_reason",
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("function_call", "tool_use"),
        ("content_filter", "refusal"),
        (None, None),
    ],
)
def test_finish_reason_to_stop_reason(finish_reason, stop_reason):
    assert finish_reason_to_stop_reason(finish_reason) == stop_reason


def test_empty_anthropic_response_still_validates():
    resp = {
        "id": "msg_e",
        "model": "c",
        "content": [],
        "stop_reason": "max_tokens",
        "usage": {"input_tokens": 3, "output_tokens": 0},
    }
    completion = ChatCompletion.model_validate(anthropic_response_to_openai(resp))
    assert completion.choices[0].message.content is None and completion.choices[0].finish_reason == "length"


# ---------------------------------------------------------------------------------------------------- streams

ANTHROPIC_EVENTS = [
    {
        "type": "message_start",
        "message": {
            "id": "msg_S1",
            "type": "message",
            "role": "assistant",
            "model": "claude-x",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 25, "output_tokens": 1},
        },
    },
    {"type": "ping"},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "let me see"}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "abc"}},
    {"type": "content_block_stop", "index": 0},
    {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Hello"}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": " wörld ✓"}},
    {"type": "content_block_stop", "index": 1},
    {
        "type": "content_block_start",
        "index": 2,
        "content_block": {"type": "tool_use", "id": "toolu_A", "name": "get_weather", "input": {}},
    },
    {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": ""}},
    {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": '{"city": "Pa'}},
    {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": 'ris"}'}},
    {"type": "content_block_stop", "index": 2},
    {
        "type": "content_block_start",
        "index": 3,
        "content_block": {"type": "tool_use", "id": "toolu_B", "name": "get_time", "input": {}},
    },
    {"type": "content_block_delta", "index": 3, "delta": {"type": "input_json_delta", "partial_json": '{"tz": "CET"}'}},
    {"type": "content_block_stop", "index": 3},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {"output_tokens": 42},
    },
    {"type": "message_stop"},
]


def _anthropic_sse(events: list[dict]) -> bytes:
    return b"".join(sse.format_sse(e, event=e["type"]) for e in events)


def _accumulate_openai(chunks: list[dict]):
    state = ChatCompletionStreamState()
    for chunk in chunks:
        state.handle_chunk(ChatCompletionChunk.model_validate(chunk))
    return state.get_final_completion()


def _accumulate_anthropic(events: list[dict]) -> Message:
    snapshot = None
    extra = {"json_bufs": {}} if "json_bufs" in inspect.signature(accumulate_event).parameters else {}
    for event in events:
        snapshot = accumulate_event(event=STREAM_EVENT.validate_python(event), current_snapshot=snapshot, **extra)
    return snapshot


def test_anthropic_stream_events_are_valid_sdk_events():
    for event in ANTHROPIC_EVENTS:
        STREAM_EVENT.validate_python(event) if event["type"] != "ping" else None


def test_anthropic_stream_to_openai_with_usage():
    translator = AnthropicStreamToOpenAI(include_usage=True)
    chunks = [c for e in ANTHROPIC_EVENTS for c in translator.feed(e)] + translator.close()
    assert translator.close() == []  # idempotent
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)
    assert all(c["id"] == "chatcmpl-S1" and c["model"] == "claude-x" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]].count("tool_calls") == 1
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == {
        "prompt_tokens": 25,
        "completion_tokens": 42,
        "total_tokens": 67,
    }
    final = _accumulate_openai(chunks)
    message = final.choices[0].message
    assert message.content == "Hello wörld ✓" and final.choices[0].finish_reason == "tool_calls"
    assert [
        (c.index if hasattr(c, "index") else i, c.id, c.function.name, orjson.loads(c.function.arguments))
        for i, c in enumerate(message.tool_calls)
    ] == [(0, "toolu_A", "get_weather", {"city": "Paris"}), (1, "toolu_B", "get_time", {"tz": "CET"})]


def test_anthropic_stream_to_openai_without_usage_and_truncated():
    translator = AnthropicStreamToOpenAI(model="alias")
    chunks = [c for e in ANTHROPIC_EVENTS[:9] for c in translator.feed(e)]
    chunks += translator.close()  # upstream ended before message_delta: still a finish chunk
    assert all(c["model"] == "alias" and "usage" not in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert _accumulate_openai(chunks).choices[0].message.content == "Hello wörld ✓"


def test_anthropic_stream_error_event_becomes_openai_error():
    translator = AnthropicStreamToOpenAI()
    translator.feed(ANTHROPIC_EVENTS[0])
    out = translator.feed({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    assert out == [{"error": {"type": "overloaded_error", "message": "Overloaded"}}]
    assert translator.close() == []


CHUNK_HEAD = {"id": "chatcmpl-Q", "object": "chat.completion.chunk", "created": 1, "model": "gpt-x"}


def openai_chunk(delta: dict, finish_reason: str | None = None) -> dict:
    """A chunk of the test stream: one choice (index 0) carrying `delta`."""
    return {**CHUNK_HEAD, "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}


OPENAI_CHUNKS = [
    openai_chunk({"role": "assistant", "content": ""}),
    openai_chunk({"content": "Hi "}),
    openai_chunk({"content": "there"}),
    openai_chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                  "function": {"name": "f", "arguments": ""}}]}),
    openai_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]}),
    openai_chunk({"tool_calls": [{"index": 0, "function": {"arguments": " 1}"}}]}),
    openai_chunk({"tool_calls": [{"index": 1, "id": "call_2", "type": "function",
                                  "function": {"name": "g", "arguments": '{"b": 2}'}}]}),
    openai_chunk({}, "tool_calls"),
    {**CHUNK_HEAD, "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}},
]


def test_openai_stream_chunks_are_valid_sdk_chunks():
    for chunk in OPENAI_CHUNKS:
        ChatCompletionChunk.model_validate(chunk)


def test_openai_stream_to_anthropic():
    translator = OpenAIStreamToAnthropic(model="claude-alias", input_tokens=3)
    events = [e for c in OPENAI_CHUNKS for e in translator.feed(c)] + translator.close()
    assert translator.close() == [] and translator.feed(OPENAI_CHUNKS[1]) == []
    for event in events:
        STREAM_EVENT.validate_python(event)
    assert [e["type"] for e in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert [e["index"] for e in events if "index" in e] == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
    assert events[0]["message"]["usage"] == {"input_tokens": 3, "output_tokens": 0}
    assert events[-2]["usage"] == {"input_tokens": 11, "output_tokens": 7}
    message = _accumulate_anthropic(events)
    assert message.id == "msg_Q" and message.model == "claude-alias" and message.stop_reason == "tool_use"
    assert message.content[0].text == "Hi there"
    assert [(b.id, b.name, b.input) for b in message.content[1:]] == [
        ("call_1", "f", {"a": 1}),
        ("call_2", "g", {"b": 2}),
    ]
    assert message.usage.output_tokens == 7


def test_openai_stream_to_anthropic_edge_cases():
    # nothing at all from upstream still yields a valid, complete Anthropic sequence
    translator = OpenAIStreamToAnthropic(model="c")
    events = translator.close()
    assert [e["type"] for e in events] == ["message_start", "message_delta", "message_stop"]
    assert _accumulate_anthropic(events).stop_reason == "end_turn"
    # length finish, text after a tool call opens a new block, extra choices ignored
    translator = OpenAIStreamToAnthropic()
    chunks = [
        {
            "id": "chatcmpl-1",
            "model": "m",
            "choices": [
                {"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f"}}]}},
                {"index": 1, "delta": {"content": "ignored"}},
            ],
        },
        {"choices": [{"index": 0, "delta": {"content": "after"}, "finish_reason": "length"}]},
    ]
    events = [e for c in chunks for e in translator.feed(c)] + translator.close()
    message = _accumulate_anthropic(events)
    assert message.model == "m" and message.stop_reason == "max_tokens"
    assert [b.type for b in message.content] == ["tool_use", "text"] and message.content[1].text == "after"
    assert message.content[0].input == {}
    # an error chunk ends the stream with an Anthropic error event
    translator = OpenAIStreamToAnthropic()
    translator.feed(OPENAI_CHUNKS[1])
    assert translator.feed({"error": {"message": "boom", "type": "server_error"}}) == [
        {"type": "error", "error": {"type": "api_error", "message": "boom"}}
    ]
    assert translator.close() == []


def test_completion_to_chunks_reads_list_content_with_a_null_text():
    """A JSON answer to a stream request becomes chunks the SDK accepts; a text part whose text is
    null is no text (as before translate.py split), not an error."""
    completion = {"id": "chatcmpl-1", "created": 7, "model": "m", "usage": {"prompt_tokens": 3,
                  "completion_tokens": 2, "total_tokens": 5},
                  "choices": [{"index": 0, "finish_reason": None, "message": {
                      "role": "assistant", "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": None}],
                      "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}}]}
    chunks = completion_to_chunks(completion)
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)
    assert chunks[0]["choices"][0]["delta"]["content"] == "hi"
    assert chunks[0]["choices"][0]["delta"]["tool_calls"][0]["index"] == 0
    assert chunks[1]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[2]["choices"] == [] and chunks[2]["usage"]["total_tokens"] == 5


# ---------------------------------------------------------------------------------------------------- SSE


def _parse_all(pieces: list[bytes]) -> list[tuple[str | None, str]]:
    parser = sse.SSEParser()
    out = [e for p in pieces for e in parser.feed(p)]
    return out + parser.close()


def test_sse_parser_rules():
    payload = (
        b"\xef\xbb\xbf: a comment\r\n"
        b'event: message_start\r\ndata: {"a": 1}\r\n\r\n'
        b"data: line one\ndata: line two\nid: 7\nretry: 100\n\n"
        b"data:no-space\rdata\r\r"
        b"event: lonely\n\n"  # no data: not dispatched
        b"unknown: x\ndata:  two spaces\n\n"
        b"data: [DONE]\n\n"
        b"data: unterminated"  # dropped at end of stream
    )
    expected = [
        ("message_start", '{"a": 1}'),
        (None, "line one\nline two"),
        (None, "no-space\n"),
        (None, " two spaces"),
        (None, "[DONE]"),
    ]
    assert _parse_all([payload]) == expected
    assert _parse_all([bytes([b]) for b in payload]) == expected
    for cut in range(len(payload) + 1):
        assert _parse_all([payload[:cut], payload[cut:]]) == expected, cut
    assert _parse_all([b"data: x\r", b"\n", b"\r"]) == [(None, "x")]  # CR LF split, then a CR at the very end


def test_format_sse():
    assert sse.format_sse({"a": 1}) == b'data: {"a":1}\n\n'
    assert sse.format_sse("x", event="ping") == b"event: ping\ndata: x\n\n"
    assert sse.format_sse("a\nb") == b"data: a\ndata: b\n\n"
    assert _parse_all([sse.format_sse("a\nb", event="e")]) == [("e", "a\nb")]
    assert sse.format_sse("[DONE]") == OPENAI_DONE


def test_anthropic_sse_split_at_every_offset_translates_identically():
    payload = _anthropic_sse(ANTHROPIC_EVENTS)

    def run(pieces: list[bytes]) -> list[dict]:
        parser, translator = sse.SSEParser(), AnthropicStreamToOpenAI(include_usage=True)
        translator.created = 0
        out = []
        for piece in pieces:
            for event, data in parser.feed(piece):
                parsed = orjson.loads(data)
                assert parsed["type"] == event
                out += translator.feed(parsed)
        return out + translator.close()

    whole = run([payload])
    assert len(whole) == 10  # role, 2 texts, 2 tool starts, 3 argument pieces, finish, usage
    for cut in range(len(payload) + 1):
        assert run([payload[:cut], payload[cut:]]) == whole, cut
    assert run([payload[i : i + 7] for i in range(0, len(payload), 7)]) == whole


def test_openai_sse_split_at_every_offset_translates_identically():
    payload = b"".join(sse.format_sse(c) for c in OPENAI_CHUNKS) + OPENAI_DONE
    payload = payload.replace(b"\n", b"\r\n")

    def run(pieces: list[bytes]) -> list[dict]:
        parser, translator = sse.SSEParser(), OpenAIStreamToAnthropic()
        out = []
        for piece in pieces:
            for _, data in parser.feed(piece):
                out += translator.close() if data == "[DONE]" else translator.feed(orjson.loads(data))
        return out

    whole = run([payload])
    assert whole[-1] == {"type": "message_stop"}
    for cut in range(len(payload) + 1):
        assert run([payload[:cut], payload[cut:]]) == whole, cut


# ---------------------------------------------------------------------------------------------------- errors


def test_error_envelopes():
    assert anthropic_error("invalid_request_error", "bad") == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "bad"},
    }
    body = anthropic_error("policy_violation", "blocked", code="input_blocked", policy="dlp-filter")
    assert body["error"] == {
        "type": "policy_violation",
        "message": "blocked",
        "code": "input_blocked",
        "policy": "dlp-filter",
    }
    assert openai_error("policy_violation", "blocked", "output_blocked", "dlp-filter") == {
        "error": {"type": "policy_violation", "code": "output_blocked", "message": "blocked", "policy": "dlp-filter"}
    }
    assert openai_stream_error("policy_violation", "stop", "output_blocked", "dlp-filter").startswith(
        b'data: {"error"'
    )
    assert _parse_all([anthropic_stream_error("overloaded_error", "busy")]) == [
        ("error", '{"type":"error","error":{"type":"overloaded_error","message":"busy"}}')
    ]
    assert [anthropic_error_type(s) for s in (400, 401, 403, 404, 409, 413, 429, 500, 502, 503, 504, 599)] == [
        "invalid_request_error",
        "authentication_error",
        "permission_error",
        "not_found_error",
        "invalid_request_error",
        "request_too_large",
        "rate_limit_error",
        "api_error",
        "api_error",
        "overloaded_error",
        "timeout_error",
        "api_error",
    ]


# ------------------------------------------------------------------------------------------- real SDKs over loopback


class _Canned:
    """A loopback HTTP server answering every POST with one canned (status, content type, body)."""

    def __init__(self) -> None:
        self.reply: tuple[int, str, bytes] = (200, "application/json", b"{}")
        canned = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, content_type, body = canned.reply
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()


@pytest.fixture
def canned() -> Iterator[_Canned]:
    server = _Canned()
    yield server
    server.server.shutdown()
    server.server.server_close()


def test_sdks_parse_translated_streams_over_http(canned):
    oai = openai.OpenAI(base_url=canned.url + "/v1", api_key="k", max_retries=0)
    translator = AnthropicStreamToOpenAI(include_usage=True)
    chunks = [c for e in ANTHROPIC_EVENTS for c in translator.feed(e)] + translator.close()
    canned.reply = (200, "text/event-stream", b"".join(sse.format_sse(c) for c in chunks) + OPENAI_DONE)
    with oai.chat.completions.stream(model="m", messages=[{"role": "user", "content": "x"}]) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.content == "Hello wörld ✓" and final.usage.completion_tokens == 42
    assert final.choices[0].message.tool_calls[1].function.arguments == '{"tz": "CET"}'

    ant = anthropic.Anthropic(base_url=canned.url, api_key="k", max_retries=0)
    translator = OpenAIStreamToAnthropic(model="claude")
    events = [e for c in OPENAI_CHUNKS for e in translator.feed(c)] + translator.close()
    canned.reply = (200, "text/event-stream", _anthropic_sse(events))
    with ant.messages.stream(model="claude", max_tokens=5, messages=[{"role": "user", "content": "x"}]) as stream:
        texts = list(stream.text_stream)
        message = stream.get_final_message()
    assert "".join(texts) == "Hi there" and message.content[2].input == {"b": 2}
    assert message.usage.output_tokens == 7 and message.stop_reason == "tool_use"


def test_sdks_parse_translated_responses_and_errors_over_http(canned):
    oai = openai.OpenAI(base_url=canned.url + "/v1", api_key="k", max_retries=0)
    canned.reply = (200, "application/json", orjson.dumps(anthropic_response_to_openai(ANTHROPIC_RESPONSE)))
    completion = oai.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert completion.choices[0].message.tool_calls[0].function.name == "get_weather"

    canned.reply = (
        200,
        "text/event-stream",
        sse.format_sse(OPENAI_CHUNKS[1])
        + openai_stream_error("policy_violation", "output blocked", "output_blocked", "dlp-filter"),
    )
    with pytest.raises(openai.APIError, match="output blocked"):
        for _ in oai.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], stream=True):
            pass

    ant = anthropic.Anthropic(base_url=canned.url, api_key="k", max_retries=0)
    canned.reply = (
        409,
        "application/json",
        orjson.dumps(anthropic_error("policy_violation", "blocked", code="input_blocked", policy="p")),
    )
    with pytest.raises(anthropic.APIStatusError) as info:
        ant.messages.create(model="c", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 409 and info.value.body["error"]["policy"] == "p"

    translator = OpenAIStreamToAnthropic()
    head = [e for e in translator.feed(OPENAI_CHUNKS[1])]
    canned.reply = (200, "text/event-stream", _anthropic_sse(head) + anthropic_stream_error("api_error", "cut"))
    request = {"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    with pytest.raises(anthropic.APIStatusError, match="cut"), ant.messages.stream(**request) as stream:
        stream.get_final_message()

    canned.reply = (
        200,
        "application/json",
        orjson.dumps(openai_response_to_anthropic(completion.model_dump(), "claude")),
    )
    message = ant.messages.create(model="c", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert message.content[-1].input == {"city": "Paris"} and message.model == "claude"
