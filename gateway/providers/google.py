"""Google Gemini (`provider: google`): the Gemini API's own format, translated to and from the canonical form.

`POST {base_url}/v1beta/models/{model}:generateContent` and
`:streamGenerateContent?alt=sse` (SSE of whole `GenerateContentResponse`s, no `[DONE]`), the key
in `x-goog-api-key`. Request: system messages -> `systemInstruction`; user/assistant turns ->
`contents` (`user`/`model`) with text, inline (data: URL) images, `functionCall` and
`functionResponse` parts; `tools` -> `functionDeclarations` (their JSON Schema as
`parametersJsonSchema`); `tool_choice` -> `toolConfig`; limits and sampling ->
`generationConfig`; `response_format` -> `responseMimeType`/`responseJsonSchema`. Answer: text
and `functionCall` parts -> message and tool calls, `finishReason` -> finish_reason,
`usageMetadata` -> usage. A prompt Gemini blocks (`promptFeedback.blockReason`) and an answer
withheld for safety (`finishReason: SAFETY` ... with no content) are 400 `safety_block` errors.
Embeddings (embedding models only): `:batchEmbedContents`, `embed_request` / `embed_answer`.
"""

from __future__ import annotations

import time
import uuid
from functools import lru_cache
from typing import Any
from urllib.parse import quote

import orjson

from gateway.providers import embeddings
from gateway.providers.canonical import text_of, usage
from gateway.providers.translate import TranslationError
from gateway.providers.upstream import UpstreamFailure
from policies.model import Target

PROVIDER = "google"  # as in `policies.providers.NATIVE`
DEFAULT_BASE = "https://generativelanguage.googleapis.com"
SAFETY_BLOCK = "safety_block"
_BLOCKED = frozenset({"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY",
                      "LANGUAGE", "OTHER"})
_FINISH = {"STOP": "stop", "MAX_TOKENS": "length"}


@lru_cache(maxsize=1024)
def url(target: Target, stream: bool) -> str:
    """The generate URL of the target's model (the stream one asks for SSE)."""
    base = (target.base_url or DEFAULT_BASE).rstrip("/")
    model = quote(target.model.removeprefix("models/"), safe="-._")
    action = "streamGenerateContent?alt=sse" if stream else "generateContent"
    return f"{base}/v1beta/models/{model}:{action}"


@lru_cache(maxsize=1024)
def models_url(target: Target) -> str:
    """`GET /v1beta/models`: proves the key, spends no token (kt doctor)."""
    return f"{(target.base_url or DEFAULT_BASE).rstrip('/')}/v1beta/models"


def embeds(target: Target) -> bool:
    """Whether `target` is an embedding model (`gemini-embedding-001`, `text-embedding-004`): routing sends
    embeddings requests only to those."""
    return "embedding" in target.model


@lru_cache(maxsize=1024)
def embed_url(target: Target) -> str:
    """`models/{model}:batchEmbedContents`: one embedding per request of the batch."""
    base = (target.base_url or DEFAULT_BASE).rstrip("/")
    return f"{base}/v1beta/models/{quote(target.model.removeprefix('models/'), safe='-._')}:batchEmbedContents"


def embed_request(target: Target, body: dict[str, Any]) -> dict[str, Any]:
    """The `BatchEmbedContentsRequest` of an OpenAI embeddings request (`dimensions` -> `outputDimensionality`)."""
    model = "models/" + target.model.removeprefix("models/")
    extra = {"outputDimensionality": body["dimensions"]} if body.get("dimensions") is not None else {}
    return {"requests": [{"model": model, "content": {"parts": [{"text": text}]}, **extra}
                         for text in embeddings.texts(body)]}


def embed_answer(target: Target, answer: Any, body: dict[str, Any]) -> dict[str, Any]:
    """A `BatchEmbedContentsResponse` as the OpenAI embeddings answer; usage from `usageMetadata` when Gemini
    sends it, else estimated (Gemini's batch answer carries no token count)."""
    items = embeddings.texts(body)
    found = answer.get("embeddings") if isinstance(answer, dict) else None
    if not isinstance(found, list) or len(found) != len(items):
        raise TranslationError(f"the answer does not hold {len(items)} embeddings")
    vectors = [e.get("values") if isinstance(e, dict) else None for e in found]
    meta = answer.get("usageMetadata")
    tokens = meta.get("promptTokenCount") if isinstance(meta, dict) else None
    return embeddings.answer(vectors, target.model, tokens if isinstance(tokens, int) else
                             embeddings.estimated_tokens(items), body)


