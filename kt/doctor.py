"""`kt doctor`: diagnose a local config and a running gateway; each check says how to fix a problem.

A health check, run as a container's liveness/readiness probe: a check *fails* only when the
gateway cannot serve correctly (no valid config, gateway down or not ready, every provider
target unusable, the event store not writable); drift, a refused head, a slow or rejecting
control plane, one unusable target or an unset optional variable are *warnings*, which fail
only under `strict`. A bad merge must not take every replica out at once.

Every probe runs in its own daemon thread with a hard deadline (network calls also carry a
socket timeout), so a diagnosis finishes within `timeout` seconds even when every remote hangs.
Providers get one authenticated `GET /v1/models` (Azure OpenAI: an empty-body POST that its deployment
refuses before generating; no token spent), and a target with native Responses an empty-body POST to
its Responses URL (refused before generating); the control plane gets an
empty event batch (nothing stored).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from importlib import import_module
from pathlib import Path
from typing import Any
from urllib.error import HTTPError
from urllib.parse import urlsplit
from urllib.request import Request, urlopen

DEFAULT_GATEWAY = "http://127.0.0.1:41002"
MAX_CONFIG_AGE = 24 * 3600.0
SEE_LIVENESS = "see the gateway liveness line"


def mask_url(url: str) -> str:
    """`sync.credentials.mask_url`, imported on first use: `kt policy lint` imports this module and no sync code."""
    from sync.credentials import mask_url as mask

    return mask(url)
DRIFT_FIXES = {
    "rejected": "the newest commit failed validation or signature verification (E120): fix it in a new, "
    "signed commit or `git revert` it (`kt sync status` lists the findings); the last good revision keeps serving",
    "pending": "a newer revision is not applied yet; if this persists, see reload.last_error in /keeptrusts/status",
    "unreachable": "the Git remote cannot be fetched: check credentials and network (`kt sync status`)",
    "modified": "a published config file was edited on disk; the next sync restores it",
    "reload_failed": "the gateway could not load the published revision: see the gateway log",
}


@dataclass(frozen=True)
class Check:
    """One line of the diagnosis."""

    name: str
    status: str  # "ok" | "warn" | "fail" | "skip"
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class Report:
    checks: tuple[Check, ...]
    strict: bool = False  # warnings fail too

    @property
    def ok(self) -> bool:
        bad = ("fail", "warn") if self.strict else ("fail",)
        return all(c.status not in bad for c in self.checks)

    def count(self, status: str) -> int:
        return sum(c.status == status for c in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "strict": self.strict, "failures": self.count("fail"),
                "warnings": self.count("warn"), "checks": [asdict(c) for c in self.checks]}


@dataclass(frozen=True)
class Probe:
    """Work that yields checks; `name` labels the failure if it does not finish in time."""

    name: str
    run: Callable[[], list[Check]]
    fix: str = ""


def _ok(name: str, detail: str) -> list[Check]:
    return [Check(name, "ok", detail)]


def _fail(name: str, detail: str, fix: str) -> list[Check]:
    return [Check(name, "fail", detail, fix)]


def _warn(name: str, detail: str, fix: str) -> list[Check]:
    return [Check(name, "warn", detail, fix)]


# --- local config


def config_checks(path: str) -> list[Check]:
    """Syntax and schema (the `kt policy lint` checks), then chain integrity."""
    from policies import ConfigError, load_config

    try:
        config = load_config(path)
    except ConfigError as exc:
        findings = exc.findings
        shown = "; ".join(str(f) for f in findings[:3]) + (f" (+{len(findings) - 3} more)" if len(findings) > 3 else "")
        chain = [f for f in findings if f.code in ("E001", "E003") or f.path.startswith("policies.chain")]
        fix = f"run `kt policy lint --file {path}` and fix what it lists"
        checks = _fail("config", f"{path}: {shown}", fix)
        if chain:
            checks += _fail("chain", "; ".join(str(f) for f in chain[:3]), fix)
        else:
            checks.append(Check("chain", "skip", "not checked: the config does not load"))
        return checks
    pack = config.pack
    checks = _ok("config", f"{path}: pack {pack.name} v{pack.version}, valid")
    kinds = config.chain.kinds
    if not pack.enabled:
        checks.append(Check("chain", "ok", "pack disabled (enabled: false): traffic passes with no policy"))
    else:
        count = f"{len(kinds)} {'policy' if len(kinds) == 1 else 'policies'}"
        checks += _ok("chain", f"{' -> '.join(kinds) or '(empty)'} ({count}, each with its block)")
    return checks


def provider_probes(path: str, env: Mapping[str, str], timeout: float) -> list[Probe]:
    """One probe per target: its secret is set and the provider accepts it (`GET /v1/models`)."""
    from policies import ConfigError, load_config

    try:
        targets = load_config(path).targets
    except ConfigError:
        return []
    return [
        Probe(f"provider {t.id}", lambda t=t: provider_check(t, env, timeout), "check DNS and egress to the provider")
        for t in targets
    ]


def provider_check(target: Any, env: Mapping[str, str], timeout: float) -> list[Check]:
    """Ask the provider for its model list with the target's key: reachable, answering, key accepted
    (azure-openai: an empty-body POST to the deployment, which also proves that the deployment exists);
    for a target with `responses_api: native`, then `_responses_check`.

    A `fail` here is one unusable target; `grade_providers` turns it into a warning while another
    target is usable."""
    from gateway.providers.probes import probe_request

    name = f"provider {target.id}"
    if target.provider == "mock":
        return _ok(name, "mock: built-in demo upstream, no network or key needed")
    ref = target.secret_key_ref
    if ref is not None and ref.store:
        return _fail(name, f"secret_key_ref store:{ref.store} cannot be resolved by the gateway",
                     f"use secret_key_ref {{env: VAR}} on target {target.id}")
    if ref is not None and ref.env and not env.get(ref.env) and not env.get(f"{ref.env}_FILE"):
        return _fail(name, f"secret {ref.env} is not set",
                     f"set {ref.env} (or {ref.env}_FILE, a file holding it) in the gateway's environment "
                     "(kt.env, .env or the Kubernetes Secret)")
    asked = _ask(name, probe_request(target), timeout)
    if isinstance(asked, list):
        return asked
    where, status, answer, ms = asked
    # Gemini answers a wrong key with 400 INVALID_ARGUMENT, reason API_KEY_INVALID
    if status in (401, 403) or (status == 400 and b"API_KEY_INVALID" in answer):
        return _key_rejected(name, target, where, status)
    checks = _provider_answer(name, target, where, status, answer, ms)
    if target.responses_native and checks[0].status == "ok":
        checks += _responses_check(target, timeout)
    return checks


def _provider_answer(name: str, target: Any, where: str, status: int, answer: bytes, ms: float) -> list[Check]:
    """What the provider's answer (key accepted) to the probe says."""
    if target.provider == "azure-openai" and status in (400, 404):
        return _azure_deployment(name, target, where, status, answer, ms)
    if 200 <= status < 300:
        return _ok(name, f"{target.provider} {where} HTTP {status} ({ms:.0f} ms), key accepted")
    if status in (404, 405):
        return _ok(name, f"{target.provider} {where} HTTP {status} ({ms:.0f} ms): reachable, "
                   "no model list here, key not verified")
    return _unexpected(name, target, where, status)


