"""Each lint code: what triggers it, where it points, and what it suggests."""

from __future__ import annotations

import re
import textwrap

import pytest

from policies import ConfigError, load_config_bytes
from policies.kinds import KINDS, Policy
from policies.lint import LintReport, lint_bytes, validate_document
from tests.policy_samples import BASE


def lint(text: str) -> LintReport:
    return lint_bytes(textwrap.dedent(text).encode(), "policy-config.yaml")


def codes(report: LintReport) -> list[str]:
    return [f.code for f in report.errors]


def the_error(text: str, code: str):
    report = lint(text)
    found = [f for f in report.errors if f.code == code]
    assert found, f"no {code} in {[str(f) for f in report.errors]}"
    return found[0]


class FakeFilter(Policy):
    kind = "fake-filter"
    schema = {
        "patterns": {"type": "list", "schema": {"type": "string", "check_with": "regex"}},
        "raw": {"type": "string"},
    }

    def __init__(self, options, state) -> None:
        super().__init__(options, state)
        self.compiled = [re.compile(p) for p in options.get("patterns", [])]
        if "raw" in options:
            re.compile(options["raw"])  # a regex the schema did not mark: the build still catches it


@pytest.fixture
def fake_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(KINDS, "fake-filter", FakeFilter)


def test_base_is_valid() -> None:
    report = lint(BASE)
    assert report.valid and report.errors == () and report.warnings == ()
    assert report.pack == ("shop", "1.2.3") and report.chain == ("audit-logger",)


def test_e001_unknown_kind_with_did_you_mean() -> None:
    f = the_error(BASE.replace("chain: [audit-logger]", "chain: [audit-loger, audit-logger]"), "E001")
    assert f.path == "policies.chain[0]" and f.line == 9
    assert "audit-loger" in f.message and "did you mean 'audit-logger'" in f.suggestion


def test_e001_unknown_block_kind() -> None:
    f = the_error(BASE + "  audit-loger: {}\n", "E001")
    assert f.path == "policy.audit-loger" and f.line == 12


def test_e002_unknown_key_lists_valid_keys() -> None:
    f = the_error(BASE.replace("version: 1.2.3", "version: 1.2.3, verison: 2"), "E002")
    assert f.path == "pack.verison" and f.line == 1
    assert "did you mean 'version'" in f.suggestion
    assert "valid keys: author, description, enabled, id, name, version" in f.suggestion


def test_e002_top_level_and_kind_block_and_literal_key() -> None:
    assert the_error(BASE + "cache: {}\n", "E002").message == "unknown key 'cache' at the top level"
    f = the_error(BASE.replace("retention_days: 30", "retension_days: 30"), "E002")
    assert f.path == "policy.audit-logger.retension_days" and "did you mean 'retention_days'" in f.suggestion
    f = the_error(BASE.replace("model: demo-model", "model: demo-model\n      api_key: sk-x"), "E002")
    assert "secret_key_ref" in f.suggestion


def test_e003_chain_kind_without_block() -> None:
    f = the_error(BASE.replace("policy:\n  audit-logger: {retention_days: 30}\n", "policy: {}\n"), "E003")
    assert f.path == "policies.chain[0]" and "policy.audit-logger" in f.message


def test_e004_missing_required() -> None:
    f = the_error(BASE.replace(", enabled: true", ""), "E004")
    assert f.path == "pack.enabled" and f.line == 1
    f = the_error(BASE.replace("model: demo-model", "model: demo-model\n      secret_key_ref: {}"), "E004")
    assert f.path == "providers.targets[0].secret_key_ref"
    assert the_error("pack: {name: a, version: 1.0.0, enabled: true}\n", "E004").path == "policies"


def test_e005_type() -> None:
    f = the_error(BASE.replace("enabled: true", "enabled: maybe"), "E005")
    assert f.path == "pack.enabled" and "expected boolean, got string" in f.message


def test_e006_enum_with_did_you_mean() -> None:
    f = the_error(BASE.replace("strategy: ordered", "strategy: orderd"), "E006")
    assert f.path == "providers.fallback.strategy"
    assert "did you mean 'ordered'" in f.suggestion and "round-robin" in f.suggestion
    f = the_error(BASE.replace("[5xx, timeout]", "[5xx, timeot]"), "E006")
    assert f.path == "providers.fallback.retry_on[1]"


