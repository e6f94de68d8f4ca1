"""`--ref` / `--git-ref`: deploy a branch, a tag (lightweight or annotated) or a pinned commit SHA."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sync.agent import SyncAgent, SyncSettings
from sync.repo import Remote, check_ref_name
from sync.status import read_status
from tests.gitserve import CFG, GitDaemon, GitHttpServer, config_yaml, dlp_config, git
from tests.kt_process import run_kt
from tests.sync_gateway import Gateway
from tests.syncing import served
from tests.waiting import wait_for


def agent_for(url: str, ref: str, state: Path, depth: int = 1) -> SyncAgent:
    agent = SyncAgent(SyncSettings(Remote(url, ref, depth), state, CFG, timeout=30))
    agent.acquire()
    return agent


@pytest.mark.parametrize("annotated", [False, True], ids=["lightweight", "annotated"])
def test_a_tag_is_deployed_and_followed_when_it_moves(upstream, tmp_path, annotated):
    first = upstream.head()
    upstream.tag("prod", annotated=annotated)
    upstream.commit({CFG: config_yaml("2.0.0")}, "not yet released")
    state = tmp_path / "state"
    agent = agent_for(upstream.url, "prod", state)
    result = agent.sync_once()
    assert result.result == "success" and result.applied == first  # the peeled commit, not the tag object
    assert "version: 1.0.0" in served(state)
    st = read_status(state)
    assert st["ref"] == st["branch"] == "prod" and st["ref_kind"] == "tag" and st["remote_head"] == first
    assert agent.sync_once().result == "noop"  # a new commit on main changes nothing
    upstream.tag("prod", annotated=annotated)  # release: the tag moves to the main head
    result = agent.sync_once()
    assert result.result == "success" and result.applied == upstream.head()
    assert "version: 2.0.0" in served(state)


def test_full_tag_and_branch_ref_names(upstream, tmp_path):
    upstream.tag("v1", annotated=True)
    agent = agent_for(upstream.url, "refs/tags/v1", tmp_path / "a")
    assert agent.sync_once().applied == upstream.head()
    assert read_status(tmp_path / "a")["ref_kind"] == "tag"
    agent = agent_for(upstream.url, "refs/heads/main", tmp_path / "b")
    assert agent.sync_once().applied == upstream.head()
    assert read_status(tmp_path / "b")["ref_kind"] == "branch"


def test_missing_ref_is_a_clear_error(upstream, tmp_path):
    result = agent_for(upstream.url, "v9", tmp_path / "state").sync_once()
    assert result.result == "error" and result.error_kind == "branch_missing"
    assert "branch 'v9' does not exist" in result.error and "nor a tag" in result.error


def test_a_pinned_sha_is_fetched_by_sha_and_needs_no_remote_afterwards(upstream, tmp_path):
    pinned = upstream.head()
    upstream.commit({CFG: config_yaml("2.0.0")}, "second")
    upstream.commit({CFG: config_yaml("3.0.0")}, "third")  # `pinned` is now at no branch or tag tip
    daemon = GitDaemon(upstream.root)
    state = tmp_path / "state"
    try:
        agent = agent_for(daemon.url("policies.git"), pinned, state)
        result = agent.sync_once()
        assert result.result == "success" and result.applied == pinned, result.error
        assert "version: 1.0.0" in served(state)
        st = read_status(state)
        assert st["ref"] == pinned and st["ref_kind"] == "commit"
        assert git("-C", str(state / "repo"), "rev-list", "--count", "refs/kt/head") == "1"  # by SHA, depth 1
    finally:
        daemon.stop()
    assert agent.sync_once().result == "noop"  # pinned and present: the remote is not needed


def test_a_server_that_refuses_unadvertised_shas_is_searched(upstream, tmp_path):
    pinned = upstream.head()
    upstream.commit({CFG: config_yaml("2.0.0")}, "second")
    server = GitHttpServer(upstream.root, protocol_v2=False)  # protocol v0: "not our ref" for a bare SHA
    try:
        url = server.url("policies.git")
        agent = agent_for(url, pinned, tmp_path / "state")
        result = agent.sync_once()
        assert result.result == "success" and result.applied == pinned, result.error
        assert "version: 1.0.0" in served(tmp_path / "state")
        assert git("-C", str(tmp_path / "state" / "repo"), "for-each-ref", "refs/kt/scan/") == ""
        missing = "0123456789abcdef0123456789abcdef01234567"
        result = agent_for(url, missing, tmp_path / "other").sync_once()
        assert result.result == "error" and result.error_kind == "branch_missing"
        assert f"commit {missing} is not on any branch or tag" in result.error
    finally:
        server.stop()


def test_ref_names_are_checked():
    for bad in ("-x", "a..b", "refs/heads/", "x.lock", "a b", ""):
        with pytest.raises(ValueError, match="invalid ref"):
            check_ref_name(bad)
    for good in ("main", "release/2026.12", "refs/tags/v1.2.3", "0123456789abcdef0123456789abcdef01234567"):
        check_ref_name(good)


@pytest.mark.parametrize("how", ["--ref", "--branch", "env"])
def test_kt_sync_run_takes_ref_branch_alias_and_env(upstream, tmp_path, how):
    pinned = upstream.head()
    upstream.commit({CFG: config_yaml("2.0.0")}, "second")
    env = dict(os.environ)
    args = ["sync", "run", "--once", "--repo", upstream.url, "--path", CFG, "--state-dir", str(tmp_path / "state")]
    if how == "env":
        env["KEEPTRUSTS_GIT_REF"] = pinned
    else:
        args += [how, pinned]
    out = run_kt(*args, env=env)
    assert out.returncode == 0, out.stderr
    assert read_status(tmp_path / "state")["applied_revision"] == pinned
    status = run_kt("sync", "status", "--state-dir", str(tmp_path / "state"))
    assert f"commit {pinned}" in status.stdout


def test_gateway_pinned_to_a_tag_follows_it_and_reports_it(upstream, tmp_path):
    """Incident rollback: pin the fleet to a known-good tag, then move the tag."""
    upstream.commit({CFG: dlp_config("2.0.0")}, "block bluebird")
    upstream.tag("known-good")
    upstream.commit({CFG: config_yaml("3.0.0")}, "the bad release")
    gw = Gateway(upstream, tmp_path / "state", "--git-ref", "known-good", "--sync-interval", "0.2")
    try:
        good = git("rev-parse", "known-good^{commit}", cwd=upstream.work)
        wait_for(lambda: gw.revision() == good, timeout=30)
        sync = gw.status()["sync"]
        assert sync["ref"] == "known-good" and sync["ref_kind"] == "tag"
        assert gw.chat_status("project-bluebird") == 409
        upstream.tag("known-good")
        wait_for(lambda: gw.revision() == upstream.head(), timeout=30, message="the moved tag was not followed")
        assert gw.chat_status("project-bluebird") == 200
    finally:
        gw.stop()
