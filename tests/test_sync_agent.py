"""The sync agent in process against real repositories on disk (file:// remotes)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from sync.agent import AgentLocked
from sync.publish import current_dir
from sync.status import read_status, report
from tests.gitserve import CFG, INVALID_YAML, config_yaml, git
from tests.syncing import make_agent, served


def test_first_sync_publishes_by_relative_symlink(upstream, tmp_path):
    state = tmp_path / "state"
    agent = make_agent(upstream, state)
    result = agent.sync_once()
    assert result.result == "success" and result.applied == upstream.head()
    link = os.readlink(state / "current")
    assert not os.path.isabs(link) and Path(link).name == upstream.head()
    assert "version: 1.0.0" in served(state)
    st = read_status(state)
    assert st["applied_revision"] == st["attempted_revision"] == st["remote_head"] == upstream.head()
    assert st["last_error"] is None and st["consecutive_failures"] == 0
    assert st["applied_pack"] == {"name": "sync-test", "version": "1.0.0"}
    assert not (state / "revisions" / upstream.head() / ".git").exists()
    rep = report(state, time.time())
    assert rep["drift"] == {"drifted": False, "reason": None} and rep["age_seconds"] is not None
    assert agent.sync_once().result == "noop"


def test_new_commit_is_published_and_old_revisions_pruned(upstream, tmp_path):
    state = tmp_path / "state"
    agent = make_agent(upstream, state, keep=3)
    agent.sync_once()
    for i in range(2, 7):
        sha = upstream.commit({CFG: config_yaml(f"{i}.0.0")})
        assert agent.sync_once().result == "success"
        assert f"version: {i}.0.0" in served(state)
        assert current_dir(state).name == sha
    kept = sorted(p.name for p in (state / "revisions").iterdir() if p.is_dir())
    assert len(kept) == 3 and current_dir(state).name in kept
    digests = sorted(p.name for p in (state / "revisions").iterdir() if not p.is_dir())
    assert digests == [f"{name}.digest" for name in kept]  # a manifest beside each kept revision, no orphans


def test_invalid_commit_refused_then_good_clears(upstream, tmp_path):
    state = tmp_path / "state"
    agent = make_agent(upstream, state)
    good = upstream.head()
    agent.sync_once()
    bad = upstream.commit({CFG: INVALID_YAML}, "break it")
    result = agent.sync_once()
    assert result.result == "rejected" and "no-such-policy" in result.error
    assert "version: 1.0.0" in served(state)
    st = read_status(state)
    assert st["applied_revision"] == good and st["attempted_revision"] == bad == st["remote_head"]
    assert st["consecutive_failures"] == 1 and st["findings"][0]["code"] == "E001"
    assert report(state, time.time())["drift"] == {"drifted": True, "reason": "rejected"}
    assert not any(p.name.startswith(bad) for p in (state / "revisions").iterdir())
    assert agent.sync_once().result == "rejected"  # polled again: still refused, still serving the good one
    assert read_status(state)["consecutive_failures"] == 2
    fixed = upstream.commit({CFG: config_yaml("2.0.0")}, "fix")
    assert agent.sync_once().result == "success"
    st = read_status(state)
    assert st["applied_revision"] == fixed and st["last_error"] is None and st["findings"] == []
    assert st["consecutive_failures"] == 0 and "version: 2.0.0" in served(state)


def test_yaml_error_in_one_of_many_files_refuses_whole_revision(upstream, tmp_path):
    upstream.commit({"envs/prod/a.yaml": config_yaml("1.0.0"), "envs/prod/b.yaml": config_yaml("1.0.0")})
    state = tmp_path / "state"
    agent = make_agent(upstream, state, path="envs/prod")
    assert agent.sync_once().result == "success"
    upstream.commit({"envs/prod/a.yaml": config_yaml("2.0.0"), "envs/prod/b.yaml": "pack: [unclosed\n"})
    result = agent.sync_once()
    assert result.result == "rejected" and "envs/prod/b.yaml" in result.error
    assert "1.0.0" in served(state, "envs/prod/a.yaml")  # never a partial apply


def test_missing_path_is_refused(upstream, tmp_path):
    agent = make_agent(upstream, tmp_path / "state", path="prod/policy-config.yaml")
    result = agent.sync_once()
    assert result.result == "rejected" and "no such file" in result.error
    assert not (tmp_path / "state" / "current").exists()


def test_revert_rolls_back(upstream, tmp_path):
    state = tmp_path / "state"
    agent = make_agent(upstream, state)
    agent.sync_once()
    upstream.commit({CFG: config_yaml("2.0.0")})
    agent.sync_once()
    reverted = upstream.revert()
    assert agent.sync_once().result == "success"
    assert read_status(state)["applied_revision"] == reverted and "version: 1.0.0" in served(state)


def test_force_push_rewind_is_followed(upstream, tmp_path):
    state = tmp_path / "state"
    agent = make_agent(upstream, state)
    first = upstream.head()
    agent.sync_once()
    upstream.commit({CFG: config_yaml("2.0.0")})
    upstream.commit({CFG: config_yaml("3.0.0")})
    agent.sync_once()
    assert upstream.rewind(2) == first
    assert agent.sync_once().result == "success"
    assert read_status(state)["applied_revision"] == first and "version: 1.0.0" in served(state)


def test_deleted_branch_is_a_clear_error_and_nothing_swapped(upstream, tmp_path):
    state = tmp_path / "state"
    agent = make_agent(upstream, state)
    agent.sync_once()
    before = os.readlink(state / "current")
    upstream.delete_branch()
    result = agent.sync_once()
    assert result.result == "error" and result.error_kind == "branch_missing"
    assert "branch 'main' does not exist" in result.error
    assert os.readlink(state / "current") == before


def test_remote_down_cold_start_and_after_good_sync(upstream, tmp_path):
    state = tmp_path / "state"
    moved = upstream.bare.with_name("gone.git")
    upstream.bare.rename(moved)
    agent = make_agent(upstream, state)
    result = agent.sync_once()
    assert result.result == "error" and result.error_kind == "unreachable"
    assert not (state / "current").exists()
    rep = report(state, time.time())
    assert rep["config"] is None and rep["drift"]["reason"] == "unreachable"
    assert rep["sync"]["last_error"] and rep["sync"]["consecutive_failures"] == 1
    moved.rename(upstream.bare)
    assert agent.sync_once().result == "success"
    success_at = read_status(state)["last_success_at"]
    upstream.bare.rename(moved)
    assert agent.sync_once().result == "error"
    assert "version: 1.0.0" in served(state)
    st = read_status(state)
    assert st["last_success_at"] == success_at and st["consecutive_failures"] == 1
    later = report(state, time.time() + 100)
    assert later["drift"] == {"drifted": True, "reason": "unreachable"} and later["age_seconds"] >= 100


@pytest.mark.parametrize("lock", ["index.lock", "shallow.lock", "refs/kt/head.lock", "HEAD.lock"])
def test_stale_lock_files_are_repaired(upstream, tmp_path, lock):
    state = tmp_path / "state"
    agent = make_agent(upstream, state)
    agent.sync_once()
    (state / "repo" / lock).write_text("")
    sha = upstream.commit({CFG: config_yaml("2.0.0")})
    assert agent.sync_once().result == "success"
    assert read_status(state)["applied_revision"] == sha
    assert not (state / "repo" / lock).exists()


@pytest.mark.parametrize("damage", ["objects", "head", "packs"])
def test_corrupted_clone_is_recloned(upstream, tmp_path, damage):
    state = tmp_path / "state"
    agent = make_agent(upstream, state)
    agent.sync_once()
    repo = state / "repo"
    if damage == "objects":
        shutil.rmtree(repo / "objects")
    elif damage == "head":
        (repo / "HEAD").write_text("garbage\n")
    else:
        git("-C", str(repo), "repack", "-a", "-d", "-q")
        for pack in (repo / "objects" / "pack").glob("*.pack"):
            pack.write_bytes(b"PACK broken")
    sha = upstream.commit({CFG: config_yaml("2.0.0")})
    assert agent.sync_once().result == "success"
    assert read_status(state)["applied_revision"] == sha and "version: 2.0.0" in served(state)


def test_missing_current_and_hand_edits_are_repaired(upstream, tmp_path):
    state = tmp_path / "state"
    agent = make_agent(upstream, state)
    agent.sync_once()
    (state / "current").unlink()
    assert report(state, time.time())["drift"]["reason"] == "modified"
    assert agent.sync_once().result == "success" and "version: 1.0.0" in served(state)
    published = current_dir(state)
    (published / CFG).write_text(config_yaml("6.6.6"))
    assert report(state, time.time())["drift"] == {"drifted": True, "reason": "modified"}
    assert agent.sync_once().result == "success"
    assert "version: 1.0.0" in served(state) and current_dir(state) == published  # same path, fresh tree
    assert report(state, time.time())["drift"]["drifted"] is False


def test_leftovers_of_a_crash_are_cleaned(upstream, tmp_path):
    state = tmp_path / "state"
    agent = make_agent(upstream, state)
    agent.sync_once()
    # What kill -9 can leave at each step: a half export, a temp link not yet renamed, a temp status.
    half = state / "revisions" / ".tmp-deadbeef-1234"
    half.mkdir()
    (half / CFG).write_text("pack: {name: half")
    os.symlink("revisions/.tmp-deadbeef-1234", state / ".tmp-current-abcd")
    (state / ".tmp-status-abcd").write_text("{")
    before = os.readlink(state / "current")
    assert agent.sync_once().result == "noop" and os.readlink(state / "current") == before
    assert not [p for p in [*state.iterdir(), *(state / "revisions").iterdir()] if p.name.startswith(".tmp-")]


def test_one_agent_per_state_dir(upstream, tmp_path):
    make_agent(upstream, tmp_path / "state")
    with pytest.raises(AgentLocked, match="already running"):
        make_agent(upstream, tmp_path / "state")


def test_full_history_depth_zero(upstream, tmp_path):
    upstream.commit({CFG: config_yaml("2.0.0")})
    state = tmp_path / "state"
    agent = make_agent(upstream, state, depth=0)
    assert agent.sync_once().result == "success"
    assert git("-C", str(state / "repo"), "rev-list", "--count", "refs/kt/head") == "2"


def test_gc_drops_commits_no_longer_fetched(upstream, tmp_path, monkeypatch):
    import sync.agent

    monkeypatch.setattr(sync.agent, "GC_EVERY", 1)
    state = tmp_path / "state"
    agent = make_agent(upstream, state)
    first = upstream.head()
    agent.sync_once()
    for i in (2, 3):
        upstream.commit({CFG: config_yaml(f"{i}.0.0")})
        assert agent.sync_once().result == "success"
    repo = state / "repo"
    assert subprocess.run(["git", "-C", str(repo), "cat-file", "-e", first], capture_output=True).returncode != 0
    assert git("-C", str(repo), "rev-parse", "refs/kt/head") == upstream.head()
