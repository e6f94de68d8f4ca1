"""The registry of policy kinds this gateway runs, and the ones it knows but refuses."""

from __future__ import annotations

from policies.kinds.base import Decision, Hit, Policy

KINDS: dict[str, type[Policy]] = {}

# Kinds of the Keeptrusts catalogue that need a model or an external service. Lint knows
# them, so a config naming one gets "not supported by this gateway" instead of "unknown".
UNSUPPORTED_KINDS: frozenset[str] = frozenset(
    {"quality-scorer", "flagged-review", "human-oversight", "embedding-detector", "citation-verifier"}
)


def register(cls: type[Policy]) -> type[Policy]:
    """Class decorator: make a kind available under `cls.kind`."""
    KINDS[cls.kind] = cls
    return cls


def _load_builtin() -> None:
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        if info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")


_load_builtin()

__all__ = ["KINDS", "UNSUPPORTED_KINDS", "Decision", "Hit", "Policy", "register"]
