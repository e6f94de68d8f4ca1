"""The Cerberus schema of policy-config.yaml (Contract 1) and the validator that checks it.

Strict: a key the schema does not name is an error. Each policy kind brings the schema of
its own `policy.<kind>` block (`Policy.schema`). Kind schemas may use two extra rules:
`check_with: regex` (the string must compile as a Python regex) and `check_with: semver`.
"""

from __future__ import annotations

import re
import threading
from typing import Any

import cerberus
from cerberus import errors

from policies.agents import AGENTS_RULE

SEMVER_RE = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$"
)
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
STORE_NAME = r"^[A-Za-z0-9_.-]+$"
VERDICTS = ["allow", "block", "redact", "escalate"]
SINGLE_POLICY_KINDS = ("prompt-injection", "agent-firewall")

# A finding raised from a custom check: info = (lint code, message, suggestion).
KT_ERROR = errors.ErrorDefinition(0x200, "check_with")


def _dict(schema: dict[str, Any], **rules: Any) -> dict[str, Any]:
    return {"type": "dict", "schema": schema, **rules}


def _list(item: dict[str, Any], **rules: Any) -> dict[str, Any]:
    return {"type": "list", "schema": item, **rules}


def _str(**rules: Any) -> dict[str, Any]:
    return {"type": "string", **rules}


PACK = {
    "name": _str(required=True, minlength=1, maxlength=200),
    "version": {"required": True, "check_with": "semver"},
    "enabled": {"type": "boolean", "required": True},
    "id": _str(minlength=1, maxlength=200),
    "author": _str(maxlength=200),
    "description": _str(maxlength=2000),
}

TARGET = {
    "id": _str(required=True, minlength=1, maxlength=200),
    "provider": _str(required=True, regex=r"^[a-z0-9][a-z0-9._-]*$"),
    "model": _str(required=True, minlength=1),
    "base_url": _str(regex=r"^https?://\S+$"),
    "secret_key_ref": _dict(
        {"env": _str(regex=ENV_NAME), "store": _str(regex=STORE_NAME)}, check_with="secret_ref"
    ),
    "api_key_header": _str(regex=r"^[A-Za-z0-9-]+$"),
    "api_key_prefix": _str(),
    "format": _str(allowed=["openai", "anthropic"]),
    "data_policy": _dict({
        "zero_data_retention": {"type": "boolean"},
        "training_opt_out": {"type": "boolean"},
        "retention_days": {"type": "integer", "min": 0, "max": 36500},
    }),
}

PROVIDERS = {
    "targets": _list(_dict(TARGET), check_with="unique_ids"),
    "fallback": _dict({
        "strategy": _str(allowed=["ordered", "round-robin"]),
        "max_retries": {"type": "integer", "min": 0, "max": 10},
        "retry_on": _list(_str(allowed=["5xx", "timeout", "rate_limit"])),
    }),
}

CASE = {
    "name": _str(required=True, minlength=1),
    "description": _str(),
    "input": _dict({
        "messages": _list({"type": "dict"}, required=True),
        "headers": {"type": "dict", "keysrules": _str(), "valuesrules": _str()},
        "tools": _list({"type": "dict"}),
        "model": _str(),
        "upstream_response": {"type": ["string", "dict"]},
    }, required=True),
    "expected": _dict({
        "verdict": _str(required=True, allowed=VERDICTS),
        "reason_code": _str(),
        "targets": _list(_str()),
    }, required=True),
}

TESTING = {
    "default_threshold": {"type": "number", "min": 0, "max": 1},
    "suites": _list(_dict({
        "name": _str(required=True, minlength=1),
        "description": _str(),
        "cases": _list(_dict(CASE), required=True),
    })),
}


def document_schema(kinds: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The schema of a ConfigDocument, given each known kind's block schema."""
    return {
        "pack": _dict(PACK, required=True),
        "providers": _dict(PROVIDERS),
        "policies": _dict({"chain": _list(_str(), required=True)}, required=True),
        "policy": _dict({kind: _dict(schema, nullable=True) for kind, schema in kinds.items()}),
        "agents": AGENTS_RULE,
        "testing": _dict(TESTING),
    }


def single_policy_schema(kind_schema: dict[str, Any]) -> dict[str, Any]:
    """The schema of a single-policy document: `policy: {name, version, enabled}` + the kind's sections."""
    return {
        "policy": _dict({
            "name": _str(required=True),
            "version": {"required": True, "check_with": "semver"},
            "enabled": {"type": "boolean", "required": True},
        }, required=True),
        **kind_schema,
    }


class KtValidator(cerberus.Validator):
    """Cerberus with the checks a config needs beyond types: SemVer, regexes, secret refs, unique ids."""

    def _kt(self, field: str, code: str, message: str, suggestion: str = "") -> None:
        self._error(field, KT_ERROR, code, message, suggestion)

    def _check_with_semver(self, field: str, value: Any) -> None:
        if not isinstance(value, str) or not SEMVER_RE.match(value):
            hint = f" (YAML read {value!r} as a {type(value).__name__}; quote it)" if not isinstance(value, str) else ""
            self._kt(field, "E008", f"'{value}' is not a SemVer version{hint}", "write MAJOR.MINOR.PATCH, e.g. 1.0.0")

    def _check_with_regex(self, field: str, value: Any) -> None:
        values = value if isinstance(value, list) else [value]
        for i, pattern in enumerate(values):
            if not isinstance(pattern, str):
                continue
            try:
                re.compile(pattern)
            except re.error as exc:
                where = f"[{i}]" if isinstance(value, list) else ""
                self._kt(field, "E012", f"invalid regular expression{where} '{pattern}': {exc}",
                         "fix the pattern (Python `re` syntax); escape literal characters such as ( [ . * +")


    def _check_with_secret_ref(self, field: str, value: Any) -> None:
        if isinstance(value, dict) and len({"env", "store"} & value.keys()) != 1:
            self._kt(field, "E004", "secret_key_ref needs exactly one of `env` or `store`",
                     "write {env: OPENAI_API_KEY} or {store: name-of-config-variable}")

    def _check_with_unique_ids(self, field: str, value: Any) -> None:
        seen: dict[str, int] = {}
        for i, item in enumerate(value if isinstance(value, list) else []):
            ident = item.get("id") if isinstance(item, dict) else None
            if not isinstance(ident, str):
                continue
            if ident in seen:
                self._error([errors.ValidationError(
                    (*self.document_path, field, i, "id"), (), KT_ERROR.code, KT_ERROR.rule, None, ident,
                    ("E009", f"duplicate target id '{ident}' (also {field}[{seen[ident]}])",
                     "give every target a unique id"),
                )])
            else:
                seen[ident] = i


_lock = threading.Lock()
_cache: dict[tuple[Any, ...], KtValidator] = {}


def validator_for(schema_key: tuple[Any, ...], build: Any) -> KtValidator:
    """A cached validator (building it is the slow part) for the schema `build()` returns."""
    with _lock:
        validator = _cache.get(schema_key)
        if validator is None:
            validator = KtValidator(build())
            validator.allow_unknown = False
            _cache[schema_key] = validator
        return validator


def validate(validator: KtValidator, doc: dict[str, Any]) -> list[errors.ValidationError]:
    """Run `validator` on `doc` (not normalised) and return its flat leaf errors."""
    with _lock:
        validator.validate(doc, normalize=False)
        return list(_leaves(validator._errors))


def _leaves(errs: Any) -> Any:
    for err in errs:
        if err.is_logic_error or not err.is_group_error:
            yield err
        else:
            yield from _leaves(err.child_errors)
