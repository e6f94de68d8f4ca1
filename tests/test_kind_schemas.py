"""Every kind's `schema` is a valid, strict Cerberus schema that accepts the documented examples."""

from __future__ import annotations

import re

import pytest
from cerberus import Validator

from policies.kinds import KINDS
from policies.state import PolicyState

EXAMPLES = {
    "prompt-injection": {
        "embedding_threshold": 0.75,
        "detection": {"attack_patterns": [r"(?i)open the pod bay doors"], "embedding_threshold": 0.8},
        "encoding": {"decode_base64": True, "normalize_unicode": True, "detect_homoglyphs": True},
        "boundaries": {"enforce_delimiters": True, "reject_fake_boundaries": True},
        "response": {"action": "block", "message": "Request blocked", "log_level": "warning"},
    },
    "pii-detector": {
        "action": "redact",
        "pci_mode": True,
        "healthcare_mode": False,
        "entities": ["email", "credit_card"],
        "detect_patterns": [r"EMP-\d{6}"],
        "redaction": {
            "marker_format": "label",
            "include_metadata": True,
            "preserve_length": False,
            "custom_markers": {"EMAIL": "<email>"},
        },
    },
    "dlp-filter": {
        "detect_patterns": ["AKIA[0-9A-Z]{16}"],
        "blocked_terms": ["project-bluebird"],
        "action": "block",
        "fuzzy_matching": True,
        "max_distance": 2,
        "sensitivity_level": "high",
    },
    "rbac": {
        "deny_if_missing": ["X-User-ID"],
        "require_auth": False,
        "default_role": "viewer",
        "roles": {"viewer": {"allowed_tools": ["search"], "denied_tools": ["drop_*"]}},
    },
    "agent-firewall": {
        "allowed_tools": ["search", "create_ticket"],
        "blocked_tools": ["shell_*"],
        "max_actions_per_session": 50,
        "action": "block",
    },
    "data-routing-policy": {
        "require_zero_data_retention": True,
        "require_no_training": True,
        "max_retention_days": 30,
        "on_no_compliant_provider": "block",
        "log_provider_selection": True,
    },
    "spend-limit": {
        "max_daily_usd": 50,
        "max_request_usd": 0.5,
        "per": "user",
        "prices": {"llama-3-70b": {"input_per_mtok": 0.5, "output_per_mtok": 0.7}},
    },
    "safety-filter": {
        "mode": "critical_infrastructure",
        "block_if": ["weapons", "critical_infrastructure"],
        "categories": {"gambling": ["sure bet tips"]},
        "action": "escalate",
        "fuzzy_matching": True,
        "max_distance": 1,
    },
    "audit-logger": {"immutable": True, "retention_days": 365, "log_all_access": True, "hipaa_audit_controls": False},
}

BAD = {
    "prompt-injection": {"response": {"action": "shout"}},
    "pii-detector": {"action": "mask"},
    "dlp-filter": {"max_distance": 9},
    "rbac": {"deny_if_missing": ["X User"]},
    "agent-firewall": {"max_actions_per_session": 0},
    "audit-logger": {"retention_days": 0},
    "data-routing-policy": {"on_no_compliant_provider": "allow"},
    "spend-limit": {"prices": {"m": {"input_per_mtok": 1}}},
    "safety-filter": {"block_if": ["nonsense"]},
}


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
