"""`kt policy` (not built yet)."""

from __future__ import annotations

import click


@click.group(name="policy")
def policy() -> None:
    """Not built yet."""
