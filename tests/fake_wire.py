"""What the fake upstreams answer, as objects and bytes: the reply a test asks for (`Reply`,
`ToolCall`), the OpenAI chat completion, Responses and Anthropic message objects and their stream
events, the error envelopes and the request checks of those APIs, and the small helpers every
provider's wire uses (`sse`, `split_text`, `count_tokens`, `content_text`, `new_id`).

Pure functions: `tests.fake_upstream` serves them (Tornado, and the bare `--fast` server of
`tests.fake_fast`), the fuzz upstream garbles them, and the Azure, Gemini and Bedrock fakes
build their own wire from the helpers.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
import time
import uuid
from dataclasses import dataclass, field, fields
from typing import Any

import orjson

OPENAI_ROLES = ("system", "assistant", "user", "function", "tool", "developer")
_DIRECTIVE = "[[fake "
_STOP_OPENAI = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls"}
SSE_TYPE = "text/event-stream; charset=utf-8"
_STOP_ANTHROPIC = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}


@dataclass(frozen=True)
class ToolCall:
    """A function/tool call the fake answers with."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    id: str | None = None


@dataclass(frozen=True)
class Reply:
    """What the fake answers to one chat/messages request. `text=None` means the default text."""

    text: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    chunks: int = 3  # stream content events the text is cut into
    chunk_delay: float = 0.0  # seconds between stream events
    first_byte_delay: float = 0.0  # seconds before anything is sent
    finish_reason: str | None = None  # OpenAI or Anthropic vocabulary; default stop / tool calls
    refusal: str | None = None  # OpenAI: the message's `refusal` (streamed as `refusal` deltas)
    # OpenAI: an audio answer (`modalities: ["text", "audio"]`): this transcript in `message.audio`
    # with its sound (`audio_sound(transcript)`, base64), content null; streamed as transcript and
    # data deltas in turn, then the audio's `expires_at`.
    audio: str | None = None
    # OpenAI-compatible reasoning models: this reasoning text in `message[reasoning_field]`
    # (`reasoning_content`: DeepSeek, vLLM; `reasoning`: OpenRouter, Groq, Ollama), streamed as
    # `{reasoning_field: piece}` deltas (cut into `chunks`) before the content, whose deltas then
    # carry `reasoning_field: null` as DeepSeek's do.
    reasoning: str | None = None
    reasoning_field: str = "reasoning_content"
    # OpenAI: the answer's `annotations` (url citations): in `message.annotations` (chat) and on the
    # `output_text` part (Responses).
    annotations: tuple[dict[str, Any], ...] = ()
    # OpenAI-compatible extras outside the message: `top` fields of the answer (Perplexity's `citations`,
    # `search_results`), repeated on every stream chunk as Perplexity does; `choice_extras` fields of the
    # choice (vLLM's `stop_reason`), on its finish chunk in streams.
    top: dict[str, Any] = field(default_factory=dict)
    choice_extras: dict[str, Any] = field(default_factory=dict)
    # OpenAI: more choices (index 1, 2, ...) after the one this reply describes, each its own Reply
    # (text, tool_calls, refusal); streamed one choice after the other.
    choices: tuple[Reply, ...] = ()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Reply:
        """Build from JSON: keys as the fields; `tool_calls` as [{name, arguments, id?}]; `choices` as replies."""
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["tool_calls"] = tuple(ToolCall(**t) for t in data.get("tool_calls") or ())
        kwargs["choices"] = tuple(cls.from_dict(c) for c in data.get("choices") or ())
        kwargs["annotations"] = tuple(data.get("annotations") or ())
        return cls(**kwargs)



def sse(data: Any, event: str | None = None, eol: bytes = b"\n") -> bytes:
    """One server-sent event: an `event:` line when named, `data:` the JSON of `data` (bytes as they
    are, e.g. b"[DONE]"), a blank line. `eol` b"\r\n" for servers that end lines so (Gemini)."""
    payload = data if isinstance(data, bytes) else orjson.dumps(data)
    head = b"event: " + event.encode() + eol if event else b""
    return head + b"data: " + payload + eol + eol


def new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