def test_e007_range() -> None:
    f = the_error(BASE.replace("retention_days: 30", "retention_days: 0"), "E007")
    assert f.path == "policy.audit-logger.retention_days" and "at least 1" in f.message
    assert the_error(BASE.replace("name: shop", "name: " + "x" * 201), "E007").path == "pack.name"
    agents = BASE + "agents:\n  bot: {max_cost_usd_per_day: 5, max_requests_per_hour: 0}\n"
    assert the_error(agents, "E007").path == "agents.bot.max_requests_per_hour"


@pytest.mark.parametrize("version", ["1.0", "v1.0.0", "1.0.0.0", "01.0.0"])
def test_e008_semver(version: str) -> None:
    f = the_error(BASE.replace("1.2.3", version), "E008")
    assert f.path == "pack.version"


def test_semver_accepts_prerelease_and_build() -> None:
    assert lint(BASE.replace("1.2.3", "1.2.3-rc.1+build.5")).valid


def test_e009_duplicate_target_id() -> None:
    dup = BASE.replace("  fallback:", "    - {id: demo, provider: mock, model: other}\n  fallback:")
    f = the_error(dup, "E009")
    assert f.path == "providers.targets[1].id" and f.line == 7 and "demo" in f.message


def test_e010_yaml_syntax_with_line() -> None:
    f = the_error(BASE.replace("chain: [audit-logger]", "chain: [audit-logger"), "E010")
    assert f.line is not None and f.column is not None


def test_e011_not_a_mapping() -> None:
    assert codes(lint("- pack\n")) == ["E011"]


def test_e012_invalid_regex_from_schema(fake_kind: None) -> None:
    text = BASE.replace("chain: [audit-logger]", "chain: [fake-filter, audit-logger]")
    text += "  fake-filter: {patterns: ['ok', 'AKIA[0-9A-Z{16}']}\n"
    f = the_error(text, "E012")
    assert f.path == "policy.fake-filter.patterns[1]" and "AKIA" in f.message and f.line == 12


def test_e012_invalid_regex_found_by_building_the_policy(fake_kind: None) -> None:
    text = BASE.replace("chain: [audit-logger]", "chain: [fake-filter, audit-logger]")
    text += "  fake-filter: {raw: '(unclosed'}\n"
    f = the_error(text, "E012")
    assert f.path == "policy.fake-filter.raw"


def test_e013_unsupported_kind() -> None:
    text = BASE.replace("chain: [audit-logger]", "chain: [quality-scorer, audit-logger]")
    f = the_error(text + "  quality-scorer: {overall_min_score: 0.6}\n", "E013")
    assert f.path == "policies.chain[0]" and "not supported by this gateway" in f.message
    assert codes(lint(text + "  quality-scorer: {}\n")) == ["E013"]  # reported once, not again for the block
    f = the_error(BASE + "  citation-verifier: {}\n", "E013")
    assert f.path == "policy.citation-verifier"


def test_e014_duplicate_key() -> None:
    f = the_error(BASE + "policies: {chain: []}\n", "E014")
    assert f.path == "policies" and f.line == 12


def test_e019_invalid_value_format() -> None:
    f = the_error(BASE.replace("model: demo-model", "model: demo-model\n      secret_key_ref: {env: 1BAD}"), "E019")
    assert f.path == "providers.targets[0].secret_key_ref.env" and "environment variable name" in f.suggestion
    f = the_error(BASE.replace("model: demo-model", "model: demo-model\n      base_url: api.example.com"), "E019")
    assert f.path == "providers.targets[0].base_url"


def test_e019_invalid_key() -> None:
    f = the_error(BASE + "agents:\n  'bad agent!': {max_requests_per_hour: 5}\n", "E019")
    assert f.path == "agents.bad agent!" and "not a valid key in agents" in f.message and f.line == 13


