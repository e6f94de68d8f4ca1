"""Responses calls to a target that speaks the Responses API natively (`responses_api: native`).

An `openai` or `azure-openai` target; only the URL and the `model` (Azure: the deployment) differ.
The answers are read back as canonical answers by `gateway.providers.openai_responses` (the pure
translation, no I/O); the calls share the adapters' headers, credential renewal and stream reading.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import orjson

from gateway.providers import azure, openai_responses, sse
from gateway.providers.adapters import (
    MALFORMED,
    Batch,
    api_url,
    checked_chunk,
    error_answer,
    malformed,
    parse_json,
    renewing,
    request_headers,
    stream_batches,
)
from gateway.providers.upstream import DONE, UpstreamClient, UpstreamFailure, upstream_text
from policies.model import Target


def native_model(target: Target) -> str:
    """The `model` a native Responses target is called with: an azure-openai target's deployment, else its model."""
    return target.deployment or target.model


def responses_url(target: Target) -> str:
    """The Responses API of a native target: Azure's v1 API on its resource, else `{base_url}/v1/responses`."""
    if target.provider == azure.PROVIDER:
        return azure.responses_url(target)
    return api_url(target.base_url, "https://api.openai.com", "/responses")


async def respond(client: UpstreamClient, target: Target,
                  body: dict[str, Any]) -> tuple[openai_responses.Answer, bytes]:
    """One non-streaming Responses call (`body` as `openai_responses.forwarded_body` made it)."""
    url, wire = responses_url(target), orjson.dumps(body)
    data = await renewing(client, target, lambda: client.post_json(target, url, request_headers(target), wire))
    return _native_answer(target, parse_json(target, data)), data


def _native_answer(target: Target, answer: Any) -> openai_responses.Answer:
    """A native target's Response object, checked (an error body or a failed Response is a scrubbed failure)."""
    if (failure := error_answer(target, answer, "output")) is not None:
        raise failure
    if isinstance(answer, dict) and (message := openai_responses.failed_message(answer)) is not None:
        raise UpstreamFailure("5xx", f"target {target.id} ({target.provider}) answered with a failed response: "
                              f"{upstream_text(target, message)}")
    try:
        native = openai_responses.Answer(answer)
    except MALFORMED as exc:
        raise malformed(target, exc) from None
    if target.provider == azure.PROVIDER:
        azure.check_answer(target, native.completion())
    return native


async def respond_stream(client: UpstreamClient, target: Target, body: dict[str, Any],
                         events: openai_responses.StreamToChat) -> AsyncIterator[Batch]:
    """A streamed Responses call, as batches of canonical chunks (`events` converts; DONE after
    `response.completed`). A stream cut before its last event is a `bad_response`; one Response
    object instead of a stream is read as a JSON answer is, then relayed as the chunks of it."""
    url, wire = responses_url(target), orjson.dumps(body)
    resp = await renewing(client, target, lambda: client.open_stream(target, url, request_headers(target), wire))
    parser = sse.SSEParser()

    def parse(data: bytes) -> Batch:
        batch: Batch = []
        for _event, payload in parser.feed(data):
            batch.extend(checked_chunk(target, c) for c in events.feed(parse_json(target, payload)))
            if events.done:
                batch.append(DONE)
                break
        return batch

    def end() -> Batch:
        raise UpstreamFailure("bad_response", f"target {target.id} ({target.provider}) ended its Responses stream "
                              "before response.completed")

    def whole(target: Target, answer: Any) -> dict[str, Any]:  # one Response object instead of the stream
        completion = _native_answer(target, answer).completion()
        events.started(answer)
        return completion

    async with aclosing(stream_batches(client, target, resp, parse, end, whole)) as batches:
        async for batch in batches:
            yield batch