def count_tokens(text: str) -> int:
    """A deterministic stand-in for a tokenizer: one token per word, at least one."""
    return max(1, len(text.split()))


def content_text(content: Any) -> str:
    """Text of an OpenAI or Anthropic message content (string or list of blocks)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(b.get("text", "") for b in content if isinstance(b, dict) and isinstance(b.get("text"), str))
    return ""


def split_text(text: str, n: int) -> list[str]:
    """Cut `text` into `n` consecutive pieces (fewer if shorter) whose join is `text`."""
    n = max(1, min(n, len(text))) if text else 1
    step, extra = divmod(len(text), n)
    pieces, pos = [], 0
    for i in range(n):
        end = pos + step + (1 if i < extra else 0)
        pieces.append(text[pos:end])
        pos = end
    return pieces


def fake_directive(body: Any) -> dict[str, Any] | None:
    """The `[[fake {...}]]` JSON object in the last user message, if any."""
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list):
        return None
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            text = content_text(message.get("content"))
            start = text.find(_DIRECTIVE)
            if start < 0:
                return None
            try:
                data, _ = json.JSONDecoder().raw_decode(text, start + len(_DIRECTIVE))
            except ValueError:
                return None
            return data if isinstance(data, dict) else None
    return None


def embedding(text: str, dims: int) -> list[float]:
    """A deterministic unit-ish vector derived from the text."""
    digest = hashlib.sha256(text.encode()).digest()
    while len(digest) < dims:
        digest += hashlib.sha256(digest).digest()
    return [round((b - 127.5) / 127.5, 6) for b in digest[:dims]]


def include_usage(body: dict[str, Any]) -> bool:
    """Whether an OpenAI stream request asks for the usage chunk (`stream_options.include_usage`)."""
    return bool((body.get("stream_options") or {}).get("include_usage"))


# -- response builders (shared by the Tornado handlers and the fast server) ---------------------


def audio_sound(transcript: str) -> str:
    """The fake's sound for an audio answer: base64 of a WAV-like header and the transcript's bytes."""
    return base64.b64encode(b"RIFF\x00\x00\x00\x00WAVE" + transcript.encode()).decode()


def token_logprobs(text: str) -> dict[str, Any]:
    """`logprobs` for `text` as OpenAI gives them (`logprobs: true`): a token a word, with its bytes."""
    tokens = re.findall(r"\S+\s*|\s+", text)
    return {"content": [{"token": t, "logprob": -0.25, "bytes": list(t.encode()),
                         "top_logprobs": [{"token": t, "logprob": -0.25, "bytes": list(t.encode())}]}
                        for t in tokens], "refusal": None}


def _openai_choice(index: int, reply: Reply, logprobs: bool = False) -> dict[str, Any]:
    finish = _STOP_OPENAI.get(reply.finish_reason or "", reply.finish_reason) or (
        "tool_calls" if reply.tool_calls else "stop")
    calls = [{"id": t.id or new_id("call_"), "type": "function",
              "function": {"name": t.name, "arguments": json.dumps(t.arguments)}} for t in reply.tool_calls]
    message: dict[str, Any] = {"role": "assistant", "content": reply.text if reply.text or not calls else None,
                               "refusal": reply.refusal}
    if reply.audio is not None:
        message["content"] = None
        message["audio"] = {"id": new_id("audio_"), "data": audio_sound(reply.audio),
                            "expires_at": int(time.time()) + 3600, "transcript": reply.audio}
    if reply.reasoning is not None:
        message[reply.reasoning_field] = reply.reasoning
    if reply.annotations:
        message["annotations"] = list(reply.annotations)
    if calls:
        message["tool_calls"] = calls
    return {"index": index, "message": message, "finish_reason": finish,
            "logprobs": token_logprobs(message["content"] or "") if logprobs else None, **reply.choice_extras}


def openai_completion(body: dict[str, Any], reply: Reply) -> dict[str, Any]:
    """The `chat.completion` object answering `body` with `reply` (and its further `choices`)."""
    prompt = count_tokens(" ".join(content_text(m.get("content")) for m in body["messages"]))
    replies = (reply, *reply.choices)
    completion = sum(count_tokens(r.text or "") + sum(count_tokens(json.dumps(t.arguments)) for t in r.tool_calls)
                     for r in replies)
    return {
        "id": new_id("chatcmpl-"), "object": "chat.completion", "created": int(time.time()), "model": body["model"],
        "choices": [_openai_choice(i, r, body.get("logprobs") is True) for i, r in enumerate(replies)],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
        "system_fingerprint": "fp_fake", **reply.top,
    }


_NOT_ON_CHUNKS = frozenset({"object", "choices", "usage", "prompt_filter_results"})
_CHOICE_OWN = frozenset({"index", "message", "finish_reason", "logprobs", "content_filter_results"})


def openai_events(completion: dict[str, Any], chunks: int, include_usage: bool) -> list[bytes]:
    """The SSE events streaming `completion`: per choice role, content (or refusal) pieces, tool calls,
    finish; then usage?, [DONE]."""
    base = {k: v for k, v in completion.items() if k not in _NOT_ON_CHUNKS}  # a `Reply.top` too, on every chunk
    base["object"] = "chat.completion.chunk"
    if include_usage:
        base["usage"] = None

    def chunk(index: int, delta: dict[str, Any], finish_reason: str | None = None, logprobs: Any = None,
              **extras: Any) -> bytes:
        return sse({**base, "choices": [{"index": index, "delta": delta, "logprobs": logprobs,
                                         "finish_reason": finish_reason, **extras}]})

    events = []
    for choice in completion["choices"]:
        i, message = choice["index"], choice["message"]
        events.append(chunk(i, {"role": "assistant", "content": "", "refusal": None}))
        thought = next(((k, v) for k, v in message.items() if k in ("reasoning_content", "reasoning")), None)
        if thought is not None:
            events += [chunk(i, {thought[0]: piece}) for piece in split_text(thought[1], chunks)]
        if message["content"]:
            after = {thought[0]: None} if thought is not None else {}
            events += [chunk(i, {"content": piece, **after}, logprobs=choice["logprobs"] and token_logprobs(piece))
                       for piece in split_text(message["content"], chunks)]
        if message.get("annotations"):
            events.append(chunk(i, {"annotations": message["annotations"]}))
        if message.get("refusal"):
            events += [chunk(i, {"refusal": piece}) for piece in split_text(message["refusal"], chunks)]
        if message.get("audio"):
            audio = message["audio"]
            pieces = itertools.zip_longest(split_text(audio["transcript"], chunks), split_text(audio["data"], chunks))
            for n, (words, sound) in enumerate(pieces):
                head = {"id": audio["id"]} if n == 0 else {}
                if words:
                    events.append(chunk(i, {"audio": {**head, "transcript": words}}))
                if sound:
                    events.append(chunk(i, {"audio": {"data": sound}}))
            events.append(chunk(i, {"audio": {"id": audio["id"], "expires_at": audio["expires_at"]}}))
        for index, call in enumerate(message.get("tool_calls", ())):
            head = {"index": index, "id": call["id"], "type": "function",
                    "function": {"name": call["function"]["name"], "arguments": ""}}
            events.append(chunk(i, {"tool_calls": [head]}))
            for piece in split_text(call["function"]["arguments"], chunks):
                events.append(chunk(i, {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}))
        extras = {k: v for k, v in choice.items() if k not in _CHOICE_OWN}  # a `Reply.choice_extras`
        events.append(chunk(i, {}, choice["finish_reason"], **extras))
    if include_usage:
        events.append(sse({**base, "choices": [], "usage": completion["usage"]}))
    events.append(sse(b"[DONE]"))
    return events


def anthropic_message(body: dict[str, Any], reply: Reply) -> dict[str, Any]:
    """The Anthropic `message` object answering `body` with `reply`."""
    texts = [content_text(m.get("content")) for m in body["messages"]] + [content_text(body.get("system"))]
    output = count_tokens(reply.text or "") + sum(count_tokens(json.dumps(t.arguments)) for t in reply.tool_calls)
    stop = _STOP_ANTHROPIC.get(reply.finish_reason or "", reply.finish_reason) or (
        "tool_use" if reply.tool_calls else "end_turn")
    blocks: list[dict[str, Any]] = [{"type": "text", "text": reply.text}] if reply.text else []
    blocks += [{"type": "tool_use", "id": t.id or new_id("toolu_"), "name": t.name, "input": t.arguments}
               for t in reply.tool_calls]
    return {"id": new_id("msg_"), "type": "message", "role": "assistant", "model": body["model"],
            "content": blocks, "stop_reason": stop, "stop_sequence": None,
            "usage": {"input_tokens": count_tokens(" ".join(texts)), "output_tokens": output}}


def anthropic_events(message: dict[str, Any], chunks: int) -> list[bytes]:
    """The SSE events streaming `message`: message_start, blocks (with a ping), message_delta, message_stop."""

    def event(name: str, data: dict[str, Any]) -> bytes:
        return sse({"type": name, **data}, name)

    usage = message["usage"]
    start = {**message, "content": [], "stop_reason": None,
             "usage": {"input_tokens": usage["input_tokens"], "output_tokens": 1}}
    events = [event("message_start", {"message": start})]
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            events.append(event("content_block_start", {"index": index, "content_block": {"type": "text", "text": ""}}))
            if index == 0:
                events.append(event("ping", {}))
            events += [event("content_block_delta", {"index": index, "delta": {"type": "text_delta", "text": p}})
                       for p in split_text(block["text"], chunks)]
        else:
            events.append(event("content_block_start", {"index": index, "content_block": {**block, "input": {}}}))
            events += [event("content_block_delta", {"index": index, "delta": {"type": "input_json_delta",
                                                                               "partial_json": p}})
                       for p in split_text(json.dumps(block["input"]), chunks)]
        events.append(event("content_block_stop", {"index": index}))
    events.append(event("message_delta", {"delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                                          "usage": {"output_tokens": usage["output_tokens"]}}))
    events.append(event("message_stop", {}))
    return events



# -- the Responses API (`POST /v1/responses`) ------------------------------------------------------

RESPONSES_FIELDS = frozenset({
    "model", "input", "instructions", "tools", "tool_choice", "text", "max_output_tokens", "temperature", "top_p",
    "parallel_tool_calls", "reasoning", "user", "safety_identifier", "service_tier", "stream", "store", "background",
    "previous_response_id", "conversation", "prompt", "metadata", "include", "truncation", "prompt_cache_key",
    "top_logprobs", "stream_options", "max_tool_calls",
})  # fmt: skip


def check_responses(body: Any) -> dict[str, Any]:
    """Validate a Responses request as OpenAI does (unknown parameters, model, input); ApiError otherwise."""
    body = check_json_object(body)
    for name in body:
        if name not in RESPONSES_FIELDS:
            raise ApiError(400, f"Unknown parameter: '{name}'.", param=name, code="unknown_parameter")
    if not isinstance(body.get("model"), str):
        raise ApiError(400, "Missing required parameter: 'model'.", param="model", code="missing_required_parameter")
    items = body.get("input")
    if not isinstance(items, str | list):
        raise ApiError(400, "Invalid type for 'input': expected one of a string or array of input items.",
                       param="input", code="invalid_type")
    for i, item in enumerate(items if isinstance(items, list) else ()):
        kind = item.get("type", "message") if isinstance(item, dict) else None
        if kind not in ("message", "function_call", "function_call_output", "reasoning", "item_reference"):
            raise ApiError(400, f"Invalid value: '{kind}'.", param=f"input[{i}].type", code="invalid_value")
    return body


def _responses_input_text(body: dict[str, Any]) -> str:
    items = body["input"]
    texts = [items] if isinstance(items, str) else [
        content_text([{"text": p.get("text", "")} for p in item["content"] if isinstance(p, dict)])
        if isinstance(item.get("content"), list) else str(item.get("content") or item.get("output") or "")
        for item in items]
    return " ".join([body.get("instructions") or "", *texts])


def responses_response(body: dict[str, Any], reply: Reply) -> dict[str, Any]:
    """The Response object answering `body` with `reply` (a message item, then function_call items)."""
    output: list[dict[str, Any]] = []
    content: list[dict[str, Any]] = []
    if reply.text:
        content.append({"type": "output_text", "annotations": list(reply.annotations), "logprobs": [],
                        "text": reply.text})
    if reply.refusal:
        content.append({"type": "refusal", "refusal": reply.refusal})
    if content:
        output.append({"id": new_id("msg_"), "type": "message", "status": "completed", "content": content,
                       "role": "assistant"})
    output += [{"id": new_id("fc_"), "type": "function_call", "status": "completed",
                "arguments": json.dumps(t.arguments), "call_id": t.id or new_id("call_"), "name": t.name}
               for t in reply.tool_calls]
    prompt = count_tokens(_responses_input_text(body))
    completion = count_tokens(reply.text or "") + sum(count_tokens(json.dumps(t.arguments)) for t in reply.tool_calls)
    incomplete = reply.finish_reason in ("length", "max_output_tokens")
    return {
        "id": new_id("resp_"), "object": "response", "created_at": int(time.time()),
        "status": "incomplete" if incomplete else "completed", "background": False, "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": None, "model": body["model"] + "-2024-07-18", "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True), "previous_response_id": None,
        "prompt_cache_key": None, "reasoning": {"effort": None, "summary": None}, "safety_identifier": None,
        "service_tier": "default", "store": body.get("store", True), "temperature": 1.0,
        "text": {"format": {"type": "text"}, "verbosity": "medium"}, "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [], "top_logprobs": 0, "top_p": 1.0, "truncation": "disabled",
        "usage": {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": completion,
                  "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": prompt + completion},
        "user": None, "metadata": body.get("metadata") or {},
    }


def responses_events(response: dict[str, Any], chunks: int) -> list[bytes]:
    """The typed SSE events streaming `response` as OpenAI sends them (`event:` line, `sequence_number`)."""
    events: list[bytes] = []

    def event(kind: str, **data: Any) -> None:
        payload = {"type": kind, "sequence_number": len(events), **data}
        events.append(sse(payload, kind))

    start = {**response, "status": "in_progress", "output": [], "usage": None, "incomplete_details": None}
    event("response.created", response=start)
    event("response.in_progress", response=start)
    for index, item in enumerate(response["output"]):
        if item["type"] == "message":
            event("response.output_item.added", output_index=index,
                  item={**item, "status": "in_progress", "content": []})
            for part_index, part in enumerate(item["content"]):
                ids = {"item_id": item["id"], "output_index": index, "content_index": part_index}
                key = "text" if part["type"] == "output_text" else "refusal"
                event("response.content_part.added", **ids,
                      part={**part, key: "", **({"annotations": []} if key == "text" else {})})
                for piece in split_text(part[key], chunks):
                    if key == "text":
                        event("response.output_text.delta", **ids, delta=piece, logprobs=[], obfuscation="x")
                    else:
                        event("response.refusal.delta", **ids, delta=piece)
                for n, annotation in enumerate(part.get("annotations") or ()):
                    event("response.output_text.annotation.added", **ids, annotation_index=n, annotation=annotation)
                if key == "text":
                    event("response.output_text.done", **ids, text=part["text"], logprobs=[])
                else:
                    event("response.refusal.done", **ids, refusal=part["refusal"])
                event("response.content_part.done", **ids, part=part)
        else:
            event("response.output_item.added", output_index=index,
                  item={**item, "status": "in_progress", "arguments": ""})
            for piece in split_text(item["arguments"], chunks):
                event("response.function_call_arguments.delta", item_id=item["id"], output_index=index, delta=piece,
                      obfuscation="x")
            event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                  arguments=item["arguments"])
        event("response.output_item.done", output_index=index, item=item)
    event(f"response.{response['status']}", response=response)
    return events


class ApiError(Exception):
    """An error answered in the provider's envelope."""

    def __init__(self, status: int, message: str, kind: str = "", param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code


_OPENAI_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "invalid_request_error",
                 404: "invalid_request_error", 429: "requests"}
