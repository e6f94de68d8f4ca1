"""Provider adapters: one canonical (OpenAI chat) request in, canonical answers out.

- `openai` and every OpenAI-compatible `base_url`: the canonical form is the wire form.
- `anthropic` (or `format: anthropic`): translated both ways by `gateway.providers.anthropic_request`,
  `anthropic_response` and `anthropic_stream`.
- `azure-openai`: the OpenAI form on Azure's deployment URLs (`gateway.providers.azure`).
- `google`: the Gemini API, translated both ways by `gateway.providers.google`.
- `bedrock`: AWS Bedrock's Converse API, translated both ways by `gateway.providers.bedrock`.
- `mock`: the built-in local provider (`gateway.providers.mock`), no network.

Native Responses calls are in `gateway.providers.responses_native`, `kt doctor`'s credential
probes in `gateway.providers.probes`; both use this module's headers, URLs and answer checks.

`complete` returns `(completion dict, raw upstream bytes or None)` — the raw bytes let an
unchanged OpenAI answer be forwarded without re-serialising. `stream` yields lists of chunk
dicts as they arrive (one list per upstream read); `DONE` (None) marks the end.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from functools import lru_cache
from typing import Any, TypeVar

import orjson

from gateway.http.client import Response
from gateway.providers import (
    anthropic_request,
    anthropic_response,
    anthropic_stream,
    aws,
    azure,
    bedrock,
    checks,
    google,
    mock,
    openai_stream,
    secrets,
    sse,
    translate,
)
from gateway.providers.upstream import (
    DONE,
    UPSTREAM_TRACEPARENT,
    UpstreamClient,
    UpstreamFailure,
    auth_headers,
    read_chunk,
    upstream_text,
)
from gateway.proxy.errors import invalid
from policies.model import Target

ANTHROPIC_VERSION = "2023-06-01"
EMBED_CALLS = 8  # at most this many InvokeModel calls at once for one embeddings request (Titan: one a text)
Batch = list[dict[str, Any] | None]
T = TypeVar("T")


@lru_cache(maxsize=1024)
def api_url(base_url: str | None, default: str, path: str) -> str:
    """`path` under a target's `base_url` (else `default`), with `/v1` added when the base lacks it."""
    base = (base_url or default).rstrip("/")
    if not base.endswith("/v1"):
        base += "/v1"
    return base + path


def _to_anthropic(req: dict[str, Any], model: str) -> dict[str, Any]:
    """The Anthropic request for a canonical one; what it cannot express is the client's to fix (400, not 500)."""
    try:
        return anthropic_request.openai_request_to_anthropic(req, model)
    except translate.TranslationError as exc:
        raise invalid(str(exc)) from None


def _to_google(req: dict[str, Any]) -> bytes:
    """The Gemini request for a canonical one (what it cannot express is a 400)."""
    try:
        return orjson.dumps(google.request(req))
    except translate.TranslationError as exc:
        raise invalid(str(exc)) from None


async def _to_bedrock(client: UpstreamClient, target: Target, req: dict[str, Any],
                      stream: bool) -> tuple[str, dict[str, str], bytes]:
    """(URL, headers, body) of a Converse call: the body translated, then signed (SigV4) when no API key is set."""
    try:
        body = orjson.dumps(bedrock.request(req))
    except translate.TranslationError as exc:
        raise invalid(str(exc)) from None
    address = bedrock.url(target, stream)
    return address, await _bedrock_headers(client, target, address, body), body


async def _bedrock_headers(client: UpstreamClient, target: Target, address: str, body: bytes) -> dict[str, str]:
    """The headers of a POST to a bedrock target: its API key, else a SigV4 signature with fresh credentials."""
    headers = request_headers(target)
    if target.secret_key_ref is None:
        headers.update(bedrock.signature(target, await bedrock.credentials(client.aws, target), "POST", address, body))
    return headers


