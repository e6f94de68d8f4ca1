"""The OpenAI embeddings request and answer, as the providers with their own embeddings API read and build them.

`texts(body)`: the strings of `input` (a string or a list of strings; token-id lists are the
client's error, as no native provider takes them); `answer(vectors, model, tokens, body)`: the
OpenAI `list` of `embedding` objects, each vector as floats or, when `encoding_format` is
`base64` (the openai SDK's default), as little-endian float32 bytes in base64;
`estimated_tokens(texts)`: the usage kt reports when the provider counts none (4 characters a
token, as `mock`).
"""

from __future__ import annotations

import base64
import struct
from typing import Any

from gateway.providers.mock import estimate_tokens
from gateway.providers.translate import TranslationError


def texts(body: dict[str, Any]) -> list[str]:
    """The input strings of an embeddings request (`TranslationError` naming `input` otherwise)."""
    inputs = body.get("input")
    items = [inputs] if isinstance(inputs, str) else inputs
    if not isinstance(items, list) or not items or not all(isinstance(t, str) for t in items):
        raise TranslationError("`input` must be a string or a non-empty list of strings for this target "
                               "(token-id lists are served by OpenAI targets only)")
    return items


def estimated_tokens(items: list[str]) -> int:
    return sum(estimate_tokens(t) for t in items)


def answer(vectors: list[Any], model: str, tokens: int, body: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI embeddings answer of `vectors` (lists of numbers), in the encoding the request asked for."""
    packed = body.get("encoding_format") == "base64"
    data = []
    for i, vector in enumerate(vectors):
        if not isinstance(vector, list) or not all(isinstance(x, int | float) for x in vector):
            raise TranslationError(f"embedding {i} is not a list of numbers")
        value: Any = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode() if packed else vector
        data.append({"object": "embedding", "index": i, "embedding": value})
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
