"""GET /v1/models: the configured targets' models and model groups, with their availability."""

from __future__ import annotations

from typing import Any

from gateway.providers import adapters
from gateway.providers.upstream import unavailable_reason
from gateway.proxy.base import AuthedHandler


class ModelsHandler(AuthedHandler):
    """GET /v1/models: the configured targets' models, with their availability."""

    emits_event = False
    methods = frozenset({"GET"})

    def get(self) -> None:
        assert self.snap is not None
        data: dict[str, dict[str, Any]] = {}
        for target in self.snap.config.targets:
            entry = data.get(target.model)
            if entry is None:
                entry = data[target.model] = {**adapters.model_entry(target), "targets": [], "available": False}
            entry["targets"].append(target.id)
            entry["available"] = entry["available"] or unavailable_reason(target) is None
        for group in self.snap.config.model_groups.values():
            data[group.name] = {"id": group.name, "object": "model", "created": 0, "owned_by": "kt-model-group",
                                "targets": [t.id for t in group.targets],
                                "available": any(unavailable_reason(t) is None for t in group.targets)}
        self.send_json({"object": "list", "data": list(data.values())})
