"""The test upstream in Azure OpenAI's wire format (`FakeAzure`), built on `tests.fake_upstream`.

What Azure does differently from OpenAI, as its REST reference and the `openai` SDK's
`AzureOpenAI` client show it: `POST /openai/deployments/{deployment}/chat/completions` and
`/embeddings` with a required `api-version` query parameter (else 404), the key in `api-key`
or an Entra ID token in `Authorization: Bearer`, Azure's error bodies (`code` "401", "404",
`DeploymentNotFound`), the model named by the deployment (the body's `model` is ignored and the
answer names the model behind it), `prompt_filter_results` and per-choice
`content_filter_results` in every answer (the stream opens with a chunk of no choices that
carries the prompt's), and the content filter: a prompt holding one of `filtered_terms` gets
400 `content_filter` with `innererror.content_filter_result`; a reply with
`finish_reason="content_filter"` is an answer the filter withheld.

Azure's Responses API (`AzureResponses`): `POST /openai/v1/responses` (the GA v1 API: no dated
`api-version`; the key in `api-key`, or `Authorization: Bearer` with the key or an Entra ID
token, as the plain `openai.OpenAI` client sends it) and the older preview route
`POST /openai/responses?api-version=2025-03-01-preview` (what `openai.AzureOpenAI` calls). The
body's `model` names the deployment; the answer is OpenAI's Response object and typed events
(`tests.fake_wire`), naming the model behind the deployment. The content filter as on chat: a
filtered prompt is the 400 `content_filter`; a withheld answer is `status: incomplete` with
`incomplete_details.reason: content_filter` and no message.
"""

from __future__ import annotations

from typing import Any

import orjson
import tornado.web

from tests.fake_upstream import ChatCompletions, Embeddings, FakeUpstream, ProviderHandler, Responses
from tests.fake_wire import (
    ApiError,
    Reply,
    check_responses,
    content_text,
    include_usage,
    openai_completion,
    openai_events,
    responses_events,
    responses_response,
    sse,
)

SAFE = {name: {"filtered": False, "severity": "safe"} for name in ("hate", "self_harm", "sexual", "violence")}
DEPLOYMENTS = {"chat": "gpt-4o-mini-2024-07-18", "embed": "text-embedding-3-small"}
FILTER_MESSAGE = ("The response was filtered due to the prompt triggering Azure OpenAI's content management policy. "
                  "Please modify your prompt and retry. To learn more about our content filtering policies please "
                  "read our documentation: https://go.microsoft.com/fwlink/?linkid=2198766")


