"""The phases of the wire's connections stay as cheap as the flags they replaced (see gateway/http/phases.py)."""

from __future__ import annotations

import enum

from gateway.http import connection, exchange, phases, upstream_connection


def test_no_class_of_the_wire_gives_a_phase_as_a_class_default() -> None:
    """CPython 3.11 does not specialise an attribute whose class default is an enum member: set phases in __init__."""
    kinds = tuple(v for v in vars(phases).values() if isinstance(v, type) and issubclass(v, enum.Enum))
    for module in (connection, exchange, upstream_connection):
        for cls in (v for v in vars(module).values() if isinstance(v, type) and v.__module__ == module.__name__):
            defaults = [name for k in cls.__mro__ for name, value in vars(k).items() if isinstance(value, kinds)]
            assert not defaults, f"{cls.__name__}: {defaults}"
