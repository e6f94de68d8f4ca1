"""`kt doctor` (not built yet)."""

from __future__ import annotations

import click


@click.group(name="doctor")
def doctor() -> None:
    """Not built yet."""
