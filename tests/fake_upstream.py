"""The test upstream: a local LLM provider speaking the OpenAI and Anthropic wire formats.

The only fake kt's tests and benchmarks allow. It answers like the real APIs (JSON and SSE,
OpenAI's chat completions and Responses (`POST /v1/responses`, typed SSE events), embeddings,
usage, their validation errors and error envelopes), records every request it received, and
injects faults on demand.

In-process::

    fake = FakeUpstream("Hello!").start()          # background thread, own IOLoop, free port
    fake.queue_reply(text="two words", chunks=2)    # the next chat/messages request gets this
    fake.add_fault("status", status=503)            # the next request gets a 503
    fake.requests[-1].body                          # what the gateway forwarded
    fake.stop()

As a process: ``python -m tests.fake_upstream --port 8089``; then drive it over HTTP:
``GET /_fake/requests``, ``POST /_fake/reset``, ``POST /_fake/faults {"faults": [...]}``,
``POST /_fake/replies {"replies": [...], "default": {...}}``.

Per request, a reply is chosen in this order: ``X-Fake-*`` headers (``X-Fake-Reply``,
``X-Fake-Chunks``, ``X-Fake-Chunk-Delay-Ms``, ``X-Fake-First-Byte-Delay-Ms``,
``X-Fake-Tool-Calls`` (JSON list), ``X-Fake-Fault`` (JSON object or a kind)), then a
directive in the last user message, ``[[fake {"text": "...", "chunks": 4, "fault": {...}}]]``,
then the queued replies, then the default. Faults: ``status`` (any code; 429 carries
Retry-After), ``slow`` (delay before the first byte), ``disconnect`` (cut the connection after
``after_chunks`` stream events, or mid-body), ``malformed`` (invalid JSON / SSE data), ``hang``
(never answer).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import hashlib
import itertools
import json
import re
import struct
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import orjson
import tornado.httpserver
import tornado.ioloop
import tornado.netutil
import tornado.web

DEFAULT_TEXT = "Hello from the fake upstream."
DEFAULT_MODELS = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "claude-3-5-haiku-latest")
FAULT_KINDS = ("status", "slow", "disconnect", "malformed", "hang")
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
        return cls(**kwargs)


@dataclass(frozen=True)
class Fault:
    """A failure applied to one request (optionally only to requests for `path`)."""

    kind: str  # one of FAULT_KINDS
    status: int = 500
    retry_after: float | None = None  # 429 defaults to 1 second
    delay: float = 0.0  # slow: seconds before the first byte; hang: 0 = until the client leaves
    after_chunks: int = 1  # disconnect: stream events sent before the cut
    message: str | None = None
    path: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; use one of {', '.join(FAULT_KINDS)}")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | str) -> Fault:
        if isinstance(data, str):
            return cls(kind=data)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake received it."""

    method: str
    path: str
    query: str
    headers: dict[str, str]  # lower-cased names
    body: Any  # parsed JSON, or None when absent or not JSON
    raw: bytes
    at: float

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("raw")
        return data


