"""Anthropic Messages answers <-> canonical (OpenAI chat) completions, both ways, and what they share.

`anthropic_response_to_openai` for an Anthropic target's answer; `openai_response_to_anthropic`
for a `/v1/messages` client's answer. Also the pieces the streams reuse: stop reason <->
finish reason, message ids, usage both ways, and the Anthropic error body and its `type` per
HTTP status.
"""

from __future__ import annotations

import time
from typing import Any

from gateway.providers.anthropic_content import openai_parts_to_anthropic, text_and_tool_calls, tool_use
from gateway.providers.translate import guarded

_STOP_TO_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_FINISH_TO_STOP = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def stop_reason_to_finish_reason(stop_reason: str | None) -> str | None:
    """Anthropic `stop_reason` -> OpenAI `finish_reason` (None stays None, unknown -> "stop")."""
    return None if stop_reason is None else _STOP_TO_FINISH.get(stop_reason, "stop")


def finish_reason_to_stop_reason(finish_reason: str | None) -> str | None:
    """OpenAI `finish_reason` -> Anthropic `stop_reason` (None stays None, unknown -> "end_turn")."""
    return None if finish_reason is None else _FINISH_TO_STOP.get(finish_reason, "end_turn")


def completion_id(anthropic_id: str | None) -> str:
    """An Anthropic message id as a completion id (`msg_x` -> `chatcmpl-x`)."""
    return "chatcmpl-" + (anthropic_id or "").removeprefix("msg_")


def message_id(openai_id: str | None) -> str:
    """A completion id as an Anthropic message id (`chatcmpl-x` -> `msg_x`)."""
    return "msg_" + (openai_id or "").removeprefix("chatcmpl-")


# ------------------------------------------------------------------------------------------ usage


def _openai_usage(input_tokens: int, output_tokens: int, cached: int = 0) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": input_tokens,
        "completion_tokens": output_tokens,
        "total_tokens": input_tokens + output_tokens,
    }
    if cached:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    return usage


def _count(usage: Any, key: str) -> int:
    """A token count from a usage object; anything that is not a count is 0."""
    value = usage.get(key) if isinstance(usage, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def anthropic_usage_to_openai(usage: dict[str, Any] | None) -> dict[str, Any]:
    """Anthropic usage as OpenAI usage (cache reads and writes count as prompt tokens)."""
    cached = _count(usage, "cache_read_input_tokens")
    prompt = _count(usage, "input_tokens") + cached + _count(usage, "cache_creation_input_tokens")
    return _openai_usage(prompt, _count(usage, "output_tokens"), cached)


def openai_usage_to_anthropic(usage: dict[str, Any] | None) -> dict[str, Any]:
    """OpenAI usage as Anthropic usage (cached prompt tokens as `cache_read_input_tokens`)."""
    cached = _count((usage or {}).get("prompt_tokens_details") if isinstance(usage, dict) else None, "cached_tokens")
    out = {
        "input_tokens": max(_count(usage, "prompt_tokens") - cached, 0),
        "output_tokens": _count(usage, "completion_tokens"),
    }
    if cached:
        out["cache_read_input_tokens"] = cached
    return out


# ------------------------------------------------------------------------------------------ answers


@guarded("upstream response")
def anthropic_response_to_openai(resp: dict[str, Any]) -> dict[str, Any]:
    """Translate an Anthropic Message into an OpenAI `chat.completion`."""
    blocks = resp.get("content") or []
    text, calls = text_and_tool_calls(blocks)
    message: dict[str, Any] = {"role": "assistant", "content": text or None, "refusal": None}
    if calls:
        message["tool_calls"] = calls
    return {
        "id": completion_id(resp.get("id")),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": resp.get("model", ""),
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": stop_reason_to_finish_reason(resp.get("stop_reason")) or "stop",
                "logprobs": None,
            }
        ],
        "usage": anthropic_usage_to_openai(resp.get("usage")),
    }


@guarded("upstream response")
def openai_response_to_anthropic(resp: dict[str, Any], model: str | None = None) -> dict[str, Any]:
    """Translate an OpenAI `chat.completion` into an Anthropic Message (first choice; `model` overrides)."""
    choice = (resp.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = openai_parts_to_anthropic(message.get("content"), "message")
    if message.get("refusal"):
        content.append({"type": "text", "text": message["refusal"]})
    for call in message.get("tool_calls") or ():
        content.append(tool_use(call))
    stop_reason = finish_reason_to_stop_reason(choice.get("finish_reason")) or "end_turn"
    if message.get("refusal"):
        stop_reason = "refusal"
    return {
        "id": message_id(resp.get("id")),
        "type": "message",
        "role": "assistant",
        "model": model or resp.get("model", ""),
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": openai_usage_to_anthropic(resp.get("usage")),
    }


# ------------------------------------------------------------------------------------------ errors


def anthropic_error_type(status: int) -> str:
    """The Anthropic `error.type` that goes with an HTTP status."""
    return _ANTHROPIC_ERROR_TYPES.get(status, "invalid_request_error" if 400 <= status < 500 else "api_error")


def anthropic_error(error_type: str, message: str, **extra: Any) -> dict[str, Any]:
    """The Anthropic error body `{"type": "error", "error": {"type", "message", ...extra}}`.

    Extra fields (e.g. `code`, `policy` of the gateway's envelope) are kept, so the body is
    also a valid `{"error": {...}}` gateway envelope.
    """
    return {"type": "error", "error": {"type": error_type, "message": message, **extra}}
