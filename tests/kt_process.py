"""The `kt` command line as a subprocess: run to its end, and the environment an operator's process sees."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any `KEEPTRUSTS_*`, `NOTIFY_*` or `WATCHDOG_*` variable, plus
    `extra`: what a process started as an operator would start it sees (no state dir or token of the
    test run, no service manager of whatever runs the tests)."""
    kept = {k: v for k, v in os.environ.items() if not k.startswith(("KEEPTRUSTS_", "NOTIFY_", "WATCHDOG_"))}
    return {**kept, **extra}


def run_kt(*args: str, timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess[str]:
    """`python -m kt ARGS` run to its end, stdout and stderr captured as text; `kw` as subprocess.run
    takes them (`env` is the whole environment: `clean_env(...)` or `{**os.environ, ...}`; `cwd`, ...)."""
    return subprocess.run([sys.executable, "-m", "kt", *args], capture_output=True, text=True, timeout=timeout, **kw)
