"""Anthropic Messages <-> OpenAI chat translation: requests, responses, streams, SSE, error envelopes.

Pure functions and small stateful stream translators; no I/O. The canonical request form
(policies/model.py) is OpenAI chat, so an Anthropic request is translated to OpenAI on the way
in and the answer back on the way out; an OpenAI request routed to an Anthropic target goes the
other way. The rules (what maps to what, what is dropped) are in docs/providers.md.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

import orjson

from gateway.providers.sse import format_sse
from gateway.proxy.errors import envelope

DEFAULT_ANTHROPIC_MAX_TOKENS = 4096
OPENAI_DONE = b"data: [DONE]\n\n"


class TranslationError(ValueError):
    """Input that cannot be translated; the message says what is wrong.

    From a request function: the client's fault (answer 400). From a response function or a
    stream translator: the upstream sent something malformed (answer 502).
    """


_F = TypeVar("_F", bound=Callable[..., Any])


def _guarded(what: str) -> Callable[[_F], _F]:
    """Turn a stray TypeError/AttributeError on malformed input into a TranslationError (never a traceback)."""

    def decorate(fn: _F) -> _F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except TranslationError:
                raise
            except (TypeError, AttributeError, KeyError, IndexError, ValueError) as exc:
                raise TranslationError(f"malformed {what}: {exc}") from None

        return wrapper  # type: ignore[return-value]

    return decorate


def _typed(body: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str, where: str = "") -> Any:
    value = body.get(key)
    if value is not None and not isinstance(value, kind):
        raise TranslationError(f"`{where}{key}` must be {what}")
    return value


# ---------------------------------------------------------------------------------------------------- small helpers

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


def stop_reason_to_finish_reason(stop_reason: str | None) -> str | None:
    """Anthropic `stop_reason` -> OpenAI `finish_reason` (None stays None, unknown -> "stop")."""
    return None if stop_reason is None else _STOP_TO_FINISH.get(stop_reason, "stop")


def finish_reason_to_stop_reason(finish_reason: str | None) -> str | None:
    """OpenAI `finish_reason` -> Anthropic `stop_reason` (None stays None, unknown -> "end_turn")."""
    return None if finish_reason is None else _FINISH_TO_STOP.get(finish_reason, "end_turn")


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _parse_arguments(arguments: Any) -> dict[str, Any]:
    """OpenAI `function.arguments` (a JSON string) -> Anthropic `input` (an object), leniently.

    Models sometimes emit truncated or invalid JSON; that is kept as `{"_raw_arguments": text}`
    rather than failing the whole request.
    """
    if isinstance(arguments, dict):
        return arguments
    if not arguments:
        return {}
    try:
        value = orjson.loads(arguments)
    except (orjson.JSONDecodeError, TypeError):
        return {"_raw_arguments": str(arguments)}
    return value if isinstance(value, dict) else {"_raw_arguments": str(arguments)}


_NOT_TOOL_ID = re.compile(r"[^a-zA-Z0-9_-]")


def _tool_id(openai_id: Any) -> str:
    """An OpenAI tool-call id as Anthropic accepts it (`^[a-zA-Z0-9_-]+$`; other characters become `_`)."""
    return _NOT_TOOL_ID.sub("_", str(openai_id or "")) or "toolu_"


def _tool_use(call: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI tool call as an Anthropic `tool_use` block."""
    function = call.get("function") or {}
    return {"type": "tool_use", "id": _tool_id(call.get("id")), "name": function.get("name", ""),
            "input": _parse_arguments(function.get("arguments"))}


def _openai_id(anthropic_id: str | None) -> str:
    return "chatcmpl-" + (anthropic_id or "").removeprefix("msg_")


def _anthropic_id(openai_id: str | None) -> str:
    return "msg_" + (openai_id or "").removeprefix("chatcmpl-")


