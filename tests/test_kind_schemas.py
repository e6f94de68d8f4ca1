"""Every kind's `schema` is a valid, strict Cerberus schema that accepts the documented examples."""

from __future__ import annotations

import re

import pytest
from cerberus import Validator

from policies.kinds import KINDS
from policies.state import PolicyState
from tests.policy_samples import BAD, EXAMPLES


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_schema_is_valid_and_rejects_unknown_keys(kind: str) -> None:
    validator = Validator(KINDS[kind].schema)  # raises SchemaError for an invalid schema
    assert not validator.validate({"no_such_option": 1})
    assert validator.validate({}), validator.errors


def test_every_kind_has_examples() -> None:
    assert set(EXAMPLES) == set(BAD) == set(KINDS)


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_full_example_validates_and_compiles(kind: str) -> None:
    validator = Validator(KINDS[kind].schema)
    assert validator.validate(EXAMPLES[kind]), validator.errors
    KINDS[kind](EXAMPLES[kind], PolicyState())
    KINDS[kind]({}, PolicyState())  # every option has a default


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_values_rejected(kind: str) -> None:
    assert not Validator(KINDS[kind].schema).validate(BAD[kind])


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_regex_fields_name_schema_fields(kind: str) -> None:
    cls = KINDS[kind]
    for path in cls.regex_fields:
        rule = {"schema": cls.schema}
        for part in path.split("."):
            rule = rule["schema"][part]
        assert rule["type"] == "list" and rule["schema"]["type"] == "string"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_kind_name_and_phases(kind: str) -> None:
    cls = KINDS[kind]
    assert cls.kind == kind and re.fullmatch(r"[a-z]+(-[a-z]+)*", kind) and cls.phases