class FakeAzure(FakeUpstream):
    """An Azure OpenAI resource with `deployments` ({name: model}) and an optional fixed `api_key`."""

    def __init__(self, *args: Any, deployments: dict[str, str] | None = None,
                 filtered_terms: tuple[str, ...] = ("filter-me",), entra_token: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deployments = deployments or dict(DEPLOYMENTS)
        self.filtered_terms = filtered_terms
        self.entra_token = entra_token  # when set, `Authorization: Bearer <it>` is accepted too

    def routes(self) -> list[tuple[str, type[tornado.web.RequestHandler]]]:
        return [
            (r"/openai/deployments/([^/]+)/chat/completions", AzureChat),
            (r"/openai/deployments/([^/]+)/embeddings", AzureEmbeddings),
            (r"/openai/models", AzureModels),
            (r"/openai/v1/responses", AzureResponses),
            (r"/openai/responses", AzureResponses),
            (r"/.*", AzureNotFound),
        ]


def azure_error(err: ApiError) -> dict[str, Any]:
    """Azure's error envelope: `code` is a string (often the status), `message` always present."""
    body: dict[str, Any] = {"code": err.code or str(err.status), "message": err.message}
    if err.code == "content_filter":
        body.update(type=None, param="prompt", status=400, innererror={
            "code": "ResponsibleAIPolicyViolation",
            "content_filter_result": {**SAFE, "violence": {"filtered": True, "severity": "medium"},
                                      "jailbreak": {"filtered": False, "detected": False}}})
    return {"error": body}


class _Azure(ProviderHandler):
    """Azure's auth (`api-key` or an Entra ID bearer token), api-version and error envelope."""

    fake: FakeAzure

    def error_body(self, err: ApiError) -> dict[str, Any]:
        return azure_error(err)

    def authenticate(self) -> None:
        if not self.get_query_argument("api-version", ""):
            raise ApiError(404, "Resource not found")
        self.check_credential()

    def check_credential(self, key_as_bearer: bool = False) -> None:
        """The `api-key` header, or an Entra ID bearer token (`key_as_bearer`: the v1 API takes the key so too)."""
        key = self.request.headers.get("api-key", "")
        auth = self.request.headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else ""
        if token and self.fake.entra_token is not None and token == self.fake.entra_token:
            return
        if key_as_bearer and token and not key:
            key = token
        if (not key and not token) or (self.fake.api_key is not None and key != self.fake.api_key):
            raise ApiError(401, "Access denied due to invalid subscription key or wrong API endpoint. Make sure to "
                           "provide a valid key for an active subscription and use a correct regional API endpoint "
                           "for your resource.")

    def model_of(self, deployment: str) -> str:
        model = self.fake.deployments.get(deployment)
        if model is None:
            raise ApiError(404, "The API deployment for this resource does not exist. If you created the deployment "
                           "within the last 5 minutes, please wait a moment and try again.", code="DeploymentNotFound")
        return model


class AzureChat(_Azure, ChatCompletions):
    """`POST /openai/deployments/{deployment}/chat/completions?api-version=...`."""

    async def post(self, deployment: str) -> None:  # type: ignore[override]
        body = self.checked(lambda: self.validate_for(self.model_of(deployment)))
        if body is None:
            return
        reply = self.reply_for(body)
        completion = openai_completion(body, reply)
        prompt_results = [{"prompt_index": 0, "content_filter_results": SAFE}]
        completion["prompt_filter_results"] = prompt_results
        for choice in completion["choices"]:
            withheld = choice["finish_reason"] == "content_filter"
            choice["content_filter_results"] = {**SAFE, "violence": {"filtered": True, "severity": "high"}} \
                if withheld else SAFE
            if withheld and not choice["message"]["content"]:
                choice["message"]["content"] = None
        if not self.wants_stream():
            await self.send_json(completion, reply.first_byte_delay)
            return
        first = {"choices": [], "created": 0, "id": "", "model": "", "object": "",
                 "prompt_filter_results": prompt_results}
        await self.send_stream([sse(first), *openai_events(completion, reply.chunks, include_usage(body))], reply)

    def validate_for(self, model: str) -> dict[str, Any]:
        """OpenAI's checks, then the content filter; the deployment, not the body, names the model
        (Azure ignores `model`)."""
        if isinstance(self.body, dict):
            self.body = {**self.body, "model": model}
        body = self.validate()
        prompt = " ".join(content_text(m.get("content")) for m in body["messages"] if isinstance(m, dict))
        if any(term in prompt for term in self.fake.filtered_terms):
            raise ApiError(400, FILTER_MESSAGE, code="content_filter")
        return body


class AzureResponses(_Azure, Responses):
    """`POST /openai/v1/responses` (v1 API) and `POST /openai/responses?api-version=...` (preview)."""

    def authenticate(self) -> None:
        version = self.get_query_argument("api-version", "")
        if self.request.path.startswith("/openai/v1/"):
            if version not in ("", "preview", "latest"):
                raise ApiError(400, "API version not supported", code="BadRequest")
            self.check_credential(key_as_bearer=True)
            return
        super().authenticate()

    async def post(self) -> None:
        await self.answer(self.validate, self.response,
                          lambda response, reply, _: responses_events(response, reply.chunks))

    def validate(self) -> dict[str, Any]:
        """OpenAI's checks, the deployment named by `model`, then the content filter on the prompt."""
        body = check_responses(self.body)
        self.model = self.model_of(body["model"])
        prompt = orjson.dumps([body.get("instructions"), body["input"]]).decode()
        if any(term in prompt for term in self.fake.filtered_terms):
            raise ApiError(400, FILTER_MESSAGE, code="content_filter")
        return body

    def response(self, body: dict[str, Any], reply: Reply) -> dict[str, Any]:
        """OpenAI's Response object, naming the deployment's model; a filtered answer is incomplete."""
        response = {**responses_response(body, reply), "model": self.model}
        if reply.finish_reason == "content_filter":
            response.update(status="incomplete", incomplete_details={"reason": "content_filter"})
        return response


class AzureEmbeddings(_Azure, Embeddings):
    """`POST /openai/deployments/{deployment}/embeddings?api-version=...`."""

    async def post(self, deployment: str) -> None:  # type: ignore[override]
        try:
            model = self.model_of(deployment)
        except ApiError as err:
            self.send_api_error(err)
            return
        if isinstance(self.body, dict):
            self.body = {**self.body, "model": model}
        await Embeddings.post(self)


class AzureModels(_Azure):
    """`GET /openai/models?api-version=...`: the models the resource can deploy."""

    async def get(self) -> None:
        if self.body_fault():
            return
        data = [{"id": m, "object": "model", "status": "succeeded", "created_at": 1_700_000_000,
                 "capabilities": {"chat_completion": "embedding" not in m, "embeddings": "embedding" in m}}
                for m in sorted(set(self.fake.deployments.values()))]
        await self.send_json({"object": "list", "data": data})


class AzureNotFound(_Azure):
    """Any other path: Azure's 404."""

    def authenticate(self) -> None:
        pass

    def _not_found(self) -> None:
        self.send_api_error(ApiError(404, "Resource not found"))

    get = post = lambda self, *args: self._not_found()
