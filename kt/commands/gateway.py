"""`kt gateway` (not built yet: `make run` lints and shows the bundled default config)."""

from __future__ import annotations

import click


@click.group(name="gateway")
def gateway() -> None:
    """Run and inspect the gateway."""


@gateway.command(name="run")
@click.option("--policy-config", "--config", "policy_config", required=True, type=click.Path())
def run(policy_config: str) -> None:
    """Start the gateway (placeholder until the proxy lands)."""
    from policies import ConfigError, load_config

    try:
        config = load_config(policy_config)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"OK {policy_config} is valid: {config.pack.name} v{config.pack.version}, "
               f"chain {' -> '.join(config.chain.kinds) or '(empty)'}")
    click.echo("The gateway itself is not built yet; this only validated the config.")
