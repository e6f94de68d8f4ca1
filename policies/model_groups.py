"""Model groups (`providers.model_groups`): one logical model name served by weighted targets.

```yaml
providers:
  model_groups:
    gpt-4o:
      - {target: openai-primary, weight: 70}
      - {target: azure-east, weight: 30}
```

A request for `gpt-4o` goes first to one member drawn by weight (among those the policies
and the secrets leave usable), then falls back through the others, heaviest first. Each
member is called with its own `model` (and prices by it). Built once per config load.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from policies.model import Target


@dataclass(frozen=True, slots=True)
class ModelGroup:
    """A logical model: member targets (config order) and their weights."""

    name: str
    targets: tuple[Target, ...]
    weights: tuple[int, ...]

    def order(self, usable: Sequence[Target], draw: float) -> list[Target]:
        """`usable` (members of this group) as attempts: one drawn by weight (`draw` in [0, 1)), then the
        rest heaviest first (config order between equals)."""
        weight = {t.id: w for t, w in zip(self.targets, self.weights, strict=True)}
        pool = [t for t in usable if t.id in weight]
        if len(pool) < 2:
            return pool
        total = sum(weight[t.id] for t in pool)
        point, first = draw * total, pool[-1]
        for target in pool:
            point -= weight[target.id]
            if point < 0:
                first = target
                break
        rest = sorted((t for t in pool if t is not first), key=lambda t: -weight[t.id])
        return [first, *rest]


def compile_groups(raw: dict[str, Any] | None, targets: Sequence[Target]) -> dict[str, ModelGroup]:
    """The groups of a validated document (members that name no target are lint errors, skipped here)."""
    by_id = {t.id: t for t in targets}
    groups = {}
    for name, members in (raw or {}).items():
        kept = [(by_id[m["target"]], m.get("weight", 1)) for m in members if m.get("target") in by_id]
        groups[name] = ModelGroup(name, tuple(t for t, _ in kept), tuple(w for _, w in kept))
    return groups
