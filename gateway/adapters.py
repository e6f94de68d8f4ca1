"""Provider adapters: one canonical (OpenAI chat) request in, canonical answers out.

- `openai` and every OpenAI-compatible `base_url`: the canonical form is the wire form.
- `anthropic` (or `format: anthropic`): translated both ways by `gateway.translate`.
- `mock`: the built-in local provider (`gateway.providers.mock`), no network.

`complete` returns `(completion dict, raw upstream bytes or None)` — the raw bytes let an
unchanged OpenAI answer be forwarded without re-serialising. `stream` yields lists of chunk
dicts as they arrive (one list per upstream read); `DONE` (None) marks the end.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from functools import lru_cache
from typing import Any

import orjson

from gateway import translate
from gateway.providers import mock
from gateway.upstream import DONE, UpstreamClient, UpstreamFailure, auth_headers, iter_stream
from policies.model import Target

ANTHROPIC_VERSION = "2023-06-01"
Batch = list[dict[str, Any] | None]


@lru_cache(maxsize=1024)
def _url(base_url: str | None, default: str, path: str) -> str:
    base = (base_url or default).rstrip("/")
    if not base.endswith("/v1"):
        base += "/v1"
    return base + path


def _headers(target: Target, extra: dict[str, str] | None = None) -> dict[str, str]:
    headers = {"Content-Type": "application/json", **auth_headers(target)}
    if extra:
        headers.update(extra)
    return headers


def _loads(target: Target, data: bytes | str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        raise UpstreamFailure("bad_response", f"target {target.id} ({target.provider}) sent invalid JSON") from None


def is_anthropic(target: Target) -> bool:
    return target.format == "anthropic" or target.provider == "anthropic"


def models_request(target: Target) -> tuple[str, dict[str, str]]:
    """(URL, headers) of `GET /v1/models` on `target` with its credential: proves the key, spends no token."""
    if is_anthropic(target):
        return _url(target.base_url, "https://api.anthropic.com", "/models"), _headers(
            target, {"anthropic-version": ANTHROPIC_VERSION})
    return _url(target.base_url, "https://api.openai.com", "/models"), _headers(target)


def supports_embeddings(target: Target) -> bool:
    return not is_anthropic(target)


async def complete(client: UpstreamClient, target: Target, req: dict[str, Any]) -> tuple[dict[str, Any], bytes | None]:
    """One non-streaming chat completion from `target`."""
    if target.provider == "mock":
        return mock.complete({**req, "model": target.model}), None
    if is_anthropic(target):
        body = orjson.dumps(translate.openai_request_to_anthropic({**req, "stream": False}, target.model))
        url = _url(target.base_url, "https://api.anthropic.com", "/messages")
        data = await client.post_json(target, url, _headers(target, {"anthropic-version": ANTHROPIC_VERSION}), body)
        resp = _loads(target, data)
        if not isinstance(resp, dict):
            raise UpstreamFailure("bad_response", f"target {target.id} sent a non-object answer")
        return translate.anthropic_response_to_openai(resp), None
    url = _url(target.base_url, "https://api.openai.com", "/chat/completions")
    data = await client.post_json(target, url, _headers(target), orjson.dumps({**req, "model": target.model}))
    resp = _loads(target, data)
    if not isinstance(resp, dict) or not isinstance(resp.get("choices"), list):
        raise UpstreamFailure("bad_response", f"target {target.id} sent an answer without `choices`")
    return resp, data


async def stream(client: UpstreamClient, target: Target, req: dict[str, Any]) -> AsyncIterator[Batch]:
    """A streamed chat completion from `target` as batches of canonical chunks (usage always asked for)."""
    body = {**req, "model": target.model, "stream": True,
            "stream_options": {**(req.get("stream_options") or {}), "include_usage": True}}
    if target.provider == "mock":
        for chunk in mock.stream(body):
            yield [chunk]
        yield [DONE]
        return
    parser = translate.SSEParser()
    if is_anthropic(target):
        url = _url(target.base_url, "https://api.anthropic.com", "/messages")
        wire = orjson.dumps(translate.openai_request_to_anthropic(body, target.model))
        resp = await client.open_stream(target, url, _headers(target, {"anthropic-version": ANTHROPIC_VERSION}), wire)
        converter = translate.AnthropicStreamToOpenAI(target.model, include_usage=True)

        def from_anthropic(data: bytes) -> Batch:
            batch: Batch = []
            for _event, payload in parser.feed(data):
                event = _loads(target, payload)
                batch.extend(converter.feed(event) if isinstance(event, dict) else ())
                if isinstance(event, dict) and event.get("type") == "message_stop":
                    batch.append(DONE)
            return batch

        async with aclosing(_batches(target, resp, from_anthropic, lambda: [*converter.close(), DONE])) as batches:
            async for batch in batches:
                yield batch
        return
    url = _url(target.base_url, "https://api.openai.com", "/chat/completions")
    resp = await client.open_stream(target, url, _headers(target), orjson.dumps(body))

    def from_openai(data: bytes) -> Batch:
        batch: Batch = []
        for _event, payload in parser.feed(data):
            if payload == "[DONE]":
                batch.append(DONE)
                break
            chunk = _loads(target, payload)
            if isinstance(chunk, dict):
                batch.append(chunk)
        return batch

    # The upstream ended without [DONE]: the end of the body is the end.
    async with aclosing(_batches(target, resp, from_openai, lambda: [DONE])) as batches:
        async for batch in batches:
            yield batch


async def _batches(target: Target, resp: Any, parse: Callable[[bytes], Batch],
                   end: Callable[[], Batch]) -> AsyncIterator[Batch]:
    """The batches `parse` makes of a streamed response's bytes, up to the one ending in DONE (else `end()`).

    The response is released when the caller stops; once DONE arrived, its connection goes back
    to the pool when the body's last bytes follow."""
    try:
        async for data in iter_stream(target, resp):
            batch = parse(data)
            if batch:
                if ended := batch[-1] is DONE:
                    resp.release(finished=True)
                yield batch
                if ended:
                    return
        yield end()
    finally:
        resp.release()


async def embed(client: UpstreamClient, target: Target, body: dict[str, Any]) -> tuple[dict[str, Any], bytes | None]:
    """An embeddings answer from `target` (OpenAI format)."""
    if target.provider == "mock":
        try:
            return mock.embed({**body, "model": target.model}), None
        except ValueError as exc:
            raise UpstreamFailure("client_error", str(exc), 400) from None
    url = _url(target.base_url, "https://api.openai.com", "/embeddings")
    data = await client.post_json(target, url, _headers(target), orjson.dumps({**body, "model": target.model}))
    resp = _loads(target, data)
    if not isinstance(resp, dict):
        raise UpstreamFailure("bad_response", f"target {target.id} sent a non-object answer")
    return resp, data


def model_entry(target: Target) -> dict[str, Any]:
    """The /v1/models entry of a target's model (mock targets are labelled `owned_by: kt-mock`)."""
    if target.provider == "mock":
        return mock.model_entry(target.model)
    return {"id": target.model, "object": "model", "created": 0, "owned_by": target.provider}
