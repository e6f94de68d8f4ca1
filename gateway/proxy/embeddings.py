"""POST /v1/embeddings: input policies on the texts, then an embeddings target of any provider.

The client speaks OpenAI's format; Google's and Bedrock's answers are translated by
`gateway.providers.embeddings`."""

from __future__ import annotations

from gateway.providers import adapters
from gateway.proxy.errors import invalid
from gateway.proxy.pipeline import ProxyHandler
from policies.model import Phase

TOKENS = "input_tokens"  # how an `input` of token ids stands in the exchange: a part no text kind reads


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
        for i, item in enumerate(texts):
            if not isinstance(item, str) and not _token_ids(item):
                raise invalid(f"`input[{i}]` must be a string, a token id or a list of token ids (integers)",
                              "invalid_input")
        strings = [t for t in texts if isinstance(t, str)]
        messages: list[dict] = [{"role": "user", "content": t} for t in strings]
        if len(strings) != len(texts):  # token ids: text no policy reads (on_unscannable_input decides)
            messages.append({"role": "user", "content": [{"type": TOKENS}]})
        ex, _ = self.exchange(model, messages, [], None)
        await self.reserve(ex, Phase.INPUT)
        self.run_input(ex)
        if strings:  # each text where it stood, redacted; token ids as they were
            redacted = iter([m["content"] for m in ex.messages[:len(strings)]])
            body["input"] = next(redacted) if isinstance(inputs, str) else [
                next(redacted) if isinstance(t, str) else t for t in texts]
        plan = self.plan(ex, adapters.supports_embeddings)
        client = self.services.upstream
        result = await self.with_fallback(plan, lambda target: adapters.embed(client, target, body))
        assert result is not None
        resp, raw = result
        self.record_usage(ex, resp.get("usage"))
        self.account(ex)
        self.send_json(raw if raw is not None else resp)


def _token_ids(item: object) -> bool:
    """A token id, or a list of them (what OpenAI's `input` takes besides strings)."""
    if isinstance(item, list):
        return all(type(t) is int for t in item)
    return type(item) is int
