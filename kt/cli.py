"""The `kt` command line: a thin face over policies/, sync/ and gateway/.

Each command group lives in its own module under `kt.commands`. Exit codes: 0 success,
1 usage or I/O error (and failed tests/checks), 2 invalid config.
"""

from __future__ import annotations

import sys

import click

from kt import __version__
from kt.commands import console, doctor, events, gateway, init, policy, sync


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="kt")
def cli() -> None:
    """kt: a self-hosted AI gateway whose policies are deployed from Git."""


cli.add_command(policy.policy)
cli.add_command(init.init)
cli.add_command(gateway.gateway)
cli.add_command(sync.sync)
cli.add_command(events.events)
cli.add_command(doctor.doctor)
cli.add_command(console.console)


def main() -> None:
    """Console-script entry point. Usage errors exit 1 (click's own 2 means "invalid config" here)."""
    try:
        code = cli.main(prog_name="kt", standalone_mode=False)
    except click.UsageError as exc:
        exc.show()
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("Aborted!", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
