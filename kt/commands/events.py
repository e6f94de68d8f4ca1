"""`kt events list|tail`: decision events from a running gateway or from an event-store file."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any, TextIO

import click

from kt.admin_api import get_json

DEFAULT_GATEWAY = "http://127.0.0.1:41002"
Fetch = Callable[[dict[str, Any]], list[dict[str, Any]]]
_COLUMNS = (("TIME", 20), ("ID", 36), ("VERDICT", 9), ("REASON", 28), ("MODEL", 20), ("LATENCY", 10))


def _get_json(url: str, token: str | None, path: str) -> Any:
    """GET `path` of the gateway at `url` (with the admin token) as JSON; a clear error otherwise."""
    return get_json(url, path, token, 30, "; is `kt gateway run` up? (or read a store with --db)")


def _gateway_fetch(url: str, token: str | None) -> Fetch:
    def fetch(query: dict[str, Any]) -> list[dict[str, Any]]:
        params = urllib.parse.urlencode({k: v for k, v in query.items() if v not in (None, "")})
        return _get_json(url, token, f"/keeptrusts/events?{params}")["events"]

    return fetch


def _open_store(path: str) -> Any:
    from gateway.events.store import EventStore

    try:
        return EventStore(path, readonly=True)
    except (FileNotFoundError, OSError) as exc:
        raise click.ClickException(f"cannot open event store {path}: {exc}") from None


def _db_fetch(path: str) -> Fetch:
    store = _open_store(path)

    def fetch(query: dict[str, Any]) -> list[dict[str, Any]]:
        import sqlite3

        from gateway.events.times import parse_time

        try:
            return store.query(parse_time(query.get("since")), parse_time(query.get("until")),
                               int(query.get("limit") or 50), query.get("verdict"), query.get("after"))
        except sqlite3.Error as exc:
            raise click.ClickException(f"cannot read event store {path}: {exc}") from None

    return fetch


def _time(value: Any) -> str:
    from gateway.events.times import parse_time

    try:
        ts = parse_time(value)
    except ValueError:
        return str(value)[:19]
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) if ts else ""


def _row(cells: list[str]) -> str:
    return "  ".join(str(c)[: w].ljust(w) for c, (_, w) in zip(cells, _COLUMNS, strict=True)).rstrip()


def _print(events: list[dict[str, Any]], as_json: bool) -> None:
    for event in events:
        if as_json:
            click.echo(json.dumps(event, separators=(",", ":"), sort_keys=True))
            continue
        latency = event.get("latency_ms")
        click.echo(_row([
            _time(event.get("timestamp")), event.get("id", ""), event.get("verdict") or "",
            event.get("reason_code") or "", event.get("model") or "",
            f"{latency:.1f}ms" if isinstance(latency, int | float) else "",
        ]))
    sys.stdout.flush()


def _options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed([
        click.option("--since", help="Only events newer than this: 90s, 5m, 1h, 7d, or an RFC 3339 time."),
        click.option("--until", help="Only events older than this (same forms as --since)."),
        click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True,
                     help="At most this many events (the newest)."),
        click.option("--verdict", type=click.Choice(["allow", "block", "redact", "escalate"]),
                     help="Only events with this verdict."),
        click.option("--json", "as_json", is_flag=True, help="One JSON object per line."),
        click.option("--gateway", envvar="KEEPTRUSTS_GATEWAY_URL", default=DEFAULT_GATEWAY, show_default=True,
                     help="Running gateway to ask (env KEEPTRUSTS_GATEWAY_URL); sends $KEEPTRUSTS_ADMIN_TOKEN."),
        click.option("--db", type=click.Path(dir_okay=False), help="Read an event-store file instead of a gateway."),
    ]):
        fn = option(fn)
    return fn


def _setup(since: str | None, until: str | None, gateway: str, db: str | None) -> Fetch:
    from gateway.events.times import parse_time

    for name, value in (("--since", since), ("--until", until)):
        try:
            parse_time(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint=name) from None
    return _db_fetch(db) if db else _gateway_fetch(gateway, os.environ.get("KEEPTRUSTS_ADMIN_TOKEN"))


@click.group(name="events")
def events() -> None:
    """Decision events: what the gateway decided, request by request."""


@events.command(name="list")
@_options
def list_events(since: str | None, until: str | None, limit: int, verdict: str | None, as_json: bool,
                gateway: str, db: str | None) -> None:
    """Print recent decision events, oldest first (TIME ID VERDICT REASON MODEL LATENCY)."""
    fetch = _setup(since, until, gateway, db)
    found = fetch({"since": since, "until": until, "limit": limit, "verdict": verdict})
    if not as_json:
        click.echo(_row([name for name, _ in _COLUMNS]))
    _print(found, as_json)


@events.command(name="tail")
@_options
@click.option("--interval", type=click.FloatRange(0.05, 60), default=0.5, show_default=True,
              help="Seconds between polls for new events.")
def tail_events(since: str | None, until: str | None, limit: int, verdict: str | None, as_json: bool,
                gateway: str, db: str | None, interval: float) -> None:
    """Print matching events, then follow new ones until interrupted (Ctrl-C)."""
    fetch = _setup(since, until, gateway, db)
    started = time.time()
    found = fetch({"since": since, "until": until, "limit": limit, "verdict": verdict})
    if not as_json:
        click.echo(_row([name for name, _ in _COLUMNS]))
    _print(found, as_json)
    cursor = found[-1]["id"] if found else None
    # Ctrl-C ends the follow loop even when SIGINT was inherited as ignored (a background job).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        while True:
            time.sleep(interval)  # polling pace of a follow loop, not synchronisation
            query = {"verdict": verdict, "limit": 1000, "after": cursor}
            if cursor is None:
                query["since"] = since or str(started)
            new = fetch(query)
            if new:
                _print(new, as_json)
                cursor = new[-1]["id"]
    except KeyboardInterrupt:
        pass


# --- export ---------------------------------------------------------------------------------------

_START = "0"  # an `after` cursor that names no event: the first page starts at the oldest match
_PAGE = 250  # events per page: what an export holds in memory at once (the gateway answers up to 1000)


def _pages(fetch: Fetch, since: float | None, until: float) -> Iterator[list[dict[str, Any]]]:
    """Every event in [since, until], oldest first, one page at a time (an `after` cursor)."""
    cursor = _START
    while True:
        page = fetch({"since": since, "until": until, "limit": _PAGE, "after": cursor})
        if not page:
            return
        yield page
        cursor = page[-1]["id"]


def _running_chain(url: str, token: str | None) -> list[str]:
    """The policy chain of the gateway's running config (its CSV policy columns)."""
    view = _get_json(url, token, "/keeptrusts/config")
    doc = view.get("config") if isinstance(view, dict) else None
    policies = doc.get("policies") if isinstance(doc, dict) else None
    chain = policies.get("chain") if isinstance(policies, dict) else None
    if isinstance(chain, list):
        return [k for k in chain if isinstance(k, str)]
    single = doc.get("policy") if isinstance(doc, dict) else None  # a single-policy document
    return [single["name"]] if isinstance(single, dict) and isinstance(single.get("name"), str) else []


