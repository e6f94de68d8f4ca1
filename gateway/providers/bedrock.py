"""AWS Bedrock (`provider: bedrock`): the Converse / ConverseStream APIs, translated to and from the canonical form.

`POST {base_url}/model/{modelId}/converse` and `/converse-stream` (answered in AWS's binary
event-stream framing, `EventStreamParser`), `base_url` defaulting to
`https://bedrock-runtime.{region}.amazonaws.com`. Auth: a Bedrock API key from `secret_key_ref`
(`Authorization: Bearer`), else SigV4 with the standard AWS credential chain, kept fresh by
`gateway.providers.aws` (botocore, the optional extra `kt-gateway[bedrock]`).
Request: system messages -> `system`, turns -> `messages` with `text`, `toolUse` and
`toolResult` blocks (tool results of one turn merge), `tools` -> `toolConfig.tools[].toolSpec`,
`tool_choice` -> `toolChoice`, limits and sampling -> `inferenceConfig`. Answer: `output.message`
-> message and tool calls, `stopReason` -> finish_reason, `usage` -> usage; a guardrail or
content filter that stopped the answer with nothing in it is a 400 `content_filter`.
Embeddings: InvokeModel (`/model/{modelId}/invoke`) on a Titan or Cohere embeddings model.
"""

from __future__ import annotations

import struct
import time
import uuid
import zlib
from functools import lru_cache
from typing import Any
from urllib.parse import quote

import orjson

from gateway.providers import aws, embeddings
from gateway.providers.canonical import text_of, usage
from gateway.providers.translate import TranslationError
from gateway.providers.upstream import UpstreamFailure
from policies.model import Target

PROVIDER = "bedrock"  # as in `policies.providers.NATIVE`
_STOP = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
         "guardrail_intervened": "content_filter", "content_filtered": "content_filter"}


@lru_cache(maxsize=1024)
def url(target: Target, stream: bool) -> str:
    base = (target.base_url or f"https://bedrock-runtime.{target.region}.amazonaws.com").rstrip("/")
    return f"{base}/model/{quote(target.model, safe='')}/{'converse-stream' if stream else 'converse'}"


@lru_cache(maxsize=1024)
def models_url(target: Target) -> str:
    """GetFoundationModel on the control plane (`base_url` when set): proves the credentials, spends no token."""
    base = (target.base_url or f"https://bedrock.{target.region}.amazonaws.com").rstrip("/")
    return f"{base}/foundation-models/{quote(target.model, safe='')}"


# --- embeddings (InvokeModel on an embeddings model) --------------------------------------------

COHERE_BATCH = 96  # Cohere Embed on Bedrock takes at most 96 texts a call


@lru_cache(maxsize=1024)
def embed_family(target: Target) -> str | None:
    """`titan` (amazon.titan-embed-*), `cohere` (cohere.embed-*), or None: not an embeddings model kt can call
    (routing sends embeddings requests only to the first two). Inference profile ids and ARNs count too."""
    model = target.model.rsplit("/", 1)[-1]
    return "titan" if "amazon.titan-embed" in model else "cohere" if "cohere.embed" in model else None


@lru_cache(maxsize=1024)
def invoke_url(target: Target) -> str:
    base = (target.base_url or f"https://bedrock-runtime.{target.region}.amazonaws.com").rstrip("/")
    return f"{base}/model/{quote(target.model, safe='')}/invoke"