class FakeUpstream:
    """The fake provider: state (replies, faults, recorded requests) and its Tornado app."""

    def __init__(
        self,
        default_text: str = DEFAULT_TEXT,
        *,
        models: tuple[str, ...] = DEFAULT_MODELS,
        api_key: str | None = None,
        require_key: bool = True,
        record: bool = True,
        max_recorded: int = 10_000,
    ) -> None:
        self.default = Reply(text=default_text)
        self.models = models
        self.api_key = api_key  # when set, any other key gets 401
        self.require_key = require_key  # like the real APIs: no key at all gets 401
        self.record = record
        self._recorded: collections.deque[RecordedRequest] = collections.deque(maxlen=max_recorded)
        self._faults: list[Fault] = []
        self._replies: collections.deque[Reply] = collections.deque()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: tornado.ioloop.IOLoop | None = None
        self._server: tornado.httpserver.HTTPServer | None = None
        self.port = 0

    # -- control -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL without the /v1 (Anthropic SDK style)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """Base URL with /v1 (OpenAI SDK style)."""
        return self.url + "/v1"

    @property
    def requests(self) -> list[RecordedRequest]:
        """Requests received so far (the control API's own excluded), oldest first."""
        return list(self._recorded)

    def requests_to(self, path: str) -> list[RecordedRequest]:
        return [r for r in self._recorded if r.path == path]

    def add_fault(self, fault: Fault | str, times: int = 1, **kwargs: Any) -> None:
        """Apply `fault` (or Fault(kind=fault, **kwargs)) to the next `times` matching requests."""
        if isinstance(fault, str):
            fault = Fault(kind=fault, **kwargs)
        with self._lock:
            self._faults.extend([fault] * times)

    def queue_reply(self, reply: Reply | str | None = None, times: int = 1, **kwargs: Any) -> None:
        """Answer the next `times` chat/messages requests with `reply` (or Reply(text=reply, **kwargs))."""
        if not isinstance(reply, Reply):
            reply = Reply(text=reply, **kwargs)
        with self._lock:
            self._replies.extend([reply] * times)

    def set_default(self, reply: Reply | str | None = None, **kwargs: Any) -> None:
        """Change the reply used when nothing else was asked for."""
        self.default = reply if isinstance(reply, Reply) else replace(self.default, text=reply, **kwargs)

    def reset(self) -> None:
        """Forget recorded requests, pending faults and queued replies."""
        with self._lock:
            self._recorded.clear()
            self._faults.clear()
            self._replies.clear()

    def _take_fault(self, path: str) -> Fault | None:
        with self._lock:
            for i, fault in enumerate(self._faults):
                if fault.path is None or fault.path == path:
                    return self._faults.pop(i)
        return None

    def _take_reply(self) -> Reply | None:
        with self._lock:
            return self._replies.popleft() if self._replies else None

    # -- serving -------------------------------------------------------------------------------

    def routes(self) -> list[tuple[str, type[tornado.web.RequestHandler]]]:
        """The provider's API: (path pattern, handler) in match order. A fake of another provider overrides this."""
        return [
            (r"/v1/chat/completions", ChatCompletions),
            (r"/v1/embeddings", Embeddings),
            (r"/v1/responses", Responses),
            (r"/v1/models", Models),
            (r"/v1/messages", Messages),
            (r"/v1/.*", NotFound),
        ]

    def app(self) -> tornado.web.Application:
        """The control API (`/_fake/...`, matched first) and the provider's `routes()`."""
        control = [(r"/_fake/requests", ControlRequests), (r"/_fake/reset", ControlReset),
                   (r"/_fake/faults", ControlFaults), (r"/_fake/replies", ControlReplies)]
        kw = {"fake": self}
        return tornado.web.Application([(path, handler, kw) for path, handler in [*control, *self.routes()]],
                                       log_function=lambda handler: None)

    def listen(self, port: int = 0, host: str = "127.0.0.1") -> tornado.httpserver.HTTPServer:
        """Serve on the current IOLoop (for a process of its own)."""
        sockets = tornado.netutil.bind_sockets(port, host)
        self.port = sockets[0].getsockname()[1]
        self._server = tornado.httpserver.HTTPServer(self.app())
        self._server.add_sockets(sockets)
        return self._server

    def start(self, port: int = 0, host: str = "127.0.0.1") -> FakeUpstream:
        """Serve from a background thread with its own event loop; returns once listening."""
        sockets = tornado.netutil.bind_sockets(port, host)  # bound and listening before we return
        self.port = sockets[0].getsockname()[1]
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = tornado.ioloop.IOLoop.current()
            self._server = tornado.httpserver.HTTPServer(self.app())
            self._server.add_sockets(sockets)
            ready.set()
            try:
                loop.run_forever()
            finally:
                for task in asyncio.all_tasks(loop):
                    task.cancel()
                loop.run_until_complete(asyncio.sleep(0))
                loop.close()

        self._thread = threading.Thread(target=run, name=f"fake-upstream-{self.port}", daemon=True)
        self._thread.start()
        ready.wait(5)
        return self

    def stop(self) -> None:
        """Stop serving, drop open connections (also hanging ones) and join the thread."""
        if self._loop is None or self._thread is None:
            return

        async def shutdown() -> None:
            assert self._server is not None
            self._server.stop()
            await self._server.close_all_connections()
            asyncio.get_running_loop().stop()

        self._loop.add_callback(shutdown)
        self._thread.join(10)
        self._loop = self._thread = None

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- wire helpers ------------------------------------------------------------------------------


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


