"""`kt gateway run`: the proxy in the foreground (flags in docs/gateway.md); `kt gateway status`: the fleet."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from kt.commands.sync import build_embedded_sync, embedded_sync_options

DEFAULT_LISTEN = "0.0.0.0:41002"


def parse_listen(value: str, port: int | None) -> tuple[str, int]:
    """`HOST:PORT` (or `[v6]:PORT`, or `:PORT`) plus the `--port` shorthand, checked."""
    host, sep, port_text = value.rpartition(":")
    if not sep:
        raise click.BadParameter(f"{value!r}: expected HOST:PORT, e.g. 0.0.0.0:41002", param_hint="--listen")
    host = host.strip("[]")
    try:
        listen_port = int(port_text) if port is None else port
    except ValueError:
        raise click.BadParameter(f"{value!r}: the port must be a number", param_hint="--listen") from None
    if not 0 <= listen_port <= 65535:
        raise click.BadParameter(f"port {listen_port} is out of range 0-65535", param_hint="--port")
    return host, listen_port


def parse_size(value: str, flag: str = "--max-body-size") -> int:
    """`10485760`, `10MiB`, `512KiB`, `10MB` -> bytes."""
    text = value.strip().lower().replace(" ", "")
    units = {"kib": 1024, "mib": 1024**2, "gib": 1024**3, "kb": 1000, "mb": 1000**2, "gb": 1000**3,
             "k": 1024, "m": 1024**2, "g": 1024**3, "b": 1}
    for unit, factor in units.items():
        if text.endswith(unit):
            text, mult = text[: -len(unit)], factor
            break
    else:
        mult = 1
    try:
        size = int(float(text) * mult)
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected a size such as 10MiB or 1048576",
                                 param_hint=flag) from None
    if size < 1:
        raise click.BadParameter("must be at least 1 byte", param_hint=flag)
    return size


@click.group(name="gateway")
def gateway() -> None:
    """Run and inspect the gateway."""


def check_state_url(url: str | None, password_file: str | None) -> None:
    """Refuse a --state-url kt cannot use, or an unreadable password file (ValueError; the URL masked)."""
    if not url:
        return
    from gateway.control.counters_redis import SCHEMES, read_password
    from sync.credentials import mask_url

    if not url.startswith(SCHEMES):
        raise ValueError(f"--state-url {mask_url(url)}: use redis://HOST:PORT/DB, rediss://HOST:PORT/DB "
                         "or unix:///path/to/redis.sock")
    read_password(password_file)


def _has_module(name: str) -> bool:
    """Whether `name` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def _cap_option(flag: str, envvar: str, default: str, text: str) -> Callable[[Any], Any]:
    """A count limit (at least 1, also read from `envvar`) whose `default` the gateway works out when it
    starts (None here), shown in the help as click shows a default."""
    return click.option(flag, type=click.IntRange(min=1), default=None, envvar=envvar,
                        help=f"{text} [default: {default}]")


@gateway.command(name="run")
@click.option("--policy-config", "--config", "policy_config", type=click.Path(dir_okay=False),
              help="Policy config file (policy-config.yaml); required unless --git-repo is given.")
@click.option("--listen", default=DEFAULT_LISTEN, show_default=True, help="HOST:PORT to listen on.")
@click.option("--port", type=int, default=None, help="Port shorthand; overrides the port of --listen.")
@click.option("--fail-mode", type=click.Choice(["block", "allow"]), default="block", show_default=True,
              help="What a policy *error* does: block fails the request closed (503), allow lets it pass. "
                   "Also what an unreachable --state-url does: block answers 503 state_unavailable to requests "
                   "that need a counter, allow counts them in this process only.")
@click.option("--max-body-size", default="10MiB", show_default=True, help="Largest request body; larger gets 413.")
@click.option("--max-response-size", default="64MiB", show_default=True,
              envvar="KEEPTRUSTS_GATEWAY_MAX_RESPONSE_SIZE",
              help="Largest upstream answer (decoded) the gateway reads; a larger one is a 502.")
@click.option("--drain-timeout", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="Seconds to let in-flight requests finish after SIGTERM/SIGINT.")
@click.option("--client-timeout", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
              envvar="KEEPTRUSTS_GATEWAY_CLIENT_TIMEOUT",
              help="Longest silence (s) of a client sending a request head or body, or not reading its "
                   "answer; past it the connection closes (408 when an answer can still be sent).")
@_cap_option("--max-connections", "KEEPTRUSTS_GATEWAY_MAX_CONNECTIONS", "(open-file limit - 128) / 2",
             "Client connections at once; past it a new one gets 503 and is closed.")
@click.option("--workers", default="1", show_default=True, envvar="KEEPTRUSTS_GATEWAY_WORKERS", metavar="N|auto",
              help="Worker processes serving one port; auto = the CPUs this process may use. With more than one "
                   "a supervisor binds the socket, restarts workers that die and runs the one sync agent.")
@_cap_option("--max-concurrency", "KEEPTRUSTS_GATEWAY_MAX_CONCURRENCY", "1000",
             "Proxied requests in flight at once (per worker); past it 503 overloaded with Retry-After, "
             "at once (never queued). Health and admin routes are never refused.")