def embed_requests(target: Target, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The InvokeModel bodies of an OpenAI embeddings request: Titan takes one `inputText` a call (`dimensions`
    passed on), Cohere up to 96 `texts` with an `input_type` (the request's, else `search_document`)."""
    items = embeddings.texts(body)
    if embed_family(target) == "titan":
        extra = {"dimensions": body["dimensions"]} if body.get("dimensions") is not None else {}
        return [{"inputText": text, **extra} for text in items]
    kind = body.get("input_type") or "search_document"
    return [{"texts": items[i:i + COHERE_BATCH], "input_type": kind} for i in range(0, len(items), COHERE_BATCH)]


def embed_answer(target: Target, answers: list[Any], body: dict[str, Any]) -> dict[str, Any]:
    """The InvokeModel answers (in call order) as the OpenAI embeddings answer; Titan counts the input tokens,
    for Cohere they are estimated."""
    items = embeddings.texts(body)
    vectors: list[Any] = []
    tokens = 0
    for answer in answers:
        if not isinstance(answer, dict):
            raise TranslationError("the answer is not a JSON object")
        if embed_family(target) == "titan":
            vectors.append(answer.get("embedding"))
            count = answer.get("inputTextTokenCount")
            tokens += count if isinstance(count, int) else 0
            continue
        found = answer.get("embeddings")
        found = found.get("float") if isinstance(found, dict) else found  # embed-v4 answers by type
        if not isinstance(found, list):
            raise TranslationError("the answer has no `embeddings` list")
        vectors.extend(found)
    if len(vectors) != len(items):
        raise TranslationError(f"the answers do not hold {len(items)} embeddings")
    return embeddings.answer(vectors, target.model, tokens or embeddings.estimated_tokens(items), body)


def signature(target: Target, credentials: Any, method: str, address: str, body: bytes) -> dict[str, str]:
    """The SigV4 headers of one call to `target` (service `bedrock`, the target's region)."""
    return aws.sign(credentials, target.region or "us-east-1", method, address, body)


async def credentials(chain: aws.CredentialChain, target: Target) -> Any:
    """The AWS credentials to sign a call to `target` with (no `secret_key_ref`); a clear failure when none."""
    if not aws.has_botocore():
        raise _unsigned(target, "needs a secret_key_ref (a Bedrock API key) or botocore for SigV4: "
                        "pip install 'kt-gateway[bedrock]'")
    try:
        return await chain.frozen()
    except aws.CredentialsUnavailable as exc:
        raise _unsigned(target, f"has no secret_key_ref and {exc}; kt looks again every {aws.RETRY_S:g}s") from None


def credentials_now(target: Target) -> Any:
    """`credentials`, resolved now and blocking (kt doctor)."""
    if not aws.has_botocore():
        raise _unsigned(target, "needs a secret_key_ref (a Bedrock API key) or botocore for SigV4: "
                        "pip install 'kt-gateway[bedrock]'")
    try:
        return aws.frozen_now()
    except aws.CredentialsUnavailable as exc:
        raise _unsigned(target, f"has no secret_key_ref and {exc}") from None


def _unsigned(target: Target, why: str) -> UpstreamFailure:
    return UpstreamFailure("client_error", f"target {target.id} (bedrock) {why}")


# --- request -----------------------------------------------------------------------------------


def _blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}] if content else []
    blocks = []
    for part in content or ():
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text":
            raise TranslationError(f"`{where}`: content part type {kind!r} cannot be sent to a bedrock target")
        if part.get("text"):  # Converse rejects a blank text block (a redaction across parts may leave one)
            blocks.append({"text": part["text"]})
    return blocks


