"""Strict validation of policy configs into lint findings, and linting of files and directories.

Codes are stable (docs/configuration.md lists them all):

errors    E001 unknown policy kind · E002 unknown key · E003 chain kind without a `policy.<kind>` block ·
          E004 missing required key · E005 wrong type · E006 value not allowed (enum) · E007 out of range ·
          E008 not SemVer · E009 duplicate target id · E010 YAML syntax · E011 not a mapping ·
          E012 invalid regex · E013 kind not supported by this gateway · E014 duplicate YAML key ·
          E015 file too large · E016 binary or not UTF-8 · E017 alias bomb or too deep · E018 empty file ·
          E019 invalid value · E020 kind twice in the chain · E021 single-policy document of another kind ·
          E022 target lacks a field its provider requires · E023 target field of another provider ·
          E024 model group member that names no target ·
          E100 cannot read file · E101 no policy config found
warnings  W001 block whose kind is not in the chain · W002 secret env var not set ·
          W003 audit-logger not last · W004 pack disabled · W005 provider id close to a native one
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cerberus import errors as cerr

from policies.findings import Finding
from policies.kinds import KINDS, UNSUPPORTED_KINDS
from policies.providers import ALIASES, NATIVE, ONLY_FOR, REQUIRED
from policies.schema import (
    KT_ERROR,
    SINGLE_POLICY_KINDS,
    document_schema,
    single_policy_schema,
    validate,
    validator_for,
)
from policies.state import PolicyState
from policies.yaml_loader import MAX_BYTES, join_path, load_yaml, too_large

_TYPE_NAMES = {str: "string", int: "integer", float: "number", bool: "boolean", dict: "mapping", list: "list",
               type(None): "null"}
_FORMAT_HELP = {
    "env": "an environment variable name: letters, digits and _ (not starting with a digit)",
    "store": "a config variable name: ASCII letters, digits, _, - and .",
    "base_url": "an http:// or https:// URL",
    "provider": "a lower-case provider id such as openai, anthropic, mock or an OpenAI-compatible id",
    "api_key_header": "an HTTP header name such as Authorization or x-api-key",
    "agents": "an agent id (as sent in X-Agent-ID): letters, digits, _ . : - starting with a letter or digit",
}
_REGEX_HELP = "fix the pattern (Python `re` syntax); escape literal characters such as ( [ . * +"
_UNSUPPORTED = "needs a model or an external service"


# ----------------------------------------------------------------------------------------------
# validation of a parsed document


def is_single_policy(doc: Mapping[str, Any]) -> bool:
    """True for a single-policy document (`policy: {name, version, enabled}` + sections, no pack)."""
    policy = doc.get("policy")
    return "pack" not in doc and "policies" not in doc and isinstance(policy, dict) and "name" in policy


def as_config_document(doc: dict[str, Any]) -> dict[str, Any]:
    """The ConfigDocument form of a valid document (a single-policy document becomes a one-kind chain)."""
    if not is_single_policy(doc):
        return doc
    head = doc["policy"]
    kind = head["name"]
    return {
        "pack": {"name": kind, "version": head["version"], "enabled": head["enabled"]},
        "policies": {"chain": [kind]},
        "policy": {kind: {k: v for k, v in doc.items() if k != "policy"}},
    }


def _did_you_mean(word: str, candidates: Any) -> str:
    match = difflib.get_close_matches(str(word), [str(c) for c in candidates], n=1, cutoff=0.6)
    return f"did you mean '{match[0]}'? " if match else ""


def _kind_finding(kind: str, path: str) -> Finding:
    if kind in UNSUPPORTED_KINDS:
        return Finding("E013", path, f"policy kind '{kind}' is not supported by this gateway ({_UNSUPPORTED})",
                       "remove it; supported kinds: " + ", ".join(sorted(KINDS)))
    return Finding("E001", path, f"unknown policy kind '{kind}'",
                   _did_you_mean(kind, KINDS) + "known kinds: " + ", ".join(sorted(KINDS)))


def _rules_at(root: dict[str, Any], path: tuple[Any, ...]) -> dict[str, Any] | None:
    rules: Any = {"type": "dict", "schema": root}
    for part in path:
        if not isinstance(rules, dict):
            return None
        if rules.get("type") == "list":
            rules = rules.get("schema")
        elif isinstance(rules.get("schema"), dict) and part in rules["schema"]:
            rules = rules["schema"][part]
        elif "valuesrules" in rules:
            rules = rules["valuesrules"]
        else:
            return None
    return rules if isinstance(rules, dict) else None


def _type_name(value: Any) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def finding_from_error(err: cerr.ValidationError, root: dict[str, Any]) -> Finding:
    """One Cerberus error as a lint finding with a stable code."""
    dpath = err.document_path
    path = ""
    for part in dpath:
        path = join_path(path, part)
    field = next((p for p in reversed(dpath) if not isinstance(p, int)), "")
    if "keysrules" in err.schema_path and len(dpath) > 1:
        field = dpath[-2]  # the key itself is wrong: name the mapping that holds it
    value = err.value
    code = err.code
    if code == KT_ERROR.code:
        lint_code, message, suggestion = err.info
        return Finding(lint_code, path, message, suggestion)
    if code == cerr.UNKNOWN_FIELD.code:
        parent = path[: -len(str(field))].rstrip(".") if dpath else ""
        rules = _rules_at(root, dpath[:-1]) or {}
        valid = sorted(rules.get("schema") or {}) if rules.get("type", "dict") == "dict" else []
        where = f"in {parent}" if parent else "at the top level"
        if field == "api_key":
            return Finding("E002", path, f"unknown key 'api_key' {where}",
                           "never write a key into the config: use secret_key_ref: {env: VAR}")
        listing = f"valid keys: {', '.join(valid)}" if valid else "this mapping takes no keys"
        return Finding("E002", path, f"unknown key '{field}' {where}", _did_you_mean(field, valid) + listing)
    if code == cerr.REQUIRED_FIELD.code:
        return Finding("E004", path, f"missing required key '{field}'", f"add `{field}:`")
    if code in (cerr.BAD_TYPE.code, cerr.NOT_NULLABLE.code, cerr.BAD_TYPE_FOR_SCHEMA.code):
        wanted = err.constraint if code == cerr.BAD_TYPE.code else "a value"
        wanted = " or ".join(wanted) if isinstance(wanted, list) else wanted
        wanted = {"dict": "mapping"}.get(wanted, wanted)
        article = "an" if str(wanted)[:1] in "aeiou" else "a"
        return Finding("E005", path, f"expected {wanted}, got {_type_name(value)}",
                       f"write `{field}` as {article} {wanted}")
    if code in (cerr.UNALLOWED_VALUE.code, cerr.UNALLOWED_VALUES.code):
        allowed = list(err.constraint or [])
        bad = value if code == cerr.UNALLOWED_VALUE.code else [v for v in value if v not in allowed]
        bad_text = ", ".join(f"'{b}'" for b in bad) if isinstance(bad, list) else f"'{bad}'"
        first = bad[0] if isinstance(bad, list) and bad else bad
        return Finding("E006", path, f"{bad_text} is not allowed for {field}",
                       _did_you_mean(first, allowed) + "allowed: " + ", ".join(map(str, allowed)))
    if code in (cerr.MIN_VALUE.code, cerr.MAX_VALUE.code):
        bound = "at least" if code == cerr.MIN_VALUE.code else "at most"
        return Finding("E007", path, f"{field} must be {bound} {err.constraint} (got {value})",
                       f"use a value {bound} {err.constraint}")
    if code in (cerr.MIN_LENGTH.code, cerr.MAX_LENGTH.code, cerr.EMPTY_NOT_ALLOWED.code, cerr.ITEMS_LENGTH.code):
        unit = "characters" if isinstance(value, str) else "items"
        if code == cerr.EMPTY_NOT_ALLOWED.code:
            return Finding("E007", path, f"{field} must not be empty", f"give `{field}` a value")
        bound = "at least" if code == cerr.MIN_LENGTH.code else "at most"
        return Finding("E007", path, f"{field} must have {bound} {err.constraint} {unit} (has {len(value)})",
                       f"use {bound} {err.constraint} {unit}")
    if code == cerr.REGEX_MISMATCH.code and "keysrules" in err.schema_path:
        return Finding("E019", path, f"'{value}' is not a valid key in {field}",
                       f"write {_FORMAT_HELP.get(str(field), f'a key matching {err.constraint}')}")
    if code == cerr.REGEX_MISMATCH.code:
        return Finding("E019", path, f"'{value}' is not a valid {field}",
                       f"write {_FORMAT_HELP.get(str(field), f'a value matching {err.constraint}')}")
    if err.is_logic_error:
        return Finding("E019", path, f"{field} matches none of the allowed forms", "see docs/configuration.md")
    if code == cerr.CUSTOM.code:
        return Finding("E019", path, str(err.info[0]) if err.info else "invalid value", "")
    message = cerr.BasicErrorHandler.messages.get(code, "invalid value")
    with contextlib.suppress(IndexError, KeyError):
        message = message.format(*err.info, constraint=err.constraint, field=field, value=value)
    return Finding("E019", path, f"{field}: {message}", "see docs/configuration.md")


def _schema_findings(key: tuple[Any, ...], root: dict[str, Any], doc: dict[str, Any]) -> list[Finding]:
    return [finding_from_error(err, root) for err in validate(validator_for(key, lambda: root), doc)]


def _strings(obj: Any, path: str, key: str = "") -> Any:
    """(path, key, string) of every string below `obj`; `key` is the nearest mapping key."""
    if isinstance(obj, str):
        yield path, key, obj
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, value in items:
        yield from _strings(value, join_path(path, k), k if isinstance(k, str) else key)


def _bad_regexes(block: Any, path: str, pattern: Any) -> list[tuple[str, str, re.error]]:
    """The options that fail to compile: the one equal to `pattern`, or any in a `*pattern*` key."""
    bad = []
    for where, key, text in _strings(block, path):
        if text == pattern or "pattern" in key:
            try:
                re.compile(text)
            except re.error as exc:
                bad.append((where, text, exc))
    return bad


def _regex_field_findings(kind: str, block: Any, path: str) -> list[Finding]:
    """Compile each option the kind names in `regex_fields`."""
    found = []
    for dotted in getattr(KINDS[kind], "regex_fields", ()):
        value = block
        for part in dotted.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        where = join_path(path, dotted)
        values = value if isinstance(value, list) else []
        items = [(where, value)] if isinstance(value, str) else [
            (join_path(where, i), v) for i, v in enumerate(values) if isinstance(v, str)
        ]
        for item_path, text in items:
            try:
                re.compile(text)
            except re.error as exc:
                found.append(Finding("E012", item_path, f"invalid regular expression '{text}': {exc}", _REGEX_HELP))
    return found


def _compile_findings(kind: str, block: Any, path: str) -> list[Finding]:
    """Build the policy once, as the gateway will: every regex compiles, every option is accepted."""
    regex_errors = _regex_field_findings(kind, block, path)
    if regex_errors:
        return regex_errors
    try:
        KINDS[kind](block or {}, PolicyState())
    except Exception as exc:
        rex = exc if isinstance(exc, re.error) else exc.__cause__ if isinstance(exc.__cause__, re.error) else None
        if rex is None:
            return [Finding("E019", path, f"policy {kind} rejects its options: {exc}", "see docs/policies.md")]
        bad = _bad_regexes(block, path, rex.pattern) or [(path, str(rex.pattern), rex)]
        return [Finding("E012", where, f"invalid regular expression '{text}': {err}", _REGEX_HELP)
                for where, text, err in bad]
    return []


def _has_errors_under(findings: list[Finding], path: str) -> bool:
    return any(f.path == path or f.path.startswith((path + ".", path + "[")) for f in findings)


def _validate_single(doc: dict[str, Any]) -> list[Finding]:
    kind = doc["policy"]["name"]
    if not isinstance(kind, str):
        return [Finding("E005", "policy.name", f"expected string, got {_type_name(kind)}", "write the kind name")]
    if kind not in KINDS:
        return [_kind_finding(kind, "policy.name")]
    if kind not in SINGLE_POLICY_KINDS:
        return [Finding("E021", "policy.name", f"a single-policy document cannot hold '{kind}'",
                        f"single-policy documents exist for {', '.join(SINGLE_POLICY_KINDS)} only; "
                        "write a full config with pack, policies.chain and policy.<kind>")]
    schema = KINDS[kind].schema
    root = single_policy_schema(schema)
    findings = _schema_findings(("single", kind, id(schema)), root, doc)
    if not any(f.path and not f.path.startswith("policy") for f in findings):
        sections = {k: v for k, v in doc.items() if k != "policy"}
        findings += _compile_findings(kind, sections, "")
    return findings


def _validate_config(doc: dict[str, Any]) -> list[Finding]:
    schemas = {kind: cls.schema for kind, cls in KINDS.items()}
    root = document_schema(schemas)
    raw = _schema_findings(("doc", *((k, id(s)) for k, s in schemas.items())), root, doc)
    policies = doc.get("policies")
    chain = policies.get("chain") if isinstance(policies, dict) else None
    chain = [k for k in chain if isinstance(k, str)] if isinstance(chain, list) else []
    blocks = doc.get("policy") if isinstance(doc.get("policy"), dict) else {}

    findings: list[Finding] = []
    for f in raw:  # unknown keys below `policy` are unknown kinds, reported once on the chain if listed there
        if f.code == "E002" and f.path.startswith("policy.") and f.path.count(".") == 1:
            kind = f.path.split(".", 1)[1]
            if kind not in chain:
                findings.append(_kind_finding(kind, f.path))
        else:
            findings.append(f)
    seen: set[str] = set()
    for i, kind in enumerate(chain):
        path = f"policies.chain[{i}]"
        if kind not in KINDS:
            findings.append(_kind_finding(kind, path))
        elif kind in seen:
            findings.append(Finding("E020", path, f"policy kind '{kind}' is listed twice in the chain",
                                    "list each kind once; its block configures it"))
        elif kind not in blocks:
            findings.append(Finding("E003", path, f"'{kind}' is in the chain but has no policy.{kind} block",
                                    f"add `policy: {{{kind}: {{...}}}}` (an empty mapping takes the defaults)"))
        seen.add(kind)
    for kind, block in blocks.items():
        path = f"policy.{kind}"
        if kind in KINDS and not _has_errors_under(findings, path):
            findings += _compile_findings(kind, block, path)
        if kind in KINDS and kind not in chain:
            findings.append(Finding("W001", path, f"policy.{kind} is configured but never runs",
                                    f"add '{kind}' to policies.chain, or remove the block", severity="warning"))
    if "audit-logger" in chain and chain[-1] != "audit-logger":
        findings.append(Finding("W003", f"policies.chain[{chain.index('audit-logger')}]",
                                "audit-logger is not last in the chain",
                                "put audit-logger last so it records what every other policy decided",
                                severity="warning"))
    pack = doc.get("pack")
    if isinstance(pack, dict) and pack.get("enabled") is False:
        findings.append(Finding("W004", "pack.enabled", "the pack is disabled: traffic passes with no policies",
                                "set enabled: true to enforce the chain", severity="warning"))
    providers = doc.get("providers")
    targets = providers.get("targets") if isinstance(providers, dict) else None
    ids = [t.get("id") for t in targets if isinstance(t, dict)] if isinstance(targets, list) else []
    groups = providers.get("model_groups") if isinstance(providers, dict) else None
    for name, members in (groups.items() if isinstance(groups, dict) else ()):
        for j, member in enumerate(members if isinstance(members, list) else []):
            ref = member.get("target") if isinstance(member, dict) else None
            if isinstance(ref, str) and ref not in ids:
                findings.append(Finding("E024", f"providers.model_groups.{name}[{j}].target",
                                        f"model group '{name}' names target '{ref}', which is not in providers.targets",
                                        _did_you_mean(ref, ids) + "target ids: " + ", ".join(map(str, ids))))
    for i, target in enumerate(targets if isinstance(targets, list) else []):
        if isinstance(target, dict):
            findings += _provider_findings(target, f"providers.targets[{i}]")
        ref = target.get("secret_key_ref") if isinstance(target, dict) else None
        env = ref.get("env") if isinstance(ref, dict) else None
        if isinstance(env, str) and env and env not in os.environ and f"{env}_FILE" not in os.environ:
            findings.append(Finding("W002", f"providers.targets[{i}].secret_key_ref.env",
                                    f"environment variable {env} is not set",
                                    f"export {env} (or {env}_FILE, a file holding the secret) where the gateway "
                                    "runs; until then this target is unavailable",
                                    severity="warning"))
    return findings


def _provider_findings(target: dict[str, Any], path: str) -> list[Finding]:
    """What a target's provider requires (E022), fields of another provider (E023), a near-miss id (W005)."""
    provider = target.get("provider")
    if not isinstance(provider, str):
        return []
    findings = []
    near = "" if provider in NATIVE else f"did you mean '{ALIASES[provider]}'? " if provider in ALIASES \
        else _did_you_mean(provider, NATIVE)
    for name, example in REQUIRED.get(provider, {}).items():
        if name not in target:
            findings.append(Finding("E022", f"{path}.{name}", f"provider {provider} needs `{name}`",
                                    f"add `{name}: {example}`"))
    for name, owners in ONLY_FOR.items():
        if name in target and provider not in owners:
            owner = " or ".join(owners)
            findings.append(Finding("E023", f"{path}.{name}", f"`{name}` applies only to provider {owner}, "
                                    f"not {provider}", near or f"remove `{name}`, or set provider: {owner}"))
    if near and not findings:
        findings.append(Finding("W005", f"{path}.provider", f"provider '{provider}' is not one kt speaks natively: "
                                "it is called as an OpenAI-compatible upstream",
                                near + "natively spoken: " + ", ".join(NATIVE), severity="warning"))
    return findings


