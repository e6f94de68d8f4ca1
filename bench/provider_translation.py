"""What translating one request, its answer and a stream chunk costs per provider (CPU, in-process, no sockets).

For a chat request with a system prompt, three turns and one tool, and a text answer with
usage, it times the request into each provider's wire body and the provider's answer back into
the canonical completion, and the Responses route's own translation both ways. A stream chunk
is one text delta, in a stream of 100 (the converter's set-up shared among them): a
provider's event into a canonical chunk, and for the client routes (`/v1/messages`,
`/v1/responses`) a canonical chunk into theirs:

    .venv/bin/python bench/provider_translation.py      # about 20 seconds
"""

from __future__ import annotations

import sys
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.providers import (  # noqa: E402
    anthropic_request,
    anthropic_response,
    anthropic_stream,
    azure,
    bedrock,
    google,
    openai_responses,
    responses,
)
from policies.model import Target  # noqa: E402

REQ: dict[str, Any] = {
    "model": "m", "max_tokens": 256, "temperature": 0.2,
    "messages": [{"role": "system", "content": "You are a support assistant. Be brief."},
                 {"role": "user", "content": "Where is my order A-1234?"},
                 {"role": "assistant", "content": "Let me check."},
                 {"role": "user", "content": "Thanks, and the invoice too please."}],
    "tools": [{"type": "function", "function": {"name": "lookup", "description": "look up an order",
                                                "parameters": {"type": "object",
                                                               "properties": {"q": {"type": "string"}}}}}],
}
TEXT = "Your order A-1234 shipped yesterday; the invoice is attached to your account."
OPENAI = {"id": "c", "object": "chat.completion", "created": 1, "model": "m",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": TEXT}, "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 40, "completion_tokens": 20, "total_tokens": 60}}
ANTHROPIC = {"id": "msg", "type": "message", "role": "assistant", "model": "m", "stop_reason": "end_turn",
             "content": [{"type": "text", "text": TEXT}], "usage": {"input_tokens": 40, "output_tokens": 20}}
GEMINI = {"candidates": [{"content": {"role": "model", "parts": [{"text": TEXT}]}, "finishReason": "STOP"}],
          "usageMetadata": {"promptTokenCount": 40, "candidatesTokenCount": 20, "totalTokenCount": 60}}
CONVERSE = {"output": {"message": {"role": "assistant", "content": [{"text": TEXT}]}}, "stopReason": "end_turn",
            "usage": {"inputTokens": 40, "outputTokens": 20, "totalTokens": 60}}
RESPONSES_REQ = {"model": "m", "instructions": "Be brief.", "input": "Where is my order A-1234?",
                 "tools": [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}]}
AZURE = Target("az", "azure-openai", "m", base_url="https://r.openai.azure.com", deployment="d",
               api_version="2024-10-21")
NATIVE = {"id": "resp_1", "object": "response", "model": "m", "status": "completed",
          "output": [{"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
                      "content": [{"type": "output_text", "text": TEXT, "annotations": []}]}],
          "usage": {"input_tokens": 40, "output_tokens": 20, "total_tokens": 60}}
NATIVE_EVENT = {"type": "response.output_text.delta", "sequence_number": 4, "item_id": "msg_1", "output_index": 0,
                "content_index": 0, "delta": "Your order ", "logprobs": []}
GOOGLE = Target("gm", "google", "m")
BEDROCK = Target("br", "bedrock", "m", region="us-east-1")


WORDS = TEXT.split()
OPENAI_CHUNK = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                "choices": [{"index": 0, "delta": {"content": " order"}, "finish_reason": None}]}
ANTHROPIC_EVENT = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " order"}}
GEMINI_CHUNK = {"candidates": [{"content": {"role": "model", "parts": [{"text": " order"}]}}]}
CONVERSE_EVENT = ({":event-type": "contentBlockDelta"},
                  orjson.dumps({"contentBlockIndex": 0, "delta": {"text": " order"}}))
CHUNKS = 100  # stream chunks per timed call