_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                    529: "overloaded_error"}
DEFAULT_MESSAGES = {
    429: "Rate limit reached for requests. Please try again later.",
    500: "The server had an error while processing your request. Sorry about that!",
    502: "Bad gateway.",
    503: "The engine is currently overloaded, please try again later.",
    529: "Overloaded",
}


def openai_error(err: ApiError) -> dict[str, Any]:
    """OpenAI's error envelope."""
    kind = err.kind or _OPENAI_TYPES.get(err.status, "server_error")
    return {"error": {"message": err.message, "type": kind, "param": err.param, "code": err.code}}


def anthropic_error(err: ApiError, request_id: str | None = None) -> dict[str, Any]:
    """Anthropic's error envelope."""
    kind = err.kind if err.kind and err.kind != "requests" else _ANTHROPIC_TYPES.get(err.status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": err.message}, "request_id": request_id}


# -- request checks ---------------------------------------------------------------------------


def check_json_object(body: Any) -> dict[str, Any]:
    """The parsed body if it is a JSON object; OpenAI's 400 otherwise."""
    if not isinstance(body, dict):
        raise ApiError(400, "We could not parse the JSON body of your request. (HINT: This likely means you "
                       "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but "
                       "what was sent was not valid JSON.)")
    return body


def check_openai_chat(body: Any) -> dict[str, Any]:
    """Validate a chat completion request as OpenAI does; ApiError otherwise."""
    body = check_json_object(body)
    if "model" not in body:
        raise ApiError(400, "you must provide a model parameter")
    if not isinstance(body["model"], str):
        raise ApiError(400, f"Invalid type for 'model': expected a string, but got {type(body['model']).__name__}"
                       " instead.", param="model", code="invalid_type")
    if "messages" not in body:
        raise ApiError(400, "Missing required parameter: 'messages'.", param="messages",
                       code="missing_required_parameter")
    messages = body["messages"]
    if not isinstance(messages, list):
        raise ApiError(400, "Invalid type for 'messages': expected an array of objects.", param="messages",
                       code="invalid_type")
    if not messages:
        raise ApiError(400, "Invalid 'messages': empty array. Expected an array with minimum length 1, but got "
                       "an empty array instead.", param="messages", code="empty_array")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ApiError(400, f"Invalid type for 'messages[{i}]': expected an object.",
                           param=f"messages[{i}]", code="invalid_type")
        if m.get("role") not in OPENAI_ROLES:
            raise ApiError(400, f"Invalid value: '{m.get('role')}'. Supported values are: 'system', 'assistant',"
                           " 'user', 'function', 'tool', and 'developer'.", param=f"messages[{i}].role",
                           code="invalid_value")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise ApiError(400, "Invalid type for 'stream': expected a boolean.", param="stream",
                       code="invalid_type")
    return body


def check_anthropic(body: Any, has_version: bool) -> dict[str, Any]:
    """Validate a messages request as Anthropic does; ApiError otherwise."""
    if not has_version:
        raise ApiError(400, "anthropic-version: header is required")
    if not isinstance(body, dict):
        raise ApiError(400, "There was an error parsing the body of your request. Please check that it is "
                       "valid JSON.")
    for name in ("model", "messages", "max_tokens"):
        if name not in body:
            raise ApiError(400, f"{name}: Field required")
    if not isinstance(body["max_tokens"], int) or isinstance(body["max_tokens"], bool) or body["max_tokens"] < 1:
        raise ApiError(400, "max_tokens: Input should be a valid integer greater than or equal to 1")
    if not isinstance(body["messages"], list):
        raise ApiError(400, "messages: Input should be a valid list")
    for i, m in enumerate(body["messages"]):
        role = m.get("role") if isinstance(m, dict) else None
        if role == "system":
            raise ApiError(400, 'messages: Unexpected role "system". The Messages API accepts a top-level '
                           '`system` parameter, not "system" as an input message role.')
        if role not in ("user", "assistant"):
            raise ApiError(400, f"messages.{i}.role: Input should be 'user' or 'assistant'")
        if "content" not in m:
            raise ApiError(400, f"messages.{i}.content: Field required")
    return body