def _unexpected(name: str, target: Any, where: str, status: int) -> list[Check]:
    """A 429 (a warning) or another status no check expects (the provider is failing)."""
    if status == 429:
        return _warn(name, f"{target.provider} {where} HTTP 429: key accepted but rate-limited",
                     "check the provider account's rate limits and quota")
    return _fail(name, f"{target.provider} {where} answered HTTP {status}",
                 "the provider is failing: check its status page; the gateway falls back to other targets")


def _call(request: tuple[str, str, dict[str, str], bytes | None], timeout: float) -> tuple[int, bytes, float]:
    """One probe request (method, URL, headers, body): (status, up to 64 KiB of an error body, ms).
    Raises OSError, http.client.HTTPException or ValueError when nothing answered."""
    method, url, headers, body = request
    started = time.monotonic()
    answer = b""
    try:
        with urlopen(Request(url, data=body, method=method, headers={**headers, "User-Agent": "kt-doctor"}),
                     timeout=timeout) as resp:
            status = resp.status
    except HTTPError as exc:
        status = exc.code
        answer = exc.read(65536)
        exc.close()
    return status, answer, (time.monotonic() - started) * 1000


def _ask(name: str, request: tuple[str, str, dict[str, str], bytes | None],
         timeout: float) -> tuple[str, int, bytes, float] | list[Check]:
    """`_call(request)` as (where, status, error body, ms); the failed check when nothing answered."""
    where = f"{request[0]} {mask_url(request[1])}"
    try:
        return (where, *_call(request, timeout))
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return _unanswered(name, where, request[1], exc, timeout)


