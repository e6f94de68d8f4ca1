"""`kt policy schema`: the JSON Schema of policy-config.yaml agrees with lint, and the shipped copy is current.

The invalid documents are the lint tests' fixtures (tests/policy_samples.py, as tests/test_lint_codes.py and
tests/test_kind_schemas.py use them),
each with the code lint gives it. Where the rule is structural the schema rejects the document too;
the few checks JSON Schema cannot express (regexes compile, unique target ids, YAML-level findings)
stay lint's alone, and `LINT_ONLY` pins exactly which (docs/configuration.md, "Editor support").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from kt.commands.init import MODELINE, SCHEMA_FILE, template_names
from policies.json_schema import config_json_schema, convert, packaged_schema_text, render
from policies.kinds import KINDS
from policies.lint import lint_bytes
from tests import ROOT
from tests.kt_process import run_kt
from tests.policy_samples import BAD, BASE, EXAMPLES, GOLDEN_CONFIG

EXAMPLE_CONFIGS = sorted((ROOT / "policies" / "examples").glob("**/policy-config.yaml"))


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(packaged_schema_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def schema_errors(validator: jsonschema.Draft202012Validator, text: str) -> list[str]:
    return [e.message for e in validator.iter_errors(yaml.safe_load(text))]


def lint_codes(text: str) -> list[str]:
    return [f.code for f in lint_bytes(text.encode(), "policy-config.yaml").errors]


# --- the shipped file cannot go stale -------------------------------------------------------------


def test_shipped_schema_is_what_kt_policy_schema_generates(tmp_path: Path) -> None:
    assert packaged_schema_text() == render(), "run: kt policy schema --output policies/policy-config.schema.json"
    r = run_kt("policy", "schema")
    assert r.returncode == 0 and r.stdout == packaged_schema_text()
    out = tmp_path / "schema.json"
    r = run_kt("policy", "schema", "--output", str(out))
    assert r.returncode == 0 and out.read_text() == packaged_schema_text() and r.stdout == ""
    assert "Wrote" in r.stderr


def test_output_to_an_unwritable_place_is_a_clear_error(tmp_path: Path) -> None:
    r = run_kt("policy", "schema", "--output", str(tmp_path / "missing" / "schema.json"))
    assert r.returncode == 1 and "cannot write" in r.stderr and "Traceback" not in r.stderr


def test_schema_is_draft_2020_12_with_descriptions_enums_and_defaults() -> None:
    schema = config_json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    doc = schema["$defs"]["config-document"]
    blocks = doc["properties"]["policy"]["properties"]
    assert set(blocks) == set(KINDS)
    assert doc["properties"]["policies"]["properties"]["chain"]["items"]["enum"] == sorted(KINDS)

    def options(node: dict[str, Any], path: str) -> Any:
        for name, prop in (node.get("properties") or {}).items():
            yield f"{path}.{name}", prop
            yield from options(prop, f"{path}.{name}")
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            yield from options(extra, f"{path}.*")
        if isinstance(node.get("items"), dict):
            yield from options(node["items"], f"{path}[]")

    undescribed = [p for p, prop in options(doc, "") if "description" not in prop]
    assert undescribed == [], "add a `meta: {description: ...}` to these Cerberus rules"
    pii = blocks["pii-detector"]["properties"]
    assert pii["action"]["enum"] == ["redact", "block"] and pii["action"]["default"] == "redact"
    assert blocks["rbac"]["properties"]["deny_if_missing"]["default"] == ["X-User-ID"]
    assert blocks["dlp-filter"]["additionalProperties"] is False  # strict, like lint (E002)


def test_an_untranslatable_cerberus_rule_fails_generation() -> None:
    with pytest.raises(ValueError, match="coerce"):
        convert({"type": "string", "coerce": int})
    with pytest.raises(ValueError, match="check_with"):
        convert({"type": "string", "check_with": "something_new"})


# --- accepts what lint accepts --------------------------------------------------------------------


def _valid_documents() -> dict[str, str]:
    docs = {str(p.relative_to(ROOT)): p.read_text() for p in EXAMPLE_CONFIGS}
    docs["bench/policy-config.yaml"] = (ROOT / "bench" / "policy-config.yaml").read_text().replace(
        "__UPSTREAM__", "http://127.0.0.1:9")
    docs["tests/test_lint_golden.py CONFIG"] = GOLDEN_CONFIG.decode()
    docs["tests/test_lint_codes.py BASE"] = BASE
    chain = ", ".join(sorted(EXAMPLES))
    every_option = {"pack": {"name": "all", "version": "1.0.0-rc.1+b.2", "enabled": True},
                    "policies": {"chain": sorted(EXAMPLES)}, "policy": EXAMPLES}
    docs[f"every option of every kind ({chain})"] = json.dumps(every_option)
    docs["single-policy prompt-injection"] = (
        "policy: {name: prompt-injection, version: 1.0.0, enabled: true}\n"
        "detection: {attack_patterns: ['(?i)open the pod bay doors']}\nresponse: {action: block}\n")
    docs["single-policy agent-firewall"] = (
        "policy: {name: agent-firewall, version: 2.0.0, enabled: false}\nallowed_tools: [search]\n")
    docs["agents, testing, null block"] = BASE + (
        "  pii-detector:\n"
        "agents:\n  support-bot: {max_cost_usd_per_day: 25.0, max_requests_per_hour: 500}\n"
        "testing:\n  suites:\n    - name: s\n      cases:\n        - name: c\n"
        "          input: {messages: [{role: user, content: hi}], headers: {X-User-ID: u}}\n"
        "          expected: {verdict: allow}\n")
    return docs


VALID = _valid_documents()


def test_every_bundled_example_is_covered() -> None:
    assert len(EXAMPLE_CONFIGS) >= 4 and {p.parent.name for p in EXAMPLE_CONFIGS} >= set(template_names())


@pytest.mark.parametrize("name", sorted(VALID))
def test_schema_accepts_what_lint_accepts(validator: jsonschema.Draft202012Validator, name: str) -> None:
    assert lint_codes(VALID[name]) == []
    assert schema_errors(validator, VALID[name]) == []


# --- rejects what lint rejects ----------------------------------------------------------------------

# The lint code of each kind's bad options in tests/test_kind_schemas.py.
BAD_CODES = {"prompt-injection": "E006", "pii-detector": "E006", "dlp-filter": "E007", "rbac": "E019",
             "agent-firewall": "E007", "audit-logger": "E007", "data-routing-policy": "E006", "spend-limit": "E004",
             "safety-filter": "E006"}
NO_BLOCK = BASE.replace("policy:\n  audit-logger: {retention_days: 30}\n", "policy: {}\n")


def with_block(kind: str, block: str) -> str:
    """BASE with `kind` first in the chain and `block` as its options."""
    if kind == "audit-logger":
        return BASE.replace("{retention_days: 30}", block)
    return BASE.replace("chain: [audit-logger]", f"chain: [{kind}, audit-logger]") + f"  {kind}: {block}\n"


def with_target_field(line: str) -> str:
    return BASE.replace("model: demo-model", f"model: demo-model\n      {line}")


# (fixture name, document, the lint code it triggers)
INVALID: list[tuple[str, str, str]] = [
    ("e001 unknown kind in the chain", BASE.replace("chain: [audit-logger]", "chain: [audit-loger, audit-logger]"),
     "E001"),
    ("e001 unknown kind block", BASE + "  audit-loger: {}\n", "E001"),
    ("e002 unknown pack key", BASE.replace("version: 1.2.3", "version: 1.2.3, verison: 2"), "E002"),
    ("e002 unknown top-level key", BASE + "cache: {}\n", "E002"),
    ("e002 unknown kind option", BASE.replace("retention_days: 30", "retension_days: 30"), "E002"),
    ("e002 literal api_key", with_target_field("api_key: sk-x"), "E002"),
    ("e003 chain kind without a block", NO_BLOCK, "E003"),
    ("e003 chain kind without any policy mapping", NO_BLOCK.replace("policy: {}\n", ""), "E003"),
    ("e004 missing pack.enabled", BASE.replace(", enabled: true", ""), "E004"),
    ("e004 empty secret_key_ref", with_target_field("secret_key_ref: {}"), "E004"),
    ("e004 both env and store", with_target_field("secret_key_ref: {env: A, store: b}"), "E004"),
    ("e004 missing policies", "pack: {name: a, version: 1.0.0, enabled: true}\n", "E004"),
    ("e004 case without expected", BASE + "testing:\n  suites:\n    - name: s\n      cases:\n        - name: c\n"
     "          input: {messages: []}\n", "E004"),
    ("e005 type", BASE.replace("enabled: true", "enabled: maybe"), "E005"),
    ("e006 enum", BASE.replace("strategy: ordered", "strategy: orderd"), "E006"),
    ("e006 enum in a list", BASE.replace("[5xx, timeout]", "[5xx, timeot]"), "E006"),
    ("e006 case verdict", BASE + "testing:\n  suites:\n    - name: s\n      cases:\n        - name: c\n"
     "          input: {messages: []}\n          expected: {verdict: blocked}\n", "E006"),
    ("e007 minimum", BASE.replace("retention_days: 30", "retention_days: 0"), "E007"),
    ("e007 max length", BASE.replace("name: shop", "name: " + "x" * 201), "E007"),
    ("e007 agents range", BASE + "agents:\n  bot: {max_cost_usd_per_day: 5, max_requests_per_hour: 0}\n", "E007"),
    *[(f"e008 semver {v}", BASE.replace("1.2.3", v), "E008") for v in ("1.0", "v1.0.0", "1.0.0.0", "01.0.0")],
    ("e011 not a mapping", "- pack\n", "E011"),
    ("e013 unsupported kind in the chain", with_block("quality-scorer", "{}"), "E013"),
    ("e013 unsupported kind block", BASE + "  citation-verifier: {}\n", "E013"),
    ("e019 env name", with_target_field("secret_key_ref: {env: 1BAD}"), "E019"),
    ("e019 base_url", with_target_field("base_url: api.example.com"), "E019"),
    ("e019 agent id", BASE + "agents:\n  'bad agent!': {max_requests_per_hour: 5}\n", "E019"),
    ("e020 kind twice", BASE.replace("chain: [audit-logger]", "chain: [audit-logger, audit-logger]"), "E020"),
    ("e021 single-policy document of another kind",
     "policy: {name: audit-logger, version: 1.0.0, enabled: true}\nretention_days: 3\n", "E021"),
    ("e013 single-policy document of an unsupported kind",
     "policy: {name: citation-verifier, version: 1.0.0, enabled: true}\n", "E013"),
    ("e001 single-policy document of an unknown kind",
     "policy: {name: prompt-injektion, version: 1.0.0, enabled: true}\n", "E001"),
    ("e002 single-policy unknown section",
     "policy: {name: prompt-injection, version: 1.0.0, enabled: true}\ncolour: red\n", "E002"),
    ("e008 single-policy version", "policy: {name: agent-firewall, version: one, enabled: true}\n", "E008"),
    *[(f"bad {kind} option {BAD[kind]}", with_block(kind, json.dumps(BAD[kind])), BAD_CODES[kind])
      for kind in sorted(BAD)],
]
# What lint rejects and JSON Schema cannot say; the schema accepts these (docs/configuration.md says so).
LINT_ONLY: list[tuple[str, str, str]] = [
    ("e009 duplicate target id: uniqueItems compares whole items, not one field",
     BASE.replace("  fallback:", "    - {id: demo, provider: mock, model: other}\n  fallback:"), "E009"),
    ("e012 invalid regex: Python `re` syntax, checked by compiling",
     with_block("dlp-filter", "{detect_patterns: ['AKIA[0-9A-Z{16}']}"), "E012"),
    ("e012 invalid attack pattern", "policy: {name: prompt-injection, version: 1.0.0, enabled: true}\n"
     "detection: {attack_patterns: ['(unclosed']}\n", "E012"),
    ("e014 duplicate key: YAML parsers keep one of them", BASE + "policies: {chain: []}\n", "E014"),
]


@pytest.mark.parametrize(("name", "text", "code"), INVALID, ids=[i[0] for i in INVALID])
def test_schema_rejects_what_lint_rejects(validator: jsonschema.Draft202012Validator, name: str, text: str,
                                          code: str) -> None:
    codes = lint_codes(text)
    assert code in codes, codes
    assert schema_errors(validator, text), f"the schema accepts what lint rejects with {codes}"


@pytest.mark.parametrize(("name", "text", "code"), LINT_ONLY, ids=[i[0] for i in LINT_ONLY])
def test_checks_only_lint_makes(validator: jsonschema.Draft202012Validator, name: str, text: str,
                                code: str) -> None:
    assert code in lint_codes(text)
    assert schema_errors(validator, text) == []


def test_every_kinds_bad_values_are_covered() -> None:
    assert set(BAD_CODES) == set(BAD) == set(KINDS)


# --- kt init writes the modeline -----------------------------------------------------------------------------


def test_kt_init_writes_the_modeline_and_the_schema_beside_it(tmp_path: Path,
                                                               validator: jsonschema.Draft202012Validator) -> None:
    r = run_kt("init", "--dir", str(tmp_path))
    assert r.returncode == 0, r.stderr
    config = (tmp_path / "policy-config.yaml").read_text()
    assert config.splitlines()[0] == MODELINE.strip() == "# yaml-language-server: $schema=./policy-config.schema.json"
    assert (tmp_path / SCHEMA_FILE).read_text() == packaged_schema_text()
    assert schema_errors(validator, config) == []
    assert run_kt("policy", "lint", "--file", str(tmp_path / "policy-config.yaml")).returncode == 0
