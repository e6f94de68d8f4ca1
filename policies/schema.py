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
from policies.providers import AZURE_API_VERSION, RESPONSES_API
from policies.rules import meta

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
    "name": _str(required=True, minlength=1, maxlength=200,
                 meta=meta("Name of the policy pack (shown in status and events).")),
    "version": {"required": True, "check_with": "semver",
                "meta": meta("SemVer version of the pack, e.g. 2.3.0 (quote it if YAML could read a number).")},
    "enabled": {"type": "boolean", "required": True,
                "meta": meta("Kill switch: false lets traffic pass with no policies (lint warns W004).")},
    "id": _str(minlength=1, maxlength=200,
               meta=meta("Stable id of the configuration; derived from name when absent.")),
    "author": _str(maxlength=200, meta=meta("Who maintains the pack.")),
    "description": _str(maxlength=2000, meta=meta("What the pack is for.")),
}

TARGET = {
    "id": _str(required=True, minlength=1, maxlength=200,
               meta=meta("Unique id of the target (duplicates are lint error E009).")),
    "provider": _str(required=True, regex=r"^[a-z0-9][a-z0-9._-]*$",
                     meta=meta("Provider id: openai, anthropic, azure-openai, google, bedrock, mock (local demo "
                                "upstream) or an OpenAI-compatible id.",
                                examples=["openai", "anthropic", "azure-openai", "google", "bedrock", "mock"])),
    "model": _str(required=True, minlength=1, meta=meta("Model name sent upstream, e.g. gpt-4o-mini.")),
    "base_url": _str(regex=r"^https?://\S+$", meta=meta("Upstream base URL, http:// or https://.")),
    "secret_key_ref": _dict(
        {"env": _str(regex=ENV_NAME, meta=meta("Environment variable that holds the API key.")),
         "store": _str(regex=STORE_NAME, meta=meta("Name of a config variable that holds the API key."))},
        check_with="secret_ref",
        meta=meta("Where the API key comes from: exactly one of {env: VAR} or {store: name}; never a literal key."),
    ),
    "api_key_header": _str(regex=r"^[A-Za-z0-9-]+$",
                           meta=meta("Header that carries the key (default: Authorization; x-api-key for the "
                                      "anthropic format).")),
    "api_key_prefix": _str(meta=meta("Prefix before the key in that header (default: 'Bearer ' for the openai "
                                      "format, '' for anthropic; '' for raw-key headers).")),
    "format": _str(allowed=["openai", "anthropic"],
                   meta=meta("Wire format the upstream speaks (default: anthropic for provider anthropic, "
                              "else openai).")),
    "deployment": _str(minlength=1, regex=r"^[A-Za-z0-9._-]+$",
                       meta=meta("azure-openai only: the deployment name in the request URL "
                                  "(default: the target's model).")),
    "api_version": _str(regex=r"^\d{4}-\d{2}-\d{2}(-preview)?$",
                        meta=meta("azure-openai only: the api-version query parameter, e.g. 2024-10-21 or "
                                   "2025-01-01-preview.", default=AZURE_API_VERSION)),
    "region": _str(regex=r"^[a-z]{2}(-[a-z]+)+-\d$",
                   meta=meta("bedrock only: the AWS region, e.g. us-east-1 (endpoint host and SigV4 scope).")),
    "responses_api": _str(allowed=list(RESPONSES_API),
                          meta=meta("openai and azure-openai only: how POST /v1/responses reaches this target: "
                                     "native (passed through as Responses to {base_url}/v1/responses; azure-openai: "
                                     "{base_url}/openai/v1/responses) or translate (sent as chat completions). "
                                     "Default: native on api.openai.com, translate on any other base_url and on "
                                     "azure-openai.")),
    "data_policy": _dict({
        "zero_data_retention": {"type": "boolean", "meta": meta("The provider keeps no data.", default=False)},
        "training_opt_out": {"type": "boolean", "meta": meta("The provider does not train on data.", default=False)},
        "retention_days": {"type": "integer", "min": 0, "max": 36500,
                           "meta": meta("Days the provider retains data (unstated when absent).")},
    }, meta=meta("How the provider handles data; data-routing-policy routes on it.")),
}

