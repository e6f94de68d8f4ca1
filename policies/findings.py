"""Lint findings and the error that carries them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem in a config: a stable code, where it is, what is wrong, how to fix it."""

    code: str  # E001 ... for errors, W001 ... for warnings
    path: str  # dotted path into the document, "" for the whole file
    message: str
    suggestion: str = ""
    line: int | None = None
    column: int | None = None
    severity: Literal["error", "warning"] = "error"

    def as_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "path": self.path,
            "message": self.message,
            "suggestion": self.suggestion,
            "line": self.line,
        }

    def __str__(self) -> str:
        where = f" at {self.path}" if self.path else ""
        line = f" (line {self.line})" if self.line else ""
        return f"{self.code}{where}{line}: {self.message}"


class ConfigError(Exception):
    """A config that cannot be loaded; `findings` says why (errors only)."""

    def __init__(self, source: str, findings: list[Finding]) -> None:
        self.source = source
        self.findings = findings
        first = "; ".join(str(f) for f in findings[:3])
        more = f" (+{len(findings) - 3} more)" if len(findings) > 3 else ""
        super().__init__(f"{source}: invalid policy config: {first}{more}")
