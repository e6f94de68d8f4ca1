"""`kt doctor`: ✓/✗ diagnostics of a config and a running gateway (logic in `kt.doctor`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from kt import doctor as diag

MARKS = {"ok": ("✓", "green"), "warn": ("⚠", "yellow"), "fail": ("✗", "red"), "skip": ("–", "bright_black")}


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
              help="Print one JSON object: {ok, strict, failures, warnings, checks[{name, status, detail, fix}]}.")
@click.option("--strict", is_flag=True, help="Warnings (⚠: drift, a refused head, an unset optional variable, "
              "one unusable target...) fail too (exit 1).")
@click.option("--timeout", type=click.FloatRange(0.5, 60), default=4.0, show_default=True,
              help="Hard limit in seconds for the whole diagnosis; checks run concurrently.")
@click.option("--max-config-age", type=click.FloatRange(min=0), default=diag.MAX_CONFIG_AGE, show_default=True,
              help="Seconds after which a config not confirmed against its source is a warning.")
def doctor(config: str | None, gateway: str | None, state_dir: str | None, as_json: bool, strict: bool,
           timeout: float, max_config_age: float) -> None:
    """Diagnose the config, providers, control plane, event pipeline and a running gateway.

    Exit 1 only when the gateway cannot serve correctly (✗: no valid config, gateway down or not
    ready, every target unusable, event store not writable); warnings (⚠) exit 0 unless --strict.
    Finishes within --timeout even when remotes hang, so it works as a liveness/readiness probe.
    """
    if not config and not gateway:
        gateway = diag.DEFAULT_GATEWAY
        if Path("policy-config.yaml").is_file():
            config = "policy-config.yaml"
    if config and not state_dir:
        from sync.publish import default_state_dir

        state_dir = str(default_state_dir())
    report = diag.diagnose(config, gateway, state_dir, os.environ, timeout, max_config_age, strict)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        render(report)
    raise SystemExit(0 if report.ok else 1)


def render(report: diag.Report) -> None:
    """The human view: a header, one line per check, the fix under each failure or warning, a summary."""
    click.secho("Keeptrusts Gateway Diagnostics", bold=True)
    click.echo()
    for check in report.checks:
        mark, color = MARKS[check.status]
        click.echo(f"{click.style(mark, fg=color)} {check.name}: {check.detail}")
        if check.fix and check.status in ("fail", "warn"):
            click.echo(f"    fix: {check.fix}")
    failed, warned, passed = report.count("fail"), report.count("warn"), report.count("ok")
    click.echo()
    if failed:
        click.secho(f"{failed} check(s) failed, {warned} warning(s), {passed} passed", fg="red", bold=True)
    elif warned:
        verdict = "failing: --strict" if report.strict else "the gateway can serve"
        click.secho(f"{warned} warning(s) ({verdict}), {passed} passed", fg="red" if report.strict else "yellow",
                    bold=True)
    else:
        click.secho(f"All {passed} checks passed", fg="green", bold=True)
