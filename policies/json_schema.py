"""The JSON Schema (draft 2020-12) of policy-config.yaml, generated from the Cerberus schemas lint uses.

Editors with the YAML language server complete and validate a config with it
(`# yaml-language-server: $schema=...`). It is derived, never kept by hand: the rules of
policies/schema.py and each kind's `schema`, with the text and defaults of their `meta`
rules. It is as strict as lint where JSON Schema can say the same thing; lint alone checks
what it cannot: regexes compile (Python `re` syntax), target ids are unique, YAML syntax,
duplicate keys and size limits. The packaged copy is `policies/policy-config.schema.json`.
"""

from __future__ import annotations

import inspect
import json
from importlib import resources
from typing import Any

from policies.kinds import KINDS, Policy
from policies.schema import SEMVER_RE, SINGLE_POLICY_KINDS, document_schema, single_policy_schema

DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_FILE = "policy-config.schema.json"
_TYPES = {"string": "string", "integer": "integer", "number": "number", "boolean": "boolean",
          "dict": "object", "list": "array"}
# Rules handled where they apply (`required` by the parent mapping; `meta` below).
_KNOWN_RULES = {"type", "schema", "required", "allowed", "min", "max", "minlength", "maxlength", "empty",
                "nullable", "regex", "keysrules", "valuesrules", "check_with", "meta"}
# Custom checks of `KtValidator` and what JSON Schema can say of them (None: lint only).
_CHECKS: dict[str, dict[str, Any] | None] = {
    "semver": {"type": "string", "pattern": SEMVER_RE.pattern},
    "secret_ref": {"minProperties": 1, "maxProperties": 1},
    "unique_ids": None,
    "regex": None,
}


def _anchored(pattern: str) -> str:
    """Cerberus matches a `regex` at the start and up to the end: the same in ECMA-262 terms."""
    return f"^(?:{pattern})$"


def _mapping(fields: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": "object",
        "properties": {name: convert(rule) for name, rule in fields.items()},
        "additionalProperties": False,  # lint rejects unknown keys (E002)
    }
    required = [name for name, rule in fields.items() if rule.get("required")]
    if required:
        out["required"] = required
    return out


def convert(rule: dict[str, Any]) -> dict[str, Any]:
    """The JSON Schema of one Cerberus rule set (raises on a rule it does not know, so none is dropped)."""
    unknown = set(rule) - _KNOWN_RULES
    if unknown:
        raise ValueError(f"no JSON Schema translation for Cerberus rule(s) {sorted(unknown)}")
    meta = rule.get("meta") or {}
    out: dict[str, Any] = {k: meta[k] for k in ("description", "default", "examples") if k in meta}
    declared = rule.get("type")
    types = [declared] if isinstance(declared, str) else list(declared or [])
    check = rule.get("check_with")
    if check is not None:
        if check not in _CHECKS:
            raise ValueError(f"no JSON Schema translation for check_with {check!r}")
        out.update(_CHECKS[check] or {})
    if len(types) == 1 and isinstance(rule.get("schema"), dict):
        if types[0] == "dict":
            out.update(_mapping(rule["schema"]))
        elif types[0] == "list":
            out["items"] = convert(rule["schema"])
    json_types = [_TYPES[t] for t in types]
    if json_types:
        if rule.get("nullable"):
            json_types.append("null")
        out["type"] = json_types[0] if len(json_types) == 1 else json_types
    is_list = types == ["list"]
    if "allowed" in rule:
        enum = list(rule["allowed"])
        if is_list:  # Cerberus checks each item of a list against `allowed`
            out.setdefault("items", {})["enum"] = enum
        else:
            out["enum"] = enum + ([None] if rule.get("nullable") else [])
    if "regex" in rule:
        out["pattern"] = _anchored(rule["regex"])
    if "min" in rule:
        out["minimum"] = rule["min"]
    if "max" in rule:
        out["maximum"] = rule["max"]
    lengths = ("minItems", "maxItems") if is_list else ("minLength", "maxLength")
    if "minlength" in rule:
        out[lengths[0]] = rule["minlength"]
    if "maxlength" in rule:
        out[lengths[1]] = rule["maxlength"]
    if rule.get("empty") is False:
        key = {"list": "minItems", "dict": "minProperties"}.get(types[0] if types else "", "minLength")
        out[key] = max(out.get(key, 0), 1)
    if "keysrules" in rule:
        out["propertyNames"] = convert(rule["keysrules"])
    if "valuesrules" in rule:
        out["additionalProperties"] = convert(rule["valuesrules"])
    return out


def _kind_summary(cls: type[Policy]) -> str:
    doc = inspect.getdoc(inspect.getmodule(cls)) or ""
    return doc.split("\n\n", 1)[0].replace("\n", " ")


def _config_document() -> dict[str, Any]:
    out = convert({"type": "dict", "schema": document_schema({k: c.schema for k, c in KINDS.items()})})
    props = out["properties"]
    for kind, cls in KINDS.items():
        props["policy"]["properties"][kind]["description"] = _kind_summary(cls)
    chain = props["policies"]["properties"]["chain"]
    chain["items"]["enum"] = sorted(KINDS)  # E001 unknown kind, E013 unsupported kind
    chain["uniqueItems"] = True  # E020 kind twice in the chain
    # E003: a kind in the chain needs its policy.<kind> block.
    out["allOf"] = [
        {"if": {"required": ["policies"],
                "properties": {"policies": {"properties": {"chain": {"contains": {"const": kind}}}}}},
         "then": {"required": ["policy"], "properties": {"policy": {"required": [kind]}}}}
        for kind in sorted(KINDS)
    ]
    return out


def _single_policy_document(kind: str) -> dict[str, Any]:
    out = convert({"type": "dict", "schema": single_policy_schema(KINDS[kind].schema)})
    out["description"] = f"Single-policy document of {kind}: {_kind_summary(KINDS[kind])}"
    out["properties"]["policy"]["properties"]["name"]["const"] = kind
    return out


def config_json_schema() -> dict[str, Any]:
    """The JSON Schema of policy-config.yaml: a ConfigDocument, or a single-policy document."""
    singles = [k for k in SINGLE_POLICY_KINDS if k in KINDS]
    return {
        "$schema": DIALECT,
        "title": "kt policy-config.yaml",
        "description": "A kt policy config: pack, providers, policies.chain and a policy.<kind> block per kind "
                       "(docs/configuration.md). Generated by `kt policy schema` from the schemas "
                       "`kt policy lint` uses.",
        "type": "object",
        # lint's rule (policies.lint.is_single_policy): no pack or policies, and a `policy` that has a name
        "if": {"not": {"anyOf": [{"required": ["pack"]}, {"required": ["policies"]}]},
               "required": ["policy"],
               "properties": {"policy": {"type": "object", "required": ["name"]}}},
        "then": {"oneOf": [{"$ref": f"#/$defs/single-{k}"} for k in singles]},
        "else": {"$ref": "#/$defs/config-document"},
        "$defs": {"config-document": _config_document(),
                  **{f"single-{k}": _single_policy_document(k) for k in singles}},
    }


def render(schema: dict[str, Any] | None = None) -> str:
    """The schema as the text `kt policy schema` writes (stable: the packaged file is compared to it)."""
    return json.dumps(config_json_schema() if schema is None else schema, indent=2, ensure_ascii=False) + "\n"


def packaged_schema_text() -> str:
    """The schema file shipped in the package."""
    return resources.files("policies").joinpath(SCHEMA_FILE).read_text(encoding="utf-8")
