"""The test upstream in AWS Bedrock's Converse wire format (`FakeBedrock`), built on `tests.fake_upstream`.

As the Bedrock Runtime reference and boto3 show it: `POST /model/{modelId}/converse` (JSON)
and `/converse-stream` (`application/vnd.amazon.eventstream`: binary frames with a CRC'd
prelude, string headers `:event-type`, `:content-type`, `:message-type`, a JSON payload and a
message CRC; events messageStart, contentBlockStart/Delta/Stop, messageStop, metadata), auth by
SigV4 (`Authorization: AWS4-HMAC-SHA256 ...` with `X-Amz-Date`) or a Bedrock API key
(`Authorization: Bearer`), errors as `{"message"}` with `x-amzn-ErrorType`, and
`GET /foundation-models/{modelId}`. The signature is verified as AWS does when `aws_keys`
({access key id: secret access key}) is set, else only its shape is checked (`signed_with`
records the access key and session token of each verified call); `api_key`, when set, is the
only bearer key accepted. A prompt holding one of `blocked_terms`
stops with `guardrail_intervened` and no content.
`POST /model/{modelId}/invoke` on an embeddings model (InvokeModel): Titan Text Embeddings
(`{"inputText", "dimensions"?}` -> `{"embedding", "inputTextTokenCount", "embeddingsByType"}`)
and Cohere Embed v3 (`{"texts" (at most 96), "input_type"}` -> `{"embeddings", "id",
"response_type": "embeddings_floats", "texts"}`), with the `X-Amzn-Bedrock-Input-Token-Count`
header; Bedrock's `Malformed input request` 400 for a body the model does not take.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any
from urllib.parse import unquote

import orjson
import tornado.web

from tests.fake_upstream import FakeUpstream, ProviderHandler
from tests.fake_wire import ApiError, count_tokens, embedding, split_text

_ERROR_TYPES = {400: "ValidationException", 403: "AccessDeniedException", 404: "ResourceNotFoundException",
                429: "ThrottlingException", 500: "InternalServerException", 503: "ServiceUnavailableException"}


def frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One AWS event-stream message."""
    head = b"".join(struct.pack("B", len(k)) + k.encode() + b"\x07" + struct.pack(">H", len(v)) + v.encode()
                    for k, v in headers.items())
    total = 12 + len(head) + len(payload) + 4
    prelude = struct.pack(">II", total, len(head))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    message = prelude + head + payload
    return message + struct.pack(">I", zlib.crc32(message))


def event(kind: str, data: dict[str, Any]) -> bytes:
    return frame({":event-type": kind, ":content-type": "application/json", ":message-type": "event"},
                 orjson.dumps({**data, "p": "abcdefgh"}))


class FakeBedrock(FakeUpstream):
    """A Bedrock Runtime endpoint (and the one control-plane call kt doctor makes)."""

    def __init__(self, *args: Any, blocked_terms: tuple[str, ...] = ("guard-me",), **kwargs: Any) -> None:
        kwargs.setdefault("models", ("anthropic.claude-3-5-haiku-20241022-v1:0",))
        super().__init__(*args, **kwargs)
        self.blocked_terms = blocked_terms
        self.aws_keys: dict[str, str] | None = None  # when set: SigV4 signatures are verified with these
        self.signed_with: list[tuple[str, str | None]] = []  # (access key id, session token) per verified call

    def routes(self) -> list[tuple[str, type[tornado.web.RequestHandler]]]:
        return [
            (r"/model/([^/]+)/converse", Converse),
            (r"/model/([^/]+)/converse-stream", Converse),
            (r"/foundation-models/([^/]+)", FoundationModel),
            (r"/model/([^/]+)/invoke", InvokeEmbeddings),
        ]


class _Aws(ProviderHandler):
    fake: FakeBedrock

    def verify_sigv4(self, auth: str) -> None:
        """Recompute the SigV4 signature with the secret of the access key it names (botocore's signer)."""
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        fields = dict(part.strip().split("=", 1) for part in auth.split(" ", 1)[1].split(","))
        access_key, _date, region, service, _ = fields["Credential"].split("/")
        secret = (self.fake.aws_keys or {}).get(access_key)
        if secret is None:
            raise ApiError(403, "The security token included in the request is invalid.")
        signed = fields["SignedHeaders"].split(";")
        headers = {name: self.request.headers.get(name, "") for name in signed}
        request = AWSRequest(method=self.request.method, url=f"http://{self.request.host}{self.request.uri}",
                             data=self.request.body, headers=headers)
        request.context["timestamp"] = self.request.headers["X-Amz-Date"]
        token = self.request.headers.get("X-Amz-Security-Token")
        signer = SigV4Auth(Credentials(access_key, secret, token), service, region)
        expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
        if expected != fields["Signature"]:
            raise ApiError(403, "The request signature we calculated does not match the signature you provided. "
                           "Check your AWS Secret Access Key and signing method. Consult the service documentation "
                           "for details.")
        self.fake.signed_with.append((access_key, token))

    def error_body(self, err: ApiError) -> dict[str, Any]:
        self.set_header("x-amzn-ErrorType", f"{_ERROR_TYPES.get(err.status, 'InternalServerException')}:http://")
        return {"message": err.message}

    def authenticate(self) -> None:
        auth = self.request.headers.get("Authorization", "")
        if auth.startswith("AWS4-HMAC-SHA256 ") and "Credential=" in auth and "Signature=" in auth \
                and self.request.headers.get("X-Amz-Date"):
            if self.fake.aws_keys is not None:
                self.verify_sigv4(auth)
            return
        if auth.startswith("Bearer ") and (self.fake.api_key is None or auth[7:] == self.fake.api_key):
            return
        raise ApiError(403, "The security token included in the request is invalid.")


