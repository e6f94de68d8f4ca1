"""`kt policy lint` and `kt policy test`: check a policy config and run its golden cases offline."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:  # importing `policies` compiles every kind: only the commands that need it do
    from policies.findings import Finding

EXIT_OK, EXIT_IO, EXIT_INVALID = 0, 1, 2


def _console() -> Console:
    # Not a terminal (CI logs, pipes): wide enough that tables are not cut to 80 columns.
    return Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)


@click.group(name="policy")
def policy() -> None:
    """Lint policy configs and run their golden tests."""


def _print_finding(con: Console, f: Finding) -> None:
    label = "[bold red]error" if f.severity == "error" else "[bold yellow]warning"
    con.print(f"{label}[{f.code}][/]: {escape(f.message)}")
    if f.path or f.line:
        line = f" (line {f.line})" if f.line else ""
        con.print(f"  [blue]-->[/] {escape(f.path or '(file)')}{line}")
    if f.suggestion:
        con.print(f"  [cyan]help:[/] {escape(f.suggestion)}")


def _print_human(reports: list) -> None:
    con = _console()
    for i, r in enumerate(reports):
        if i:
            con.print()
        if r.valid:
            con.print(f"[bold green]OK[/] {escape(r.file)} is valid")
            if r.pack:
                con.print(f"Pack: {escape(r.pack[0])} (v{escape(r.pack[1])})")
            con.print(f"Chain: {escape(' -> '.join(r.chain)) or '(empty)'}")
            con.print(f"Policies validated: {r.policy_count}")
        else:
            n = len(r.errors)
            con.print(f"[bold red]X[/] {escape(r.file)} has {n} error{'s' if n != 1 else ''}")
        for f in (*r.errors, *r.warnings):
            con.print()
            _print_finding(con, f)


def _gh_escape(text: str, prop: bool = False) -> str:
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return text.replace(":", "%3A").replace(",", "%2C") if prop else text


def _print_github(reports: list) -> None:
    for r in reports:
        for f in (*r.errors, *r.warnings):
            props = [f"file={_gh_escape(r.file, True)}"]
            if f.line:
                props.append(f"line={f.line}")
            if f.column:
                props.append(f"col={f.column}")
            props.append(f"title={_gh_escape(f'kt {f.code}', True)}")
            where = f"{f.path}: " if f.path else ""
            help_ = f" (help: {f.suggestion})" if f.suggestion else ""
            click.echo(f"::{f.severity} {','.join(props)}::{_gh_escape(where + f.message + help_)}")
        status = "is valid" if r.valid else f"has {len(r.errors)} error{'s' if len(r.errors) != 1 else ''}"
        click.echo(f"{'OK' if r.valid else 'X'} {r.file} {status}")


@policy.command(name="lint")
@click.option("--file", "-f", "files", multiple=True, required=True, metavar="PATH",
              help="Policy config file, or a directory to lint every policy config below it. Repeatable.")
@click.option("--json", "as_json", is_flag=True, help="JSON output (same as --format json).")
@click.option("--format", "fmt", type=click.Choice(["human", "json", "github"]), default=None,
              help="Output format: human (default), json, or github (GitHub Actions annotations).")
def lint(files: tuple[str, ...], as_json: bool, fmt: str | None) -> None:
    """Validate policy configs strictly. Exit 0 valid, 2 invalid, 1 unreadable file."""
    from policies.lint import lint_path

    fmt = "json" if as_json else (fmt or "human")
    reports = [r for f in files for r in lint_path(f)]
    if fmt == "json":
        single = len(files) == 1 and len(reports) == 1 and not Path(files[0]).is_dir()
        data = reports[0].as_dict() if single else [r.as_dict() for r in reports]
        click.echo(json.dumps(data, indent=2))
    elif fmt == "github":
        _print_github(reports)
    else:
        _print_human(reports)
    if any(r.io_error for r in reports):
        sys.exit(EXIT_IO)
    sys.exit(EXIT_OK if all(r.valid for r in reports) else EXIT_INVALID)


@policy.command(name="test")
@click.option("--file", "-f", "file", default=None, metavar="PATH",
              help="Policy config (default: policy-config.yaml, in --pack-dir or the current directory).")
@click.option("--cases", "cases", default=None, metavar="DIR",
              help="Directory of golden case files *.json (default: tests/ beside the config).")
@click.option("--pack-dir", "pack_dir", default=None, metavar="DIR",
              help="Directory holding policy-config.yaml and tests/.")
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
def test(file: str | None, cases: str | None, pack_dir: str | None, as_json: bool) -> None:
    """Run golden cases (tests/*.json and inline testing.suites) offline. Exit 1 when any case fails."""
    from policies.config import load_config
    from policies.findings import ConfigError
    from policies.golden import run_golden

    config_path = Path(file) if file else Path(pack_dir or ".") / "policy-config.yaml"
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        io = any(f.code == "E100" for f in exc.findings)
        if as_json:
            click.echo(json.dumps({"ok": False, "file": str(config_path),
                                   "errors": [f.as_dict() for f in exc.findings], "results": []}, indent=2))
        else:
            con = _console()
            con.print(f"[bold red]X[/] {escape(str(config_path))} cannot be tested: the config is invalid")
            for f in exc.findings:
                con.print()
                _print_finding(con, f)
        sys.exit(EXIT_IO if io else EXIT_INVALID)
    cases_dir = Path(cases) if cases else config_path.parent / "tests"
    if cases and not cases_dir.is_dir():
        raise click.UsageError(f"--cases {cases}: not a directory")
    results = run_golden(config, cases_dir)
    ok = all(r.passed for r in results)
    if as_json:
        click.echo(json.dumps({"ok": ok, "results": [r.as_dict() for r in results]}, indent=2))
    else:
        _print_results(config_path, cases_dir, results)
    sys.exit(EXIT_OK if ok else EXIT_IO)


def _print_results(config_path: Path, cases_dir: Path, results: list) -> None:
    con = _console()
    if not results:
        con.print(f"no golden cases found (looked in {escape(str(cases_dir))} and testing.suites of "
                  f"{escape(str(config_path))})")
        return
    table = Table(title=f"Golden tests: {escape(str(config_path))}", title_justify="left")
    for col in ("CASE", "EXPECTED", "GOT", "REASON", "RESULT"):
        table.add_column(col)
    for r in results:
        want = r.expected.get("verdict", "")
        if r.expected.get("reason_code"):
            want += f" ({r.expected['reason_code']})"
        if "targets" in r.expected:
            want += " -> " + (", ".join(r.expected["targets"]) or "no target")
        result = "[green]PASS[/]" if r.passed else "[red]FAIL[/]"
        table.add_row(escape(r.name), escape(want), escape(r.verdict), escape(r.error or r.reason_code), result)
    con.print(table)
    failed = sum(not r.passed for r in results)
    con.print(f"{len(results) - failed} passed, {failed} failed")


@policy.command(name="schema")
@click.option("--output", "-o", "output", default=None, metavar="FILE",
              help="Write the schema to FILE instead of standard output.")
def schema(output: str | None) -> None:
    """Print the JSON Schema (draft 2020-12) of policy-config.yaml, for editor completion and validation."""
    from policies.json_schema import render

    text = render()
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        Path(output).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise click.ClickException(f"cannot write {output}: {exc.strerror or exc}") from None
    click.echo(f"Wrote {output}", err=True)
