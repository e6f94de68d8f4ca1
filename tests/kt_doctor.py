"""`kt doctor --json` as a real subprocess: its exit code and report, and the report's checks by name."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests import ROOT
from tests.kt_process import run_kt

GUARD = 30  # a hang guard for the subprocess, not a timing assertion


def kt_doctor(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> tuple[int, dict]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("KEEPTRUSTS_")}
    proc = run_kt("doctor", "--json", *args, env={**base, **(env or {})}, cwd=cwd or ROOT, timeout=GUARD)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def by_name(report: dict) -> dict[str, dict]:
    return {c["name"]: c for c in report["checks"]}
