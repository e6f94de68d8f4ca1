"""POST /v1/responses: OpenAI Responses clients, served by any provider through the canonical form.

The request is translated (`gateway.providers.responses`) into a canonical chat request, so the
chain, routing, fallback and every provider work as for `/v1/chat/completions`; the answer goes
back as a Response object, a stream as Responses' typed SSE events (`response.created`, ...,
`response.output_text.delta`, ..., `response.completed`). A stream that fails or is blocked
after it started ends with an `error` event. Stored state (`previous_response_id`,
`store: true`, `GET /v1/responses/{id}`) is refused with a 400 that names the field.

A target that speaks Responses natively (`Target.responses_native`) gets the client's body
itself, with the input chain's redactions copied back where each text stands; its answer is
read as a canonical completion for the output chain and relayed as the upstream's Response
with the chain's changes put back (`gateway.providers.openai_responses`). Its stream is read
as canonical chunks and re-emitted like any other (the relay's guards and withholding need
that), under the upstream's response id and model. Fallback mixes both kinds freely.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from gateway.providers import adapters, openai_responses, responses, responses_native, translate
from gateway.providers.sse import format_sse
from gateway.proxy.chat import ChatHandler
from gateway.proxy.errors import GatewayError, invalid
from gateway.proxy.validate import validate_chat
from policies.model import Exchange, Target


class ResponsesHandler(ChatHandler):
    """POST /v1/responses (Responses format in and out; canonical OpenAI chat inside)."""

    def __init__(self, settings: dict[str, Any], connection: Any) -> None:
        super().__init__(settings, connection)
        self.shell: responses.Shell | None = None
        self.events: responses.ChatStreamToResponses | None = None
        self.body: dict[str, Any] = {}  # the client's Responses request (the chain's redactions copied in)
        self.links: list[responses.Link] = []
        self.native: openai_responses.Answer | None = None  # the answer of a native target, if one served
        self.adopted: dict[str, Any] = {}  # the streaming native target's response id, model, created_at
        self.native_stream = False  # the stream being relayed comes from a native target

    @property  # type: ignore[override]
    def relays_fields(self) -> bool:
        """Only a native target's Response reaches the client with more than the canonical texts (its
        `output_text` parts' annotations, which `openai_responses.Answer` lists as a field, and a
        stream's `annotations` deltas)."""
        return self.native is not None or self.native_stream

    def canonical(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            req = responses.responses_request_to_openai(body, self.links)
        except translate.TranslationError as exc:
            raise invalid(str(exc)) from None
        if req.get("stream"):
            req["stream_options"] = {"include_usage": True}  # the usage of response.completed
        self.body = body
        self.shell = responses.Shell(body, req["model"])
        return validate_chat(req)

    def run_input(self, ex: Exchange) -> None:
        super().run_input(ex)
        responses.copy_back(self.links)  # a native target gets the redacted texts where they stand

    def _forwarded(self, target: Target, stream: bool) -> dict[str, Any]:
        return openai_responses.forwarded_body(self.body, responses_native.native_model(target), stream)

    async def _respond(self, target: Target) -> tuple[dict[str, Any], bytes | None]:
        self.native, raw = await responses_native.respond(self.services.upstream, target,
                                                          self._forwarded(target, False))
        return self.native.completion(), raw

    def upstream_complete(self, target: Target, req: dict[str, Any]) -> Any:
        self.native = None
        if target.responses_native:
            return self._respond(target)
        return super().upstream_complete(target, req)

    def _adopt(self, upstream: dict[str, Any]) -> None:
        """The upstream's Response fields (id, model, created_at) for the events of a native stream."""
        self.adopted = {k: upstream[k] for k in ("id", "created_at", "model") if upstream.get(k) is not None}

    def upstream_stream(self, target: Target, req: dict[str, Any]) -> AsyncIterator[adapters.Batch]:
        self.adopted = {}  # an attempt that failed before the first byte leaves nothing behind
        self.native_stream = target.responses_native
        if target.responses_native:
            return responses_native.respond_stream(self.services.upstream, target, self._forwarded(target, True),
                                                   openai_responses.StreamToChat(self._adopt))
        return super().upstream_stream(target, req)

    def _converter(self) -> responses.ChatStreamToResponses:
        if self.events is None:  # at the first bytes sent: the attempt that answers is known
            assert self.shell is not None
            self.shell.fields.update(self.adopted)
            self.events = responses.ChatStreamToResponses(self.shell)
        return self.events

    def answer(self, resp: dict[str, Any], raw: bytes | None) -> None:
        assert self.shell is not None
        native = self.native
        if native is not None:  # the upstream's own Response, with what the output chain changed
            if native.project(resp) or raw is None:
                raw = orjson.dumps(native.response)
            self.send_json(raw)
            return
        try:
            body = orjson.dumps(responses.completion_to_response(resp, self.shell))
        except orjson.JSONEncodeError as exc:
            raise self.unrelayable(exc).error() from None
        self.send_json(body)

    @staticmethod
    def _format(events: list[dict[str, Any]]) -> bytes:
        return b"".join(format_sse(e, e["type"]) for e in events)

    def sse(self, chunks: list[dict[str, Any]]) -> bytes:
        converter = self._converter()
        try:
            return self._format([e for c in chunks for e in converter.feed(c)])
        except orjson.JSONEncodeError as exc:
            raise self.unrelayable(exc) from None

    def sse_done(self) -> bytes:
        return self._format(self._converter().close())

    def sse_error(self, err: GatewayError) -> bytes:
        return self._format([self._converter().error(err.code, err.message)])
