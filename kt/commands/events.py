"""`kt events` (not built yet)."""

from __future__ import annotations

import click


@click.group(name="events")
def events() -> None:
    """Not built yet."""
