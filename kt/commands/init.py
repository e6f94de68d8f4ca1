"""`kt init`: write a starter policy-config.yaml and its golden cases from a bundled template."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import click


def _examples() -> Path:
    # Found without importing `policies` (which compiles every kind): `kt --help` stays fast.
    spec = importlib.util.find_spec("policies")
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).parent / "examples"


SCHEMA_FILE = "policy-config.schema.json"
# The first line of a config kt init writes: editors with the YAML language server validate and
# complete the file against the schema written beside it (docs/configuration.md, "Editor support").
MODELINE = f"# yaml-language-server: $schema=./{SCHEMA_FILE}\n"


def template_names() -> list[str]:
    """The bundled templates (policies/examples/<name>/policy-config.yaml)."""
    return sorted(d.name for d in _examples().iterdir() if d.is_dir() and (d / "policy-config.yaml").is_file())


def _files(node: Path, rel: Path = Path()) -> list[tuple[Path, Path]]:
    out = []
    for child in sorted(node.iterdir(), key=lambda c: c.name):
        if child.is_dir():
            out += _files(child, rel / child.name)
        elif child.suffix in (".yaml", ".yml", ".json", ".md"):
            out.append((rel / child.name, child))
    return out


@click.command(name="init")
@click.option("--template", "-t", default="default", show_default=True, type=click.Choice(template_names()),
              help="Starter to write.")
@click.option("--dir", "directory", default=".", show_default=True, type=click.Path(file_okay=False),
              help="Directory to write into (created when missing).")
@click.option("--force", is_flag=True, help="Overwrite files that already exist.")
def init(template: str, directory: str, force: bool) -> None:
    """Write a starter policy-config.yaml and golden cases (tests/*.json) that pass lint and test."""
    dest = Path(directory)
    files = [*_files(_examples() / template), (Path(SCHEMA_FILE), _examples().parent / SCHEMA_FILE)]
    existing = [str(dest / rel) for rel, _ in files if (dest / rel).exists()]
    if existing and not force:
        shown = ", ".join(existing[:3]) + (f" and {len(existing) - 3} more" if len(existing) > 3 else "")
        raise click.ClickException(f"refusing to overwrite {shown}; use --force to overwrite")
    try:
        for rel, src in files:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            data = src.read_bytes()
            if rel == Path("policy-config.yaml"):
                data = MODELINE.encode() + data
            (dest / rel).write_bytes(data)
    except OSError as exc:
        raise click.ClickException(f"cannot write into {dest}: {exc.strerror or exc}") from exc
    cases = sum(1 for rel, _ in files if rel.parts[0] == "tests")
    config = dest / "policy-config.yaml"
    click.echo(f"Wrote {config} ({template}) and {cases} golden case{'s' if cases != 1 else ''} in {dest / 'tests'}")
    click.echo(f"Wrote {dest / SCHEMA_FILE} (editor completion and validation; see the first line of the config)")
    written = {dest / rel for rel, _ in files}
    others = sorted(p for p in (dest / "tests").glob("*.json") if p not in written)
    if others:
        click.echo(f"Note: {len(others)} other case file(s) in {dest / 'tests'} were left as they are "
                   f"({', '.join(p.name for p in others[:3])}{', ...' if len(others) > 3 else ''})")
    click.echo("Next:")
    click.echo(f"  kt policy lint --file {config}")
    click.echo(f"  kt policy test --file {config}")
