"""kt's tests. `ROOT`: the repository; `EXAMPLE_CONFIG`: the default example pack's config."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_CONFIG = ROOT / "policies" / "examples" / "default" / "policy-config.yaml"