def _unanswered(name: str, where: str, url: str, exc: Exception, timeout: float) -> list[Check]:
    cause = getattr(exc, "reason", exc)
    reason = f"no answer within {timeout:g}s" if isinstance(cause, TimeoutError) else \
        getattr(cause, "strerror", None) or cause
    return _fail(name, f"{where}: {reason}",
                 f"check DNS, firewall and egress proxy from this host to {urlsplit(url).netloc}")


def _key_rejected(name: str, target: Any, where: str, status: int) -> list[Check]:
    ref = target.secret_key_ref
    key = f" with {ref.env}" if ref is not None and ref.env else ""
    return _fail(name, f"key rejected: {where}{key} answered HTTP {status}",
                 f"put a valid {target.provider} key in {ref.env if ref and ref.env else 'the target secret'}")


def _responses_check(target: Any, timeout: float) -> list[Check]:
    """A native Responses target (`responses_api: native`): `{}` POSTed to its Responses URL, refused
    before anything is generated. 400 = the route is there and the key accepted; 404 = no Responses API."""
    from gateway.providers.probes import responses_probe_request

    name = f"provider {target.id} responses"
    asked = _ask(name, responses_probe_request(target), timeout)
    if isinstance(asked, list):
        return asked
    where, status, _, ms = asked
    if status == 400:
        return _ok(name, f"{where} HTTP 400 ({ms:.0f} ms): the Responses API is there and the key accepted "
                   "(the empty body was refused before anything was generated)")
    if status in (401, 403):
        return _key_rejected(name, target, where, status)
    if status == 404:
        return _fail(name, f"{where} answered 404: no Responses API for target {target.id} (responses_api: native)",
                     f"set `responses_api: translate` on target {target.id} (kt then sends /v1/responses as chat "
                     "completions), or use a region and model that has the Responses API")
    return _unexpected(name, target, where, status)


def _azure_deployment(name: str, target: Any, where: str, status: int, answer: bytes, ms: float) -> list[Check]:
    """What Azure's answer to the empty-body probe says about the target's deployment (400: it exists)."""
    deployment = target.deployment or target.model
    if status == 400:
        return _ok(name, f"azure-openai {where} HTTP 400 ({ms:.0f} ms): key accepted, deployment {deployment!r} "
                   "exists (the empty body was refused before anything was generated)")
    try:
        code = (json.loads(answer).get("error") or {}).get("code")
    except (ValueError, AttributeError):
        code = None
    if code == "DeploymentNotFound":
        return _fail(name, f"deployment {deployment!r} does not exist: {where} answered 404 DeploymentNotFound",
                     f"create the deployment {deployment!r} in the Azure OpenAI resource, or set target "
                     f"{target.id}'s `deployment` to an existing deployment's name (a deployment created in the "
                     "last 5 minutes may not be visible yet)")
    return _fail(name, f"{where} answered 404: no Azure OpenAI resource or api-version at this address",
                 f"check target {target.id}'s base_url (https://<resource>.openai.azure.com) and api_version")


# --- HTTP


