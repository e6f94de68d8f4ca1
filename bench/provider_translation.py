"""What translating one request and its answer costs per provider (CPU, in-process, no sockets).

For a chat request with a system prompt, three turns and one tool, and a text answer with
usage, it times the request into each provider's wire body and the provider's answer back into
the canonical completion, and the Responses route's own translation both ways:

    .venv/bin/python bench/provider_translation.py      # a few seconds
"""

from __future__ import annotations

import sys
import timeit
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.providers import azure, bedrock, google, responses, translate  # noqa: E402
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
GOOGLE = Target("gm", "google", "m")
BEDROCK = Target("br", "bedrock", "m", region="us-east-1")


def cases() -> dict[str, Any]:
    shell = responses.Shell(RESPONSES_REQ, "m")
    return {
        "openai       request (body as is)": lambda: orjson.dumps({**REQ, "model": "m"}),
        "openai       answer": lambda: orjson.loads(orjson.dumps(OPENAI)),
        "anthropic    request": lambda: orjson.dumps(translate.openai_request_to_anthropic(REQ, "m")),
        "anthropic    answer": lambda: translate.anthropic_response_to_openai(ANTHROPIC),
        "azure-openai request (URL cached + body)": lambda: (azure.url(AZURE, "chat/completions"),
                                                            orjson.dumps({**REQ, "model": "m"})),
        "azure-openai answer (+ content-filter check)": lambda: azure.check_answer(AZURE, dict(OPENAI)),
        "google       request": lambda: orjson.dumps(google.request(REQ)),
        "google       answer": lambda: google.completion(GOOGLE, GEMINI),
        "bedrock      request (API key; SigV4 adds ~botocore)": lambda: orjson.dumps(bedrock.request(REQ)),
        "bedrock      answer": lambda: bedrock.completion(BEDROCK, CONVERSE),
        "/v1/responses request -> canonical": lambda: responses.responses_request_to_openai(RESPONSES_REQ),
        "/v1/responses canonical answer -> response": lambda: responses.completion_to_response(OPENAI, shell),
    }


def main() -> None:
    for name, fn in cases().items():
        runs = 20000
        best = min(timeit.repeat(fn, number=runs, repeat=5)) / runs
        print(f"{name:48s} {best * 1e6:7.2f} us")


if __name__ == "__main__":
    main()
