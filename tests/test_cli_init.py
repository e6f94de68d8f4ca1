"""`kt init` as a real subprocess: every template passes lint and its own golden tests as written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kt.commands.init import template_names
from tests.kt_process import run_kt


def test_templates_are_bundled() -> None:
    assert {"default", "prompt-injection-detection", "zero-data-retention", "agent-firewall"} <= set(template_names())


@pytest.mark.parametrize("template", template_names())
def test_template_passes_lint_and_test(tmp_path: Path, template: str) -> None:
    r = run_kt("init", "--template", template, "--dir", str(tmp_path / "pack"))
    assert r.returncode == 0, r.stderr
    config = tmp_path / "pack" / "policy-config.yaml"
    assert config.is_file() and list((tmp_path / "pack" / "tests").glob("*.json"))
    lint = run_kt("policy", "lint", "--file", str(config), "--json")
    assert lint.returncode == 0, lint.stdout
    assert json.loads(lint.stdout)["errors"] == []
    test = run_kt("policy", "test", "--json", cwd=tmp_path / "pack")
    assert test.returncode == 0, test.stdout
    data = json.loads(test.stdout)
    assert data["ok"] is True and len(data["results"]) >= 3
    assert {r["verdict"] for r in data["results"]} >= {"allow", "block"}


def test_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    assert run_kt("init", "--dir", str(tmp_path)).returncode == 0
    config = tmp_path / "policy-config.yaml"
    config.write_text("# mine\n")
    r = run_kt("init", "--dir", str(tmp_path), "--template", "agent-firewall")
    assert r.returncode == 1 and "refusing to overwrite" in r.stderr and "--force" in r.stderr
    assert config.read_text() == "# mine\n"
    r = run_kt("init", "--dir", str(tmp_path), "--template", "agent-firewall", "--force")
    assert r.returncode == 0 and "pack: {name: agent-firewall" in config.read_text()
    assert "other case file" in r.stdout  # the default template's cases stay, and we say so


def test_init_unknown_template_is_a_usage_error(tmp_path: Path) -> None:
    r = run_kt("init", "--template", "defense-us", "--dir", str(tmp_path))
    assert r.returncode == 1 and "agent-firewall" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "policy-config.yaml").exists()