def test_e023_responses_api_is_for_openai_and_azure_openai_only() -> None:
    azure = "provider: azure-openai\n      base_url: https://r.openai.azure.com\n      responses_api: native"
    assert codes(lint(BASE.replace("provider: mock", azure))) == []
    assert codes(lint(BASE.replace("provider: mock", "provider: openai\n      responses_api: translate"))) == []
    f = the_error(BASE.replace("provider: mock", "provider: anthropic\n      responses_api: native"), "E023")
    assert f.path == "providers.targets[0].responses_api"
    assert "only to provider openai or azure-openai, not anthropic" in f.message
    assert f.suggestion == "remove `responses_api`, or set provider: openai or azure-openai"


def test_e020_kind_twice() -> None:
    f = the_error(BASE.replace("chain: [audit-logger]", "chain: [audit-logger, audit-logger]"), "E020")
    assert f.path == "policies.chain[1]"


def test_e021_single_policy_document_of_another_kind() -> None:
    f = the_error("policy: {name: audit-logger, version: 1.0.0, enabled: true}\nretention_days: 3\n", "E021")
    assert f.path == "policy.name"
    assert the_error("policy: {name: citation-verifier, version: 1.0.0, enabled: true}\n", "E013")
    assert the_error("policy: {name: prompt-injektion, version: 1.0.0, enabled: true}\n", "E001")


def test_single_policy_document(monkeypatch: pytest.MonkeyPatch, fake_kind: None) -> None:
    monkeypatch.setattr("policies.lint.SINGLE_POLICY_KINDS", ("fake-filter",))
    text = "policy: {name: fake-filter, version: 1.0.0, enabled: true}\npatterns: ['a+']\n"
    report = lint(text)
    assert report.valid, report.errors
    assert report.pack == ("fake-filter", "1.0.0") and report.chain == ("fake-filter",)
    config = load_config_bytes(text.encode())
    assert config.chain.kinds == ("fake-filter",)
    f = the_error(text + "colour: red\n", "E002")
    assert f.path == "colour" and "patterns" in f.suggestion
    assert the_error(text.replace("1.0.0", "one"), "E008").path == "policy.version"


def test_w001_block_not_in_chain(fake_kind: None) -> None:
    report = lint(BASE + "  fake-filter: {}\n")
    assert report.valid
    (w,) = report.warnings
    assert (w.code, w.path, w.line) == ("W001", "policy.fake-filter", 12)


def test_w002_secret_env_not_set(monkeypatch: pytest.MonkeyPatch) -> None:
    text = BASE.replace("model: demo-model", "model: demo-model\n      secret_key_ref: {env: KT_TEST_KEY}")
    monkeypatch.delenv("KT_TEST_KEY", raising=False)
    report = lint(text)
    assert report.valid and [w.code for w in report.warnings] == ["W002"]
    assert "KT_TEST_KEY" in report.warnings[0].message
    monkeypatch.setenv("KT_TEST_KEY", "x")
    assert lint(text).warnings == ()


def test_w003_audit_logger_not_last(fake_kind: None) -> None:
    report = lint(BASE.replace("chain: [audit-logger]", "chain: [audit-logger, fake-filter]") + "  fake-filter: {}\n")
    assert report.valid and [w.code for w in report.warnings] == ["W003"]


def test_w004_pack_disabled() -> None:
    report = lint(BASE.replace("enabled: true", "enabled: false"))
    assert report.valid and [w.code for w in report.warnings] == ["W004"]


def test_validate_document_without_lines_and_load_config_error() -> None:
    findings = validate_document({"pack": {"name": "a", "version": "1.0.0", "enabled": True}})
    assert [(f.code, f.path, f.line) for f in findings] == [("E004", "policies", None)]
    with pytest.raises(ConfigError) as exc:
        load_config_bytes(BASE.replace("chain: [audit-logger]", "chain: [nope]").encode(), "x.yaml")
    assert exc.value.findings[0].code == "E001" and exc.value.findings[0].line == 9


def test_inline_suites_validated() -> None:
    text = BASE + "testing:\n  suites:\n    - name: s\n      cases:\n        - name: c\n"
    text += "          input: {messages: []}\n"
    f = the_error(text, "E004")
    assert f.path == "testing.suites[0].cases[0].expected"
    text += "          expected: {verdict: blocked}\n"
    assert the_error(text, "E006").path == "testing.suites[0].cases[0].expected.verdict"