def _text_of(content: Any) -> str:
    """All text of an OpenAI or Anthropic `content` (string or list of parts/blocks), joined."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text") or "" for p in content if isinstance(p, dict) and p.get("type") == "text")
    raise TranslationError(f"content must be a string or a list of content blocks, got {type(content).__name__}")


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    if not isinstance(body, dict):
        raise TranslationError("the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise TranslationError("`messages` is required and must be a list of messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise TranslationError(f"messages[{i}] must be an object with a `role`")
    return messages


def _blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if content is None:
        return []
    if not isinstance(content, list) or not all(isinstance(b, dict) for b in content):
        raise TranslationError(f"{where}.content must be a string or a list of content blocks")
    return content


# ---------------------------------------------------------------------------------------------------- requests


def _anthropic_image_to_openai(block: dict[str, Any]) -> dict[str, Any] | None:
    source = block.get("source") or {}
    if source.get("type") == "base64":
        url = f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
    elif source.get("type") == "url":
        url = source.get("url", "")
    else:
        return None
    return {"type": "image_url", "image_url": {"url": url}}


def _anthropic_document_to_openai(block: dict[str, Any]) -> list[dict[str, Any]]:
    """A `document` block: plain-text sources become text (so policies see them), base64 a file part."""
    source = block.get("source") or {}
    if source.get("type") == "text":
        return [{"type": "text", "text": source.get("data", "")}]
    if source.get("type") == "content":
        return _anthropic_parts_to_openai(_blocks(source.get("content"), "document.source"))
    if source.get("type") == "base64":
        file = {"file_data": f"data:{source.get('media_type', 'application/pdf')};base64,{source.get('data', '')}"}
        if block.get("title"):
            file["filename"] = block["title"]
        return [{"type": "file", "file": file}]
    return []


def _anthropic_parts_to_openai(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    parts = []
    for block in blocks:
        kind = block.get("type")
        if kind == "text":
            parts.append({"type": "text", "text": block.get("text", "")})
        elif kind == "image" and (part := _anthropic_image_to_openai(block)):
            parts.append(part)
        elif kind == "document":
            parts.extend(_anthropic_document_to_openai(block))
    return parts


def _tool_result_content(content: Any) -> str | list[dict[str, Any]]:
    if isinstance(content, str) or content is None:
        return content or ""
    parts = _anthropic_parts_to_openai(_blocks(content, "tool_result"))
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _anthropic_tool_choice_to_openai(choice: dict[str, Any]) -> Any:
    kind = choice.get("type")
    if kind == "tool":
        return {"type": "function", "function": {"name": choice.get("name", "")}}
    return {"auto": "auto", "any": "required", "none": "none"}.get(kind, "auto")


def _text_and_tool_calls(blocks: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """The joined text blocks and the tool_use blocks as OpenAI `tool_calls` of Anthropic content."""
    text = "".join(b.get("text", "") for b in blocks if b.get("type") == "text")
    calls = [
        {
            "id": b.get("id", ""),
            "type": "function",
            "function": {"name": b.get("name", ""), "arguments": _dumps(b.get("input") or {})},
        }
        for b in blocks
        if b.get("type") == "tool_use"
    ]
    return text, calls


@_guarded("request body")
def anthropic_request_to_openai(body: dict[str, Any]) -> dict[str, Any]:
    """Translate an Anthropic Messages request body into the canonical OpenAI chat request."""
    out_messages: list[dict[str, Any]] = []
    system = body.get("system") if isinstance(body, dict) else None
    messages = _messages(body)
    if isinstance(system, str) and system:
        out_messages.append({"role": "system", "content": system})
    elif isinstance(system, list) and system:
        out_messages.append({"role": "system", "content": _anthropic_parts_to_openai(_blocks(system, "system"))})

    for i, message in enumerate(messages):
        role, content = message["role"], message.get("content")
        if role not in ("user", "assistant"):
            raise TranslationError(f"messages[{i}].role must be 'user' or 'assistant' (system goes in `system`)")
        if isinstance(content, str):
            out_messages.append({"role": role, "content": content})
            continue
        blocks = _blocks(content, f"messages[{i}]")
        if role == "assistant":
            text, calls = _text_and_tool_calls(blocks)
            out: dict[str, Any] = {"role": "assistant", "content": text or (None if calls else "")}
            if calls:
                out["tool_calls"] = calls
            out_messages.append(out)
            continue
        # user: tool results become "tool" messages (they must follow the assistant's tool_calls), then the rest
        for b in blocks:
            if b.get("type") == "tool_result":
                out_messages.append(
                    {
                        "role": "tool",
                        "tool_call_id": b.get("tool_use_id", ""),
                        "content": _tool_result_content(b.get("content")),
                    }
                )
        rest = [b for b in blocks if b.get("type") != "tool_result"]
        if rest or not blocks:
            out_messages.append({"role": "user", "content": _anthropic_parts_to_openai(rest)})

    out_body: dict[str, Any] = {"model": body.get("model"), "messages": out_messages}
    _typed(body, "tools", list, "a list of tool definitions")
    _typed(body, "tool_choice", dict, 'an object like {"type": "auto"}')
    _typed(body, "stop_sequences", list, "a list of strings")
    _typed(body, "metadata", dict, 'an object like {"user_id": "..."}')
    tools = [
        {
            "type": "function",
            "function": {
                k: v
                for k, v in (
                    ("name", t.get("name")),
                    ("description", t.get("description")),
                    ("parameters", t.get("input_schema")),
                )
                if v is not None
            },
        }
        for t in body.get("tools") or ()
        if isinstance(t, dict) and t.get("type") in (None, "custom")  # server tools (web_search, ...) are dropped
    ]
    if tools:
        out_body["tools"] = tools
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        if tools or choice.get("type") == "none":
            out_body["tool_choice"] = _anthropic_tool_choice_to_openai(choice)
        if choice.get("disable_parallel_tool_use") and tools:
            out_body["parallel_tool_calls"] = False
    for src, dst in (("max_tokens", "max_tokens"), ("temperature", "temperature"), ("top_p", "top_p")):
        if body.get(src) is not None:
            out_body[dst] = body[src]
    if body.get("stop_sequences"):
        out_body["stop"] = list(body["stop_sequences"])
    if body.get("stream"):
        out_body["stream"] = True
        out_body["stream_options"] = {"include_usage": True}  # an Anthropic stream ends with usage
    user_id = (body.get("metadata") or {}).get("user_id")
    if user_id:
        out_body["user"] = user_id
    return out_body


_DATA_URL = re.compile(r"data:([^;,]+);base64,(.*)", re.S)


def _openai_image_to_anthropic(part: dict[str, Any]) -> dict[str, Any]:
    url = (part.get("image_url") or {}).get("url", "")
    match = _DATA_URL.match(url)
    if match:
        return {"type": "image", "source": {"type": "base64", "media_type": match[1], "data": match[2]}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _openai_parts_to_anthropic(content: Any, where: str) -> list[dict[str, Any]]:
    blocks = []
    for part in _blocks(content, where):
        kind = part.get("type")
        if kind in ("text", "refusal"):
            text = part.get("text") if kind == "text" else part.get("refusal")
            if text:  # Anthropic rejects empty text blocks
                blocks.append({"type": "text", "text": text})
        elif kind == "image_url":
            blocks.append(_openai_image_to_anthropic(part))
        elif kind == "file" and (match := _DATA_URL.match((part.get("file") or {}).get("file_data") or "")):
            document = {"type": "document", "source": {"type": "base64", "media_type": match[1], "data": match[2]}}
            if part["file"].get("filename"):
                document["title"] = part["file"]["filename"]
            blocks.append(document)
    return blocks


def _openai_tool_choice_to_anthropic(choice: Any) -> dict[str, Any] | None:
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        return {"type": "tool", "name": name} if name else None
    return {"auto": {"type": "auto"}, "required": {"type": "any"}, "none": {"type": "none"}}.get(choice)


@_guarded("request body")
def openai_request_to_anthropic(body: dict[str, Any], model: str) -> dict[str, Any]:
    """Translate a canonical OpenAI chat request into an Anthropic Messages request for `model`."""
    system: list[dict[str, Any]] = []
    out_messages: list[dict[str, Any]] = []

    def append(role: str, blocks: list[dict[str, Any]], content: Any = None) -> None:
        # Anthropic wants user/assistant turns to alternate: merge consecutive same-role messages.
        if out_messages and out_messages[-1]["role"] == role:
            last = out_messages[-1]
            if isinstance(last["content"], str):
                last["content"] = [{"type": "text", "text": last["content"]}] if last["content"] else []
            last["content"].extend(blocks)
        else:
            out_messages.append({"role": role, "content": content if content is not None else blocks})

    for i, message in enumerate(_messages(body)):
        role, content = message["role"], message.get("content")
        where = f"messages[{i}]"
        if role in ("system", "developer"):
            system.extend(_openai_parts_to_anthropic(content, where))
        elif role == "user":
            if isinstance(content, str):
                append("user", [{"type": "text", "text": content}] if content else [], content)
            else:
                append("user", _openai_parts_to_anthropic(content, where))
        elif role == "assistant":
            blocks = _openai_parts_to_anthropic(content, where)
            for call in _typed(message, "tool_calls", list, "a list of tool calls", f"{where}.") or ():
                blocks.append(_tool_use(call))
            plain = isinstance(content, str) and content and not message.get("tool_calls")
            append("assistant", blocks, content if plain else None)
        elif role == "tool":
            result = _text_of(content) if isinstance(content, list | str | None) else str(content)
            append(
                "user",
                [{"type": "tool_result", "tool_use_id": _tool_id(message.get("tool_call_id")), "content": result}],
            )
        else:
            raise TranslationError(f"{where}.role {role!r} is not one of system, developer, user, assistant, tool")

    _typed(body, "tools", list, "a list of tool definitions")
    _typed(body, "tool_choice", (str, dict), '"auto", "none", "required" or {"type": "function", ...}')
    _typed(body, "stop", (str, list), "a string or a list of strings")
    out: dict[str, Any] = {"model": model, "messages": out_messages}
    if system:
        out["system"] = system[0]["text"] if len(system) == 1 and system[0]["type"] == "text" else system
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    out["max_tokens"] = max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else DEFAULT_ANTHROPIC_MAX_TOKENS
    if isinstance(body.get("temperature"), int | float):
        out["temperature"] = min(max(float(body["temperature"]), 0.0), 1.0)  # OpenAI 0..2, Anthropic 0..1
    if body.get("top_p") is not None:
        out["top_p"] = body["top_p"]
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if body.get("stream"):
        out["stream"] = True
    if body.get("user"):
        out["metadata"] = {"user_id": str(body["user"])}

    tools = []
    for tool in body.get("tools") or ():
        function = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
        if isinstance(function, dict) and function.get("name"):
            t = {"name": function["name"], "input_schema": function.get("parameters") or {"type": "object"}}
            if function.get("description"):
                t["description"] = function["description"]
            tools.append(t)
    if tools:
        out["tools"] = tools
        choice = _openai_tool_choice_to_anthropic(body.get("tool_choice"))
        if body.get("parallel_tool_calls") is False:
            choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
        if choice:
            out["tool_choice"] = choice
    return out


# ---------------------------------------------------------------------------------------------------- responses


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


def _anthropic_usage_to_openai(usage: dict[str, Any] | None) -> dict[str, Any]:
    cached = _count(usage, "cache_read_input_tokens")
    prompt = _count(usage, "input_tokens") + cached + _count(usage, "cache_creation_input_tokens")
    return _openai_usage(prompt, _count(usage, "output_tokens"), cached)


def _openai_usage_to_anthropic(usage: dict[str, Any] | None) -> dict[str, Any]:
    cached = _count((usage or {}).get("prompt_tokens_details") if isinstance(usage, dict) else None, "cached_tokens")
    out = {
        "input_tokens": max(_count(usage, "prompt_tokens") - cached, 0),
        "output_tokens": _count(usage, "completion_tokens"),
    }
    if cached:
        out["cache_read_input_tokens"] = cached
    return out


@_guarded("upstream response")
def anthropic_response_to_openai(resp: dict[str, Any]) -> dict[str, Any]:
    """Translate an Anthropic Message into an OpenAI `chat.completion`."""
    blocks = resp.get("content") or []
    text, calls = _text_and_tool_calls(blocks)
    message: dict[str, Any] = {"role": "assistant", "content": text or None, "refusal": None}
    if calls:
        message["tool_calls"] = calls
    return {
        "id": _openai_id(resp.get("id")),
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
        "usage": _anthropic_usage_to_openai(resp.get("usage")),
    }


@_guarded("upstream response")
def openai_response_to_anthropic(resp: dict[str, Any], model: str | None = None) -> dict[str, Any]:
    """Translate an OpenAI `chat.completion` into an Anthropic Message (first choice; `model` overrides)."""
    choice = (resp.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = _openai_parts_to_anthropic(message.get("content"), "message")
    if message.get("refusal"):
        content.append({"type": "text", "text": message["refusal"]})
    for call in message.get("tool_calls") or ():
        content.append(_tool_use(call))
    stop_reason = finish_reason_to_stop_reason(choice.get("finish_reason")) or "end_turn"
    if message.get("refusal"):
        stop_reason = "refusal"
    return {
        "id": _anthropic_id(resp.get("id")),
        "type": "message",
        "role": "assistant",
        "model": model or resp.get("model", ""),
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": _openai_usage_to_anthropic(resp.get("usage")),
    }


# ---------------------------------------------------------------------------------------------------- streams


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

    @_guarded("upstream stream event")
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
            self.id = _openai_id(message.get("id"))
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
            chunk["usage"] = _anthropic_usage_to_openai(self.usage)
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
            "id": _anthropic_id(chunk.get("id")),
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

    @_guarded("upstream stream chunk")
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
                "id": _tool_id(call.get("id") or f"toolu_{tool_index}"),
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
            _openai_usage_to_anthropic(self.usage)
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
        delta: dict[str, Any] = {"role": "assistant", "content": _text_of(message.get("content")) or None}
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


# ---------------------------------------------------------------------------------------------------- errors

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


def anthropic_error_type(status: int) -> str:
    """The Anthropic `error.type` that goes with an HTTP status."""
    return _ANTHROPIC_ERROR_TYPES.get(status, "invalid_request_error" if 400 <= status < 500 else "api_error")


def anthropic_error(error_type: str, message: str, **extra: Any) -> dict[str, Any]:
    """The Anthropic error body `{"type": "error", "error": {"type", "message", ...extra}}`.

    Extra fields (e.g. `code`, `policy` of the gateway's envelope) are kept, so the body is
    also a valid `{"error": {...}}` gateway envelope.
    """
    return {"type": "error", "error": {"type": error_type, "message": message, **extra}}


def openai_error(error_type: str, message: str, code: str | None = None, policy: str | None = None) -> dict[str, Any]:
    """The gateway's (OpenAI-style) error envelope `{"error": {"type", "code", "message", "policy"}}`."""
    return envelope(error_type, code, message, policy)


def openai_stream_error(error_type: str, message: str, code: str | None = None, policy: str | None = None) -> bytes:
    """An error on an OpenAI stream: one `data: {"error": {...}}` message (send no `[DONE]` after it)."""
    return format_sse(openai_error(error_type, message, code, policy))


def anthropic_stream_error(error_type: str, message: str, **extra: Any) -> bytes:
    """An error on an Anthropic stream: `event: error` with the Anthropic error body."""
    return format_sse(anthropic_error(error_type, message, **extra), event="error")