@click.option("--keys-file", type=click.Path(dir_okay=False), default=None,
              help="Gateway keys: lines of '<sha256 hex> <label>'. Without it the gateway is open.")
@click.option("--upstream-connect-timeout", type=click.FloatRange(min=0.01), default=5.0, show_default=True,
              help="Seconds to connect to an upstream, per attempt.")
@click.option("--upstream-read-timeout", type=click.FloatRange(min=0.01), default=120.0, show_default=True,
              help="Longest silence (s) while reading an upstream answer, per attempt.")
@click.option("--state-dir", type=click.Path(file_okay=False), envvar="KEEPTRUSTS_STATE_DIR", default=None,
              help="Where the event store (events.db) lives (env KEEPTRUSTS_STATE_DIR; default ~/.local/state/kt).")
@click.option("--events-max-size", default="512MiB", show_default=True, envvar="KEEPTRUSTS_EVENTS_MAX_SIZE",
              metavar="SIZE", help="Cap on the event store's disk use (events.db + WAL; env "
                                   "KEEPTRUSTS_EVENTS_MAX_SIZE). When reached, delivered events (no control plane: "
                                   "the oldest) go first, undelivered ones last (counted). At least 1MiB.")
@click.option("--state-url", envvar="KEEPTRUSTS_STATE_URL", default=None, metavar="URL",
              help="Shared counters (spend, rates, sessions) for every replica: redis://HOST:PORT/DB, rediss://... "
                   "(TLS) or unix:///path.sock (env KEEPTRUSTS_STATE_URL). Default: <state-dir>/counters.db, "
                   "shared by the gateways of one host and kept across restarts.")
@click.option("--state-password-file", type=click.Path(dir_okay=False), envvar="KEEPTRUSTS_STATE_PASSWORD_FILE",
              default=None, help="File holding the --state-url password (instead of putting it in the URL).")
@click.option("--watch/--no-watch", "watch_config", default=True, show_default=True,
              help="Reload when the config file, or a symlink on its path, changes. SIGHUP and "
                   "POST /keeptrusts/config/reload reload either way.")
