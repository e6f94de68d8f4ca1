"""Prometheus alert rules: promtool checks them and runs their unit tests (every alert firing and not)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

PROM = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (`make test` installs it via .ci/install-tools)"
)


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL, *args], cwd=PROM, capture_output=True, text=True, timeout=60)


def _alerts() -> dict[str, dict]:
    groups = yaml.safe_load((PROM / "alerts.yml").read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"]}


@needs_promtool
def test_check_rules_and_config() -> None:
    for args in (("check", "rules", "alerts.yml"), ("check", "config", "prometheus.yml")):
        proc = _promtool(*args)
        assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_promtool
def test_rule_unit_tests_pass() -> None:
    proc = _promtool("test", "rules", "alerts_test.yml")
    assert proc.returncode == 0 and "SUCCESS" in proc.stdout, proc.stdout + proc.stderr


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    cases: dict[str, set[bool]] = {}
    for test in yaml.safe_load((PROM / "alerts_test.yml").read_text())["tests"]:
        for case in test["alert_rule_test"]:
            cases.setdefault(case["alertname"], set()).add(bool(case.get("exp_alerts")))
    for name in _alerts():
        assert cases.get(name) == {True, False}, f"{name} needs a firing and a not-firing case"


def test_the_seed_table_is_covered() -> None:
    alerts = _alerts()
    exprs = " ".join(rule["expr"] for rule in alerts.values())
    assert alerts["KtGatewayUnreachable"]["for"] == "2m"
    assert "[5m]) > 10" in alerts["KtEventSubmissionFailures"]["expr"]
    assert alerts["KtGatewayHighErrorRate"]["for"] == "5m" and "> 0.10" in alerts["KtGatewayHighErrorRate"]["expr"]
    assert alerts["KtGatewayHighLatencyP99"]["for"] == "15m" and "histogram_quantile(0.99" in exprs
    assert "> 86400" in alerts["KtConfigNotRefreshed"]["expr"]
    assert alerts["KtFleetConfigDrift"]["for"] == "15m" and "sha256" in alerts["KtFleetConfigDrift"]["expr"]
    assert "keeptrusts_sync_" in alerts["KtSyncFailing"]["expr"]
    # the seed's "active connections > 80% of capacity", computable since --max-concurrency exists
    near = alerts["KtGatewayNearCapacity"]["expr"]
    assert "keeptrusts_gateway_max_concurrency" in near and "> 0.8" in near
    assert "keeptrusts_state_backend_up" in alerts["KtCounterStoreDown"]["expr"]
    # the seed's "mean time to deploy a config change: under 15 minutes"
    deploy = alerts["KtConfigDeploySlow"]["expr"]
    assert "keeptrusts_config_deploy_seconds_sum" in deploy and "_count" in deploy and "> 900" in deploy
    for rule in alerts.values():
        assert rule["labels"]["severity"] in {"page", "ticket"}
        assert rule["annotations"]["runbook"].startswith("docs/operations.md#")


def test_runbook_anchors_exist_in_operations_doc() -> None:
    doc = (PROM.parent.parent / "docs" / "operations.md").read_text()
    headings = re.findall(r"^#+ (.+)$", doc, re.M)
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).strip().replace(" ", "-") for h in headings}
    for name, rule in _alerts().items():
        anchor = rule["annotations"]["runbook"].split("#", 1)[1]
        assert anchor in anchors, f"{name}: docs/operations.md has no heading for #{anchor}"
