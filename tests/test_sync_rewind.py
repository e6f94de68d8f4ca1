"""`--on-rewind refuse`: a head that does not descend from the applied commit is refused (E121).

The rollback attack: someone who can push but holds no signing key force-pushes the branch back
to an older *signed* commit (the config from before a DLP rule). Real Git throughout: bare repos,
SSH-signed commits, shallow clones deepened over git http-backend, `kt` subprocesses."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from sync.agent import SyncAgent
from sync.status import read_status, report
from tests.gitserve import CFG, GitHttpServer, Upstream, config_yaml, dlp_config, git
from tests.kt_process import run_kt
from tests.signing import SshKey
from tests.sync_gateway import Gateway
from tests.syncing import make_agent, served
from tests.waiting import wait_for

needs_ssh = pytest.mark.skipif(not shutil.which("ssh-keygen"), reason="ssh-keygen (openssh-client) is not installed")
BLUEBIRD = "status of project-bluebird?"  # blocked by dlp_config's dlp-filter


@pytest.fixture
def signed(upstream: Upstream, tmp_path: Path) -> tuple[Upstream, Path, str, str]:
    """(upstream, allowed_signers file, weak, strong): alice signs `weak` (no DLP rule), then `strong`
    (adds the DLP rule); the branch is at `strong`."""
    alice = SshKey(tmp_path / "keys", "alice")
    signers = tmp_path / "allowed_signers"
    signers.write_text(alice.allowed_signers_line())
    alice.use(upstream)
    weak = upstream.commit({CFG: config_yaml("1.0.0")}, "signed, before the DLP rule")
    strong = upstream.commit({CFG: dlp_config("2.0.0")}, "signed: block bluebird")
    return upstream, signers, weak, strong


def message(head: str, applied: str) -> str:
    return (f"head {head} does not descend from the applied revision {applied} (a force-push or rewind); "
            "roll back with git revert, or run once with --on-rewind follow")


def assert_rewind_refused(result, state: Path, applied: str, head: str) -> None:
    """`head` refused with E121 naming both commits; `applied` keeps serving; status and drift say why."""
    assert result.result == "rejected" and result.error_kind == "rejected", result
    assert result.findings[0]["code"] == "E121" and result.findings[0]["message"] == message(head, applied)
    st = read_status(state)
    assert st["applied_revision"] == applied and st["attempted_revision"] == head == st["remote_head"]
    assert st["error_kind"] == "rejected" and "E121" in st["last_error"] and "does not descend" in st["last_error"]
    assert st["findings"][0]["commit"] == head and st["on_rewind"] == "refuse"
    assert report(state, time.time())["drift"] == {"drifted": True, "reason": "rejected"}
    assert os.readlink(state / "current") == f"revisions/{applied}"


def reset_branch(up: Upstream, sha: str) -> None:
    """Force-push the branch to `sha` (e.g. put it back after a rewind)."""
    git("reset", "--quiet", "--hard", sha, cwd=up.work)
    up.push(force=True)


@needs_ssh
def test_signed_fleet_refuses_a_force_push_back_to_an_older_signed_commit(signed, tmp_path):
    up, signers, weak, strong = signed
    state = tmp_path / "state"
    agent = make_agent(up, state, verify_signers=str(signers), timeout=30)  # refuse: the signed default
    git("reset", "--quiet", "--hard", weak, cwd=up.work)  # start from `weak` applied, then `strong` merged
    up.push(force=True)
    assert agent.sync_once().applied == weak
    reset_branch(up, strong)
    assert agent.sync_once().applied == strong and "project-bluebird" in served(state)

    assert up.rewind() == weak  # every signature check passes: `weak` is alice's genuine commit
    assert_rewind_refused(agent.sync_once(), state, strong, weak)
    assert "project-bluebird" in served(state)
    assert agent.sync_once().result == "rejected"  # polled again: still refused

    reset_branch(up, strong)  # the branch put back: nothing to do, the error clears
    assert agent.sync_once().result == "noop"
    assert read_status(state)["last_error"] is None
    reverted = up.revert()  # the documented rollback: a new signed commit on top
    result = agent.sync_once()
    assert result.result == "success" and result.applied == reverted
    assert "version: 1.0.0" in served(state) and "project-bluebird" not in served(state)


@needs_ssh
@pytest.mark.parametrize(("signers_on", "on_rewind", "refused"), [
    (True, "follow", False),  # explicit follow on a signed fleet: today's behaviour
    (False, None, False),  # no signatures: follow by default (test_sync_agent's force-push test too)
    (False, "refuse", True),  # refusing needs no signatures
])
def test_on_rewind_policy(signed, tmp_path, signers_on, on_rewind, refused):
    up, signers, weak, strong = signed
    state = tmp_path / "state"
    agent = make_agent(up, state, verify_signers=str(signers) if signers_on else None, on_rewind=on_rewind)
    assert agent.sync_once().applied == strong
    up.rewind()
    result = agent.sync_once()
    if refused:
        assert_rewind_refused(result, state, strong, weak)
    else:
        assert result.result == "success" and result.applied == weak and "version: 1.0.0" in served(state)
        assert read_status(state)["on_rewind"] == "follow"


@needs_ssh
def test_restart_keeps_refusing_and_the_cli_flag_and_env_follow_once(signed, tmp_path):
    up, signers, weak, strong = signed
    state = tmp_path / "state"
    agent = make_agent(up, state, verify_signers=str(signers))
    assert agent.sync_once().applied == strong
    up.rewind()
    assert agent.sync_once().result == "rejected"
    agent.release()
    agent = make_agent(up, state, verify_signers=str(signers))  # a restart: `applied` comes from the state dir
    assert_rewind_refused(agent.sync_once(), state, strong, weak)
    agent.release()

    base = ["sync", "run", "--once", "--repo", up.url, "--path", CFG, "--state-dir", str(state),
            "--verify-signers", str(signers)]
    out = run_kt(*base)
    assert out.returncode == 1 and "E121" in out.stderr and "does not descend" in out.stderr, out.stderr
    status = run_kt("sync", "status", "--state-dir", str(state))
    assert "E121" in status.stdout and "does not descend" in status.stdout and "Rewinds" in status.stdout
    assert "refused" in status.stdout and "drifted: rejected" in status.stdout
    sync = json.loads(run_kt("sync", "status", "--state-dir", str(state), "--json").stdout)["sync"]
    assert sync["findings"][0]["code"] == "E121" and sync["applied_revision"] == strong
    bad = run_kt(*base, "--on-rewind", "sideways")
    assert bad.returncode == 1 and "--on-rewind" in bad.stderr and "follow" in bad.stderr
    out = run_kt(*base, env={**os.environ, "KEEPTRUSTS_GIT_ON_REWIND": "follow"})  # the operator accepts it once
    assert out.returncode == 0, out.stderr
    assert read_status(state)["applied_revision"] == weak and "version: 1.0.0" in served(state)


def test_shallow_clone_finds_a_deep_descendant_and_a_deep_rewind(upstream, tmp_path):
    server = GitHttpServer(upstream.root)
    state = tmp_path / "state"
    try:
        agent = make_agent(upstream, state, url=server.url("policies.git"), on_rewind="refuse")
        assert agent.sync_once().result == "success"
        one = upstream.commit({CFG: config_yaml("1.0.1")}, "one merge")
        before = server.fetches
        assert agent.sync_once().applied == one
        assert server.fetches - before == 1  # a normal poll: the applied commit is the head's parent, no deepening
        assert (state / "repo" / "shallow").is_file()
        for i in range(20):
            upstream.commit({CFG: config_yaml(f"2.0.{i}")}, f"change {i}", push=False)
        upstream.push()
        before = server.fetches
        result = agent.sync_once()
        assert result.result == "success" and result.applied == upstream.head(), result.error
        assert server.fetches - before <= 4  # the fetch, then deepening by 4, 8, 16 commits
        applied = upstream.head()

        # A rewrite that branches off 15 commits below the applied one and adds 25 of its own.
        git("reset", "--quiet", "--hard", "HEAD~15", cwd=upstream.work)
        for i in range(25):
            upstream.commit({CFG: config_yaml(f"3.0.{i}")}, f"rewritten {i}", push=False)
        upstream.push(force=True)
        assert_rewind_refused(agent.sync_once(), state, applied, upstream.head())
        assert "version: 2.0.19" in served(state)
        reset_branch(upstream, applied)
        assert agent.sync_once().result == "noop"
        agent.release()
    finally:
        server.stop()


def test_a_re_initialised_clone_still_tells_descendants_from_rewinds(upstream, tmp_path):
    state = tmp_path / "state"
    agent = make_agent(upstream, state, on_rewind="refuse")
    for i in range(3):
        upstream.commit({CFG: config_yaml(f"1.1.{i}")}, f"change {i}")
    applied = agent.sync_once().applied
    assert applied == upstream.head()
    (state / "repo" / "HEAD").write_text("garbage\n")  # a damaged clone: the next sync re-initialises it
    old = upstream.rewind(3)
    assert_rewind_refused(agent.sync_once(), state, applied, old)
    assert git("-C", str(state / "repo"), "rev-parse", "--is-bare-repository") == "true"
    shutil.rmtree(state / "repo")  # gone altogether: the applied commit is in no clone
    reset_branch(upstream, applied)
    for i in range(6):
        upstream.commit({CFG: config_yaml(f"1.2.{i}")}, f"later {i}", push=False)
    upstream.push()
    result = agent.sync_once()
    assert result.result == "success" and result.applied == upstream.head(), result.error


def test_a_tag_moved_back_is_a_rewind_a_changed_ref_is_a_new_baseline(upstream, tmp_path):
    first = upstream.head()
    upstream.commit({CFG: dlp_config("2.0.0")}, "block bluebird")
    upstream.tag("prod")
    state = tmp_path / "state"

    def agent_on(ref: str) -> SyncAgent:
        return make_agent(upstream, state, ref=ref, on_rewind="refuse")

    agent = agent_on("prod")
    prod = agent.sync_once().applied
    upstream.tag("prod", first)  # the tag moved to an older commit: the same attack as a force-push
    assert_rewind_refused(agent.sync_once(), state, prod, first)
    agent.release()
    agent = agent_on(first)  # the operator pins a known-good SHA: their choice, applied
    assert agent.sync_once().applied == first
    agent.release()
    agent = agent_on("prod")  # and back to the tag (now at `first`): the first head of a changed ref is the baseline
    assert agent.sync_once().result == "noop"
    upstream.tag("prod", prod)  # moved forward again: a descendant
    assert agent.sync_once().applied == prod
    agent.release()


@needs_ssh
def test_embedded_agent_refuses_the_rewind_and_keeps_enforcing_across_a_restart(signed, tmp_path):
    up, signers, weak, strong = signed
    state = tmp_path / "state"
    gw = Gateway(up, state, "--git-verify-signers", str(signers), "--sync-interval", "0.2")
    try:
        wait_for(lambda: gw.revision() == strong, timeout=30)
        assert gw.chat_status(BLUEBIRD) == 409
        up.rewind()
        wait_for(lambda: gw.status()["drift"]["reason"] == "rejected", timeout=30)
        status = gw.status()
        assert status["config"]["revision"] == strong and status["sync"]["findings"][0]["code"] == "E121"
        assert message(weak, strong) in status["sync"]["last_error"]
        assert gw.chat_status(BLUEBIRD) == 409 and gw.get("/readyz")[0] == 200
    finally:
        gw.stop()
    gw = Gateway(up, state, "--git-verify-signers", str(signers), "--sync-interval", "0.2")
    try:  # restarted: serves `strong` from the state dir and refuses the rewound head again
        assert gw.revision() == strong and gw.chat_status(BLUEBIRD) == 409
        wait_for(lambda: (gw.status()["sync"] or {}).get("last_attempt_at") != status["sync"]["last_attempt_at"]
                 and gw.status()["drift"]["reason"] == "rejected", timeout=30)
        assert gw.status()["sync"]["findings"][0]["code"] == "E121" and gw.chat_status(BLUEBIRD) == 409
        assert "does not descend" in gw.logs()
    finally:
        gw.stop()
