"""docs/ci.md and .pre-commit-hooks.yaml: their kt commands, run for real on a fresh policy repository."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from tests import ROOT
from tests.kt_process import run_kt

GUARD = 60


def kt(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    proc = run_kt(*args, cwd=cwd, timeout=GUARD)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def hooks() -> dict[str, dict]:
    return {h["id"]: h for h in yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())}


def run_hook(hook: dict, cwd: Path) -> subprocess.CompletedProcess[str]:
    """As pre-commit runs a python hook with pass_filenames: false: entry + args."""
    argv = shlex.split(hook["entry"]) + list(hook.get("args", []))
    assert argv[0] == "kt"
    return kt(*argv[1:], cwd=cwd)


def workflow_kt_commands() -> list[list[str]]:
    """The `kt ...` commands of the GitHub workflow in docs/ci.md (shell redirections dropped)."""
    doc = (ROOT / "docs" / "ci.md").read_text()
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", doc, re.S)]
    workflow = next(b for b in blocks if isinstance(b, dict) and "jobs" in b)
    commands = []
    for job in workflow["jobs"].values():
        for step in job["steps"]:
            run = step.get("run", "")
            if run.startswith("kt "):
                commands.append(shlex.split(run.split(">")[0]))
    return commands


CONFIG = """\
pack: {name: ci-test, version: 1.0.0, enabled: true}
providers:
  targets:
    - {id: demo, provider: mock, model: demo-model}
policies:
  chain:
    - dlp-filter
    - audit-logger
policy:
  dlp-filter: {blocked_terms: [project-bluebird], action: block}
  audit-logger: {retention_days: 30}
"""
CASES = {
    "blocks-codename": {"name": "blocks the codename",
                        "input": {"messages": [{"role": "user", "content": "status of project-bluebird?"}]},
                        "expected": {"verdict": "block"}},
    "allows-weather": {"name": "allows small talk",
                       "input": {"messages": [{"role": "user", "content": "nice weather today"}]},
                       "expected": {"verdict": "allow"}},
}


@pytest.fixture
def policy_repo(tmp_path: Path) -> Path:
    (tmp_path / "policy-config.yaml").write_text(CONFIG)
    (tmp_path / "tests").mkdir()
    for name, case in CASES.items():
        (tmp_path / "tests" / f"{name}.json").write_text(json.dumps(case))
    return tmp_path


def break_chain(repo: Path) -> int:
    """Misspell the first kind of the chain; return its line number (1-based)."""
    path = repo / "policy-config.yaml"
    path.write_text(CONFIG.replace("    - dlp-filter", "    - dlp-filtre"))
    return CONFIG.splitlines().index("    - dlp-filter") + 1


def test_hook_manifest_shape() -> None:
    found = hooks()
    assert set(found) == {"kt-policy-lint", "kt-policy-test"}
    for hook in found.values():
        assert {"id", "name", "entry", "language"} <= set(hook)
        assert hook["language"] == "python" and hook["pass_filenames"] is False
        re.compile(hook["files"])


def test_hooks_pass_on_a_good_repo_and_lint_fails_on_a_bad_one(policy_repo: Path) -> None:
    for hook in hooks().values():
        proc = run_hook(hook, policy_repo)
        assert proc.returncode == 0, f"{hook['id']}: {proc.stdout}{proc.stderr}"
    break_chain(policy_repo)
    proc = run_hook(hooks()["kt-policy-lint"], policy_repo)
    assert proc.returncode == 2, proc.stdout
    assert run_hook(hooks()["kt-policy-test"], policy_repo).returncode != 0


def test_workflow_commands_pass_and_annotate(policy_repo: Path) -> None:
    commands = workflow_kt_commands()
    assert any("--format" in c and "github" in c for c in commands)
    for argv in commands:
        proc = kt(*argv[1:], cwd=policy_repo)
        assert proc.returncode == 0, f"{argv}: {proc.stdout}{proc.stderr}"
    line = break_chain(policy_repo)
    lint = next(c for c in commands if c[1:3] == ["policy", "lint"])
    proc = kt(*lint[1:], cwd=policy_repo)
    assert proc.returncode == 2
    annotation = re.search(r"^::error file=([^,]+),line=(\d+).*title=kt E001::", proc.stdout, re.M)
    assert annotation, proc.stdout
    assert annotation[1].endswith("policy-config.yaml") and int(annotation[2]) == line
