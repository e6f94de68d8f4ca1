"""`kt policy lint` and `kt policy test` as real subprocesses: exit codes, output and JSON shapes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests import EXAMPLE_CONFIG
from tests.kt_process import run_kt
from tests.policy_samples import BASE, BOMB


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def test_lint_valid_human() -> None:
    r = run_kt("policy", "lint", "--file", str(EXAMPLE_CONFIG))
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"OK {EXAMPLE_CONFIG} is valid"
    assert lines[1].startswith("Pack: kt-default (v")
    assert lines[2].startswith("Chain: ") and "audit-logger" in lines[2]
    assert lines[3].startswith("Policies validated: ")


def test_lint_invalid_human(tmp_path: Path) -> None:
    cfg = write(tmp_path / "policy-config.yaml", BASE.replace("chain: [audit-logger]", "chain: [audit-loger]"))
    r = run_kt("policy", "lint", "--file", str(cfg))
    assert r.returncode == 2
    assert f"X {cfg} has 1 error" in r.stdout
    assert "error[E001]: unknown policy kind 'audit-loger'" in r.stdout
    assert "--> policies.chain[0] (line 9)" in r.stdout
    assert "help: did you mean 'audit-logger'?" in r.stdout
    assert "warning[W001]" in r.stdout  # the audit-logger block now never runs


def test_lint_json_shape(tmp_path: Path) -> None:
    good = write(tmp_path / "a" / "policy-config.yaml", BASE)
    r = run_kt("policy", "lint", "--file", str(good), "--json")
    assert r.returncode == 0
    data = json.loads(r.stdout)
    assert data == {"valid": True, "file": str(good), "pack": {"name": "shop", "version": "1.2.3"},
                    "chain": ["audit-logger"], "policy_count": 1, "warnings": [], "errors": []}
    bad = write(tmp_path / "b" / "policy-config.yaml", BASE.replace("1.2.3", "1.2"))
    r = run_kt("policy", "lint", "--file", str(bad), "--format", "json")
    assert r.returncode == 2
    data = json.loads(r.stdout)
    assert data["valid"] is False
    assert data["errors"] == [{"code": "E008", "path": "pack.version", "message": data["errors"][0]["message"],
                               "suggestion": "write MAJOR.MINOR.PATCH, e.g. 1.0.0", "line": 1}]
    r = run_kt("policy", "lint", "--file", str(good), "--file", str(bad), "--json")
    assert r.returncode == 2
    assert [d["valid"] for d in json.loads(r.stdout)] == [True, False]


def test_lint_directory_finds_every_config(tmp_path: Path) -> None:
    write(tmp_path / "prod" / "policy-config.yaml", BASE)
    write(tmp_path / "staging" / "gateway.yaml", BASE.replace("1.2.3", "bad"))
    write(tmp_path / "other" / "compose.yaml", "services: {}\n")
    write(tmp_path / ".github" / "workflows" / "ci.yml", "on: push\n")
    r = run_kt("policy", "lint", "--file", str(tmp_path), "--json")
    assert r.returncode == 2, r.stdout
    data = json.loads(r.stdout)
    assert sorted(Path(d["file"]).parent.name for d in data) == ["prod", "staging"]
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run_kt("policy", "lint", "--file", str(empty))
    assert r.returncode == 1 and "E101" in r.stdout


def test_lint_github_annotations(tmp_path: Path) -> None:
    cfg = write(tmp_path / "policy-config.yaml", BASE.replace("strategy: ordered", "strategy: fastest"))
    r = run_kt("policy", "lint", "--file", str(cfg), "--format", "github")
    assert r.returncode == 2
    first = r.stdout.splitlines()[0]
    assert first.startswith(f"::error file={cfg},line=7,title=kt E006::providers.fallback.strategy: 'fastest'")


def test_lint_usage_and_io_errors_exit_1(tmp_path: Path) -> None:
    assert run_kt("policy", "lint").returncode == 1
    assert run_kt("policy", "lint", "--file", str(EXAMPLE_CONFIG), "--format", "xml").returncode == 1
    r = run_kt("policy", "lint", "--file", str(tmp_path / "missing.yaml"))
    assert r.returncode == 1 and "cannot read file" in r.stdout
    r = run_kt("policy", "lint", "--file", str(tmp_path / "missing.yaml"), "--file", str(EXAMPLE_CONFIG), "--json")
    assert r.returncode == 1 and [d["valid"] for d in json.loads(r.stdout)] == [False, True]


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (b"\x7fELF\x02\x01\x01\x00\x00\x00", "E016"),
        (b"", "E018"),
        (BOMB.encode(), "E017"),
        (b"pack: [\n", "E010"),
    ],
    ids=["binary", "empty", "alias-bomb", "syntax"],
)
def test_bad_files_get_clear_errors(tmp_path: Path, content: bytes, code: str) -> None:
    cfg = write(tmp_path / "policy-config.yaml", content)
    r = run_kt("policy", "lint", "--file", str(cfg), "--json")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert json.loads(r.stdout)["errors"][0]["code"] == code


def test_ten_megabyte_file(tmp_path: Path) -> None:
    cfg = tmp_path / "policy-config.yaml"
    with cfg.open("wb") as fh:
        fh.write(b"pack:\n")
        for _ in range(10 * 1024):
            fh.write(b"  # " + b"x" * 1020 + b"\n")
    r = run_kt("policy", "lint", "--file", str(cfg))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "error[E015]: file is too large (10.5 MB; the limit is 1 MiB)" in r.stdout


# ---------------------------------------------------------------------------------------------
# kt policy test

PACK = BASE.replace("chain: [audit-logger]", "chain: [dlp-filter, audit-logger]") + """\
  dlp-filter: {blocked_terms: [project-bluebird], action: block}
