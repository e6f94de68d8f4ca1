"""POST /v1/messages: Anthropic clients, served through the chat route in the canonical (OpenAI) form."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.providers import anthropic_request, anthropic_response, anthropic_stream, translate
from gateway.providers.sse import format_sse
from gateway.proxy.chat import ChatHandler
from gateway.proxy.errors import GatewayError, invalid
from gateway.proxy.validate import validate_messages


class MessagesHandler(ChatHandler):
    """POST /v1/messages: Anthropic format in and out; canonical OpenAI inside."""

    anthropic_errors = True
    relays_fields = False  # the translation to Anthropic carries content, refusal and tool calls only

    def __init__(self, settings: dict[str, Any], connection: Any) -> None:
        super().__init__(settings, connection)
        self.client_model = ""
        self.to_anthropic: anthropic_stream.OpenAIStreamToAnthropic | None = None

    def canonical(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            req = anthropic_request.anthropic_request_to_openai(validate_messages(body))
        except translate.TranslationError as exc:
            raise invalid(str(exc)) from None
        self.client_model = body["model"]
        self.client_usage = True
        return req

    def answer(self, resp: dict[str, Any], raw: bytes | None) -> None:
        try:
            body = orjson.dumps(anthropic_response.openai_response_to_anthropic(resp, self.client_model))
        except (translate.TranslationError, orjson.JSONEncodeError) as exc:
            raise self.unrelayable(exc).error() from None
        self.send_json(body)

    def sse(self, chunks: list[dict[str, Any]]) -> bytes:
        if self.to_anthropic is None:
            self.to_anthropic = anthropic_stream.OpenAIStreamToAnthropic(self.client_model, self.record.input_tokens)
        try:
            events = [e for c in chunks for e in self.to_anthropic.feed(c)]
            return b"".join(format_sse(e, e["type"]) for e in events)
        except (translate.TranslationError, orjson.JSONEncodeError) as exc:
            raise self.unrelayable(exc) from None

    def sse_done(self) -> bytes:
        if self.to_anthropic is None:
            self.sse([])
        assert self.to_anthropic is not None
        return b"".join(format_sse(e, e["type"]) for e in self.to_anthropic.close())

    def sse_error(self, err: GatewayError) -> bytes:
        return anthropic_stream.anthropic_stream_error(err.type, err.message, code=err.code, policy=err.policy)
