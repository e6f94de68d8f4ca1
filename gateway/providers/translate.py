"""What every provider's translation shares: `TranslationError` and the guard that raises it.

The translations themselves live one module per provider (and, for Anthropic, per direction),
pure functions and stream converters with no I/O:

- Anthropic Messages <-> canonical: `anthropic_request.py` (requests both ways),
  `anthropic_response.py` (answers both ways, stop reasons, usage, the error body),
  `anthropic_stream.py` (streams both ways), `anthropic_content.py` (content blocks <-> parts
  and tool calls, which requests and answers share);
- OpenAI chat (the canonical form itself): `openai_stream.py` (a completion as stream chunks,
  the error on a stream), `canonical.py` (its text and usage); Azure OpenAI: `azure.py`;
- Gemini: `google.py`; Bedrock Converse: `bedrock.py`; the Responses API: `responses.py`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar


class TranslationError(ValueError):
    """Input that cannot be translated; the message says what is wrong.

    From a request function: the client's fault (answer 400). From a response function or a
    stream translator: the upstream sent something malformed (answer 502).
    """


_F = TypeVar("_F", bound=Callable[..., Any])


def guarded(what: str) -> Callable[[_F], _F]:
    """Turn a stray TypeError/AttributeError on malformed input into a TranslationError (never a traceback)."""

    def decorate(fn: _F) -> _F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except TranslationError:
                raise
            except (TypeError, AttributeError, KeyError, IndexError, ValueError) as exc:
                raise TranslationError(f"malformed {what}: {exc}") from None

        return wrapper  # type: ignore[return-value]

    return decorate

