"""Builders of the Cerberus rules of config options, each with its documentation.

Every option carries a `meta` rule, which validation ignores: its description and default are
what `kt policy schema` (policies.json_schema) and the docs show. A default given here is
documentation only; the code that reads the option applies it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

_UNDOCUMENTED: Any = object()  # no default to show


def meta(description: str, **more: Any) -> dict[str, Any]:
    """The `meta` rule of an option: its description and, in `more`, its default or examples."""
    return {"description": description, **more}


def option(type_: str, description: str, *, default: Any = _UNDOCUMENTED, **rules: Any) -> dict[str, Any]:
    """An option of Cerberus type `type_` with its other `rules`, described (and its default shown)."""
    shown = meta(description) if default is _UNDOCUMENTED else meta(description, default=default)
    return {"type": type_, **rules, "meta": shown}


def flag(description: str, default: Any = _UNDOCUMENTED) -> dict[str, Any]:
    """A boolean option."""
    return option("boolean", description, default=default)


def choice(allowed: Iterable[str], description: str, default: Any = _UNDOCUMENTED) -> dict[str, Any]:
    """A string option that takes one of `allowed`."""
    return option("string", description, default=default, allowed=list(allowed))


def strings(description: str) -> dict[str, Any]:
    """A list of non-empty strings: regexes (a kind names those in `regex_fields`), globs, terms."""
    return option("list", description, schema={"type": "string", "empty": False})


def section(description: str, options: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A mapping of named `options`."""
    return {"type": "dict", "meta": meta(description), "schema": options}


# The edit distance of fuzzy term matching (policies.termmatch), shared by the kinds that offer it.
FUZZY_DISTANCE = option("integer", "Edits allowed by fuzzy_matching.", default=1, min=0, max=8)