def request(req: dict[str, Any]) -> dict[str, Any]:
    """The Converse request for a canonical chat request (`TranslationError`: the client's fault)."""
    system, messages = [], []
    for i, m in enumerate(req.get("messages") or []):
        role = m.get("role")
        if role in ("system", "developer"):
            system.append({"text": text_of(m.get("content"))})
            continue
        if role == "tool":
            block = {"toolResult": {"toolUseId": m.get("tool_call_id") or "",
                                    "content": [{"text": text_of(m.get("content"))}]}}
            if messages and messages[-1]["role"] == "user" and "toolResult" in messages[-1]["content"][0]:
                messages[-1]["content"].append(block)
            else:
                messages.append({"role": "user", "content": [block]})
            continue
        blocks = _blocks(m.get("content"), f"messages[{i}].content")
        for call in m.get("tool_calls") or () if role == "assistant" else ():
            function = call.get("function") or {}
            try:
                arguments = orjson.loads(function.get("arguments") or "{}")
            except orjson.JSONDecodeError:
                raise TranslationError(f"`messages[{i}].tool_calls`: arguments are not JSON") from None
            blocks.append({"toolUse": {"toolUseId": call.get("id") or "", "name": function.get("name") or "",
                                       "input": arguments}})
        if blocks:
            messages.append({"role": "assistant" if role == "assistant" else "user", "content": blocks})
    body: dict[str, Any] = {"messages": messages}
    if system:
        body["system"] = system
    limit = req.get("max_completion_tokens") or req.get("max_tokens")
    inference = {k: v for k, v in (("maxTokens", limit), ("temperature", req.get("temperature")),
                                   ("topP", req.get("top_p"))) if v is not None}
    stop = req.get("stop")
    if stop:
        inference["stopSequences"] = [stop] if isinstance(stop, str) else stop
    if inference:
        body["inferenceConfig"] = inference
    tools = [t["function"] for t in req.get("tools") or () if isinstance(t, dict) and t.get("function")]
    choice = req.get("tool_choice")
    if tools and choice != "none":
        specs = [{"toolSpec": {k: v for k, v in (("name", f.get("name")), ("description", f.get("description")),
                                                 ("inputSchema", {"json": f.get("parameters") or {"type": "object"}}))
                               if v is not None}} for f in tools]
        config: dict[str, Any] = {"tools": specs}
        if choice == "required":
            config["toolChoice"] = {"any": {}}
        elif isinstance(choice, dict):
            config["toolChoice"] = {"tool": {"name": (choice.get("function") or {}).get("name")}}
        elif choice == "auto":
            config["toolChoice"] = {"auto": {}}
        body["toolConfig"] = config
    return body


# --- answers -----------------------------------------------------------------------------------


def _usage(counts: Any) -> dict[str, Any] | None:
    """Converse `usage` as canonical usage."""
    return usage(counts.get("inputTokens"), counts.get("outputTokens"), counts.get("totalTokens")) \
        if isinstance(counts, dict) else None


def _finish(target: Target, reason: Any, has_output: bool) -> str:
    finish = _STOP.get(reason, "stop")
    if finish == "content_filter" and not has_output:
        raise UpstreamFailure("client_error", f"target {target.id} (bedrock) withheld the answer (stopReason "
                              f"{reason}): a guardrail or content filter stopped it", 400, code="content_filter")
    return finish


def completion(target: Target, answer: Any) -> dict[str, Any]:
    """A Converse answer as a canonical completion."""
    if not isinstance(answer, dict):
        raise TranslationError("the answer is not a JSON object")
    message = ((answer.get("output") or {}).get("message")) or {}
    text, calls = "", []
    for block in message.get("content") or ():
        if not isinstance(block, dict):
            raise TranslationError("a content block is not an object")
        if isinstance(block.get("text"), str):
            text += block["text"]
        use = block.get("toolUse")
        if isinstance(use, dict):
            calls.append({"id": use.get("toolUseId") or "", "type": "function",
                          "function": {"name": use.get("name") or "",
                                       "arguments": orjson.dumps(use.get("input") or {}).decode()}})
    out: dict[str, Any] = {"role": "assistant", "content": text or (None if calls else "")}
    if calls:
        out["tool_calls"] = calls
    finish = _finish(target, answer.get("stopReason"), bool(text or calls))
    return {"id": "chatcmpl-" + uuid.uuid4().hex[:24], "object": "chat.completion", "created": int(time.time()),
            "model": target.model, "choices": [{"index": 0, "message": out, "finish_reason": finish,
                                                "logprobs": None}],
            "usage": _usage(answer.get("usage"))}


class EventStreamError(ValueError):
    """Bytes that are not AWS event-stream framing (bad length or CRC)."""


