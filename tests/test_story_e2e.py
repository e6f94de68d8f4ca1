"""The whole story, as a new user lives it (issue 6 §6), over real processes only.

A policy repository on a local Git server (`git daemon`); two gateways, each with an embedded
sync agent; a merge changes a policy and both gateways enforce it on the same revision; a bad
merge is refused while both keep serving and report drift `rejected`; `git revert` restores and
the drift clears; `kt doctor --gateway` warns (exit 0, 1 with --strict) during the refusal and
passes on both after, and `kt gateway status` shows the fleet drifted, then in agreement;
`kt events list` shows the decisions.
The only fake is the LLM provider: the config uses the built-in `mock` provider.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.gateway_process import GatewayProcess
from tests.gitserve import GitDaemon, Upstream, git
from tests.kt_process import run_kt
from tests.waiting import wait_for

ADMIN = "story-admin-token"
WEBHOOK = "story-webhook-secret"
SYNC_WAIT = 30  # generous deadlines for a loaded CI machine; polled, never slept


def config(terms: list[str], extra_chain: str = "") -> str:
    return f"""pack: {{name: story, version: 1.0.0, enabled: true}}
providers:
  targets:
    - {{id: demo, provider: mock, model: demo-model}}
policies:
  chain: [dlp-filter{extra_chain}, audit-logger]
policy:
  dlp-filter: {{blocked_terms: {json.dumps(terms)}, action: block}}
  audit-logger: {{retention_days: 30}}
