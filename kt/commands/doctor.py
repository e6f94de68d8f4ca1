"""`kt doctor`: ✓/✗ diagnostics of a config and a running gateway (logic in `kt.doctor`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from kt import doctor as diag

MARKS = {"ok": ("✓", "green"), "fail": ("✗", "red"), "skip": ("–", "yellow")}


@click.command(name="doctor")
@click.option("--config", "--policy-config", "config", metavar="FILE",
              help="Policy config to check (default: ./policy-config.yaml when nothing else is given).")
@click.option("--gateway", metavar="URL", envvar="KEEPTRUSTS_GATEWAY_URL",
              help=f"Running gateway to check [env KEEPTRUSTS_GATEWAY_URL; default {diag.DEFAULT_GATEWAY} "
                   "when neither --config nor --gateway is given]. Sends $KEEPTRUSTS_ADMIN_TOKEN.")
@click.option("--state-dir", metavar="DIR", envvar="KEEPTRUSTS_STATE_DIR",
              help="State directory to check for writability [env KEEPTRUSTS_STATE_DIR; "
                   "default ~/.local/state/kt with --config].")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object: {ok, checks[{name, status, detail, fix}]}.")
@click.option("--timeout", type=click.FloatRange(0.5, 60), default=4.0, show_default=True,
              help="Hard limit in seconds for the whole diagnosis; checks run concurrently.")
@click.option("--max-config-age", type=click.FloatRange(min=0), default=diag.MAX_CONFIG_AGE, show_default=True,
              help="Seconds after which a config not confirmed against its source fails the age check.")
def doctor(config: str | None, gateway: str | None, state_dir: str | None, as_json: bool, timeout: float,
           max_config_age: float) -> None:
    """Diagnose the config, providers, control plane, event pipeline and a running gateway.

    Exit 0 when every check passes, 1 otherwise. Finishes within --timeout even when remotes hang,
    so it works as a container healthcheck.
    """
    if not config and not gateway:
        gateway = diag.DEFAULT_GATEWAY
        if Path("policy-config.yaml").is_file():
            config = "policy-config.yaml"
    if config and not state_dir:
        state_dir = str(Path.home() / ".local" / "state" / "kt")
    report = diag.diagnose(config, gateway, state_dir, os.environ, timeout, max_config_age)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        render(report)
    raise SystemExit(0 if report.ok else 1)


def render(report: diag.Report) -> None:
    """The human view: a header, one line per check, the fix under each failure, a summary."""
    click.secho("Keeptrusts Gateway Diagnostics", bold=True)
    click.echo()
    for check in report.checks:
        mark, color = MARKS[check.status]
        click.echo(f"{click.style(mark, fg=color)} {check.name}: {check.detail}")
        if check.fix and check.status == "fail":
            click.echo(f"    fix: {check.fix}")
    failed = sum(c.status == "fail" for c in report.checks)
    passed = sum(c.status == "ok" for c in report.checks)
    click.echo()
    if failed:
        click.secho(f"{failed} check(s) failed, {passed} passed", fg="red", bold=True)
    else:
        click.secho(f"All {passed} checks passed", fg="green", bold=True)
