"""POST /v1/embeddings: input policies on the texts, then an embeddings target of any provider.

The client speaks OpenAI's format; Google's and Bedrock's answers are translated by
`gateway.providers.embeddings`."""

from __future__ import annotations

from gateway.providers import adapters
from gateway.proxy.errors import invalid
from gateway.proxy.pipeline import ProxyHandler
from policies.model import Phase


class EmbeddingsHandler(ProxyHandler):
    """POST /v1/embeddings: input policies on the texts, then the first embeddings target that answers."""

    async def post(self) -> None:
        body = self.body_json()
        model, inputs = body.get("model"), body.get("input")
        if not isinstance(model, str) or not model:
            raise invalid("`model` is required and must be a string", "missing_model")
        texts = [inputs] if isinstance(inputs, str) else inputs
        if not isinstance(texts, list) or not texts:
            raise invalid("`input` is required: a string or a non-empty list of strings", "missing_input")
        strings = [t for t in texts if isinstance(t, str)]
        messages = [{"role": "user", "content": t} for t in strings]
        ex, _ = self.exchange(model, messages, [], None)
        await self.reserve(ex, Phase.INPUT)
        self.run_input(ex)
        if strings and len(strings) == len(texts):
            redacted = [m["content"] for m in ex.messages]
            body["input"] = redacted[0] if isinstance(inputs, str) else redacted
        plan = self.plan(ex, adapters.supports_embeddings)
        client = self.services.upstream
        result = await self.with_fallback(plan, lambda target: adapters.embed(client, target, body))
        assert result is not None
        resp, raw = result
        self.record_usage(ex, resp.get("usage"))
        self.account(ex)
        self.send_json(raw if raw is not None else resp)
