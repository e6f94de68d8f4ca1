"""The canonical (OpenAI chat) stream's own pieces: its end, a whole completion as chunks, its error message.

For an upstream that answered a stream request with plain JSON (`completion_to_chunks`) and for
an error once a stream is under way (`openai_stream_error`, the gateway's envelope as one SSE
message).
"""

from __future__ import annotations

import time
from typing import Any

from gateway.providers.canonical import text_of
from gateway.providers.sse import format_sse
from gateway.proxy.errors import envelope

OPENAI_DONE = b"data: [DONE]\n\n"


def completion_to_chunks(resp: dict[str, Any]) -> list[dict[str, Any]]:
    """A whole `chat.completion` as the `chat.completion.chunk`s a stream of it would carry.

    Per choice: one delta with its role, text, refusal and tool calls, then its finish chunk;
    then a usage chunk (`choices: []`) when the completion has usage. For an upstream that
    answered a stream request with plain JSON."""
    base = {"id": resp.get("id") or "chatcmpl-", "object": "chat.completion.chunk",
            "created": resp.get("created") or int(time.time()), "model": resp.get("model") or ""}
    out: list[dict[str, Any]] = []
    for choice in resp.get("choices") or ():
        index = choice.get("index", 0)
        message = choice.get("message") or {}
        delta: dict[str, Any] = {"role": "assistant", "content": text_of(message.get("content")) or None}
        if message.get("refusal"):
            delta["refusal"] = message["refusal"]
        if message.get("tool_calls"):
            delta["tool_calls"] = [{**call, "index": i} for i, call in enumerate(message["tool_calls"])]
        out.append({**base, "choices": [{"index": index, "delta": delta, "finish_reason": None, "logprobs": None}]})
        finish = choice.get("finish_reason") or ("tool_calls" if message.get("tool_calls") else "stop")
        out.append({**base, "choices": [{"index": index, "delta": {}, "finish_reason": finish, "logprobs": None}]})
    if isinstance(resp.get("usage"), dict):
        out.append({**base, "choices": [], "usage": resp["usage"]})
    return out


def openai_error(error_type: str, message: str, code: str | None = None, policy: str | None = None) -> dict[str, Any]:
    """The gateway's (OpenAI-style) error envelope `{"error": {"type", "code", "message", "policy"}}`."""
    return envelope(error_type, code, message, policy)


def openai_stream_error(error_type: str, message: str, code: str | None = None, policy: str | None = None) -> bytes:
    """An error on an OpenAI stream: one `data: {"error": {...}}` message (send no `[DONE]` after it)."""
    return format_sse(openai_error(error_type, message, code, policy))

