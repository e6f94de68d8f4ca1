"""systemd units: `systemd-analyze verify` is clean and `security --offline=yes` rates exposure <= 2.0."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import ROOT

UNITS = ["kt-gateway.service", "kt-sync.service"]
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze not installed (`make test` installs it via .ci/install-tools)"
)


def _directives(unit: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    text = (ROOT / "systemd" / unit).read_text().replace("\\\n", " ")
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def _test_copy(unit: str, tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at the `kt` installed in this venv (verify needs it to exist)."""
    kt = Path(sys.executable).parent / "kt"
    assert kt.exists(), "the kt console script is installed by `pip install -e .`"
    copy = tmp_path / unit
    copy.write_text((ROOT / "systemd" / unit).read_text().replace("/opt/kt/venv/bin/kt", str(kt)))
    return copy


@pytest.mark.parametrize("unit", UNITS)
def test_unit_contract(unit: str) -> None:
    d = _directives(unit)
    assert d["Type"] == ["notify"]
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert d["User"] == ["kt"] and d["Group"] == ["kt"]
    assert d["StateDirectory"] == [unit.removesuffix(".service")]
    assert d["EnvironmentFile"] == ["-/etc/kt/kt.env"]
    assert d["ExecStart"][0].startswith("/opt/kt/venv/bin/kt ")
    assert f"--state-dir %S/{unit.removesuffix('.service')}" in d["ExecStart"][0]
    assert int(d["WatchdogSec"][0]) > 0


@needs_analyze
@pytest.mark.parametrize("unit", UNITS)
def test_verify_is_clean(unit: str, tmp_path: Path) -> None:
    copy = _test_copy(unit, tmp_path)
    proc = subprocess.run([ANALYZE, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    # verify exits 0 on unknown keys and only warns: any line about our unit is a failure.
    complaints = [line for line in (proc.stdout + proc.stderr).splitlines() if unit in line]
    assert proc.returncode == 0 and not complaints, proc.stdout + proc.stderr


@needs_analyze
@pytest.mark.parametrize("unit", UNITS)
def test_security_exposure_at_most_2(unit: str, tmp_path: Path) -> None:
    copy = _test_copy(unit, tmp_path)
    proc = subprocess.run(
        [ANALYZE, "security", "--offline=yes", "--no-pager", str(copy)], capture_output=True, text=True, timeout=60
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
    assert match, proc.stdout + proc.stderr
    assert float(match.group(1)) <= 2.0, proc.stdout


def test_env_example_names_what_the_units_use() -> None:
    env = (ROOT / "systemd" / "kt.env.example").read_text()
    assigned = {m.group(1) for m in re.finditer(r"^#?([A-Z][A-Z0-9_]*)=", env, re.M)}
    for unit in UNITS:
        for var in re.findall(r"\$(KT_[A-Z_]+)", (ROOT / "systemd" / unit).read_text()):
            assert var in assigned, f"{unit} uses ${var}, which kt.env.example does not show"
    assert {"KEEPTRUSTS_ADMIN_TOKEN", "KEEPTRUSTS_WEBHOOK_SECRET", "OPENAI_API_KEY"} <= assigned