@click.option("--log-format", type=click.Choice(["json", "text"]), default="json", show_default=True,
              help="Log lines on stderr: JSON objects or text.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True, help="info logs one line per request; warning drops those.")
@click.option("--otlp-endpoint", envvar="OTEL_EXPORTER_OTLP_ENDPOINT", default=None, metavar="URL",
              help="Send OpenTelemetry traces (OTLP/HTTP) to this collector, e.g. http://127.0.0.1:4318 "
                   "[env OTEL_EXPORTER_OTLP_ENDPOINT]; needs the kt-gateway[otel] extra. Off by default.")
@embedded_sync_options
def run(policy_config: str | None, listen: str, port: int | None, fail_mode: str, max_body_size: str,
        max_response_size: str, drain_timeout: float, client_timeout: float, max_connections: int | None,
        workers: str, max_concurrency: int | None, keys_file: str | None, upstream_connect_timeout: float,
        upstream_read_timeout: float,
        state_dir: str | None, events_max_size: str, state_url: str | None, state_password_file: str | None,
        watch_config: bool,
        log_format: str, log_level: str, otlp_endpoint: str | None, **git: Any) -> None:
    """Start the gateway in the foreground; SIGTERM/SIGINT drain and exit 0."""
    if otlp_endpoint and not _has_module("opentelemetry.sdk"):
        raise click.ClickException("--otlp-endpoint needs the OpenTelemetry SDK: pip install 'kt-gateway[otel]'")
    from gateway.control.logs import setup_logging, shutdown_logging
    from gateway.http.https_proxy import Proxy
    from gateway.providers.upstream import Timeouts
    from gateway.proxy.app import GatewaySettings
    from gateway.proxy.keys import KeysFileError, load_keys
    from gateway.server import run as run_gateway
    from policies import ConfigError

    if bool(policy_config) == bool(git["git_repo"]):
        raise click.UsageError("give either --policy-config FILE or --git-repo URL (the embedded sync agent)")
    sync = build_embedded_sync(state_dir, **git)
    locked: tuple[type[Exception], ...] = ()
    if sync is not None:
        from sync.agent import AgentLocked

        locked = (AgentLocked,)
    host, listen_port = parse_listen(listen, port)
    size = parse_size(max_body_size)
    response_size = parse_size(max_response_size, "--max-response-size")
    events_cap = parse_size(events_max_size, "--events-max-size")
    if events_cap < 1024**2:
        raise click.BadParameter(f"{events_max_size!r}: at least 1MiB", param_hint="--events-max-size")
    try:
        keys = load_keys(keys_file) if keys_file else None
        Proxy.from_env()
        check_state_url(state_url, state_password_file)
    except (KeysFileError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    from gateway.control.group import worker_index
    from gateway.supervisor import worker_count

    try:
        count = worker_count(workers)
    except ValueError:
        raise click.BadParameter(f"{workers!r}: use a whole number >= 1 or 'auto'", param_hint="--workers") from None
    setup_logging(log_format, log_level)
    if count > 1 and worker_index() is None:  # the supervisor: workers run these same arguments
        from gateway.supervisor import Supervisor

        argv = [sys.executable, "-m", "kt", *sys.argv[1:]]
        try:
            code = Supervisor(argv, count, host, listen_port, sync, drain_timeout).run()
        except locked as exc:
            raise click.ClickException(str(exc)) from exc
        except OSError as exc:
            raise click.ClickException(f"cannot listen on {host}:{listen_port}: {exc.strerror or exc}") from exc
        finally:
            shutdown_logging()
        sys.exit(code)
    if worker_index() is not None and sync is not None:  # a worker: the supervisor's agent publishes; the
        sync.supervisor_pid = os.getppid()  # worker serves the webhook, which asks the supervisor to sync
    settings = GatewaySettings(
        host=host, port=listen_port, fail_mode=fail_mode, max_body_size=size, drain_timeout=drain_timeout,
        client_timeout=client_timeout, max_connections=max_connections,
        keys=keys, timeouts=Timeouts(upstream_connect_timeout, upstream_read_timeout),
        max_response_size=response_size,
        state_dir=Path(state_dir) if state_dir else None, events_max_size=events_cap, watch_config=watch_config,
        state_url=state_url or None, state_password_file=state_password_file,
        otlp_endpoint=otlp_endpoint or None,
        # every request in flight may hold one upstream connection: the pool grows with the limit
        **({"max_concurrency": max_concurrency, "max_upstream_connections": max(1000, max_concurrency)}
           if max_concurrency else {}),
    )
    try:
        code = run_gateway(settings, policy_config, sync)
    except locked as exc:
        raise click.ClickException(str(exc)) from exc
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{listen_port}: {exc.strerror or exc}") from exc
    finally:
        shutdown_logging()
    sys.exit(code)


@gateway.command(name="status")
@click.option("--gateway", "urls", multiple=True, metavar="URL", envvar="KEEPTRUSTS_GATEWAY_URL",
              help="A gateway to ask (repeatable) [env KEEPTRUSTS_GATEWAY_URL, space-separated; "
                   "default http://127.0.0.1:41002]. Sends $KEEPTRUSTS_ADMIN_TOKEN when set.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object: {ok, revisions, problems, gateways[{url, reachable, error, status}]}.")
@click.option("--timeout", type=click.FloatRange(0.1, 60), default=5.0, show_default=True,
              help="Seconds to wait for each gateway (they are asked concurrently).")
def status(urls: tuple[str, ...], as_json: bool, timeout: float) -> None:
    """The fleet at a glance: each gateway's revision, pack, config age, drift and last sync.

    Exit 0 when every gateway answers, none is drifted and all run the same revision; 1 otherwise.
    """
    import json
    import os

    from kt import fleet
    from kt.doctor import DEFAULT_GATEWAY

    members = fleet.survey(list(urls) or [DEFAULT_GATEWAY], os.environ.get("KEEPTRUSTS_ADMIN_TOKEN") or None, timeout)
    result = fleet.report(members)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        _render_fleet(members, result)
    sys.exit(0 if result["ok"] else 1)


def _render_fleet(members: list[Any], result: dict[str, Any]) -> None:
    import time

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from kt.commands.sync import _ago
    from sync.clock import parse_time
    from sync.credentials import mask_url

    now = time.time()
    majority = max(result["revisions"], key=lambda r: sum(m.revision == r for m in members), default=None)
    table = Table(title="kt gateways", title_justify="left")
    for column in ("GATEWAY", "REVISION", "PACK", "CONFIG AGE", "DRIFT", "LAST SYNC"):
        table.add_column(column)
    for m in members:
        url = escape(mask_url(m.url))
        if m.error:
            table.add_row(url, f"[red]{escape(m.error)}[/red]", "", "", "", "")
            continue
        s = m.status or {}
        config = s.get("config") or {}
        pack = config.get("pack") or {}
        revision = (m.revision or "none")[:12]
        color = "green" if m.revision and (m.revision == majority and len(result["revisions"]) == 1) else "red"
        age = s.get("age_seconds")
        drifted, reason = m.drift
        sync = s.get("sync")
        if sync:
            success = parse_time(sync.get("last_success_at"))
            last = "never" if success is None else _ago(now - success)
            if sync.get("consecutive_failures"):
                last += f", {sync['consecutive_failures']} failing"
        else:
            last = "- (plain file)"
        table.add_row(url, f"[{color}]{escape(revision)}[/{color}] ({escape(str(config.get('source') or '?'))})",
                      escape(f"{pack.get('name')}@{pack.get('version')}") if pack else "-",
                      "unknown" if age is None else _ago(age).removesuffix(" ago"),
                      f"[red]{escape(str(reason))}[/red]" if drifted else "[green]none[/green]", escape(last))
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)  # a pipe gets whole lines
    console.print(table)
    for problem in result["problems"]:
        console.print(f"[red]✗[/red] {escape(problem)}")
    if result["ok"]:
        console.print(f"[green]✓[/green] {len(members)} gateway(s) agree on revision {escape(majority or '')[:12]}")