def stream(converter: Callable[[], Callable[..., Any]], *event: Any) -> Callable[[], None]:
    """A call that feeds CHUNKS copies of `event` to a fresh converter (`converter()` returns its feed)."""

    def run() -> None:
        feed = converter()
        for _ in range(CHUNKS):
            feed(*event)

    return run


def cases() -> dict[str, tuple[Callable[[], Any], int]]:
    """name -> (call, translations per call)."""
    shell = responses.Shell(RESPONSES_REQ, "m")
    one = {
        "openai       request (body as is)": lambda: orjson.dumps({**REQ, "model": "m"}),
        "openai       answer": lambda: orjson.loads(orjson.dumps(OPENAI)),
        "anthropic    request": lambda: orjson.dumps(anthropic_request.openai_request_to_anthropic(REQ, "m")),
        "anthropic    answer": lambda: anthropic_response.anthropic_response_to_openai(ANTHROPIC),
        "azure-openai request (URL cached + body)": lambda: (azure.url(AZURE, "chat/completions"),
                                                            orjson.dumps({**REQ, "model": "m"})),
        "azure-openai answer (+ content-filter check)": lambda: azure.check_answer(AZURE, dict(OPENAI)),
        "google       request": lambda: orjson.dumps(google.request(REQ)),
        "google       answer": lambda: google.completion(GOOGLE, GEMINI),
        "bedrock      request (API key; SigV4 adds ~botocore)": lambda: orjson.dumps(bedrock.request(REQ)),
        "bedrock      answer": lambda: bedrock.completion(BEDROCK, CONVERSE),
        "/v1/responses request -> canonical": lambda: responses.responses_request_to_openai(RESPONSES_REQ),
        "/v1/responses canonical answer -> response": lambda: responses.completion_to_response(OPENAI, shell),
        "/v1/messages canonical answer -> message": lambda: anthropic_response.openai_response_to_anthropic(OPENAI),
        "/v1/responses native request (+ copy back, body)": lambda: _native_request(),
        "/v1/responses native answer (parse + project)": lambda: _native_answer(),
    }
    streams = {
        "openai       stream chunk (parsed as is)": stream(lambda: orjson.loads, orjson.dumps(OPENAI_CHUNK)),
        "anthropic    stream chunk": stream(lambda: anthropic_stream.AnthropicStreamToOpenAI("m").feed,
                                            ANTHROPIC_EVENT),
        "google       stream chunk": stream(lambda: google.StreamToOpenAI(GOOGLE).feed, GEMINI_CHUNK),
        "bedrock      stream chunk": stream(lambda: bedrock.StreamToOpenAI(BEDROCK).feed, *CONVERSE_EVENT),
        "/v1/responses canonical chunk -> events": stream(lambda: responses.ChatStreamToResponses(shell).feed,
                                                          OPENAI_CHUNK),
        "/v1/messages canonical chunk -> events": stream(lambda: anthropic_stream.OpenAIStreamToAnthropic("m").feed,
                                                         OPENAI_CHUNK),
        "/v1/responses native event -> chunk": stream(lambda: openai_responses.StreamToChat().feed, NATIVE_EVENT),
    }
    return {**{k: (fn, 1) for k, fn in one.items()}, **{k: (fn, CHUNKS) for k, fn in streams.items()}}


def _native_request() -> bytes:
    body = dict(RESPONSES_REQ)
    links: list[Any] = []
    responses.responses_request_to_openai(body, links)
    responses.copy_back(links)
    return orjson.dumps(openai_responses.forwarded_body(body, "m", stream=False))


def _native_answer() -> bool:
    answer = openai_responses.Answer(orjson.loads(orjson.dumps(NATIVE)))
    return answer.project(answer.completion())


def main() -> None:
    for name, (fn, per_call) in cases().items():
        calls = 20000 // per_call
        best = min(timeit.repeat(fn, number=calls, repeat=5)) / (calls * per_call)
        print(f"{name:48s} {best * 1e6:7.2f} us")


if __name__ == "__main__":
    main()
