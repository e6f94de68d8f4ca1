"""The test upstream in the Gemini API's wire format (`FakeGoogle`), built on `tests.fake_upstream`.

As the Gemini REST reference and the `google-genai` SDK show it: `POST
/v1beta/models/{model}:generateContent` (or `/v1/...`) and `:streamGenerateContent?alt=sse` (SSE of whole
`GenerateContentResponse` objects, no end marker), the key in `x-goog-api-key` (none: 403
PERMISSION_DENIED; a wrong one: 400 INVALID_ARGUMENT with reason API_KEY_INVALID), Google's
error envelope (`code`, `message`, `status`), `contents` with `user`/`model` roles and
`text`/`functionCall`/`functionResponse` parts, `usageMetadata`, `modelVersion`, `responseId`.
A prompt holding one of `blocked_terms` gets 200 with `promptFeedback.blockReason: SAFETY` and
no candidates; a reply with `finish_reason="SAFETY"` is a candidate withheld for safety.
`models/{model}:batchEmbedContents` (models with `embedding` in the name; others 404 as Gemini
answers them): `requests[]` each naming the same `models/{model}`, one `content.parts[].text`,
optional `outputDimensionality` (default 8 here, 3072 on Gemini); the answer is
`{"embeddings": [{"values": [...]}]}` with no token count, as Gemini's.
"""

from __future__ import annotations

from typing import Any

import tornado.web

from tests.fake_upstream import FakeUpstream, ProviderHandler
from tests.fake_wire import ApiError, Reply, count_tokens, embedding, new_id, split_text, sse

STATUS = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED",
          500: "INTERNAL", 503: "UNAVAILABLE"}
RATINGS = [{"category": c, "probability": "NEGLIGIBLE"} for c in
           ("HARM_CATEGORY_HATE_SPEECH", "HARM_CATEGORY_DANGEROUS_CONTENT", "HARM_CATEGORY_HARASSMENT",
            "HARM_CATEGORY_SEXUALLY_EXPLICIT")]


class FakeGoogle(FakeUpstream):
    """A Gemini API endpoint with an optional fixed `api_key` and `models`."""

    def __init__(self, *args: Any, blocked_terms: tuple[str, ...] = ("block-me",), **kwargs: Any) -> None:
        kwargs.setdefault("models", ("gemini-2.5-flash", "gemini-2.5-pro"))
        super().__init__(*args, **kwargs)
        self.blocked_terms = blocked_terms

    def routes(self) -> list[tuple[str, type[tornado.web.RequestHandler]]]:
        return [
            (r"/v1(?:beta)?/models/([^/:]+):generateContent", Generate),  # kt: v1beta; google-genai 3: v1
            (r"/v1(?:beta)?/models/([^/:]+):streamGenerateContent", Generate),
            (r"/v1(?:beta)?/models", ListModels),
            (r"/v1(?:beta)?/models/([^/:]+):batchEmbedContents", BatchEmbed),
        ]


def google_error(err: ApiError) -> dict[str, Any]:
    body: dict[str, Any] = {"code": err.status, "message": err.message, "status": STATUS.get(err.status, "UNKNOWN")}
    if err.code == "API_KEY_INVALID":
        body["details"] = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                            "domain": "googleapis.com", "metadata": {"service": "generativelanguage.googleapis.com"}}]
    return {"error": body}


def _texts(body: dict[str, Any]) -> str:
    texts = [p.get("text", "") for c in body.get("contents") or () for p in c.get("parts") or () if isinstance(p, dict)]
    return " ".join(t for t in texts if isinstance(t, str))


class _Google(ProviderHandler):
    fake: FakeGoogle

    def error_body(self, err: ApiError) -> dict[str, Any]:
        return google_error(err)

    def authenticate(self) -> None:
        key = self.request.headers.get("x-goog-api-key", "") or self.get_query_argument("key", "")
        if not key:
            raise ApiError(403, "Method doesn't allow unregistered callers (callers without established identity). "
                           "Please use API Key or other form of API consumer identity to call this API.")
        if self.fake.api_key is not None and key != self.fake.api_key:
            raise ApiError(400, "API key not valid. Please pass a valid API key.", code="API_KEY_INVALID")


