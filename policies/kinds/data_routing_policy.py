"""data-routing-policy: only provider targets whose data handling meets the requirements.

Runs before routing: narrows `ex.targets` to the targets whose `data_policy` meets
`require_zero_data_retention`, `require_no_training` and `max_retention_days` (a target
with zero data retention keeps data 0 days; one that states no retention fails a
`max_retention_days` requirement). Blocks with `no_compliant_provider` when none is left.
"""

from __future__ import annotations

from typing import Any

from policies.kinds import register
from policies.kinds.base import Decision, Policy
from policies.model import Exchange, Phase, Target, Verdict
from policies.rules import choice, flag, option
from policies.state import PolicyState


@register
class DataRoutingPolicy(Policy):
    kind = "data-routing-policy"
    phases = frozenset({Phase.INPUT})
    schema = {
        "require_zero_data_retention": flag("Only targets with data_policy.zero_data_retention.", False),
        "require_no_training": flag("Only targets with data_policy.training_opt_out.", False),
        "max_retention_days": option("integer", "Only targets retaining data at most this many days (null: no limit).",
                                     default=None, min=0, nullable=True),
        "on_no_compliant_provider": choice(["block"], "What happens when no target complies.", "block"),
        "log_provider_selection": flag("Record the chosen and dropped targets in the event.", False),
    }

    def __init__(self, options: dict[str, Any], state: PolicyState) -> None:
        super().__init__(options, state)
        self.zdr = options.get("require_zero_data_retention", False)
        self.no_training = options.get("require_no_training", False)
        self.max_days = options.get("max_retention_days")
        self.log_selection = options.get("log_provider_selection", False)

    def why_not(self, target: Target) -> str | None:
        """Why `target` does not comply, or None when it does."""
        dp = target.data_policy
        if self.zdr and not dp.zero_data_retention:
            return "no zero data retention"
        if self.no_training and not dp.training_opt_out:
            return "may train on data"
        if self.max_days is not None:
            days = 0 if dp.zero_data_retention else dp.retention_days
            if days is None:
                return "retention not stated"
            if days > self.max_days:
                return f"retains data {days} days"
        return None

    def check_input(self, ex: Exchange) -> Decision | None:
        if not ex.targets:
            return None
        kept: list[Target] = []
        dropped: list[str] = []
        for target in ex.targets:
            reason = self.why_not(target)
            if reason is None:
                kept.append(target)
            else:
                dropped.append(f"{target.id} ({reason})")
        if not kept:
            message = "no provider target meets the data policy: " + ", ".join(dropped)
            return Decision(Verdict.BLOCK, "no_compliant_provider", message)
        ex.targets = kept
        if self.log_selection:
            message = "using " + ", ".join(t.id for t in kept)
            if dropped:
                message += "; dropped " + ", ".join(dropped)
            return Decision(Verdict.ALLOW, "provider_selected", message)
        return None
