"""The built-in `mock` provider: a deterministic local upstream for demos. No network, no key.

Answers in OpenAI format (the gateway translates for Anthropic clients):
- text: `[mock] You said: <the last user message, shortened to 200 characters>`;
- after a tool result (last message has role `tool`): `[mock] Tool <name> returned: <result>`;
- a tool call when the request declares `tools` and either `tool_choice` names a function, or
  the last user message says `call <tool>` / `use <tool>` / `run <tool>` for a declared tool
  name; a JSON object in that message (e.g. `{"path": "/etc/passwd"}`) becomes the arguments.
Usage is estimated at one token per 4 characters; `max_tokens` truncates (finish_reason `length`).
Every answer is marked: `system_fingerprint: "kt-mock"`, ids `chatcmpl-mock-...`, and
/v1/models entries have `owned_by: "kt-mock"`.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
import struct
import time
from collections.abc import Iterator
from typing import Any

import orjson

PROVIDER = "mock"
OWNED_BY = "kt-mock"
SYSTEM_FINGERPRINT = "kt-mock"
DEFAULT_EMBEDDING_DIMENSIONS = 256
_PREVIEW_CHARS = 200
_TOOL_VERB = re.compile(r"\b(?:call|use|run|invoke)\s+(?:the\s+)?(?:tool\s+)?[`'\"]?([A-Za-z_][\w.-]*)", re.I)
_JSON_OBJECT = re.compile(r"\{.*\}", re.S)


def estimate_tokens(text: str) -> int:
    """A rough token count: one token per 4 characters, at least 1 for non-empty text."""
    return math.ceil(len(text) / 4) if text else 0


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _PREVIEW_CHARS else text[: _PREVIEW_CHARS - 3] + "..."


def _prompt_tokens(body: dict[str, Any]) -> int:
    messages = body.get("messages") or []
    return sum(estimate_tokens(_text(m.get("content"))) + 4 for m in messages if isinstance(m, dict))


def _tool_names(body: dict[str, Any]) -> list[str]:
    return [
        t["function"]["name"]
        for t in body.get("tools") or ()
        if isinstance(t, dict) and isinstance(t.get("function"), dict) and t["function"].get("name")
    ]


def _tool_call(body: dict[str, Any], last: dict[str, Any]) -> dict[str, Any] | None:
    names = _tool_names(body)
    if not names or last.get("role") != "user" or body.get("tool_choice") == "none":
        return None
    text = _text(last.get("content"))
    choice = body.get("tool_choice")
    name = (choice.get("function") or {}).get("name") if isinstance(choice, dict) else None
    if name not in names:
        lowered = {n.lower(): n for n in names}
        name = next((lowered[m[1].lower()] for m in _TOOL_VERB.finditer(text) if m[1].lower() in lowered), None)
    if name is None and choice == "required":
        name = names[0]
    if name is None:
        return None
    arguments = "{}"
    if match := _JSON_OBJECT.search(text):
        try:
            if isinstance(orjson.loads(match[0]), dict):
                arguments = match[0]
        except orjson.JSONDecodeError:
            pass
    call_id = "call_mock_" + hashlib.sha256(f"{name}\0{arguments}\0{text}".encode()).hexdigest()[:24]
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _answer(body: dict[str, Any]) -> tuple[str | None, dict[str, Any] | None, str]:
    """(text, tool_call, finish_reason) for a request."""
    messages = [m for m in body.get("messages") or () if isinstance(m, dict)]
    last = messages[-1] if messages else {}
    call = _tool_call(body, last)
    if call:
        return None, call, "tool_calls"
    if last.get("role") == "tool":
        called = {
            c.get("id"): (c.get("function") or {}).get("name")
            for m in messages
            for c in m.get("tool_calls") or ()
            if isinstance(c, dict)
        }
        name = called.get(last.get("tool_call_id")) or "tool"
        text = f"[mock] Tool {name} returned: {_shorten(_text(last.get('content')))}"
    else:
        user = next((m for m in reversed(messages) if m.get("role") == "user"), {})
        text = f"[mock] You said: {_shorten(_text(user.get('content')))}"
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if isinstance(limit, int) and limit > 0 and estimate_tokens(text) > limit:
        return text[: limit * 4], None, "length"
    return text, None, "stop"


def _id(body: dict[str, Any]) -> str:
    return "chatcmpl-mock-" + hashlib.sha256(orjson.dumps(body.get("messages") or [])).hexdigest()[:24]


def _usage(body: dict[str, Any], text: str | None, call: dict[str, Any] | None) -> dict[str, int]:
    prompt = _prompt_tokens(body)
    completion = estimate_tokens(text or "") + (estimate_tokens(orjson.dumps(call).decode()) if call else 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def complete(body: dict[str, Any]) -> dict[str, Any]:
    """A non-streaming OpenAI `chat.completion` answering `body`."""
    text, call, finish = _answer(body)
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
    if call:
        message["tool_calls"] = [call]
    return {
        "id": _id(body),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model") or "mock",
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": _usage(body, text, call),
    }


def stream(body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """OpenAI `chat.completion.chunk` dicts answering `body`: role, several deltas, finish, usage if asked."""
    text, call, finish = _answer(body)
    base = {
        "id": _id(body),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": body.get("model") or "mock",
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]}

    yield chunk({"role": "assistant", "content": ""})
    if call:
        head = {"index": 0, "id": call["id"], "type": "function", "function": {"name": call["function"]["name"]}}
        yield chunk({"tool_calls": [{**head, "function": {**head["function"], "arguments": ""}}]})
        arguments = call["function"]["arguments"]
        half = len(arguments) // 2
        for piece in (arguments[:half], arguments[half:]):
            if piece:
                yield chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
    for piece in re.findall(r"\S+\s*|\s+", text or ""):
        yield chunk({"content": piece})
    yield chunk({}, finish)
    if (body.get("stream_options") or {}).get("include_usage"):
        yield {**base, "choices": [], "usage": _usage(body, text, call)}


def _vector(text: str, dimensions: int) -> list[float]:
    raw = b""
    counter = 0
    while len(raw) < dimensions * 4:
        raw += hashlib.sha256(f"{counter}\0{text}".encode()).digest()
        counter += 1
    values = [v / 2**31 - 1.0 for v in struct.unpack(f"<{dimensions}I", raw[: dimensions * 4])]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


def embed(body: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI embeddings response: unit vectors derived from a hash of each input.

    Honours `dimensions` (default 256) and `encoding_format` ("float" or "base64", as the
    openai SDK asks by default). Raises ValueError on an input that is not text or tokens.
    """
    inputs = body.get("input")
    if isinstance(inputs, str) or (isinstance(inputs, list) and inputs and isinstance(inputs[0], int)):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs:
        raise ValueError("`input` must be a non-empty string, list of strings, or list of token lists")
    dimensions = body.get("dimensions")
    dimensions = DEFAULT_EMBEDDING_DIMENSIONS if dimensions is None else dimensions
    if not isinstance(dimensions, int) or isinstance(dimensions, bool) or not 1 <= dimensions <= 4096:
        raise ValueError("`dimensions` must be an integer between 1 and 4096")
    data, tokens = [], 0
    for i, item in enumerate(inputs):
        if isinstance(item, list) and all(isinstance(t, int) for t in item):
            key, tokens = " ".join(map(str, item)), tokens + len(item)
        elif isinstance(item, str):
            key, tokens = item, tokens + estimate_tokens(item)
        else:
            raise ValueError(f"`input[{i}]` must be a string or a list of token ids")
        vector = _vector(key, dimensions)
        embedding: Any = vector
        if body.get("encoding_format") == "base64":
            embedding = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
        data.append({"object": "embedding", "index": i, "embedding": embedding})
    return {
        "object": "list",
        "data": data,
        "model": body.get("model") or "mock",
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def model_entry(model: str, created: int = 0) -> dict[str, Any]:
    """A /v1/models entry for a mock target's model, labelled `owned_by: "kt-mock"`."""
    return {"id": model, "object": "model", "created": created, "owned_by": OWNED_BY}
