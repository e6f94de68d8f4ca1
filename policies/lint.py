"""Strict validation of a policy-config document into lint findings. (Skeleton.)"""

from __future__ import annotations

from typing import Any

from policies.findings import Finding
from policies.kinds import KINDS


def validate_document(doc: dict[str, Any]) -> list[Finding]:
    """All findings (errors and warnings) for a parsed document."""
    findings: list[Finding] = []
    for i, kind in enumerate((doc.get("policies") or {}).get("chain") or []):
        if kind not in KINDS:
            findings.append(Finding("E001", f"policies.chain[{i}]", f"unknown policy kind '{kind}'"))
    return findings
