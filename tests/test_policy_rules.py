"""The Cerberus rule builders of config options (policies.rules): rule order, `meta`, defaults."""

from __future__ import annotations

from policies.json_schema import convert
from policies.rules import choice, flag, meta, option, section, strings


def test_option_puts_type_then_rules_then_meta() -> None:
    assert list(option("integer", "Edits.", default=1, min=0, max=8)) == ["type", "min", "max", "meta"]
    assert option("integer", "Edits.", default=1, min=0) == {
        "type": "integer", "min": 0, "meta": {"description": "Edits.", "default": 1}}


def test_a_default_is_shown_only_when_given_and_none_is_a_default() -> None:
    assert flag("Fold.") == {"type": "boolean", "meta": {"description": "Fold."}}
    assert option("integer", "Days.", default=None, nullable=True)["meta"] == {"description": "Days.", "default": None}
    assert convert(flag("Fold.", False)) == {"description": "Fold.", "default": False, "type": "boolean"}


def test_choice_strings_and_section() -> None:
    assert choice(("a", "b"), "Pick.", "a") == {
        "type": "string", "allowed": ["a", "b"], "meta": {"description": "Pick.", "default": "a"}}
    assert strings("Terms.") == {"type": "list", "schema": {"type": "string", "empty": False},
                                 "meta": {"description": "Terms."}}
    assert section("Part.", {"x": flag("X.")}) == {
        "type": "dict", "meta": meta("Part."), "schema": {"x": {"type": "boolean", "meta": {"description": "X."}}}}
