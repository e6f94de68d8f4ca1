"""`kt sync` (not built yet)."""

from __future__ import annotations

import click


@click.group(name="sync")
def sync() -> None:
    """Not built yet."""
