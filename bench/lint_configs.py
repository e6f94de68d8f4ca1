"""Benchmark: CPU time to lint 100 policy configs (the bundled templates, repeated) in one process.

Target: under one second of CPU for 100 configs. Run: `.venv/bin/python bench/lint_configs.py`.
"""

from __future__ import annotations

import time
from pathlib import Path

from policies.lint import lint_bytes

EXAMPLES = Path(__file__).resolve().parent.parent / "policies" / "examples"


def main(n: int = 100) -> None:
    sources = [p.read_bytes() for p in sorted(EXAMPLES.glob("*/policy-config.yaml"))]
    started = time.process_time()
    lint_bytes(sources[0])  # the first lint builds the cached validator
    first = time.process_time() - started
    started_cpu, started = time.process_time(), time.perf_counter()
    reports = [lint_bytes(sources[i % len(sources)], f"config-{i}.yaml") for i in range(n)]
    cpu, wall = time.process_time() - started_cpu, time.perf_counter() - started
    assert all(r.valid for r in reports)
    print(f"first lint (builds the validator): {first * 1000:.1f} ms CPU")
    print(f"linted {n} configs ({len(sources)} distinct templates): {cpu:.3f} s CPU, {wall:.3f} s wall, "
          f"{cpu / n * 1000:.2f} ms CPU per config")


if __name__ == "__main__":
    main()