@contextlib.contextmanager
def _destination(output: str | None, fmt: str) -> Iterator[TextIO]:
    """Standard output, or `output` written as `output.part` and renamed once complete."""
    if output is None or output == "-":
        yield sys.stdout
        sys.stdout.flush()
        return
    part = f"{output}.part"
    try:
        # A file gets a UTF-8 BOM for CSV: spreadsheets then read non-ASCII text (names, models) right.
        handle = open(part, "w", encoding="utf-8-sig" if fmt == "csv" else "utf-8", newline="")  # noqa: SIM115
    except OSError as exc:
        raise click.ClickException(f"cannot write {output}: {exc.strerror or exc}") from None
    try:
        with handle:
            yield handle
        os.replace(part, output)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(part)
        raise


@events.command(name="export")
@click.option("--since", help="Only events at or after this: 90s, 5m, 1h, 7d, or an RFC 3339 time (default: all).")
@click.option("--until", help="Only events at or before this (same forms; default: when the export starts).")
@click.option("--format", "fmt", type=click.Choice(["csv", "json", "jsonl"]), default="jsonl", show_default=True,
              help="csv: one row per event, per-policy results as columns; json: one array; jsonl: one per line.")
@click.option("--output", "-o", "output", metavar="FILE", help="Write to FILE (default: standard output).")
@click.option("--gateway", envvar="KEEPTRUSTS_GATEWAY_URL", default=DEFAULT_GATEWAY, show_default=True,
              help="Running gateway to read (env KEEPTRUSTS_GATEWAY_URL); sends $KEEPTRUSTS_ADMIN_TOKEN.")
@click.option("--db", type=click.Path(dir_okay=False), help="Read an event-store file instead of a gateway.")
def export_events(since: str | None, until: str | None, fmt: str, output: str | None, gateway: str,
                  db: str | None) -> None:
    """Export decision events, oldest first, streamed page by page (progress on stderr)."""
    import sqlite3

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from gateway.events.times import parse_time
    from kt.event_export import write_events

    fetch = _setup(since, until, gateway, db)
    since_ts = parse_time(since)
    until_ts = parse_time(until) or time.time()  # events stored while exporting wait for the next export
    total: int | None = None
    if db:
        store = _open_store(db)
        try:
            total = store.count(since_ts, until_ts)
            policies = store.policy_names(since_ts, until_ts) if fmt == "csv" else []
        except sqlite3.Error as exc:
            raise click.ClickException(f"cannot read event store {db}: {exc}") from None
    else:
        policies = _running_chain(gateway, os.environ.get("KEEPTRUSTS_ADMIN_TOKEN")) if fmt == "csv" else []
    console = Console(stderr=True)
    columns = [SpinnerColumn(), TextColumn("exporting events"), *([BarColumn()] if total else []),
               MofNCompleteColumn() if total else TextColumn("{task.completed}"), TimeElapsedColumn()]
    # redirect_stdout=False: rich would otherwise route the export itself (written to stdout) to stderr.
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal,
                  redirect_stdout=False, redirect_stderr=False) as progress:
        task = progress.add_task("export", total=total)
        with _destination(output, fmt) as out:
            count = write_events(_pages(fetch, since_ts, until_ts), fmt, out, policies,
                                 lambda n: progress.advance(task, n))
    where = f" to {output}" if output and output != "-" else ""
    click.echo(f"Exported {count} event{'s' if count != 1 else ''} ({fmt}){where}", err=True)