async def renewing(client: UpstreamClient, target: Target, call: Callable[[], Awaitable[T]]) -> T:
    """`call()`, and once more when the provider refused the credential and its source, read again now,
    holds another one (a rotated secret file, rotated or revoked AWS credentials)."""
    try:
        return await call()
    except UpstreamFailure as exc:
        if not exc.credential_refused or not await _renewed(client, target):
            raise
    return await call()


async def _renewed(client: UpstreamClient, target: Target) -> bool:
    if target.secret_key_ref is not None:
        return secrets.renew(target.secret_key_ref)
    return target.provider == bedrock.PROVIDER and aws.has_botocore() and await client.aws.renew()


def _from_bedrock(target: Target, answer: Any) -> dict[str, Any]:
    try:
        return checks.completion(bedrock.completion(target, answer))
    except MALFORMED as exc:
        raise malformed(target, exc) from None


def _from_google(target: Target, answer: Any) -> dict[str, Any]:
    """A Gemini answer as a checked canonical completion."""
    try:
        return checks.completion(google.completion(target, answer))
    except MALFORMED as exc:
        raise malformed(target, exc) from None


def request_headers(target: Target, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The headers of a JSON call to `target`: its credential, the trace parent when traced, `extra`."""
    headers = {"Content-Type": "application/json", **auth_headers(target)}
    parent = UPSTREAM_TRACEPARENT.get()  # None unless --otlp-endpoint traces this request
    if parent is not None:
        headers["traceparent"] = parent
    if extra:
        headers.update(extra)
    return headers


def parse_json(target: Target, data: bytes | str) -> Any:
    """An upstream body parsed as JSON; invalid JSON is a `bad_response` naming the target."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        raise UpstreamFailure("bad_response", f"target {target.id} ({target.provider}) sent invalid JSON") from None


def is_anthropic(target: Target) -> bool:
    return target.format == "anthropic" or target.provider == "anthropic"


def _openai_url(target: Target, operation: str) -> str:
    """The URL of an OpenAI-format `operation` (`chat/completions`, `embeddings`) on `target`."""
    if target.provider == azure.PROVIDER:
        return azure.url(target, operation)
    return api_url(target.base_url, "https://api.openai.com", "/" + operation)



def supports_embeddings(target: Target) -> bool:
    """Whether `target` can answer `/v1/embeddings`: OpenAI-format targets, and google / bedrock targets whose
    model is an embeddings model."""
    if target.provider == google.PROVIDER:
        return google.embeds(target)
    if target.provider == bedrock.PROVIDER:
        return bedrock.embed_family(target) is not None
    return not is_anthropic(target)


def malformed(target: Target, exc: Exception) -> UpstreamFailure:
    """The failure for an answer the checks or the translation refused (`exc` names what, not upstream text)."""
    return UpstreamFailure("bad_response", f"target {target.id} ({target.provider}) sent a malformed answer: "
                           f"{upstream_text(target, str(exc), 200)}")


MALFORMED = (translate.TranslationError, checks.Malformed, RecursionError)


async def complete(client: UpstreamClient, target: Target, req: dict[str, Any]) -> tuple[dict[str, Any], bytes | None]:
    """One non-streaming chat completion from `target`."""
    if target.provider == "mock":
        return mock.complete({**req, "model": target.model}), None
    if target.provider == google.PROVIDER:
        body = _to_google(req)
        data = await renewing(client, target, lambda: client.post_json(
            target, google.url(target, False), request_headers(target), body))
        return _from_google(target, parse_json(target, data)), None
    if target.provider == bedrock.PROVIDER:
        async def converse() -> bytes:
            return await client.post_json(target, *await _to_bedrock(client, target, req, False))

        data = await renewing(client, target, converse)
        return _from_bedrock(target, parse_json(target, data)), None
    if is_anthropic(target):
        body = orjson.dumps(_to_anthropic({**req, "stream": False}, target.model))
        url = api_url(target.base_url, "https://api.anthropic.com", "/messages")
        data = await renewing(client, target, lambda: client.post_json(
            target, url, request_headers(target, {"anthropic-version": ANTHROPIC_VERSION}), body))
        return _from_anthropic(target, parse_json(target, data)), None
    url = _openai_url(target, "chat/completions")
    body = orjson.dumps({**req, "model": target.model})
    data = await renewing(client, target, lambda: client.post_json(target, url, request_headers(target), body))
    completion = _checked_answer(target, checks.completion, data, "choices")
    if target.provider == azure.PROVIDER:
        azure.check_answer(target, completion)
    return completion, data


def _checked_answer(target: Target, check: Callable[[Any], dict[str, Any]], data: bytes, key: str) -> dict[str, Any]:
    """An OpenAI-format answer body, parsed and checked: a 502 naming the target when it is junk, or
    when it is an error object instead of `key` (its message scrubbed)."""
    answer = parse_json(target, data)
    try:
        return check(answer)
    except MALFORMED as exc:
        raise error_answer(target, answer, key) or malformed(target, exc) from None


def error_answer(target: Target, answer: Any, key: str) -> UpstreamFailure | None:
    """The failure for a 2xx answer that is an error object (its message scrubbed), else None."""
    message = checks.error_message(answer, key)
    if message is None:
        return None
    return UpstreamFailure("5xx", f"target {target.id} ({target.provider}) answered with an error: "
                           f"{upstream_text(target, message)}")


def _from_anthropic(target: Target, resp: Any) -> dict[str, Any]:
    """An Anthropic Message as a checked canonical completion."""
    if (failure := error_answer(target, resp, "content")) is not None:  # {"type": "error", "error": {...}}
        raise failure
    try:
        if not isinstance(resp, dict):
            raise checks.Malformed("the answer is not a JSON object")
        return checks.completion(anthropic_response.anthropic_response_to_openai(resp))
    except MALFORMED as exc:
        raise malformed(target, exc) from None


async def stream(client: UpstreamClient, target: Target, req: dict[str, Any]) -> AsyncIterator[Batch]:
    """A streamed chat completion from `target` as batches of canonical chunks (usage always asked for).

    An upstream that answers the stream request with one JSON document (plain, gzip, HTTP/1.0)
    instead of SSE is relayed as the stream of that answer; one whose stream ends without any
    event is a `bad_response` (never an empty 200)."""
    body = {**req, "model": target.model, "stream": True,
            "stream_options": {**(req.get("stream_options") or {}), "include_usage": True}}
    if target.provider == "mock":
        for chunk in mock.stream(body):
            yield [chunk]
        yield [DONE]
        return
    parser = sse.SSEParser()
    anthropic = is_anthropic(target)
    if anthropic:
        url = api_url(target.base_url, "https://api.anthropic.com", "/messages")
        wire = orjson.dumps(_to_anthropic(body, target.model))
        resp = await renewing(client, target, lambda: client.open_stream(
            target, url, request_headers(target, {"anthropic-version": ANTHROPIC_VERSION}), wire))
        converter = anthropic_stream.AnthropicStreamToOpenAI(target.model, include_usage=True)

        def parse(data: bytes) -> Batch:
            batch: Batch = []
            for _event, payload in parser.feed(data):
                event = parse_json(target, payload)
                if not isinstance(event, dict):
                    raise checks.Malformed("a stream event is not a JSON object")
                batch.extend(checked_chunk(target, c) for c in converter.feed(event))
                if event.get("type") == "message_stop":
                    batch.append(DONE)
            return batch

        def end() -> Batch:
            return [*converter.close(), DONE]
    elif target.provider == google.PROVIDER:
        wire = _to_google(body)
        resp = await renewing(client, target, lambda: client.open_stream(
            target, google.url(target, True), request_headers(target), wire))
        answers = google.StreamToOpenAI(target)

        def parse(data: bytes) -> Batch:  # Gemini's stream has no end marker: the body's end is the end
            return [checked_chunk(target, c) for _event, payload in parser.feed(data)
                    for c in answers.feed(parse_json(target, payload))]

        def end() -> Batch:
            return [*(checked_chunk(target, c) for c in answers.close()), DONE]
    elif target.provider == bedrock.PROVIDER:
        async def converse_stream() -> Response:
            return await client.open_stream(target, *await _to_bedrock(client, target, body, True))

        resp = await renewing(client, target, converse_stream)
        frames, events = bedrock.EventStreamParser(), bedrock.StreamToOpenAI(target)

        def parse(data: bytes) -> Batch:  # binary event-stream frames; the body's end is the end
            try:
                messages = frames.feed(data)
            except bedrock.EventStreamError as exc:
                raise checks.Malformed(str(exc)) from None
            return [checked_chunk(target, c) for headers, payload in messages for c in events.feed(headers, payload)]

        def end() -> Batch:
            return [*(checked_chunk(target, c) for c in events.close()), DONE]
    else:
        url = _openai_url(target, "chat/completions")
        wire = orjson.dumps(body)
        resp = await renewing(client, target, lambda: client.open_stream(target, url, request_headers(target), wire))

        def parse(data: bytes) -> Batch:
            batch: Batch = []
            for _event, payload in parser.feed(data):
                if payload == "[DONE]":
                    batch.append(DONE)
                    break
                batch.append(checked_chunk(target, parse_json(target, payload)))
            return batch

        def end() -> Batch:  # the upstream ended without [DONE]: the end of the body is the end
            return [DONE]

    async with aclosing(stream_batches(client, target, resp, parse, end)) as batches:
        async for batch in batches:
            yield batch


def checked_chunk(target: Target, chunk: Any) -> dict[str, Any]:
    """A canonical stream chunk, checked; an error chunk's message scrubbed of credentials."""
    chunk = checks.chunk(chunk)
    error = chunk.get("error") if not chunk.get("choices") else None
    if isinstance(error, dict):
        error["message"] = upstream_text(target, error.get("message") or "")
    return chunk


def _json_answer(resp: Response, first: bytes) -> bool:
    """Whether a response to a stream request is one JSON document rather than SSE."""
    kind = resp.headers.get("content-type", "").lower()
    if "json" in kind:
        return True
    return "event-stream" not in kind and first.lstrip()[:1] == b"{"


async def stream_batches(client: UpstreamClient, target: Target, resp: Response, parse: Callable[[bytes], Batch],
                   end: Callable[[], Batch],
                   whole: Callable[[Target, Any], dict[str, Any]] | None = None) -> AsyncIterator[Batch]:
    """The batches `parse` makes of a streamed response's bytes, up to the one ending in DONE (else `end()`).

    A JSON answer instead of a stream is read whole by `whole` (default: as the target's chat answer)
    into a canonical completion, relayed as its chunks. The response is released when the caller
    stops; once DONE arrived, its connection goes back to the pool when the body's last bytes follow."""
    try:
        first = await read_chunk(target, resp)
        if _json_answer(resp, first):
            yield await _json_stream(client, target, resp, first, whole or _chat_answer)
            return
        seen = False
        data = first
        while data:
            try:
                batch = parse(data)
            except (*MALFORMED, sse.SSEError) as exc:
                raise malformed(target, exc) from None
            if batch:
                seen = True
                if ended := batch[-1] is DONE:
                    resp.release(finished=True)
                yield batch
                if ended:
                    return
            data = await read_chunk(target, resp)
        if not seen:
            raise UpstreamFailure("bad_response", f"target {target.id} ({target.provider}) ended its stream "
                                  "without sending any event")
        yield end()
    finally:
        resp.release()


async def _json_stream(client: UpstreamClient, target: Target, resp: Response, first: bytes,
                       whole: Callable[[Target, Any], dict[str, Any]]) -> Batch:
    """A whole JSON answer to a stream request, read by `whole`, as the canonical chunks of that answer and DONE."""
    limit = client.pool.max_response_size
    parts, size = [first], len(first)
    while data := await read_chunk(target, resp):
        parts.append(data)
        size += len(data)
        if size > limit:
            raise UpstreamFailure("bad_response", f"target {target.id} ({target.provider}) sent an answer larger "
                                  f"than {limit} bytes (--max-response-size)")
    return [*openai_stream.completion_to_chunks(whole(target, parse_json(target, b"".join(parts)))), DONE]


def _chat_answer(target: Target, answer: Any) -> dict[str, Any]:
    """A whole chat answer of `target` (its provider's format) as a checked canonical completion."""
    if (failure := error_answer(target, answer, "choices")) is not None:
        raise failure
    if is_anthropic(target):
        completion = _from_anthropic(target, answer)
    elif target.provider == google.PROVIDER:
        completion = _from_google(target, answer)
    elif target.provider == bedrock.PROVIDER:
        completion = _from_bedrock(target, answer)
    else:
        try:
            completion = checks.completion(answer)
        except MALFORMED as exc:
            raise malformed(target, exc) from None
        if target.provider == azure.PROVIDER:
            azure.check_answer(target, completion)
    return completion


async def embed(client: UpstreamClient, target: Target, body: dict[str, Any]) -> tuple[dict[str, Any], bytes | None]:
    """An embeddings answer from `target` (OpenAI format)."""
    if target.provider == "mock":
        try:
            return mock.embed({**body, "model": target.model}), None
        except ValueError as exc:
            raise UpstreamFailure("client_error", str(exc), 400) from None
    if target.provider == google.PROVIDER:
        wire = _client_side(lambda: orjson.dumps(google.embed_request(target, body)))
        data = await renewing(client, target, lambda: client.post_json(
            target, google.embed_url(target), request_headers(target), wire))
        return _upstream_side(target, lambda: google.embed_answer(target, parse_json(target, data), body)), None
    if target.provider == bedrock.PROVIDER:
        calls = _client_side(lambda: [orjson.dumps(b) for b in bedrock.embed_requests(target, body)])
        room = asyncio.Semaphore(EMBED_CALLS)

        async def invoke(wire: bytes) -> Any:
            async with room:
                data = await renewing(client, target, lambda: _invoke(client, target, wire))
            return parse_json(target, data)

        answers = await asyncio.gather(*(invoke(wire) for wire in calls))
        return _upstream_side(target, lambda: bedrock.embed_answer(target, list(answers), body)), None
    url = _openai_url(target, "embeddings")
    wire = orjson.dumps({**body, "model": target.model})
    data = await renewing(client, target, lambda: client.post_json(target, url, request_headers(target), wire))
    return _checked_answer(target, checks.embeddings, data, "data"), data


async def _invoke(client: UpstreamClient, target: Target, wire: bytes) -> bytes:
    """One InvokeModel call on a bedrock target (signed like Converse)."""
    address = bedrock.invoke_url(target)
    return await client.post_json(target, address, await _bedrock_headers(client, target, address, wire), wire)


def _client_side(build: Callable[[], T]) -> T:
    """`build()`, a request translation: what it cannot express is the client's to fix (400)."""
    try:
        return build()
    except translate.TranslationError as exc:
        raise invalid(str(exc)) from None


def _upstream_side(target: Target, read: Callable[[], T]) -> T:
    """`read()`, an answer translation: what it cannot read is the upstream's fault (502 naming the target)."""
    try:
        return read()
    except MALFORMED as exc:
        raise malformed(target, exc) from None


def model_entry(target: Target) -> dict[str, Any]:
    """The /v1/models entry of a target's model (mock targets are labelled `owned_by: kt-mock`)."""
    if target.provider == "mock":
        return mock.model_entry(target.model)
    return {"id": target.model, "object": "model", "created": 0, "owned_by": target.provider}
