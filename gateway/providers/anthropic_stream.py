"""Anthropic Messages streams <-> canonical (OpenAI chat) streams, both ways, and the error on an Anthropic stream.

`AnthropicStreamToOpenAI` reads an Anthropic target's stream events into canonical chunks;
`OpenAIStreamToAnthropic` writes a `/v1/messages` client's stream from canonical chunks. Both
are fed in order (`feed`) and closed at the end (`close`); stop reasons, ids and usage map as
in `anthropic_response`.
"""

from __future__ import annotations

import time
from typing import Any

from gateway.providers.anthropic_content import tool_id
from gateway.providers.anthropic_response import (
    anthropic_error,
    anthropic_usage_to_openai,
    completion_id,
    finish_reason_to_stop_reason,
    message_id,
    openai_usage_to_anthropic,
    stop_reason_to_finish_reason,
)
from gateway.providers.sse import format_sse
from gateway.providers.translate import guarded


class AnthropicStreamToOpenAI:
    """Anthropic stream events (parsed `data` objects) -> OpenAI `chat.completion.chunk` dicts.

    Feed every event in order; `close()` after the last. An Anthropic `error` event becomes
    `{"error": {...}}`, which is what an OpenAI stream carries on a failure.
    """

    def __init__(self, model: str | None = None, include_usage: bool = False) -> None:
        self.model = model
        self.include_usage = include_usage
        self.id = "chatcmpl-"
        self.created = int(time.time())
        self.usage: dict[str, Any] = {}
        self.finish_reason: str | None = None
        self._tool_index: dict[int, int] = {}  # Anthropic block index -> OpenAI tool_calls index
        self._finished = False
        self._done = False

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model or "",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
        }

    @guarded("upstream stream event")
    def feed(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """Translate one Anthropic event; returns zero or more OpenAI chunks."""
        kind = event.get("type")
        if kind == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta":
                return [self._chunk({"content": delta.get("text", "")})]
            if delta.get("partial_json") and event.get("index") in self._tool_index:
                call = {
                    "index": self._tool_index[event["index"]],
                    "function": {"arguments": delta.get("partial_json", "")},
                }
                return [self._chunk({"tool_calls": [call]})]
            return []  # thinking, signature, citations: dropped
        if kind == "message_start":
            message = event.get("message") or {}
            self.id = completion_id(message.get("id"))
            self.model = self.model or message.get("model")
            self.usage.update(message.get("usage") or {})
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") == "tool_use":
                index = self._tool_index[event.get("index", 0)] = len(self._tool_index)
                call = {
                    "index": index,
                    "id": block.get("id", ""),
                    "type": "function",
                    "function": {"name": block.get("name", ""), "arguments": ""},
                }
                return [self._chunk({"tool_calls": [call]})]
            if block.get("type") == "text" and block.get("text"):
                return [self._chunk({"content": block["text"]})]
            return []
        if kind == "message_delta":
            self.usage.update({k: v for k, v in (event.get("usage") or {}).items() if v is not None})
            reason = (event.get("delta") or {}).get("stop_reason")
            self.finish_reason = stop_reason_to_finish_reason(reason) or self.finish_reason
            if self.finish_reason and not self._finished:
                self._finished = True
                return [self._chunk({}, self.finish_reason)]
            return []
        if kind == "message_stop":
            return self.close()
        if kind == "error":
            self._done = True
            error = event.get("error") or {}
            return [{"error": {"type": error.get("type", "api_error"), "message": error.get("message", "")}}]
        return []  # ping, content_block_stop, unknown future events

    def close(self) -> list[dict[str, Any]]:
        """End of the Anthropic stream: the finish chunk if none was sent, then usage if requested."""
        if self._done:
            return []
        self._done = True
        out = []
        if not self._finished:
            self._finished = True
            out.append(self._chunk({}, self.finish_reason or "stop"))
        if self.include_usage:
            chunk = self._chunk({})
            chunk["choices"] = []
            chunk["usage"] = anthropic_usage_to_openai(self.usage)
            out.append(chunk)
        return out


class OpenAIStreamToAnthropic:
    """OpenAI `chat.completion.chunk` dicts -> Anthropic stream events (dicts with `type`).

    Emits message_start, then content blocks (text and tool_use) with consecutive `index`es,
    and on `close()` (call it at `[DONE]` or end of stream) the final message_delta with
    stop_reason and usage, then message_stop. Format each event with
    `format_sse(event, event=event["type"])`.
    """

    def __init__(self, model: str | None = None, input_tokens: int = 0) -> None:
        self.model = model
        self.input_tokens = input_tokens
        self.usage: dict[str, Any] | None = None
        self.stop_reason: str | None = None
        self._started = False
        self._done = False
        self._index = -1  # Anthropic index of the open block, -1 when none
        self._open_kind: str | None = None  # "text" | "tool_use" | None
        self._blocks = 0
        self._tool_blocks: dict[int, int] = {}  # OpenAI tool_calls index -> Anthropic block index

    def _start(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        self._started = True
        message = {
            "id": message_id(chunk.get("id")),
            "type": "message",
            "role": "assistant",
            "model": self.model or chunk.get("model", ""),
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self.input_tokens, "output_tokens": 0},
        }
        return [{"type": "message_start", "message": message}]

    def _close_block(self) -> list[dict[str, Any]]:
        if self._open_kind is None:
            return []
        self._open_kind = None
        return [{"type": "content_block_stop", "index": self._index}]

    def _open(self, block: dict[str, Any]) -> list[dict[str, Any]]:
        out = self._close_block()
        self._index, self._blocks = self._blocks, self._blocks + 1
        self._open_kind = block["type"]
        out.append({"type": "content_block_start", "index": self._index, "content_block": block})
        return out

    @guarded("upstream stream chunk")
    def feed(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        """Translate one OpenAI chunk; returns zero or more Anthropic events."""
        if self._done:
            return []
        if "error" in chunk and not chunk.get("choices"):
            self._done = True
            error = chunk.get("error") or {}
            message = error.get("message", "") if isinstance(error, dict) else str(error)
            return [anthropic_error("api_error", message)]
        out = [] if self._started else self._start(chunk)
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue  # Anthropic has one candidate: only the first choice is carried
            delta = choice.get("delta") or {}
            text = delta.get("content") or delta.get("refusal")
            if text:
                if self._open_kind != "text":
                    out += self._open({"type": "text", "text": ""})
                out.append(
                    {"type": "content_block_delta", "index": self._index, "delta": {"type": "text_delta", "text": text}}
                )
            for call in delta.get("tool_calls") or ():
                out += self._tool_delta(call)
            if choice.get("finish_reason"):
                self.stop_reason = finish_reason_to_stop_reason(choice["finish_reason"])
                if delta.get("refusal"):
                    self.stop_reason = "refusal"
        return out

    def _tool_delta(self, call: dict[str, Any]) -> list[dict[str, Any]]:
        out = []
        tool_index = call.get("index", 0)
        function = call.get("function") or {}
        if tool_index not in self._tool_blocks:
            block = {
                "type": "tool_use",
                "id": tool_id(call.get("id") or f"toolu_{tool_index}"),
                "name": function.get("name") or "",
                "input": {},
            }
            out += self._open(block)
            self._tool_blocks[tool_index] = self._index
        if function.get("arguments"):
            out.append(
                {
                    "type": "content_block_delta",
                    "index": self._tool_blocks[tool_index],
                    "delta": {"type": "input_json_delta", "partial_json": function["arguments"]},
                }
            )
        return out

    def close(self) -> list[dict[str, Any]]:
        """End of the OpenAI stream: close the open block, send message_delta (usage) and message_stop."""
        if self._done:
            return []
        out = [] if self._started else self._start({})
        self._done = True
        out += self._close_block()
        usage = (
            openai_usage_to_anthropic(self.usage)
            if self.usage
            else {"input_tokens": self.input_tokens, "output_tokens": 0}
        )
        out.append(
            {
                "type": "message_delta",
                "delta": {"stop_reason": self.stop_reason or "end_turn", "stop_sequence": None},
                "usage": usage,
            }
        )
        out.append({"type": "message_stop"})
        return out


def anthropic_stream_error(error_type: str, message: str, **extra: Any) -> bytes:
    """An error on an Anthropic stream: `event: error` with the Anthropic error body."""
    return format_sse(anthropic_error(error_type, message, **extra), event="error")