def _line(lines: Mapping[str, int], path: str) -> int | None:
    while path:
        if path in lines:
            return lines[path]
        path = re.sub(r"(\.[^.\[]*|\[\d+\])$", "", path) if re.search(r"(\.[^.\[]*|\[\d+\])$", path) else ""
    return lines.get("")


def validate_document(doc: dict[str, Any], lines: Mapping[str, int] | None = None) -> list[Finding]:
    """All findings (errors and warnings) for a parsed document; `lines` (path -> line) adds line numbers."""
    findings = _validate_single(doc) if is_single_policy(doc) else _validate_config(doc)
    if lines:
        findings = [
            f if f.line else Finding(f.code, f.path, f.message, f.suggestion, _line(lines, f.path), f.column,
                                     f.severity)
            for f in findings
        ]
    return sorted(findings, key=lambda f: (f.severity != "error", f.line or 0, f.path))


# ----------------------------------------------------------------------------------------------
# files and directories


@dataclass(frozen=True)
class LintReport:
    """The lint result of one file."""

    file: str
    errors: tuple[Finding, ...] = ()
    warnings: tuple[Finding, ...] = ()
    pack: tuple[str, str] | None = None  # (name, version)
    chain: tuple[str, ...] = ()
    io_error: bool = False  # the file could not be read (or nothing was found): exit 1, not 2

    @property
    def valid(self) -> bool:
        return not self.errors

    @property
    def policy_count(self) -> int:
        return len(self.chain)

    def as_dict(self) -> dict[str, Any]:
        """The `--json` shape of one file."""
        return {
            "valid": self.valid,
            "file": self.file,
            "pack": {"name": self.pack[0], "version": self.pack[1]} if self.pack else None,
            "chain": list(self.chain),
            "policy_count": self.policy_count,
            "warnings": [f.as_dict() for f in self.warnings],
            "errors": [f.as_dict() for f in self.errors],
        }