def _texts(body: dict[str, Any]) -> str:
    return " ".join(b.get("text", "") for m in body.get("messages") or () for b in m.get("content") or ()
                    if isinstance(b, dict) and isinstance(b.get("text"), str))


class Converse(_Aws):
    def wants_stream(self) -> bool:
        return self.request.path.endswith("/converse-stream")

    def validate(self) -> dict[str, Any]:
        body = self.body
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body["messages"]:
            raise ApiError(400, "A conversation must start with a user message. Try again with a conversation "
                           "that starts with a user message.")
        return body

    async def post(self, model: str) -> None:
        body = self.checked(self.validate)
        if body is None:
            return
        reply = self.reply_for(body)
        text, calls, stop = reply.text or "", reply.tool_calls, reply.finish_reason
        if any(term in _texts(body) for term in self.fake.blocked_terms):
            text, calls, stop = "", (), "guardrail_intervened"
        stop = stop or ("tool_use" if calls else "end_turn")
        prompt = count_tokens(_texts(body))
        output = count_tokens(text) + sum(count_tokens(str(c.arguments)) for c in calls)
        usage = {"inputTokens": prompt, "outputTokens": output, "totalTokens": prompt + output}
        uses = [{"toolUseId": c.id or f"tooluse_{i}", "name": c.name, "input": c.arguments}
                for i, c in enumerate(calls)]
        if not self.wants_stream():
            content = ([{"text": text}] if text else []) + [{"toolUse": u} for u in uses]
            await self.send_json({"output": {"message": {"role": "assistant", "content": content}},
                                  "stopReason": stop, "usage": usage, "metrics": {"latencyMs": 12}},
                                 reply.first_byte_delay)
            return
        events = [event("messageStart", {"role": "assistant"})]
        block = 0
        if text:
            events += [event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": piece}})
                       for piece in split_text(text, reply.chunks)]
            events.append(event("contentBlockStop", {"contentBlockIndex": 0}))
            block = 1
        for i, use in enumerate(uses):
            index = block + i
            events.append(event("contentBlockStart", {"contentBlockIndex": index, "start": {
                "toolUse": {"toolUseId": use["toolUseId"], "name": use["name"]}}}))
            events += [event("contentBlockDelta", {"contentBlockIndex": index, "delta": {"toolUse": {"input": p}}})
                       for p in split_text(orjson.dumps(use["input"]).decode(), 2)]
            events.append(event("contentBlockStop", {"contentBlockIndex": index}))
        events.append(event("messageStop", {"stopReason": stop}))
        events.append(event("metadata", {"usage": usage, "metrics": {"latencyMs": 12}}))
        await self.send_stream(events, reply, "application/vnd.amazon.eventstream")


class FoundationModel(_Aws):
    async def get(self, model: str) -> None:
        if self.body_fault():
            return
        if model not in self.fake.models:
            self.send_api_error(ApiError(404, f"The model {model} does not exist."))
            return
        await self.send_json({"modelDetails": {"modelId": model, "modelArn": f"arn:aws:bedrock:us-east-1::"
                                               f"foundation-model/{model}", "providerName": "Anthropic",
                                               "responseStreamingSupported": True}})


def _malformed(key: str) -> ApiError:
    return ApiError(400, f"Malformed input request: #: required key [{key}] not found, please reformat your input "
                    "and try again.")


class InvokeEmbeddings(_Aws):
    """InvokeModel on `amazon.titan-embed-*` and `cohere.embed-*` models (others: Bedrock's 400)."""

    def embed(self, model: str) -> tuple[dict[str, Any], int]:
        body = self.body if isinstance(self.body, dict) else {}
        if "amazon.titan-embed" in model:
            text = body.get("inputText")
            if not isinstance(text, str):
                raise _malformed("inputText")
            vector = embedding(text, int(body.get("dimensions") or 8))
            tokens = count_tokens(text)
            return {"embedding": vector, "inputTextTokenCount": tokens, "embeddingsByType": {"float": vector}}, tokens
        if "cohere.embed" in model:
            texts = body.get("texts")
            if not isinstance(texts, list):
                raise _malformed("texts")
            if "input_type" not in body:
                raise _malformed("input_type")
            if len(texts) > 96:
                raise ApiError(400, "Malformed input request: #/texts: expected maximum item count: 96, found: "
                               f"{len(texts)}, please reformat your input and try again.")
            tokens = sum(count_tokens(t) for t in texts)
            return {"embeddings": [embedding(t, 8) for t in texts], "id": "emb-fake", "response_type":
                    "embeddings_floats", "texts": texts}, tokens
        raise ApiError(400, "The provided model identifier is invalid.")

    async def post(self, model: str) -> None:
        found: list[int] = []

        def check() -> dict[str, Any]:
            answer, tokens = self.embed(unquote(model))
            found.append(tokens)
            return answer

        answer = self.checked(check)
        if answer is None:
            return
        self.set_header("X-Amzn-Bedrock-Input-Token-Count", str(found[0]))
        await self.send_json(answer)