class Generate(_Google):
    """`models/{model}:generateContent` and `:streamGenerateContent?alt=sse`."""

    def wants_stream(self) -> bool:
        return self.request.path.endswith(":streamGenerateContent")

    def validate(self) -> dict[str, Any]:
        body = self.body
        if not isinstance(body, dict):
            raise ApiError(400, "Invalid JSON payload received.")
        contents = body.get("contents")
        if not isinstance(contents, list) or not contents:
            raise ApiError(400, "* GenerateContentRequest.contents: contents is not specified")
        for i, content in enumerate(contents):
            if not isinstance(content, dict) or content.get("role") not in ("user", "model", None) \
                    or not isinstance(content.get("parts"), list) or not content["parts"]:
                raise ApiError(400, f"* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty.")
        return body

    def candidate(self, reply: Reply, text: str, calls: list[dict[str, Any]], finish: str | None) -> dict[str, Any]:
        parts: list[dict[str, Any]] = [{"text": text}] if text else []
        parts += [{"functionCall": call} for call in calls]
        candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
        if finish:
            candidate["finishReason"] = finish
            candidate["safetyRatings"] = RATINGS
        return candidate

    async def post(self, model: str) -> None:
        body = self.checked(self.validate)
        if body is None:
            return
        prompt = count_tokens(_texts(body))
        common = {"modelVersion": model, "responseId": new_id("")}
        if any(term in _texts(body) for term in self.fake.blocked_terms):
            await self.send_json({"promptFeedback": {"blockReason": "SAFETY", "safetyRatings": RATINGS},
                                  "usageMetadata": {"promptTokenCount": prompt, "totalTokenCount": prompt}, **common})
            return
        reply = self.reply_for(body)
        calls = [{"name": t.name, "args": t.arguments} for t in reply.tool_calls]
        finish = reply.finish_reason or "STOP"
        text = reply.text or ""
        output = count_tokens(text) + sum(count_tokens(str(c["args"])) for c in calls)
        usage = {"promptTokenCount": prompt, "candidatesTokenCount": output, "totalTokenCount": prompt + output}
        if not self.wants_stream():
            await self.send_json({"candidates": [self.candidate(reply, text, calls, finish)],
                                  "usageMetadata": usage, **common}, reply.first_byte_delay)
            return
        pieces = split_text(text, reply.chunks) if text else []
        answers = [{"candidates": [self.candidate(reply, p, [], None)],
                    "usageMetadata": {"promptTokenCount": prompt, "totalTokenCount": prompt}, **common} for p in pieces]
        answers.append({"candidates": [self.candidate(reply, "", calls, finish)], "usageMetadata": usage, **common})
        await self.send_stream([sse(a, eol=b"\r\n") for a in answers], reply)


class ListModels(_Google):
    async def get(self) -> None:
        if self.body_fault():
            return
        await self.send_json({"models": [{"name": f"models/{m}", "displayName": m, "version": "001",
                                          "supportedGenerationMethods": ["generateContent", "countTokens"]}
                                         for m in self.fake.models]})


class BatchEmbed(_Google):
    """`models/{model}:batchEmbedContents`: one embedding per request, in order."""

    def validate(self, model: str) -> list[dict[str, Any]]:
        if "embedding" not in model:
            raise ApiError(404, f"models/{model} is not found for API version v1beta, or is not supported for "
                           "embedContent. Call ListModels to see the list of available models and their supported "
                           "methods.")
        requests = self.body.get("requests") if isinstance(self.body, dict) else None
        if not isinstance(requests, list) or not requests:
            raise ApiError(400, "* BatchEmbedContentsRequest.requests: requests is not specified")
        if len(requests) > 100:
            raise ApiError(400, "* BatchEmbedContentsRequest.requests: at most 100 requests can be in one batch")
        for i, request in enumerate(requests):
            if not isinstance(request, dict) or request.get("model") != f"models/{model}":
                raise ApiError(400, f"Model name in the batch request (requests[{i}]) must match the model in the "
                               "URL.")
            parts = (request.get("content") or {}).get("parts")
            if not isinstance(parts, list) or not parts:
                raise ApiError(400, f"* BatchEmbedContentsRequest.requests[{i}].content.parts: contents.parts must "
                               "not be empty.")
        return requests

    async def post(self, model: str) -> None:
        requests = self.checked(lambda: {"requests": self.validate(model)})
        if requests is None:
            return
        out = []
        for request in requests["requests"]:
            text = " ".join(p.get("text", "") for p in request["content"]["parts"] if isinstance(p, dict))
            out.append({"values": embedding(text, int(request.get("outputDimensionality") or 8))})
        await self.send_json({"embeddings": out})
