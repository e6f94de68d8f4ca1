"""Safe YAML loading. (Skeleton: the lint work replaces this with duplicate-key,
line/column, size and alias-bomb handling.)"""

from __future__ import annotations

from typing import Any

import yaml

from policies.findings import Finding


def parse_yaml(data: bytes, source: str) -> tuple[dict[str, Any] | None, list[Finding]]:
    """Parse `data`; return (document or None, findings)."""
    try:
        doc = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        return None, [Finding("E010", "", f"YAML syntax error: {exc}")]
    if not isinstance(doc, dict):
        return None, [Finding("E011", "", "a policy config must be a mapping")]
    return doc, []