"""


class Gateway(GatewayProcess):
    """A gateway of the story: `--git-repo` on the story's Git server, polling every second, with an
    admin token and a webhook secret and no other `KEEPTRUSTS_*` of the test run; `wait_ready()` to wait."""

    def __init__(self, repo_url: str, state: Path) -> None:
        super().__init__(None, state, "--git-repo", repo_url, "--git-branch", "main",
                         "--git-path", "policy-config.yaml", "--sync-interval", "1", clean=True, wait=False,
                         env={"KEEPTRUSTS_ADMIN_TOKEN": ADMIN, "KEEPTRUSTS_WEBHOOK_SECRET": WEBHOOK})

    def admin(self, path: str) -> dict:
        req = urllib.request.Request(self.url + path, headers={"Authorization": f"Bearer {ADMIN}"})
        for attempt in range(3):  # an idempotent GET: retry a dropped connection (seen once under heavy load)
            try:
                with urllib.request.urlopen(req, timeout=5) as resp:
                    return json.loads(resp.read())
            except (http.client.RemoteDisconnected, ConnectionResetError):
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def status(self) -> dict:
        return self.admin("/keeptrusts/status")

    def ask(self, text: str) -> tuple[str, str]:
        """(outcome, revision that served it): outcome 'allowed' or 'blocked'."""
        client = openai.OpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0, timeout=10)
        try:
            raw = client.chat.completions.with_raw_response.create(
                model="demo-model", messages=[{"role": "user", "content": text}])
            return "allowed", raw.headers["x-keeptrusts-config-revision"]
        except openai.APIStatusError as exc:
            assert exc.status_code == 409, exc
            return "blocked", exc.response.headers["x-keeptrusts-config-revision"]


def kt(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_kt(*args, env={**os.environ, **(env or {})})


def merge(upstream: Upstream, branch: str, text: str, message: str) -> str:
    """A feature branch, then a `--no-ff` merge into main pushed to the server, as a pull request would."""
    work = upstream.work
    git("checkout", "--quiet", "-b", branch, cwd=work)
    (work / "policy-config.yaml").write_text(text)
    git("commit", "--quiet", "-am", message, cwd=work)
    git("checkout", "--quiet", "main", cwd=work)
    git("merge", "--quiet", "--no-ff", "-m", f"Merge {branch}", branch, cwd=work)
    upstream.push()
    return upstream.head()


@pytest.fixture
def story(tmp_path: Path) -> Iterator[tuple[Upstream, list[Gateway]]]:
    upstream = Upstream(tmp_path / "server")
    upstream.commit({"policy-config.yaml": config(["project-bluebird"])}, "first policy")
    daemon = GitDaemon(tmp_path / "server")
    gateways = []
    try:
        gateways = [Gateway(daemon.url("policies.git"), tmp_path / name) for name in ("gw-a", "gw-b")]
        for gw in gateways:
            gw.wait_ready(SYNC_WAIT)
        yield upstream, gateways
    finally:
        for gw in gateways:
            gw.stop()
        daemon.stop()


def converge(gateways: list[Gateway], predicate, what: str) -> None:
    for gw in gateways:
        assert gw.push_webhook(WEBHOOK, event="push") in (200, 202, 204)  # a hint to fetch now
    for gw in gateways:
        wait_for(lambda gw=gw: predicate(gw.status()), timeout=SYNC_WAIT, interval=0.05,
                 message=f"{gw.url}: {what}")


def test_the_whole_story(story: tuple[Upstream, list[Gateway]]) -> None:
    upstream, gateways = story
    first = upstream.head()
    for gw in gateways:
        assert gw.status()["config"]["revision"] == first
        assert gw.ask("status of project-bluebird?") == ("blocked", first)
        assert gw.ask("what is project-condor?") == ("allowed", first)

    # A merge adds a term: both gateways enforce it, on the same revision.
    second = merge(upstream, "block-condor", config(["project-bluebird", "project-condor"]), "block condor too")
    converge(gateways, lambda s: s["config"]["revision"] == second and not s["drift"]["drifted"], "second applied")
    for gw in gateways:
        assert gw.ask("what is project-condor?") == ("blocked", second)

    # A bad merge (an unknown policy kind) is refused: both keep serving the second revision.
    bad = merge(upstream, "typo", config(["project-bluebird", "project-condor"], ", pii-detecter"), "add pii")
    converge(gateways, lambda s: s["drift"]["drifted"] and s["sync"]["attempted_revision"] == bad, "bad refused")
    for gw in gateways:
        status = gw.status()
        assert status["drift"]["reason"] == "rejected"
        assert status["config"]["revision"] == second
        assert status["sync"]["applied_revision"] == second
        assert gw.ask("what is project-condor?") == ("blocked", second)
        doctor = kt("doctor", "--gateway", gw.url, "--json", env={"KEEPTRUSTS_ADMIN_TOKEN": ADMIN})
        report = json.loads(doctor.stdout)
        drift = next(c for c in report["checks"] if c["name"] == "drift")
        # a refused head is a warning: a bad merge must not fail every replica's probe at once
        assert doctor.returncode == 0 and drift["status"] == "warn" and "rejected" in drift["detail"], report
        assert "revert" in drift["fix"] and report["warnings"] >= 1
        strict = kt("doctor", "--gateway", gw.url, "--strict", env={"KEEPTRUSTS_ADMIN_TOKEN": ADMIN})
        assert strict.returncode == 1 and "⚠ drift:" in strict.stdout, strict.stdout
    fleet = kt("gateway", "status", *(a for gw in gateways for a in ("--gateway", gw.url)), "--json",
               env={"KEEPTRUSTS_ADMIN_TOKEN": ADMIN})
    report = json.loads(fleet.stdout)
    assert fleet.returncode == 1 and report["revisions"] == [second], report  # same revision, but drifted
    assert report["problems"] == [f"{gw.url}: drifted (rejected)" for gw in gateways]

    # `git revert` of the bad merge restores: the drift clears, on a new revision.
    git("revert", "--no-edit", "-m", "1", "HEAD", cwd=upstream.work)
    upstream.push()
    reverted = upstream.head()
    converge(gateways, lambda s: s["config"]["revision"] == reverted and not s["drift"]["drifted"], "revert applied")
    for gw in gateways:
        assert gw.ask("status of project-bluebird?") == ("blocked", reverted)
        assert gw.ask("hello there") == ("allowed", reverted)
        doctor = kt("doctor", "--gateway", gw.url, env={"KEEPTRUSTS_ADMIN_TOKEN": ADMIN})
        assert doctor.returncode == 0, doctor.stdout
        assert doctor.stdout.startswith("Keeptrusts Gateway Diagnostics")
    fleet = kt("gateway", "status", *(a for gw in gateways for a in ("--gateway", gw.url)),
               env={"KEEPTRUSTS_ADMIN_TOKEN": ADMIN})
    assert fleet.returncode == 0 and f"agree on revision {reverted[:12]}" in fleet.stdout, fleet.stdout

    # `kt events list` shows every decision of the story, each with the revision that made it.
    def listed(gw: Gateway) -> list[dict]:
        proc = kt("events", "list", "--gateway", gw.url, "--json", "--limit", "100",
                  env={"KEEPTRUSTS_ADMIN_TOKEN": ADMIN})
        assert proc.returncode == 0, proc.stderr
        return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]

    def all_six(gw: Gateway) -> list[dict] | None:
        found = listed(gw)
        return found if len(found) >= 6 else None

    for gw in gateways:  # the store is written in batches off the request path: poll until all six are in
        events = wait_for(lambda gw=gw: all_six(gw), timeout=SYNC_WAIT, interval=0.2)
        story_line = [(e["verdict"], e["config_revision"]) for e in events]
        assert story_line == [
            ("block", first), ("allow", first),
            ("block", second),
            ("block", second),
            ("block", reverted), ("allow", reverted),
        ], story_line