class EventStreamParser:
    """AWS event-stream messages from bytes split anywhere: `feed(data)` -> [(headers, payload)]."""

    MAX_MESSAGE = 16 * 1024 * 1024

    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, data: bytes) -> list[tuple[dict[str, str], bytes]]:
        self.buffer += data
        out = []
        while len(self.buffer) >= 12:
            total, header_len, prelude_crc = struct.unpack(">III", self.buffer[:12])
            if zlib.crc32(self.buffer[:8]) != prelude_crc or not 16 <= total <= self.MAX_MESSAGE:
                raise EventStreamError("event-stream prelude is corrupt")
            if len(self.buffer) < total:
                break
            message, self.buffer = self.buffer[:total], self.buffer[total:]
            if zlib.crc32(message[:-4]) != struct.unpack(">I", message[-4:])[0]:
                raise EventStreamError("event-stream message CRC does not match")
            out.append((_headers(message[12:12 + header_len]), message[12 + header_len:-4]))
        return out


def _headers(data: bytes) -> dict[str, str]:
    headers, i = {}, 0
    while i < len(data):
        name_len = data[i]
        name = data[i + 1:i + 1 + name_len].decode()
        kind = data[i + 1 + name_len]
        i += 2 + name_len
        if kind != 7:  # only string headers appear in Bedrock's streams
            raise EventStreamError(f"event-stream header {name} has type {kind}, not a string")
        (size,) = struct.unpack(">H", data[i:i + 2])
        headers[name] = data[i + 2:i + 2 + size].decode()
        i += 2 + size
    return headers


class StreamToOpenAI:
    """ConverseStream events -> canonical chunks; `close()` (after `metadata`) brings the usage chunk."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.id = "chatcmpl-" + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.tools: dict[int, int] = {}  # content block index -> tool-call index
        self.output = False
        self.usage: dict[str, Any] | None = None

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.target.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}

    def feed(self, headers: dict[str, str], payload: bytes) -> list[dict[str, Any]]:
        if headers.get(":message-type") == "exception":
            message = orjson.loads(payload or b"{}").get("message", "") if payload else ""
            kind = headers.get(":exception-type", "exception")
            status = 429 if kind == "throttlingException" else 500
            raise UpstreamFailure("rate_limit" if status == 429 else "5xx",
                                  f"target {self.target.id} (bedrock) failed mid-stream: {kind}: {message}"[:300],
                                  status)
        event = headers.get(":event-type")
        data = orjson.loads(payload) if payload else {}
        if event == "messageStart":
            return [self._chunk({"role": "assistant", "content": ""})]
        if event == "contentBlockStart":
            use = (data.get("start") or {}).get("toolUse")
            if isinstance(use, dict):
                index = self.tools[data.get("contentBlockIndex", 0)] = len(self.tools)
                self.output = True
                return [self._chunk({"tool_calls": [{"index": index, "id": use.get("toolUseId") or "",
                                                     "type": "function",
                                                     "function": {"name": use.get("name") or "", "arguments": ""}}]})]
            return []
        if event == "contentBlockDelta":
            delta = data.get("delta") or {}
            if isinstance(delta.get("text"), str) and delta["text"]:
                self.output = True
                return [self._chunk({"content": delta["text"]})]
            use = delta.get("toolUse")
            if isinstance(use, dict) and isinstance(use.get("input"), str):
                index = self.tools.get(data.get("contentBlockIndex", 0), 0)
                return [self._chunk({"tool_calls": [{"index": index, "function": {"arguments": use["input"]}}]})]
            return []
        if event == "messageStop":
            return [self._chunk({}, _finish(self.target, data.get("stopReason"), self.output))]
        if event == "metadata":
            self.usage = _usage(data.get("usage"))
        return []

    def close(self) -> list[dict[str, Any]]:
        if self.usage is None:
            return []
        return [{"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                 "model": self.target.model, "choices": [], "usage": self.usage}]
