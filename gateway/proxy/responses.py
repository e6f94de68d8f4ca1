"""POST /v1/responses: OpenAI Responses clients, served by any provider through the canonical form.

The request is translated (`gateway.providers.responses`) into a canonical chat request, so the
chain, routing, fallback and every provider work as for `/v1/chat/completions`; the answer goes
back as a Response object, a stream as Responses' typed SSE events (`response.created`, ...,
`response.output_text.delta`, ..., `response.completed`). A stream that fails or is blocked
after it started ends with an `error` event. Stored state (`previous_response_id`,
`store: true`, `GET /v1/responses/{id}`) is refused with a 400 that names the field.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.providers import responses, translate
from gateway.providers.sse import format_sse
from gateway.proxy.errors import GatewayError, invalid
from gateway.proxy.routes import ChatHandler
from gateway.proxy.validate import validate_chat


class ResponsesHandler(ChatHandler):
    """POST /v1/responses (Responses format in and out; canonical OpenAI chat inside)."""

    def __init__(self, settings: dict[str, Any], connection: Any) -> None:
        super().__init__(settings, connection)
        self.shell: responses.Shell | None = None
        self.events: responses.ChatStreamToResponses | None = None

    def canonical(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            req = responses.responses_request_to_openai(body)
        except translate.TranslationError as exc:
            raise invalid(str(exc)) from None
        if req.get("stream"):
            req["stream_options"] = {"include_usage": True}  # the usage of response.completed
        self.shell = responses.Shell(body, req["model"])
        return validate_chat(req)

    def _converter(self) -> responses.ChatStreamToResponses:
        if self.events is None:
            assert self.shell is not None
            self.events = responses.ChatStreamToResponses(self.shell)
        return self.events

    def answer(self, resp: dict[str, Any], raw: bytes | None) -> None:
        assert self.shell is not None
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
