"""Policy-config samples that several test modules check: each kind's full and bad options, the lint tests'
base config, the golden-test config and the YAML alias bomb (lint, `kt policy lint`, `kt policy schema`)."""

from __future__ import annotations

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


BASE = """\
pack: {name: shop, version: 1.2.3, enabled: true}
providers:
  targets:
    - id: demo
      provider: mock
      model: demo-model
  fallback: {strategy: ordered, max_retries: 1, retry_on: [5xx, timeout]}
policies:
  chain: [audit-logger]
policy:
  audit-logger: {retention_days: 30}
"""


GOLDEN_CONFIG = b"""\
pack: {name: g, version: 1.0.0, enabled: true}
providers:
  targets:
    - {id: zdr, provider: mock, model: m, data_policy: {zero_data_retention: true, training_opt_out: true}}
    - {id: std, provider: mock, model: m}
policies:
  chain: [data-routing-policy, agent-firewall, audit-logger]
policy:
  data-routing-policy: {require_zero_data_retention: true}
  agent-firewall: {allowed_tools: [search], max_actions_per_session: 1}
  audit-logger: {}
"""


BOMB = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{c}: &{c} [" + ",".join([f"*{p}"] * 9) + "]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)
)