def _request(method: str, url: str, path: str, timeout: float, token: str | None,
             body: bytes | None = None, limit: int = 1 << 20) -> tuple[int, bytes]:
    """One request to `path` on `url`: (status, up to `limit` bytes of body). Raises OSError on network failure."""
    parts = urlsplit(url)
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = cls(parts.hostname or "", parts.port, timeout=timeout)
    headers = {"Accept": "application/json", "User-Agent": "kt-doctor"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request(method, parts.path.rstrip("/") + path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read(limit)
    except (http.client.HTTPException, ValueError) as exc:
        raise OSError(f"bad HTTP answer: {exc}") from exc
    finally:
        conn.close()


def http_get(url: str, path: str, timeout: float, token: str | None = None) -> tuple[int, Any]:
    """GET `path` on `url`; (status, parsed JSON or text). Raises OSError on network failure."""
    status, body = _request("GET", url, path, timeout, token)
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode("utf-8", "replace")


def _health_part(url: str, key: str, timeout: float) -> Any:
    """The `key` part of the gateway's `GET /health` JSON (None when absent). Raises OSError on network failure."""
    _, health = http_get(url, "/health", timeout)
    return health.get(key) if isinstance(health, dict) else None


def _unreachable(name: str, url: str, exc: OSError, fix: str) -> list[Check]:
    reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
    return _fail(name, f"{mask_url(url)} unreachable: {reason}", fix)


def http_post_json(url: str, path: str, body: Any, timeout: float, token: str | None) -> int:
    """POST `body` as JSON to `path` on `url`; the status. Raises OSError on network failure."""
    return _request("POST", url, path, timeout, token, json.dumps(body).encode(), limit=1 << 16)[0]


def control_plane_check(env: Mapping[str, str], timeout: float) -> list[Check]:
    """KEEPTRUSTS_API_URL accepts the gateway token for event submission.

    Sends what the forwarder sends, `POST /v1/events {"events": []}`: an empty batch, so no
    event is stored. Problems here are warnings: events wait in the gateway's local store."""
    url = env.get("KEEPTRUSTS_API_URL", "")
    token = env.get("KEEPTRUSTS_GATEWAY_TOKEN") or env.get("KEEPTRUSTS_API_TOKEN")
    name = "control plane"
    waiting = "; events wait in the gateway's local store meanwhile"
    try:
        status = http_post_json(url, "/v1/events", {"events": []}, timeout, token)
    except OSError as exc:
        down = _unreachable(name, url, exc, "check KEEPTRUSTS_API_URL and the network path to it" + waiting)
        return [Check(name, "warn", c.detail, c.fix) for c in down]
    if status in (401, 403):
        return _warn(name, f"{mask_url(url)} token rejected for event submission (HTTP {status})",
                     ("set KEEPTRUSTS_GATEWAY_TOKEN to a valid gateway token" if token
                      else "set KEEPTRUSTS_GATEWAY_TOKEN (the control plane requires one)") + waiting)
    if 200 <= status < 300:
        return _ok(name, f"{mask_url(url)} accepts the gateway token for event submission "
                   f"(empty batch, HTTP {status})")
    return _warn(name, f"{mask_url(url)} answered HTTP {status} to an empty event batch (token not proven)",
                 "check that KEEPTRUSTS_API_URL is the control plane's base URL and that it is healthy" + waiting)


# --- events


def state_dir_check(state_dir: str) -> list[Check]:
    """The state directory (events store, sync state) exists or can be created, and is writable."""
    path = Path(state_dir).expanduser()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".kt-doctor-"):
            pass
    except OSError as exc:
        return _fail("event store", f"state directory {path} not writable ({exc.strerror})",
                     f"make {path} writable by the gateway's user, or pass --state-dir")
    note = "" if existing == path else " (will be created)"
    from gateway.events.store import DB_NAME, store_usage

    usage = store_usage(path / DB_NAME)
    if usage is not None and usage[0] >= 0.8 * usage[1]:
        used, cap = usage
        return _warn("event store", f"{path / DB_NAME} uses {used / 1024**2:.1f} MiB, {used / cap:.0%} of its "
                     f"cap ({cap / 1024**2:.0f} MiB): at the cap delivered events go first, then undelivered ones",
                     "check the submission backlog (kt doctor --gateway), audit-logger.retention_days, "
                     "or raise --events-max-size")
    if usage is not None:
        note += f"; event store {usage[0] / 1024**2:.1f} MiB of {usage[1] / 1024**2:.0f} MiB cap"
    return _ok("event store", f"state directory {path} writable{note}")


def gateway_events_check(url: str, timeout: float) -> list[Check]:
    """Event pipeline of a running gateway: store errors, backlog, submission failures."""
    name = "event pipeline"
    try:
        events = _health_part(url, "events", timeout) or {}
        _, metrics = http_get(url, "/metrics", timeout)
    except OSError as exc:
        return _unreachable(name, url, exc, SEE_LIVENESS)
    failures = _metric(metrics, "keeptrusts_events_submission_failures_total")
    backlog = events.get("pending_submission")
    detail = f"memory queue {events.get('queue', 0)}, dropped {events.get('dropped', 0)}"
    if backlog is not None:
        detail += f", awaiting submission {backlog}"
    if failures:
        detail += f", {failures:.0f} submission failures since start"
    if events.get("store_error"):
        return _fail(name, f"event store error: {events['store_error']}; {detail}",
                     "make the gateway's state directory writable and check its disk space")
    if failures and backlog:
        return _warn(name, f"events are not reaching the control plane: {detail}",
                     "check KEEPTRUSTS_API_URL reachability and KEEPTRUSTS_GATEWAY_TOKEN from the gateway host; "
                     "events wait in the local store meanwhile")
    return _ok(name, detail)


def gateway_providers_check(url: str, timeout: float) -> list[Check]:
    """The running gateway's targets (`/health`): none usable is a failure, some unusable a warning.

    A target is unusable when its circuit is open (the upstream keeps failing) or the gateway
    cannot resolve its secret."""
    name = "gateway providers"
    try:
        providers = _health_part(url, "providers", timeout)
    except OSError as exc:
        return _unreachable(name, url, exc, SEE_LIVENESS)
    if not providers:
        return [Check(name, "skip", "no targets reported (no config loaded)")]
    down = []
    for target, info in sorted(providers.items()):
        info = info if isinstance(info, dict) else {}
        if info.get("unavailable"):
            down.append(f"{target} ({info['unavailable']})")
        elif info.get("circuit") == "open":
            down.append(f"{target} (circuit open: the upstream keeps failing)")
    fix = "set the missing secrets in the gateway's environment; check the provider's status, key and egress " \
          "(`kt doctor --config`)"
    if len(down) == len(providers):
        return _fail(name, f"no target is usable: {'; '.join(down)}", fix)
    if down:
        return _warn(name, f"{len(providers) - len(down)} of {len(providers)} targets usable; unusable: "
                     f"{'; '.join(down)}", fix)
    return _ok(name, f"{len(providers)} target(s) usable, no circuit open")


def gateway_state_check(url: str, timeout: float) -> list[Check]:
    """The running gateway's counter store (`/health` "state"): Redis unreachable is a failure."""
    name = "counter store"
    try:
        state = _health_part(url, "state", timeout)
    except OSError as exc:
        return _unreachable(name, url, exc, SEE_LIVENESS)
    if not isinstance(state, dict):
        return [Check(name, "skip", "not reported by this gateway")]
    where = state.get("url") or state.get("path") or "in memory"
    if not state.get("up"):
        return _fail(name, f"{state.get('backend')} {where} unreachable: {state.get('last_error')}",
                     "check that Redis runs and the gateway can reach it (--state-url, --state-password-file); "
                     "meanwhile --fail-mode decides: block answers 503 state_unavailable, allow counts per process")
    return _ok(name, f"{state.get('backend')} {where} up")


def _metric(text: Any, name: str) -> float:
    """Sum of the samples of `name` in Prometheus text (0 when absent)."""
    if not isinstance(text, str):
        return 0.0
    total = 0.0
    for m in re.finditer(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)", text, re.M):
        try:
            total += float(m.group(1))
        except ValueError:
            continue
    return total


# --- gateway


def liveness_check(url: str, timeout: float) -> list[Check]:
    try:
        status, _ = http_get(url, "/healthz", timeout)
    except OSError as exc:
        return _unreachable("gateway liveness", url, exc,
                            "is the gateway running? check the process/container and its log; the URL and port")
    if status != 200:
        return _fail("gateway liveness", f"/healthz answered HTTP {status}", "check the gateway log")
    return _ok("gateway liveness", f"{mask_url(url)}/healthz OK")


def readiness_check(url: str, timeout: float) -> list[Check]:
    try:
        status, body = http_get(url, "/readyz", timeout)
    except OSError as exc:
        return _unreachable("gateway readiness", url, exc, SEE_LIVENESS)
    if status != 200:
        reason = body.get("reason") if isinstance(body, dict) else None
        return _fail("gateway readiness", f"/readyz answered HTTP {status}" + (f" ({reason})" if reason else ""),
                     "no config loaded yet (first sync pending or refused: `kt sync status`), "
                     "or the gateway is draining")
    return _ok("gateway readiness", "ready: a config is loaded")


def status_checks(url: str, token: str | None, timeout: float, max_age: float) -> list[Check]:
    """Running revision, config age, drift and sync from `GET /keeptrusts/status`."""
    try:
        code, body = http_get(url, "/keeptrusts/status", timeout, token)
    except OSError as exc:
        return _unreachable("running config", url, exc, SEE_LIVENESS)
    if code == 401:
        return _warn("running config", "/keeptrusts/status needs the admin token (HTTP 401): drift not checked",
                     "set KEEPTRUSTS_ADMIN_TOKEN to the gateway's admin token")
    if code != 200 or not isinstance(body, dict):
        return _fail("running config", f"/keeptrusts/status answered HTTP {code}", "check the gateway log")
    checks = []
    config = body.get("config") or {}
    if config.get("revision"):
        pack = config.get("pack") or {}
        checks += _ok("running config", f"revision {str(config['revision'])[:12]} ({config.get('source', '?')}), "
                      f"pack {pack.get('name')} v{pack.get('version')}, sha256 {str(config.get('sha256', ''))[:12]}")
    else:
        checks += _fail("running config", "no config loaded", "see the readiness line")
    age = body.get("age_seconds")
    if age is None:
        checks.append(Check("config age", "skip", "unknown (no config loaded)"))
    elif not body.get("sync"):
        checks += _ok("config age", f"plain file loaded {_duration(age)} ago (no Git sync to confirm it against)")
    elif age > max_age:
        checks += _warn("config age", f"{_duration(age)} since the config was last confirmed against its source "
                        f"(limit {_duration(max_age)})", "the sync is not confirming the remote: `kt sync status`")
    else:
        checks += _ok("config age", f"{_duration(age)} since last confirmed against its source")
    drift = body.get("drift") or {}
    reload = body.get("reload") or {}
    if drift.get("drifted"):
        reason = drift.get("reason") or "unknown"
        checks += _warn("drift", f"running config differs from the desired one: {reason}",
                        DRIFT_FIXES.get(reason, "see /keeptrusts/status"))
    elif reload.get("last_result") == "error":
        checks += _warn("drift", f"last reload failed: {reload.get('last_error')}",
                        "fix the config; the previous one keeps serving")
    else:
        checks += _ok("drift", "none: the running config is the desired one")
    sync = body.get("sync")
    if sync:
        where = f"{sync.get('repo')} {sync.get('branch')}:{sync.get('path')}"
        failures = sync.get("consecutive_failures") or 0
        if failures:
            checks += _warn("sync", f"{where}: {failures} failures in a row, last error: {sync.get('last_error')}",
                            "check the Git remote, credentials and network; the last good revision keeps serving")
        else:
            checks += _ok("sync", f"{where}, applied {str(sync.get('applied_revision') or '-')[:12]}")
    return checks


def _duration(seconds: float) -> str:
    seconds = float(seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


# --- running it all


def plan(config: str | None, gateway: str | None, state_dir: str | None, env: Mapping[str, str],
         timeout: float, max_age: float = MAX_CONFIG_AGE) -> list[Probe]:
    """The probes for what was asked: a local config, a state directory, a gateway, the control plane."""
    # imported here, not in a probe thread, so that importing does not eat the deadline
    import_module("gateway.providers.probes")
    import_module("policies")

    net = max(0.2, min(2.0, timeout / 2))
    probes: list[Probe] = []
    if config:
        probes.append(Probe("config", lambda: config_checks(config), f"run `kt policy lint --file {config}`"))
        probes += provider_probes(config, env, net)
    if env.get("KEEPTRUSTS_API_URL"):
        probes.append(Probe("control plane", lambda: control_plane_check(env, net),
                            "check KEEPTRUSTS_API_URL and the network path to it"))
    else:
        probes.append(Probe("control plane", lambda: _warn(
            "control plane", "KEEPTRUSTS_API_URL not set: events stay in the gateway's local store",
            "set KEEPTRUSTS_API_URL (and KEEPTRUSTS_GATEWAY_TOKEN) to ship events to the control plane")))
    if state_dir:
        probes.append(Probe("event store", lambda: state_dir_check(state_dir)))
    if gateway:
        token = env.get("KEEPTRUSTS_ADMIN_TOKEN") or None
        down = "is the gateway running and reachable at that URL?"
        probes += [
            Probe("gateway liveness", lambda: liveness_check(gateway, net), down),
            Probe("gateway readiness", lambda: readiness_check(gateway, net), down),
            Probe("running config", lambda: status_checks(gateway, token, net, max_age), down),
            Probe("gateway providers", lambda: gateway_providers_check(gateway, net), down),
            Probe("counter store", lambda: gateway_state_check(gateway, net), down),
            Probe("event pipeline", lambda: gateway_events_check(gateway, net), down),
        ]
    return probes


def run(probes: list[Probe], timeout: float, strict: bool = False) -> Report:
    """Run every probe concurrently; a probe still running at the deadline fails as timed out."""
    results: dict[int, list[Check]] = {}

    def work(i: int, probe: Probe) -> None:
        try:
            results[i] = probe.run()
        except Exception as exc:  # a bug in one probe must not hide the others
            results[i] = _fail(probe.name, f"check crashed: {type(exc).__name__}: {exc}", "report this as a kt bug")

    threads = [threading.Thread(target=work, args=(i, p), daemon=True, name=f"doctor-{p.name}")
               for i, p in enumerate(probes)]
    deadline = time.monotonic() + timeout
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    checks: list[Check] = []
    for i, probe in enumerate(probes):
        done = results.get(i)
        checks += done if done is not None else _fail(probe.name, f"no answer within {timeout:g}s", probe.fix)
    return Report(tuple(grade_providers(_fold_unreachable(checks))), strict)


def grade_providers(checks: list[Check]) -> list[Check]:
    """An unusable target is a warning while another target is usable (the gateway falls back to it)."""
    targets = [c for c in checks if c.name.startswith("provider ")]
    if not any(c.status in ("ok", "warn") for c in targets):
        return checks
    return [Check(c.name, "warn", c.detail, c.fix) if c in targets and c.status == "fail" else c for c in checks]


def _fold_unreachable(checks: list[Check]) -> list[Check]:
    """When the gateway is unreachable, its other checks become one skip each instead of repeated failures."""
    down = any(c.name == "gateway liveness" and c.status == "fail" and "unreachable" in c.detail for c in checks)
    if not down:
        return checks
    return [Check(c.name, "skip", "not checked: the gateway is unreachable")
            if c.fix == SEE_LIVENESS and c.status == "fail" else c for c in checks]


def diagnose(config: str | None = None, gateway: str | None = None, state_dir: str | None = None,
             env: Mapping[str, str] | None = None, timeout: float = 4.0, max_age: float = MAX_CONFIG_AGE,
             strict: bool = False) -> Report:
    """Plan and run the checks (see `plan`); `strict` makes warnings fail the report."""
    env = os.environ if env is None else env
    return run(plan(config, gateway, state_dir, env, timeout, max_age), timeout, strict)