PROVIDERS = {
    "model_groups": {
        "type": "dict", "keysrules": _str(minlength=1, maxlength=200),
        "valuesrules": _list(_dict({
            "target": _str(required=True, minlength=1, meta=meta("Id of a target in providers.targets.")),
            "weight": {"type": "integer", "min": 1, "max": 1000000,
                       "meta": meta("Share of first attempts this member gets.", default=1)},
        }, meta=meta("One member of the group.")), minlength=1,
            meta=meta("Members of the logical model: drawn by weight, the others are the fallback.")),
        "meta": meta("Logical model names (what clients ask for) mapped to weighted targets across providers."),
    },
    "targets": _list(_dict(TARGET, meta=meta("One upstream provider target.")), check_with="unique_ids",
                     meta=meta("Upstream provider targets, tried in order; ids must be unique.")),
    "fallback": _dict({
        "strategy": _str(allowed=["ordered", "round-robin"],
                         meta=meta("Order targets are tried in.", default="ordered")),
        "max_retries": {"type": "integer", "min": 0, "max": 10,
                        "meta": meta("Further targets tried after a failed attempt.", default=2)},
        "retry_on": _list(_str(allowed=["5xx", "timeout", "rate_limit"]),
                          meta=meta("Failures that move on to the next target.",
                                     default=["5xx", "timeout", "rate_limit"])),
    }, meta=meta("What happens when a target fails.")),
}

CASE = {
    "name": _str(required=True, minlength=1, meta=meta("Name of the case.")),
    "description": _str(meta=meta("What the case checks.")),
    "input": _dict({
        "messages": _list({"type": "dict"}, required=True, meta=meta("Chat messages of the request.")),
        "headers": {"type": "dict", "keysrules": _str(), "valuesrules": _str(),
                    "meta": meta("Request headers, e.g. X-User-ID.")},
        "tools": _list({"type": "dict"}, meta=meta("Tool definitions offered with the request.")),
        "model": _str(meta=meta("Model the request asks for.")),
        "upstream_response": {"type": ["string", "dict"],
                              "meta": meta("What the upstream answers (text or a response body).")},
    }, required=True, meta=meta("The request of the case.")),
    "expected": _dict({
        "verdict": _str(required=True, allowed=VERDICTS, meta=meta("Expected overall verdict.")),
        "reason_code": _str(meta=meta("Expected reason code.")),
        "targets": _list(_str(), meta=meta("Expected target ids left after routing.")),
    }, required=True, meta=meta("What the chain must decide.")),
}

TESTING = {
    "default_threshold": {"type": "number", "min": 0, "max": 1, "meta": meta("Score threshold for suites.")},
    "suites": _list(_dict({
        "name": _str(required=True, minlength=1, meta=meta("Name of the suite.")),
        "description": _str(meta=meta("What the suite covers.")),
        "cases": _list(_dict(CASE, meta=meta("One golden case.")), required=True, meta=meta("The cases.")),
    }, meta=meta("A named group of golden cases.")), meta=meta("Inline golden-test suites (kt policy test).")),
}


def document_schema(kinds: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The schema of a ConfigDocument, given each known kind's block schema."""
    return {
        "pack": _dict(PACK, required=True, meta=meta("Pack metadata: name, SemVer version and the enabled switch.")),
        "providers": _dict(PROVIDERS, meta=meta("Upstream provider targets and fallback.")),
        "policies": _dict({"chain": _list(_str(), required=True, meta=meta(
            "Policy kinds in order; the first block short-circuits the rest. Each needs a policy.<kind> block."))},
            required=True, meta=meta("The policy chain.")),
        "policy": _dict({kind: _dict(schema, nullable=True) for kind, schema in kinds.items()},
                        meta=meta("Options of each kind in the chain (an empty mapping takes the defaults).")),
        "agents": AGENTS_RULE,
        "testing": _dict(TESTING, meta=meta("Inline golden tests.")),
    }


def single_policy_schema(kind_schema: dict[str, Any]) -> dict[str, Any]:
    """The schema of a single-policy document: `policy: {name, version, enabled}` + the kind's sections."""
    return {
        "policy": _dict({
            "name": _str(required=True, meta=meta("The policy kind of this document.")),
            "version": {"required": True, "check_with": "semver", "meta": meta("SemVer version of the policy.")},
            "enabled": {"type": "boolean", "required": True, "meta": meta("Whether the policy runs.")},
        }, required=True, meta=meta("Single-policy document header: name, version and enabled.")),
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
