"""`kt init` (not built yet)."""

from __future__ import annotations

import click


@click.group(name="init")
def init() -> None:
    """Not built yet."""
