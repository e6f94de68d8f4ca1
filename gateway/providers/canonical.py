"""Small readers and builders of the canonical (OpenAI chat) form shared by the providers' translators.

`text_of(content)`: the text of a message's content (a string, or the `text` parts of a list);
`usage(prompt, completion, total)`: a canonical `usage` object from a provider's token counts.
"""

from __future__ import annotations

from typing import Any


def text_of(content: Any) -> str:
    """The text of canonical message content: the string itself, or its `text` parts joined (a null text is none)."""
    if isinstance(content, str):
        return content
    return "".join(p.get("text") or "" for p in content or () if isinstance(p, dict) and p.get("type") == "text")


def usage(prompt: Any, completion: Any, total: Any = None) -> dict[str, int]:
    """A canonical `usage` (missing counts are 0; `total` defaults to their sum)."""
    prompt, completion = prompt or 0, completion or 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total or prompt + completion}