def _directive(body: Any) -> dict[str, Any] | None:
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


def _embedding(text: str, dims: int) -> list[float]:
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
    if calls:
        message["tool_calls"] = calls
    return {"index": index, "message": message, "finish_reason": finish,
            "logprobs": token_logprobs(message["content"] or "") if logprobs else None}


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
        "system_fingerprint": "fp_fake",
    }


def openai_events(completion: dict[str, Any], chunks: int, include_usage: bool) -> list[bytes]:
    """The SSE events streaming `completion`: per choice role, content (or refusal) pieces, tool calls,
    finish; then usage?, [DONE]."""
    base = {k: completion[k] for k in ("id", "created", "model", "system_fingerprint")}
    base["object"] = "chat.completion.chunk"
    if include_usage:
        base["usage"] = None

    def chunk(index: int, delta: dict[str, Any], finish_reason: str | None = None, logprobs: Any = None) -> bytes:
        return sse({**base, "choices": [{"index": index, "delta": delta, "logprobs": logprobs,
                                         "finish_reason": finish_reason}]})

    events = []
    for choice in completion["choices"]:
        i, message = choice["index"], choice["message"]
        events.append(chunk(i, {"role": "assistant", "content": "", "refusal": None}))
        if message["content"]:
            events += [chunk(i, {"content": piece}, logprobs=choice["logprobs"] and token_logprobs(piece))
                       for piece in split_text(message["content"], chunks)]
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
        events.append(chunk(i, {}, choice["finish_reason"]))
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
        content.append({"type": "output_text", "annotations": [], "logprobs": [], "text": reply.text})
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
                event("response.content_part.added", **ids, part={**part, key: ""})
                for piece in split_text(part[key], chunks):
                    if key == "text":
                        event("response.output_text.delta", **ids, delta=piece, logprobs=[], obfuscation="x")
                    else:
                        event("response.refusal.delta", **ids, delta=piece)
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
_DEFAULT_MESSAGES = {
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


# -- handlers ----------------------------------------------------------------------------------


class ProviderHandler(tornado.web.RequestHandler):
    """Shared behaviour: record, auth, faults, error envelopes."""

    flavor = "openai"
    fake: FakeUpstream

    def initialize(self, fake: FakeUpstream) -> None:
        self.fake = fake
        self.body: Any = None
        self.fault: Fault | None = None
        self.closed = asyncio.Event()

    def on_connection_close(self) -> None:
        self.closed.set()

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.clear_header("Server")

    async def prepare(self) -> None:
        raw = self.request.body
        if raw:
            try:
                self.body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                self.body = None
        if self.fake.record:
            headers = {k.lower(): v for k, v in self.request.headers.items()}
            self.fake._recorded.append(
                RecordedRequest(self.request.method or "", self.request.path, self.request.query,
                                headers, self.body, raw, time.time()))
        self.fault = self._header_fault() or self._directive_fault() or self.fake._take_fault(self.request.path)
        try:
            self.authenticate()
        except ApiError as err:
            self.send_api_error(err)
            return
        if self.fault and self.fault.kind in ("slow", "hang"):
            await self.apply_wait_fault(self.fault)

    def _header_fault(self) -> Fault | None:
        value = self.request.headers.get("X-Fake-Fault")
        if not value:
            return None
        return Fault.from_dict(json.loads(value) if value.lstrip().startswith("{") else value.strip())

    def _directive_fault(self) -> Fault | None:
        data = _directive(self.body)
        return Fault.from_dict(data["fault"]) if data and data.get("fault") else None

    async def apply_wait_fault(self, fault: Fault) -> None:
        if fault.kind == "slow":
            await asyncio.sleep(fault.delay)
            return
        with contextlib.suppress(TimeoutError):  # hang: until the client leaves, the server stops, or `delay` s
            await asyncio.wait_for(self.closed.wait(), fault.delay or None)
        if not self._finished:
            self.request.connection.close()
            self._finished = True

    def authenticate(self) -> None:
        auth = self.request.headers.get("Authorization", "")
        key = auth[7:] if auth.startswith("Bearer ") else ""
        if not key and self.fake.require_key:
            raise ApiError(401, "You didn't provide an API key. You need to provide your API key in an Authorization "
                           "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")
        if self.fake.api_key is not None and key != self.fake.api_key:
            raise ApiError(401, f"Incorrect API key provided: {key[:3]}***. You can find your API key at "
                           "https://platform.openai.com/account/api-keys.", code="invalid_api_key")

    def send_api_error(self, err: ApiError, retry_after: float | None = None) -> None:
        self.set_status(err.status)
        if retry_after is not None:
            self.set_header("Retry-After", f"{retry_after:g}")
            self.set_header("retry-after-ms", str(int(retry_after * 1000)))
        self.finish(orjson.dumps(self.error_body(err)))

    def error_body(self, err: ApiError) -> dict[str, Any]:
        return openai_error(err)

    def status_fault(self, fault: Fault) -> None:
        """Answer the fault's status code in the provider's error envelope."""
        retry_after = fault.retry_after if fault.retry_after is not None else (1 if fault.status == 429 else None)
        code = "rate_limit_exceeded" if fault.status == 429 and self.flavor == "openai" else None
        message = fault.message or _DEFAULT_MESSAGES.get(fault.status, f"Fake upstream error {fault.status}.")
        self.send_api_error(ApiError(fault.status, message, code=code), retry_after)

    def body_fault(self) -> bool:
        """Apply a status/malformed/non-stream disconnect fault; True if the request is answered."""
        fault = self.fault
        if fault is None:
            return False
        if fault.kind == "status":
            self.status_fault(fault)
            return True
        if fault.kind == "malformed" and not self.wants_stream():
            self.finish(b'{"id": "broken", "object": "chat.completion", "choices": [{"index": 0, "mess')
            return True
        return False

    def wants_stream(self) -> bool:
        return isinstance(self.body, dict) and self.body.get("stream") is True

    def checked(self, check: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        """The request body as `check` returns it; None once the request is answered: `check`'s
        ApiError in the provider's envelope, or a status/malformed fault."""
        try:
            body = check()
        except ApiError as err:
            self.send_api_error(err)
            return None
        return None if self.body_fault() else body

    def json_object(self) -> dict[str, Any]:
        return check_json_object(self.body)

    async def send_json(self, payload: dict[str, Any], delay: float = 0.0) -> None:
        """Finish with a JSON body after `delay` seconds (a reply's first-byte delay), honouring a
        non-stream disconnect fault."""
        if delay:
            await asyncio.sleep(delay)
        data = orjson.dumps(payload)
        if self.fault and self.fault.kind == "disconnect":
            self.set_header("Content-Length", str(len(data)))
            self.write(data[: len(data) // 2])
            await self.flush()
            self.request.connection.close()
            self._finished = True
            return
        self.finish(data)

    def reply_for(self, body: dict[str, Any]) -> Reply:
        """The reply asked for by header, directive, queue, or the default."""
        h = self.request.headers
        directive = _directive(body)
        reply = Reply.from_dict(directive) if directive else self.fake._take_reply() or self.fake.default
        if "X-Fake-Reply" in h:
            reply = replace(reply, text=h["X-Fake-Reply"])
        if "X-Fake-Chunks" in h:
            reply = replace(reply, chunks=int(h["X-Fake-Chunks"]))
        if "X-Fake-Chunk-Delay-Ms" in h:
            reply = replace(reply, chunk_delay=float(h["X-Fake-Chunk-Delay-Ms"]) / 1000)
        if "X-Fake-First-Byte-Delay-Ms" in h:
            reply = replace(reply, first_byte_delay=float(h["X-Fake-First-Byte-Delay-Ms"]) / 1000)
        if "X-Fake-Tool-Calls" in h:
            reply = Reply.from_dict({**asdict(reply), "tool_calls": json.loads(h["X-Fake-Tool-Calls"])})
        if reply.text is None:
            reply = replace(reply, text="" if reply.tool_calls else self.fake.default.text or "")
        return reply

    async def send_stream(self, events: list[bytes], reply: Reply, content_type: str = SSE_TYPE) -> None:
        """Stream `events` (SSE, or the provider's framing) one by one, flushing each, with the
        reply's timing (first-byte and between-event delays) and the stream faults."""
        self.set_header("Content-Type", content_type)
        self.set_header("Cache-Control", "no-cache")
        if reply.first_byte_delay:
            await asyncio.sleep(reply.first_byte_delay)
        fault = self.fault
        for i, event in enumerate(events):
            if fault and fault.kind == "disconnect" and i >= fault.after_chunks:
                self.request.connection.close()
                self._finished = True
                return
            if fault and fault.kind == "malformed" and i == min(fault.after_chunks, len(events) - 1):
                self.write(b'data: {"id": "broken", "choices": [{"delta": {"content": "x"\n\n')
                self.finish()
                return
            if i and reply.chunk_delay:
                await asyncio.sleep(reply.chunk_delay)
            self.write(event)
            await self.flush()
            if self.closed.is_set():
                return
        self.finish()


class ChatCompletions(ProviderHandler):
    """OpenAI `POST /v1/chat/completions`."""

    async def post(self) -> None:
        body = self.checked(self.validate)
        if body is None:
            return
        reply = self.reply_for(body)
        completion = openai_completion(body, reply)
        if not self.wants_stream():
            await self.send_json(completion, reply.first_byte_delay)
            return
        await self.send_stream(openai_events(completion, reply.chunks, include_usage(body)), reply)

    def validate(self) -> dict[str, Any]:
        return check_openai_chat(self.body)


class Responses(ProviderHandler):
    """OpenAI `POST /v1/responses` (the Responses API: a Response object, or its typed SSE events)."""

    async def post(self) -> None:
        body = self.checked(lambda: check_responses(self.body))
        if body is None:
            return
        reply = self.reply_for(body)
        response = responses_response(body, reply)
        if not self.wants_stream():
            await self.send_json(response, reply.first_byte_delay)
            return
        await self.send_stream(responses_events(response, reply.chunks), reply)


class Embeddings(ProviderHandler):
    """OpenAI `POST /v1/embeddings` (float or base64 encoding)."""

    inputs: list[Any]  # the body's `input` as a list, once validated

    def validate(self) -> dict[str, Any]:
        body = self.json_object()
        for name in ("model", "input"):
            if name not in body:
                raise ApiError(400, f"Missing required parameter: '{name}'.", param=name,
                               code="missing_required_parameter")
        inputs = body["input"]
        if isinstance(inputs, str) or (isinstance(inputs, list) and inputs and isinstance(inputs[0], int)):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs:
            raise ApiError(400, "'input' : input must be a string, an array of strings, or an array of tokens.",
                           param="input")
        self.inputs = inputs
        return body

    async def post(self) -> None:
        body = self.checked(self.validate)
        if body is None:
            return
        inputs = self.inputs
        dims = int(body.get("dimensions") or 8)
        data, tokens = [], 0
        for i, item in enumerate(inputs):
            text = item if isinstance(item, str) else " ".join(map(str, item))
            tokens += count_tokens(text)
            vector: Any = _embedding(text, dims)
            if body.get("encoding_format") == "base64":
                vector = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
            data.append({"object": "embedding", "index": i, "embedding": vector})
        await self.send_json({"object": "list", "data": data, "model": body["model"],
                              "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


class Models(ProviderHandler):
    """`GET /v1/models`, in Anthropic's shape when `anthropic-version` is sent, else OpenAI's."""

    def prepare(self) -> Any:
        if "anthropic-version" in self.request.headers:
            self.flavor = "anthropic"
        return super().prepare()

    def authenticate(self) -> None:
        if self.flavor == "anthropic":
            Messages.authenticate(self)  # type: ignore[arg-type]
        else:
            super().authenticate()

    def error_body(self, err: ApiError) -> dict[str, Any]:
        return Messages.error_body(self, err) if self.flavor == "anthropic" else super().error_body(err)  # type: ignore[arg-type]

    async def get(self) -> None:
        if self.body_fault():
            return
        if self.flavor == "anthropic":
            data = [{"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"}
                    for m in self.fake.models]
            await self.send_json({"data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
                                  "last_id": data[-1]["id"] if data else None})
            return
        data = [{"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "fake-upstream"}
                for m in self.fake.models]
        await self.send_json({"object": "list", "data": data})


class Messages(ProviderHandler):
    """Anthropic `POST /v1/messages`."""

    flavor = "anthropic"

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("request-id", new_id("req_"))

    def authenticate(self) -> None:
        key = self.request.headers.get("x-api-key", "")
        auth = self.request.headers.get("Authorization", "")
        key = key or (auth[7:] if auth.startswith("Bearer ") else "")
        if not key and self.fake.require_key:
            raise ApiError(401, "x-api-key header is required", "authentication_error")
        if self.fake.api_key is not None and key != self.fake.api_key:
            raise ApiError(401, "invalid x-api-key", "authentication_error")

    def error_body(self, err: ApiError) -> dict[str, Any]:
        return anthropic_error(err, self._headers.get("request-id"))

    def validate(self) -> dict[str, Any]:
        return check_anthropic(self.body, "anthropic-version" in self.request.headers)

    async def post(self) -> None:
        body = self.checked(self.validate)
        if body is None:
            return
        reply = self.reply_for(body)
        message = anthropic_message(body, reply)
        if not self.wants_stream():
            await self.send_json(message, reply.first_byte_delay)
            return
        await self.send_stream(anthropic_events(message, reply.chunks), reply)


class NotFound(ProviderHandler):
    """Any other /v1 path: the OpenAI 404 envelope."""

    def authenticate(self) -> None:
        pass

    def _not_found(self) -> None:
        self.send_api_error(ApiError(404, f"Invalid URL ({self.request.method} {self.request.path})"))

    get = post = put = delete = patch = _not_found  # type: ignore[assignment]


class _Control(tornado.web.RequestHandler):
    """The fake's own control API (not recorded, never faulted)."""

    def initialize(self, fake: FakeUpstream) -> None:
        self.fake = fake

    def json_body(self) -> dict[str, Any]:
        return orjson.loads(self.request.body or b"{}")


class ControlRequests(_Control):
    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(orjson.dumps({"requests": [r.to_json() for r in self.fake.requests]}))


class ControlReset(_Control):
    def post(self) -> None:
        self.fake.reset()
        self.set_status(204)


class ControlFaults(_Control):
    def post(self) -> None:
        for item in self.json_body().get("faults", []):
            times = item.pop("times", 1) if isinstance(item, dict) else 1
            self.fake.add_fault(Fault.from_dict(item), times)
        self.set_status(204)


class ControlReplies(_Control):
    def post(self) -> None:
        data = self.json_body()
        if "default" in data:
            self.fake.set_default(Reply.from_dict(data["default"]))
        for item in data.get("replies", []):
            self.fake.queue_reply(Reply.from_dict(item), item.get("times", 1))
        self.set_status(204)


# -- the fast server (benchmarks) --------------------------------------------------------------


class FastProtocol(asyncio.Protocol):
    """A bare HTTP/1.1 keep-alive server giving the same answers without Tornado's per-request cost.

    For benchmarks, where the upstream must be several times faster than the gateway under test:
    chat completions and messages (JSON and SSE, validation errors), models; the default reply or
    a `[[fake ...]]` directive. No recording, no faults, no chunked request bodies.
    """

    def __init__(self, fake: FakeUpstream) -> None:
        self.fake = fake
        self.buf = bytearray()
        self.transport: Any = None
        self.tasks: set[asyncio.Future[None]] = set()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while (end := buf.find(b"\r\n\r\n")) >= 0:
            lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
            size = end + 4 + int(headers.get("content-length") or 0)
            if len(buf) < size:
                return
            body = bytes(buf[end + 4 : size])
            del buf[:size]
            method, target, _ = lines[0].split(" ", 2)
            self.handle(method, target.split("?", 1)[0], headers, body)

    def handle(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> None:
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        anthropic = path == "/v1/messages"
        try:
            if path == "/v1/models" and method == "GET":
                data = [{"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "fake-upstream"}
                        for m in self.fake.models]
                self.send(200, orjson.dumps({"object": "list", "data": data}))
                return
            if method != "POST" or path not in ("/v1/chat/completions", "/v1/messages"):
                raise ApiError(404, f"Invalid URL ({method} {path})")
            body = check_anthropic(body, "anthropic-version" in headers) if anthropic else check_openai_chat(body)
        except ApiError as err:
            self.send(err.status, orjson.dumps(anthropic_error(err) if anthropic else openai_error(err)))
            return
        directive = _directive(body)
        reply = Reply.from_dict(directive) if directive else self.fake.default
        if reply.text is None:
            reply = replace(reply, text=self.fake.default.text or "")
        if anthropic:
            message = anthropic_message(body, reply)
            events = anthropic_events(message, reply.chunks) if body.get("stream") is True else None
        else:
            message = openai_completion(body, reply)
            events = openai_events(message, reply.chunks, include_usage(body)) if body.get("stream") is True else None
        if events is None and not reply.first_byte_delay:
            self.send(200, orjson.dumps(message))
        else:
            task = asyncio.ensure_future(self.send_slowly(message, events, reply))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    def send(self, status: int, body: bytes) -> None:
        reason = {200: b"OK", 400: b"Bad Request", 404: b"Not Found"}.get(status, b"Error")
        self.transport.write(b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                             % (status, reason, len(body), body))

    async def send_slowly(self, message: dict[str, Any], events: list[bytes] | None, reply: Reply) -> None:
        if reply.first_byte_delay:
            await asyncio.sleep(reply.first_byte_delay)
        if events is None:
            self.send(200, orjson.dumps(message))
            return
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
                             b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i, event in enumerate(events):
            if i and reply.chunk_delay:
                await asyncio.sleep(reply.chunk_delay)
            self.transport.write(b"%x\r\n%s\r\n" % (len(event), event))  # one write per event, as a flush
        self.transport.write(b"0\r\n\r\n")


async def serve_fast(fake: FakeUpstream, port: int = 0, host: str = "127.0.0.1") -> asyncio.Server:
    """Serve `fake` with the FastProtocol on the running loop."""
    return await asyncio.get_running_loop().create_server(lambda: FastProtocol(fake), host, port)


def main(argv: list[str] | None = None) -> None:
    """Run the fake upstream as a process of its own."""
    parser = argparse.ArgumentParser(prog="python -m tests.fake_upstream", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on stdout)")
    parser.add_argument("--text", default=DEFAULT_TEXT, help="default reply text")
    parser.add_argument("--chunks", type=int, default=3, help="stream content events per reply")
    parser.add_argument("--api-key", default=None, help="accept only this key (default: any non-empty key)")
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0, help="delay between stream events")
    parser.add_argument("--first-byte-delay-ms", type=float, default=0.0, help="delay before answering")
    parser.add_argument("--no-record", action="store_true", help="do not keep requests (benchmarks)")
    parser.add_argument("--fast", action="store_true",
                        help="bare asyncio server for benchmarks: same answers; no recording, faults or control API")
    args = parser.parse_args(argv)
    fake = FakeUpstream(args.text, api_key=args.api_key, record=not args.no_record)
    fake.set_default(Reply(text=args.text, chunks=args.chunks, chunk_delay=args.chunk_delay_ms / 1000,
                           first_byte_delay=args.first_byte_delay_ms / 1000))

    async def serve() -> None:
        if args.fast:
            fake.port = (await serve_fast(fake, args.port, args.host)).sockets[0].getsockname()[1]
        else:
            fake.listen(args.port, args.host)
        print(f"fake upstream listening on http://{args.host}:{fake.port}", flush=True)
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    main()
