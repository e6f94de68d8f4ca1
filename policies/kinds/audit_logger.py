"""audit-logger: a marker that the request is audited; persistence lives in the event store."""

from __future__ import annotations

from policies.kinds import register
from policies.kinds.base import Policy
from policies.model import Phase
from policies.rules import flag, option


@register
class AuditLogger(Policy):
    kind = "audit-logger"
    phases = frozenset({Phase.INPUT})
    schema = {
        "retention_days": option("integer", "Days decision events are kept in the event store.", default=365,
                                 min=1, max=36500),
        "immutable": flag("Accepted for compatibility; events are append-only."),
        "log_all_access": flag("Accepted for compatibility; every request is recorded."),
        "hipaa_audit_controls": flag("Accepted for compatibility."),
    }

    @property
    def retention_days(self) -> int:
        return int(self.options.get("retention_days", 365))