testing:
  suites:
    - name: smoke
      cases:
        - name: term-blocked
          input: {messages: [{role: user, content: "status of Project-Bluebird?"}]}
          expected: {verdict: block, reason_code: dlp_term_detected}
"""


def case(name: str, content: str, verdict: str, **extra: object) -> str:
    return json.dumps({"name": name, "input": {"messages": [{"role": "user", "content": content}], **extra},
                       "expected": {"verdict": verdict}})


def test_policy_test_json_shape_and_pass(tmp_path: Path) -> None:
    write(tmp_path / "policy-config.yaml", PACK)
    write(tmp_path / "tests" / "hello.json", case("hello", "hi there", "allow"))
    write(tmp_path / "tests" / "leak.json", case("leak", "hi", "block", upstream_response="project-bluebird ships"))
    r = run_kt("policy", "test", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stdout
    data = json.loads(r.stdout)
    assert data["ok"] is True
    assert [x["name"] for x in data["results"]] == ["hello", "leak", "smoke/term-blocked"]
    leak = data["results"][1]
    assert {k: leak[k] for k in ("verdict", "reason_code", "passed")} == {
        "verdict": "block", "reason_code": "dlp_term_detected", "passed": True}
    phases = [(p["policy"], p["phase"]) for p in leak["details"]["policy_results"]]
    assert ("dlp-filter", "output") in phases


def test_policy_test_failure_exit_1_and_table(tmp_path: Path) -> None:
    write(tmp_path / "policy-config.yaml", PACK)
    write(tmp_path / "cases" / "wrong.json", case("wrong", "hi there", "block"))
    write(tmp_path / "cases" / "broken.json", "{not json")
    r = run_kt("policy", "test", "--file", str(tmp_path / "policy-config.yaml"), "--cases", str(tmp_path / "cases"))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "FAIL" in r.stdout and "cannot read golden case file" in r.stdout
    assert "1 passed, 2 failed" in r.stdout
    data = json.loads(run_kt("policy", "test", "--json", "--pack-dir", str(tmp_path), "--cases",
                         str(tmp_path / "cases")).stdout)
    assert data["ok"] is False and [x["passed"] for x in data["results"]] == [False, False, True]


def test_policy_test_invalid_or_missing_config(tmp_path: Path) -> None:
    write(tmp_path / "policy-config.yaml", BASE.replace("1.2.3", "x"))
    r = run_kt("policy", "test", cwd=tmp_path)
    assert r.returncode == 2 and "E008" in r.stdout
    r = run_kt("policy", "test", "--json", "--file", str(tmp_path / "nope.yaml"))
    assert r.returncode == 1 and json.loads(r.stdout)["errors"][0]["code"] == "E100"
    r = run_kt("policy", "test", "--file", str(EXAMPLE_CONFIG), "--cases", str(tmp_path / "nope"))
    assert r.returncode == 1 and "not a directory" in r.stderr


def test_policy_test_without_cases(tmp_path: Path) -> None:
    write(tmp_path / "policy-config.yaml", BASE)
    r = run_kt("policy", "test", cwd=tmp_path)
    assert r.returncode == 0 and "no golden cases found" in r.stdout


def test_lint_imports_no_server_or_git_code() -> None:
    code = (
        "import sys\n"
        f"sys.argv = ['kt', 'policy', 'lint', '--file', {str(EXAMPLE_CONFIG)!r}]\n"
        "from kt.cli import main\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    assert exc.code == 0, exc.code\n"
        "heavy = ('tornado', 'git', 'watchfiles', 'apscheduler', 'gateway', 'sync')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "[]"