def _summary(doc: dict[str, Any] | None) -> tuple[tuple[str, str] | None, tuple[str, ...]]:
    if not isinstance(doc, dict):
        return None, ()
    try:
        doc = as_config_document(doc)
    except (KeyError, TypeError):
        return None, ()
    pack = doc.get("pack")
    pack_t = (str(pack.get("name", "")), str(pack.get("version", ""))) if isinstance(pack, dict) else None
    policies = doc.get("policies")
    chain = policies.get("chain") if isinstance(policies, dict) else None
    return pack_t, tuple(str(k) for k in chain) if isinstance(chain, list) else ()


def lint_bytes(data: bytes, file: str = "<memory>") -> LintReport:
    """Lint the bytes of one policy config."""
    parsed = load_yaml(data, file)
    findings = list(parsed.findings)
    if parsed.document is not None:
        findings += validate_document(parsed.document, parsed.lines)
    pack, chain = _summary(parsed.document)
    return LintReport(
        file,
        tuple(f for f in findings if f.severity == "error"),
        tuple(f for f in findings if f.severity == "warning"),
        pack,
        chain,
    )


def _read(path: Path) -> bytes:
    with path.open("rb") as fh:
        return fh.read(MAX_BYTES + 1)  # enough to know it is too large, without reading 10 GB


