"""`kt sync`: run the Git sync agent, trigger it, and show what it applied and whether it drifted."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import click

VERIFY_SIGNERS_ENV = "KEEPTRUSTS_GIT_VERIFY_SIGNERS"
VERIFY_SIGNERS_HELP = ("Apply only commits whose own signature verifies against FILE: an SSH allowed_signers file or "
                       "an armored OpenPGP public-key file (env KEEPTRUSTS_GIT_VERIFY_SIGNERS). Unsigned or "
                       "untrusted commits are refused (E120).")
ON_REWIND_ENV = "KEEPTRUSTS_GIT_ON_REWIND"
ON_REWIND_HELP = ("What to do with a head that does not descend from the applied commit (a force-push, a tag "
                  "moved back): refuse it (E121) or follow it (env KEEPTRUSTS_GIT_ON_REWIND). Default: refuse "
                  "with --verify-signers, follow without.")
ON_REWIND_CHOICE = click.Choice(["follow", "refuse"])


def _default_state_dir() -> str:
    """The state dir when `--state-dir` is not given (read when a command runs, not at import)."""
    from sync.publish import default_state_dir

    return str(default_state_dir())


state_dir_option = click.option(
    "--state-dir", type=click.Path(file_okay=False), default=_default_state_dir,
    help="State directory (default $KEEPTRUSTS_STATE_DIR or ~/.local/state/kt).",
)


@click.group(name="sync")
def sync() -> None:
    """Deploy the policy config from a Git branch into a state directory the gateway reads."""


@sync.command(name="run")
@click.option("--repo", required=True, help="Repository URL (https://, ssh://, git://, file:// or a path).")
@click.option("--ref", "--branch", "ref", envvar="KEEPTRUSTS_GIT_REF", default="main", show_default=True,
              help="Branch, tag (lightweight or annotated) or full commit SHA to deploy (env KEEPTRUSTS_GIT_REF; "
                   "--branch is an alias). A short name is looked up as a branch, then as a tag.")
@click.option("--path", "config_path", default="policy-config.yaml", show_default=True,
              help="Config file, or a directory whose *.yaml files must all validate, relative to the repo root.")
@state_dir_option
@click.option("--interval", type=click.FloatRange(min=0.05), default=60.0, show_default=True,
              help="Seconds between polls (+-10% jitter).")
@click.option("--once", is_flag=True, help="Sync once and exit (0 applied or unchanged, 1 otherwise).")
@click.option("--depth", type=click.IntRange(min=0), default=1, show_default=True,
              help="Fetch depth; 0 = full history.")
@click.option("--max-failures", type=click.IntRange(min=1), default=None,
              help="Exit 1 after this many consecutive failed or refused syncs (default: retry forever).")
@click.option("--token-file", type=click.Path(dir_okay=False),
              help="HTTPS token, re-read before every fetch (default: $KEEPTRUSTS_GIT_TOKEN).")
@click.option("--username", help="Username sent with the token (default: from the URL, else x-access-token).")
@click.option("--ssh-key", type=click.Path(dir_okay=False), help="SSH private key file.")
@click.option("--known-hosts", type=click.Path(dir_okay=False), help="known_hosts file (host keys are always checked).")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=120.0, show_default=True,
              help="Per-sync deadline in seconds; a git still running then is killed.")
@click.option("--keep", type=click.IntRange(min=1), default=5, show_default=True, help="Published revisions to keep.")
@click.option("--verify-signers", "--git-verify-signers", "verify_signers", type=click.Path(dir_okay=False),
              envvar=VERIFY_SIGNERS_ENV, help=VERIFY_SIGNERS_HELP)
@click.option("--on-rewind", "--git-on-rewind", "on_rewind", type=ON_REWIND_CHOICE, envvar=ON_REWIND_ENV,
              help=ON_REWIND_HELP)
def run(repo: str, ref: str, config_path: str, state_dir: str, interval: float, once: bool, depth: int,
        max_failures: int | None, token_file: str | None, username: str | None, ssh_key: str | None,
        known_hosts: str | None, timeout: float, keep: int, verify_signers: str | None,
        on_rewind: str | None) -> None:
    """Run the sync agent: fetch, validate and publish every --interval; SIGHUP syncs now, SIGTERM stops."""
    import logging

    from sync.agent import AgentLocked, SyncAgent, SyncSettings
    from sync.credentials import Credentials
    from sync.repo import Remote, check_ref_name
    from sync.signature import SignersError

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        check_ref_name(ref)
        creds = Credentials(token_file=token_file, ssh_key=ssh_key, known_hosts=known_hosts, username=username)
        settings = SyncSettings(Remote(repo, ref, depth, creds), Path(state_dir), config_path, timeout, keep,
                                verify_signers, on_rewind)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    try:
        agent = SyncAgent(settings)
    except SignersError as exc:
        raise click.ClickException(f"--verify-signers: {exc}") from exc
    try:
        agent.acquire()
    except (AgentLocked, OSError) as exc:
        agent.release()
        raise click.ClickException(str(exc)) from exc
    try:
        if once:
            result = agent.sync_once()
            _echo_result(result)
            sys.exit(0 if result.ok else 1)
        from gateway.control import sdnotify
        from sync.scheduler import SyncScheduler

        def on_result(result) -> None:
            _echo_result(result)
            line = f"sync {result.result}, applied {(result.applied or 'none')[:12]}"
            if ready.is_set():
                sdnotify.status(line)
            else:  # READY=1 after the first sync attempt, whatever its result
                sdnotify.ready(line)
                ready.set()

        ready = threading.Event()
        scheduler = SyncScheduler(agent, interval=interval, max_failures=max_failures, on_result=on_result)
        stop = threading.Event()
        signal.signal(signal.SIGHUP, lambda *_: scheduler.trigger())
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        click.echo(f"kt sync: {settings.remote.masked_url} ref {ref} path {settings.path} -> {settings.state_dir}"
                   f" every {interval:g}s (pid {os.getpid()})", err=True)
        scheduler.start()
        watchdog = sdnotify.watchdog_interval()
        while not stop.is_set() and not scheduler.done.is_set():
            stop.wait(min(0.5, watchdog or 0.5))
            if watchdog:
                sdnotify.watchdog()
        sdnotify.stopping("stopping")
        scheduler.stop(wait=True)
        sys.exit(1 if scheduler.failed else 0)
    finally:
        agent.release()


def _echo_result(result) -> None:
    head = (result.head or "-")[:12]
    line = f"sync {result.result} head {head} applied {(result.applied or '-')[:12]} in {result.duration:.2f}s"
    click.echo(line + (f": {result.error}" if result.error else ""), err=not result.ok)


@sync.command(name="now")
@state_dir_option
def now(state_dir: str) -> None:
    """Ask the agent running on --state-dir to sync immediately (SIGHUP to the pid in sync.pid)."""
    from sync.agent import PID, lock_is_held

    state = Path(state_dir)
    if not lock_is_held(state):
        raise click.ClickException(f"no sync agent is running for {state} (start one with `kt sync run`)")
    try:
        pid = int((state / PID).read_text().strip())
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"cannot signal the sync agent of {state}: {exc}") from exc
    click.echo(f"sync triggered (agent pid {pid})")


@sync.command(name="status")
@state_dir_option
@click.option("--gateway", help="Ask a running gateway (GET <URL>/keeptrusts/status) instead of reading the state dir.")
@click.option("--json", "as_json", is_flag=True, help="Print the status object (DESIGN Contract 3) as JSON.")
def status(state_dir: str, gateway: str | None, as_json: bool) -> None:
    """Applied vs attempted revision, remote head, last fetch/success, last error, age and drift."""
    if gateway:
        data = _gateway_status(gateway)
    else:
        from sync.status import report

        data = report(Path(state_dir), time.time())
        if data["sync"] is None:
            raise click.ClickException(f"no sync status in {state_dir} (has `kt sync run` run there?)")
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    _render(data)


def _gateway_status(url: str) -> dict:
    from kt.admin_api import get_json

    return get_json(url, "/keeptrusts/status", os.environ.get("KEEPTRUSTS_ADMIN_TOKEN"), 10,
                    "; is `kt gateway run` up?")


def _ago(age: float | None) -> str:
    if age is None:
        return "never"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if age >= size:
            return f"{age / size:.1f}{unit} ago"
    return f"{age:.0f}s ago"


def _render(data: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from sync.clock import parse_time

    console = Console(highlight=False)
    s = data.get("sync") or {}
    drift = data.get("drift") or {}
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    now_ts = time.time()

    def when(key: str) -> str:
        ts = parse_time(s.get(key))
        return "never" if ts is None else f"{s[key]} ({_ago(now_ts - ts)})"

    rows = [
        ("Repository", f"{s.get('repo')}  {s.get('ref_kind') or 'branch'} {s.get('ref') or s.get('branch')}"
                       f"  path {s.get('path')}"),
        ("Applied", s.get("applied_revision") or "none"),
        ("Attempted", s.get("attempted_revision") or "none"),
        ("Remote head", s.get("remote_head") or "unknown"),
        ("Last fetch", when("last_fetch_at")),
        ("Last success", when("last_success_at")),
        ("Config age", _ago(data.get("age_seconds")).removesuffix(" ago") if data.get("age_seconds") is not None
         else "unknown"),
        ("Signatures", _signatures(s.get("verify_signers"))),
        ("Signed by", _signer(s.get("applied_signer")) if (s.get("verify_signers") or {}).get("enabled") else "-"),
        ("Rewinds", _rewinds(s.get("on_rewind"))),
        ("Failures", str(s.get("consecutive_failures", 0))),
        ("Last error", s.get("last_error") or "none"),
        ("Drift", f"[red]drifted: {drift.get('reason')}[/red]" if drift.get("drifted") else "[green]in sync[/green]"),
    ]
    for key, value in rows:
        table.add_row(key, value if key == "Drift" else _escape(value))
    console.print(table)
    for f in (s.get("findings") or [])[:20]:
        where = f"{f['file']}: " if f.get("file") else ""
        console.print(_escape(f"  {where}error[{f.get('code')}] {f.get('path') or ''} {f.get('message')}"))


def _signatures(verify: dict | None) -> str:
    if not (verify or {}).get("enabled"):
        return "not verified (no --verify-signers)"
    return f"verified: {verify.get('format')} keys from {verify.get('file')} ({verify.get('keys')} trusted)"


def _rewinds(policy: str | None) -> str:
    if policy == "refuse":
        return "refused (a head must descend from the applied commit; --on-rewind refuse)"
    return "followed (--on-rewind follow)" if policy == "follow" else "unknown"


def _signer(signer: dict | None) -> str:
    if not signer:
        return "unknown"
    who = f"{signer.get('identity')} " if signer.get("identity") else ""
    return f"{who}{signer.get('format')} key {signer.get('fingerprint')}"


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(str(text))


def embedded_sync_options(f):
    """The `kt gateway run` flags of the embedded agent (`--git-repo` switches it on)."""
    options = [
        click.option("--git-repo", help="Deploy the config from this Git repository (embedded sync agent); "
                                        "replaces --policy-config. URL forms as for `kt sync run --repo`."),
        click.option("--git-ref", "--git-branch", "git_ref", envvar="KEEPTRUSTS_GIT_REF", default="main",
                     show_default=True, help="Branch, tag or full commit SHA to deploy (env KEEPTRUSTS_GIT_REF; "
                                             "--git-branch is an alias)."),
        click.option("--git-path", default="policy-config.yaml", show_default=True,
                     help="Config file in the repository (relative to its root)."),
        click.option("--sync-interval", type=click.FloatRange(min=0.05), default=60.0, show_default=True,
                     help="Seconds between polls (+-10% jitter)."),
        click.option("--git-depth", type=click.IntRange(min=0), default=1, show_default=True,
                     help="Fetch depth; 0 = full history."),
        click.option("--sync-timeout", type=click.FloatRange(min=0.1), default=120.0, show_default=True,
                     help="Per-sync deadline (s); a hung git is killed."),
        click.option("--sync-keep", type=click.IntRange(min=1), default=5, show_default=True,
                     help="Published revisions kept on disk."),
        click.option("--git-token-file", type=click.Path(dir_okay=False),
                     help="HTTPS token, re-read before every fetch (default: $KEEPTRUSTS_GIT_TOKEN)."),
        click.option("--git-username", help="Username sent with the token."),
        click.option("--git-ssh-key", type=click.Path(dir_okay=False), help="SSH private key file."),
        click.option("--git-known-hosts", type=click.Path(dir_okay=False), help="known_hosts file."),
        click.option("--git-verify-signers", type=click.Path(dir_okay=False), envvar=VERIFY_SIGNERS_ENV,
                     help=VERIFY_SIGNERS_HELP),
        click.option("--git-on-rewind", type=ON_REWIND_CHOICE, envvar=ON_REWIND_ENV, help=ON_REWIND_HELP),
        click.option("--webhook-secret-file", type=click.Path(dir_okay=False),
                     help="Secret of POST /keeptrusts/sync/webhook (default: $KEEPTRUSTS_WEBHOOK_SECRET)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def build_embedded_sync(state_dir: str | None, git_repo: str | None, git_ref: str, git_path: str,
                        sync_interval: float, git_depth: int, sync_timeout: float, sync_keep: int,
                        git_token_file: str | None, git_username: str | None, git_ssh_key: str | None,
                        git_known_hosts: str | None, git_verify_signers: str | None, webhook_secret_file: str | None,
                        git_on_rewind: str | None = None):
    """The `EmbeddedSync` for `kt gateway run --git-repo ...`, or None without `--git-repo`."""
    if not git_repo:
        return None
    from gateway.control.gitsync import EmbeddedSync
    from sync.agent import SyncSettings
    from sync.credentials import Credentials
    from sync.repo import Remote, check_ref_name
    from sync.signature import SignersError
    from sync.webhook import WebhookSecretError, load_secret

    try:
        check_ref_name(git_ref)
        creds = Credentials(token_file=git_token_file, ssh_key=git_ssh_key, known_hosts=git_known_hosts,
                            username=git_username)
        settings = SyncSettings(Remote(git_repo, git_ref, git_depth, creds), Path(state_dir or _default_state_dir()),
                                git_path, sync_timeout, sync_keep, git_verify_signers, git_on_rewind)
        secret = load_secret(webhook_secret_file)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    except WebhookSecretError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        return EmbeddedSync(settings, interval=sync_interval, webhook_secret=secret)
    except SignersError as exc:
        raise click.ClickException(f"--git-verify-signers: {exc}") from exc
