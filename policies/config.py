"""The compiled, immutable config the gateway runs, and how to load one.

`load_config` reads bytes, parses YAML safely, validates strictly (the same checks as
`kt policy lint`), and compiles: every regex, chain and lookup table is built here once,
never per request. Invalid input raises `ConfigError` with the lint findings.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from policies.chain import Chain
from policies.findings import ConfigError
from policies.kinds import KINDS
from policies.model import DataPolicy, SecretRef, Target
from policies.model_groups import compile_groups
from policies.pricing import PriceTable, price_table
from policies.providers import AZURE_API_VERSION, AZURE_OPENAI, GOOGLE, GOOGLE_KEY_HEADER, responses_native
from policies.state import PolicyState


@dataclass(frozen=True, slots=True)
class Pack:
    """The config's `pack:` block: what it is (shown in status and events) and its kill switch."""

    name: str
    version: str
    enabled: bool
    id: str | None = None
    author: str | None = None
    description: str | None = None


@dataclass(frozen=True, slots=True)
class Fallback:
    strategy: str = "ordered"  # ordered | round-robin
    max_retries: int = 2
    retry_on: frozenset[str] = frozenset({"5xx", "timeout", "rate_limit"})


@dataclass(frozen=True)
class Config:
    """One loaded policy config. Immutable; a reload builds a new one."""

    pack: Pack
    chain: Chain
    targets: tuple[Target, ...]
    fallback: Fallback
    document: MappingProxyType  # the validated document, as written (secret refs, never values)
    sha256: str
    source: str  # file path or "<memory>"
    agents: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))
    suites: tuple[dict[str, Any], ...] = ()
    prices: PriceTable = field(default_factory=price_table)  # built-ins + `policy.spend-limit.prices`
    model_groups: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))  # name -> ModelGroup

    @property
    def enabled(self) -> bool:
        """False when `pack.enabled` is false: traffic passes with no policies."""
        return self.pack.enabled

    def targets_for(self, model: str) -> list[Target]:
        """Targets serving `model`: a model group's members, else those whose `model` or `id` it is, in config order."""
        group = self.model_groups.get(model)
        if group is not None:
            return list(group.targets)
        return [t for t in self.targets if model in (t.model, t.id)]


def _target(raw: dict[str, Any]) -> Target:
    ref = raw.get("secret_key_ref")
    dp = raw.get("data_policy") or {}
    fmt = raw.get("format") or ("anthropic" if raw["provider"] == "anthropic" else "openai")
    azure = raw["provider"] == AZURE_OPENAI
    default_header = "x-api-key" if fmt == "anthropic" else "api-key" if azure else \
        GOOGLE_KEY_HEADER if raw["provider"] == GOOGLE else "Authorization"
    header = raw.get("api_key_header", default_header)
    default_prefix = "Bearer " if header.lower() == "authorization" and fmt != "anthropic" else ""
    prefix = raw.get("api_key_prefix", default_prefix)
    if prefix and not prefix.endswith(" ") and header.lower() == "authorization":
        prefix += " "
    return Target(
        id=raw["id"],
        provider=raw["provider"],
        model=raw["model"],
        base_url=raw.get("base_url"),
        secret_key_ref=SecretRef(ref.get("env"), ref.get("store")) if ref else None,
        api_key_header=header,
        api_key_prefix=prefix,
        format=fmt,
        data_policy=DataPolicy(
            dp.get("zero_data_retention", False), dp.get("training_opt_out", False), dp.get("retention_days")
        ),
        deployment=raw.get("deployment", raw["model"]) if azure else None,
        api_version=raw.get("api_version", AZURE_API_VERSION) if azure else None,
        region=raw.get("region"),
        responses_native=responses_native(raw["provider"], raw.get("base_url"), raw.get("responses_api")),
    )


def compile_document(
    doc: dict[str, Any], sha256: str, source: str, state: PolicyState | None = None
) -> Config:
    """Build a `Config` from a document that has already validated."""
    state = state or PolicyState()
    pack_raw = doc["pack"]
    pack = Pack(
        name=pack_raw["name"],
        version=str(pack_raw["version"]),
        enabled=pack_raw["enabled"],
        id=pack_raw.get("id"),
        author=pack_raw.get("author"),
        description=pack_raw.get("description"),
    )
    blocks = doc.get("policy") or {}
    kinds = (doc.get("policies") or {}).get("chain") or []
    policies = tuple(KINDS[kind](blocks.get(kind) or {}, state) for kind in kinds) if pack.enabled else ()
    providers = doc.get("providers") or {}
    fb = providers.get("fallback") or {}
    fallback = Fallback(
        strategy=fb.get("strategy", "ordered"),
        max_retries=fb.get("max_retries", 2),
        retry_on=frozenset(fb.get("retry_on", ["5xx", "timeout", "rate_limit"])),
    )
    targets = tuple(_target(t) for t in providers.get("targets") or [])
    return Config(
        pack=pack,
        chain=Chain(policies, pack.name),
        targets=targets,
        fallback=fallback,
        document=MappingProxyType(doc),
        sha256=sha256,
        source=source,
        agents=MappingProxyType(dict(doc.get("agents") or {})),
        suites=tuple((doc.get("testing") or {}).get("suites") or []),
        prices=price_table((blocks.get("spend-limit") or {}).get("prices")),
        model_groups=MappingProxyType(compile_groups(providers.get("model_groups"), targets)),
    )


def load_config_bytes(data: bytes, source: str = "<memory>", state: PolicyState | None = None) -> Config:
    """Parse, validate and compile config bytes; raise `ConfigError` with findings."""
    from policies.lint import as_config_document, validate_document
    from policies.yaml_loader import load_yaml

    parsed = load_yaml(data, source)
    doc = parsed.document
    findings = list(parsed.findings)
    if doc is not None:
        findings += validate_document(doc, parsed.lines)
    errors = [f for f in findings if f.severity == "error"]
    if errors:
        raise ConfigError(source, errors)
    return compile_document(as_config_document(doc), hashlib.sha256(data).hexdigest(), source, state)


def load_config(path: str | Path, state: PolicyState | None = None) -> Config:
    """Load the policy config at `path` (see `load_config_bytes`)."""
    path = Path(path)
    from policies.yaml_loader import MAX_BYTES

    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_BYTES + 1)  # more is refused anyway; never read a huge file whole
    except OSError as exc:
        from policies.findings import Finding

        raise ConfigError(str(path), [Finding("E100", "", f"cannot read file: {exc.strerror}")]) from exc
    return load_config_bytes(data, str(path), state)