def lint_file(path: str | Path) -> LintReport:
    """Lint one file; an unreadable file is a report with an E100 error and `io_error`."""
    path = Path(path)
    try:
        data = _read(path)
    except OSError as exc:
        reason = "is a directory" if path.is_dir() else (exc.strerror or str(exc)).lower()
        return LintReport(str(path), (Finding("E100", "", f"cannot read file: {reason}",
                                              "check the path given to --file"),), io_error=True)
    if len(data) > MAX_BYTES:  # say how large it really is
        return LintReport(str(path), (too_large(max(path.stat().st_size, len(data))),))
    return lint_bytes(data, str(path))


_SKIP_DIRS = {"node_modules", "__pycache__", "venv"}


def find_configs(root: Path) -> list[Path]:
    """Policy configs below `root`: YAML files named like `*policy*.yaml`, or whose top level looks like one."""
    found = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).parts
        if any(p.startswith(".") or p in _SKIP_DIRS for p in rel[:-1]) or path.suffix not in (".yaml", ".yml"):
            continue
        if not path.is_file():
            continue
        if "policy" in path.name:
            found.append(path)
            continue
        try:
            doc = load_yaml(_read(path)).document
        except OSError:
            continue
        if isinstance(doc, dict) and ("pack" in doc or "policies" in doc or is_single_policy(doc)):
            found.append(path)
    return found


def lint_path(path: str | Path) -> list[LintReport]:
    """Lint a file, or every policy config below a directory."""
    path = Path(path)
    if not path.is_dir():
        return [lint_file(path)]
    configs = find_configs(path)
    if not configs:
        return [LintReport(str(path), (Finding("E101", "", "no policy config found below this directory",
                                               "name it policy-config.yaml, or pass the file itself"),),
                           io_error=True)]
    return [lint_file(p) for p in configs]