# --- request -----------------------------------------------------------------------------------


def _parts(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts: list[dict[str, Any]] = []
    for part in content or ():
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if part.get("text"):  # Gemini rejects an empty text (a redaction across parts may leave one)
                parts.append({"text": part["text"]})
        elif kind == "image_url":
            image = (part.get("image_url") or {}).get("url") or ""
            if not image.startswith("data:") or ";base64," not in image:
                raise TranslationError(f"`{where}`: google targets take images as data: URLs (base64) only")
            mime, data = image[5:].split(";base64,", 1)
            parts.append({"inlineData": {"mimeType": mime, "data": data}})
        else:
            raise TranslationError(f"`{where}`: content part type {kind!r} cannot be sent to a google target")
    return parts


def _arguments(text: Any) -> Any:
    try:
        value = orjson.loads(text or "{}")
    except orjson.JSONDecodeError:
        raise TranslationError("tool call arguments are not JSON; google targets need a JSON object") from None
    return value if isinstance(value, dict) else {"value": value}


def _contents(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    contents: list[dict[str, Any]] = []
    system: list[str] = []
    names: dict[str, str] = {}  # tool_call_id -> function name (functionResponse needs the name)
    for i, m in enumerate(messages):
        role, where = m.get("role"), f"messages[{i}]"
        if role in ("system", "developer"):
            system.append(text_of(m.get("content")))
            continue
        if role == "tool":
            call_id = m.get("tool_call_id") or ""
            part = {"functionResponse": {"name": names.get(call_id, call_id), "id": call_id,
                                         "response": {"content": text_of(m.get("content"))}}}
            if contents and contents[-1]["role"] == "user" and "functionResponse" in contents[-1]["parts"][0]:
                contents[-1]["parts"].append(part)  # parallel calls: their answers in one turn
            else:
                contents.append({"role": "user", "parts": [part]})
            continue
        parts = _parts(m.get("content"), where)
        if role == "assistant":
            for call in m.get("tool_calls") or ():
                function = call.get("function") or {}
                names[call.get("id") or ""] = function.get("name") or ""
                parts.append({"functionCall": {"name": function.get("name") or "", "id": call.get("id"),
                                               "args": _arguments(function.get("arguments"))}})
        if parts:
            contents.append({"role": "model" if role == "assistant" else "user", "parts": parts})
    return contents, system


def _tool_config(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [name]}}
    mode = {"auto": "AUTO", "none": "NONE", "required": "ANY"}.get(choice)
    return {"functionCallingConfig": {"mode": mode}} if mode else None


def request(req: dict[str, Any]) -> dict[str, Any]:
    """The Gemini `GenerateContentRequest` for a canonical chat request (`TranslationError`: the client's fault)."""
    contents, system = _contents(req.get("messages") or [])
    body: dict[str, Any] = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
    tools = [t.get("function") for t in req.get("tools") or () if isinstance(t, dict) and t.get("function")]
    if tools:
        body["tools"] = [{"functionDeclarations": [
            {k: v for k, v in (("name", f.get("name")), ("description", f.get("description")),
                               ("parametersJsonSchema", f.get("parameters"))) if v is not None} for f in tools]}]
    if (config := _tool_config(req.get("tool_choice"))) is not None:
        body["toolConfig"] = config
    generation: dict[str, Any] = {}
    limit = req.get("max_completion_tokens") or req.get("max_tokens")
    for key, value in (("maxOutputTokens", limit), ("temperature", req.get("temperature")),
                       ("topP", req.get("top_p")), ("seed", req.get("seed"))):
        if value is not None:
            generation[key] = value
    stop = req.get("stop")
    if stop:
        generation["stopSequences"] = [stop] if isinstance(stop, str) else stop
    fmt = req.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
        generation["responseMimeType"] = "application/json"
        schema = (fmt.get("json_schema") or {}).get("schema")
        if schema is not None:
            generation["responseJsonSchema"] = schema
    if generation:
        body["generationConfig"] = generation
    return body


# --- answers -----------------------------------------------------------------------------------


def _usage(meta: Any) -> dict[str, Any] | None:
    """`usageMetadata` as canonical usage (thinking tokens count as completion tokens)."""
    if not isinstance(meta, dict):
        return None
    output = (meta.get("candidatesTokenCount") or 0) + (meta.get("thoughtsTokenCount") or 0)
    return usage(meta.get("promptTokenCount"), output, meta.get("totalTokenCount"))


def _blocked_prompt(target: Target, answer: dict[str, Any]) -> None:
    feedback = answer.get("promptFeedback")
    reason = feedback.get("blockReason") if isinstance(feedback, dict) else None
    if reason:
        raise UpstreamFailure("client_error", f"target {target.id} (google) blocked the prompt ({reason}): change "
                              "the prompt, or the request's safety settings", 400, code=SAFETY_BLOCK)


def _candidate(answer: dict[str, Any]) -> dict[str, Any]:
    candidates = answer.get("candidates")
    if candidates is not None and not isinstance(candidates, list):
        raise TranslationError("`candidates` is not a list")
    first = candidates[0] if candidates else {}
    if not isinstance(first, dict):
        raise TranslationError("a candidate is not an object")
    return first


def _delta(candidate: dict[str, Any], calls_before: int) -> tuple[str, list[dict[str, Any]]]:
    """The text and tool calls of one candidate's parts (thought parts skipped)."""
    content = candidate.get("content") or {}
    parts = content.get("parts") if isinstance(content, dict) else None
    text, calls = "", []
    for part in parts or ():
        if not isinstance(part, dict) or part.get("thought"):
            continue
        if isinstance(part.get("text"), str):
            text += part["text"]
        call = part.get("functionCall")
        if isinstance(call, dict):
            calls.append({"index": calls_before + len(calls), "id": call.get("id") or "call_" + uuid.uuid4().hex[:24],
                          "type": "function", "function": {"name": call.get("name") or "",
                                                           "arguments": orjson.dumps(call.get("args") or {}).decode()}})
    return text, calls


def _finish(target: Target, reason: Any, has_output: bool, has_calls: bool) -> str | None:
    if not reason:
        return None
    if reason in _BLOCKED and reason != "OTHER":
        if not has_output:
            raise UpstreamFailure("client_error", f"target {target.id} (google) withheld the answer "
                                  f"(finishReason {reason})", 400, code=SAFETY_BLOCK)
        return "content_filter"
    if has_calls:
        return "tool_calls"
    return _FINISH.get(reason, "stop")


def completion(target: Target, answer: Any) -> dict[str, Any]:
    """A Gemini `GenerateContentResponse` as a canonical completion."""
    if not isinstance(answer, dict):
        raise TranslationError("the answer is not a JSON object")
    _blocked_prompt(target, answer)
    candidate = _candidate(answer)
    text, calls = _delta(candidate, 0)
    message: dict[str, Any] = {"role": "assistant", "content": text or (None if calls else "")}
    if calls:
        message["tool_calls"] = [{k: v for k, v in c.items() if k != "index"} for c in calls]
    finish = _finish(target, candidate.get("finishReason"), bool(text or calls), bool(calls)) or "stop"
    return {"id": answer.get("responseId") or "chatcmpl-" + uuid.uuid4().hex[:24], "object": "chat.completion",
            "created": int(time.time()), "model": answer.get("modelVersion") or target.model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
            "usage": _usage(answer.get("usageMetadata"))}


class StreamToOpenAI:
    """Gemini stream answers (each a whole `GenerateContentResponse`) -> canonical chunks; `close()` at the end."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.id = "chatcmpl-" + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.started = False
        self.calls = 0
        self.output = False
        self.usage: dict[str, Any] | None = None

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.target.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}

    def feed(self, answer: Any) -> list[dict[str, Any]]:
        if not isinstance(answer, dict):
            raise TranslationError("a stream event is not a JSON object")
        if not self.started:
            _blocked_prompt(self.target, answer)
        self.usage = _usage(answer.get("usageMetadata")) or self.usage
        candidate = _candidate(answer)
        text, calls = _delta(candidate, self.calls)
        out = []
        delta: dict[str, Any] = {}
        if not self.started:
            self.started = True
            delta["role"] = "assistant"
        if text:
            delta["content"] = text
        if calls:
            delta["tool_calls"] = calls
            self.calls += len(calls)
        self.output = self.output or bool(text or calls)
        if delta:
            out.append(self._chunk(delta))
        finish = _finish(self.target, candidate.get("finishReason"), self.output, self.calls > 0)
        if finish:
            out.append(self._chunk({}, finish))
        return out

    def close(self) -> list[dict[str, Any]]:
        if self.usage is None:
            return []
        return [{"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                 "model": self.target.model, "choices": [], "usage": self.usage}]
