"""Only files from the commit: links, what is exported, git isolated from the host, tampered publications.

Real repositories on disk (file:// remotes) and the real agent; the gateway side through the real
`Reloader` reading `<state>/current/<path>`."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from gateway.control.reload import Reloader
from gateway.control.runtime import Runtime
from sync.agent import SyncAgent, SyncSettings
from sync.manifest import manifest_path
from sync.publish import current_dir
from sync.repo import Remote
from sync.status import read_status, report
from tests.gitserve import CFG, INVALID_YAML, GitDaemon, Upstream, config_yaml, git
from tests.syncing import make_agent, served


def files_below(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if not p.is_dir())


# --- links -------------------------------------------------------------------------------------------


def test_link_chain_through_a_self_link_cannot_serve_a_host_file(upstream, tmp_path):
    """`x -> .` plus `policy-config.yaml -> x/x/x/../../../host.yaml`: lexically inside the tree,
    really three levels above `revisions/<sha>/` (the host file is in no commit)."""
    state = tmp_path / "state"
    host = tmp_path / "host.yaml"
    host.write_text(config_yaml("6.6.6", name="from-the-host"))
    agent = make_agent(upstream, state)
    good = upstream.head()
    assert agent.sync_once().result == "success"
    (upstream.work / CFG).unlink()
    os.symlink(".", upstream.work / "x")
    os.symlink("x/x/x/../../../host.yaml", upstream.work / CFG)
    bad = upstream.commit({}, "link chain")
    result = agent.sync_once()
    assert result.result == "rejected" and result.findings[0]["code"] == "E110", result
    assert "symlink" in result.error
    assert "version: 1.0.0" in served(state) and "from-the-host" not in served(state)
    st = read_status(state)
    assert st["applied_revision"] == good and st["attempted_revision"] == bad
    assert report(state, time.time())["drift"]["reason"] == "rejected"
    assert not (state / "revisions" / bad).exists()


@pytest.mark.parametrize("target", ["/etc/passwd", "../../outside.yaml", "missing.yaml", "loop.yaml"])
def test_config_link_that_does_not_end_at_a_file_of_the_commit_is_refused(upstream, tmp_path, target):
    state = tmp_path / "state"
    agent = make_agent(upstream, state)
    agent.sync_once()
    (upstream.work / CFG).unlink()
    os.symlink(target, upstream.work / CFG)
    os.symlink(CFG, upstream.work / "loop.yaml")
    upstream.commit({}, "config is a bad link")
    result = agent.sync_once()
    assert result.result == "rejected" and result.findings[0]["code"] == "E110"
    assert "version: 1.0.0" in served(state)


def test_link_to_a_file_of_the_commit_is_published_as_that_file(upstream, tmp_path):
    state = tmp_path / "state"
    agent = make_agent(upstream, state)
    upstream.commit({"real/config.yaml": config_yaml("2.0.0")})
    (upstream.work / CFG).unlink()
    os.symlink("real/config.yaml", upstream.work / CFG)
    sha = upstream.commit({}, "config links to real/config.yaml")
    assert agent.sync_once().result == "success"
    rev = state / "revisions" / sha
    assert files_below(rev) == [CFG] and not (rev / CFG).is_symlink()
    assert "version: 2.0.0" in served(state)


def test_directory_config_with_a_link_leaving_the_commit_is_refused(upstream, tmp_path):
    upstream.commit({"envs/prod/a.yaml": config_yaml("1.0.0"), "envs/prod/notes.txt": "not config\n"})
    state = tmp_path / "state"
    agent = make_agent(upstream, state, path="envs/prod")
    sha = upstream.head()
    assert agent.sync_once().result == "success"
    assert files_below(state / "revisions" / sha) == ["envs/prod/a.yaml"]  # only what the loader reads
    os.symlink("/etc/passwd", upstream.work / "envs/prod/leak.yaml")
    upstream.commit({}, "leak")
    result = agent.sync_once()
    assert result.result == "rejected" and result.findings[0]["code"] == "E110"
    assert "envs/prod/leak.yaml" in result.error


def test_link_beside_a_single_file_config_is_never_exported(upstream, tmp_path):
    state = tmp_path / "state"
    agent = make_agent(upstream, state)
    os.symlink("/etc/passwd", upstream.work / "leak.yaml")
    sha = upstream.commit({}, "a link the config does not use")
    assert agent.sync_once().result == "success"
    assert files_below(state / "revisions" / sha) == [CFG]


# --- what is exported -----------------------------------------------------------------------------


def test_large_file_beside_the_config_is_not_exported(upstream, tmp_path):
    big = 64 << 20
    (upstream.work / "model.bin").write_bytes(os.urandom(big))
    sha = upstream.commit({CFG: config_yaml("2.0.0")}, "a big file beside the config")
    state = tmp_path / "state"
    daemon = GitDaemon(upstream.root)  # the server's processes are not the agent's children
    # `kt sync run --once` in a child; the probe reports the peak RSS of the largest process it waited for
    # (the agent or any git it ran).
    probe = (
        "import resource, subprocess, sys\n"
        "rc = subprocess.run([sys.executable, '-m', 'kt', 'sync', 'run', '--repo', sys.argv[1],"
        " '--state-dir', sys.argv[2], '--once'], capture_output=True).returncode\n"
        "print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    try:
        out = subprocess.run([sys.executable, "-c", probe, daemon.url(upstream.bare.name), str(state)],
                             capture_output=True, text=True, timeout=120, check=True).stdout.split()
    finally:
        daemon.stop()
    rc, peak_kib = int(out[0]), int(out[1])
    assert rc == 0 and read_status(state)["applied_revision"] == sha
    rev = state / "revisions" / sha
    assert files_below(rev) == [CFG]
    assert sum(p.stat().st_size for p in rev.rglob("*")) < 4096
    assert peak_kib * 1024 < big, f"peak RSS {peak_kib} KiB: the big blob was loaded"


# --- git isolated from the host -------------------------------------------------------------------


def test_host_git_config_hooks_and_filters_never_run(upstream, tmp_path, monkeypatch):
    marker = tmp_path / "marker"
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    for hook in ("reference-transaction", "post-checkout", "pre-auto-gc", "post-index-change"):
        (hooks / hook).write_text(f"#!/bin/sh\necho {hook} >> {marker}\n")
        (hooks / hook).chmod(0o755)
    home = tmp_path / "home"
    home.mkdir()
    gitconfig = (
        f"[core]\n\thooksPath = {hooks}\n"
        f"[filter \"kt\"]\n\tsmudge = sh -c 'echo smudge >> {marker}; sed s/1.0.0/6.6.6/'\n\tclean = cat\n"
        f"[diff \"kt\"]\n\ttextconv = sh -c 'echo textconv >> {marker}; cat \"$1\"' --\n"
    )
    (home / ".gitconfig").write_text(gitconfig)
    (home / ".config" / "git").mkdir(parents=True)
    (home / ".config" / "git" / "config").write_text(gitconfig)
    (home / ".config" / "git" / "attributes").write_text("*.yaml filter=kt diff=kt\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("GIT_CONFIG_PARAMETERS", f"'core.hookspath'='{hooks}'")
    upstream.commit({".gitattributes": "*.yaml filter=kt diff=kt export-subst\n",
                     CFG: config_yaml("1.0.0") + "# $Format:%H$\n"}, "attributes")
    state = tmp_path / "state"
    agent = make_agent(upstream, state)
    assert agent.sync_once().result == "success"
    upstream.commit({CFG: config_yaml("1.0.0", name="second") + "# $Format:%H$\n"})
    assert agent.sync_once().result == "success"
    assert not marker.exists(), marker.read_text()
    text = served(state)
    assert "version: 1.0.0" in text and "$Format:%H$" in text  # the raw blob: no smudge, no export-subst


# --- tampered publications ------------------------------------------------------------------------


def applied_then_refused(upstream: Upstream, state: Path) -> tuple[SyncAgent, str]:
    """An agent that applied the remote's head, then refused an invalid commit; (agent, the applied sha)."""
    agent = make_agent(upstream, state)
    good = upstream.head()
    agent.sync_once()
    upstream.commit({CFG: INVALID_YAML}, "bad")
    assert agent.sync_once().result == "rejected"
    return agent, good


def test_hand_edit_is_restored_while_the_head_is_refused(upstream, tmp_path):
    state = tmp_path / "state"
    agent, good = applied_then_refused(upstream, state)
    published = state / "revisions" / good
    (published / CFG).write_text(config_yaml("6.6.6", name="edited-by-hand"))
    assert report(state, time.time())["drift"] == {"drifted": True, "reason": "modified"}
    restores = REGISTRY.get_sample_value("keeptrusts_sync_restores_total") or 0
    assert agent.sync_once().result == "rejected"  # the head is still refused ...
    assert REGISTRY.get_sample_value("keeptrusts_sync_restores_total") == restores + 1
    assert "version: 1.0.0" in served(state) and "edited-by-hand" not in served(state)  # ... and the edit is gone
    assert current_dir(state) == published and read_status(state)["applied_revision"] == good
    assert report(state, time.time())["drift"]["reason"] == "rejected"


def test_hand_moved_current_is_restored_while_the_head_is_refused(upstream, tmp_path):
    state = tmp_path / "state"
    agent, good = applied_then_refused(upstream, state)
    fake = state / "revisions" / ("f" * 40)
    fake.mkdir()
    (fake / CFG).write_text(config_yaml("6.6.6", name="by-hand"))
    os.symlink(f"revisions/{fake.name}", state / "current.new")
    os.replace(state / "current.new", state / "current")
    assert report(state, time.time())["drift"]["reason"] == "modified"
    assert agent.sync_once().result == "rejected"
    assert current_dir(state).name == good and "version: 1.0.0" in served(state)


def test_lost_revision_is_restored_from_git_objects_with_the_remote_down(upstream, tmp_path):
    state = tmp_path / "state"
    agent = make_agent(upstream, state)
    good = upstream.head()
    agent.sync_once()
    upstream.commit({CFG: config_yaml("2.0.0")}, "newer, fetched but then refused below")
    upstream.bare.rename(upstream.bare.with_name("gone.git"))
    import shutil

    shutil.rmtree(state / "revisions" / good)
    manifest_path(state / "revisions" / good).unlink()
    assert agent.sync_once().result == "error"  # the remote is down, yet the publication is back
    assert current_dir(state).name == good and "version: 1.0.0" in served(state)
    assert report(state, time.time())["drift"]["reason"] == "unreachable"


def _reloader(state: Path) -> tuple[Runtime, Reloader]:
    runtime = Runtime()
    reloader = Reloader(runtime, state / "current" / CFG)
    reloader.load_initial()
    return runtime, reloader


def test_gateway_refuses_a_hand_edited_revision(upstream, tmp_path):
    state = tmp_path / "state"
    agent = make_agent(upstream, state)
    good = upstream.head()
    agent.sync_once()
    runtime, reloader = _reloader(state)
    assert runtime.snapshot.revision == good
    (state / "revisions" / good / CFG).write_text(config_yaml("6.6.6", name="edited-by-hand"))
    result = asyncio.run(reloader.reload("test"))
    assert result.result == "error" and result.findings[0].code == "E111"
    assert f"{CFG} in revision {good[:12]} was modified" in result.error
    assert runtime.snapshot.config.pack.version == "1.0.0"
    assert report(state, time.time(), reload_failed=True)["drift"]["reason"] == "modified"
    agent.sync_once()  # the agent puts the published copy back; the gateway accepts it again
    assert asyncio.run(reloader.reload("test")).result in ("ok", "noop")


def test_gateway_refuses_a_revision_not_published_by_the_agent(upstream, tmp_path):
    state = tmp_path / "state"
    make_agent(upstream, state).sync_once()
    runtime, reloader = _reloader(state)
    fake = state / "revisions" / ("f" * 40)
    fake.mkdir()
    (fake / CFG).write_text(config_yaml("6.6.6", name="by-hand"))
    os.symlink(f"revisions/{fake.name}", state / "current.new")
    os.replace(state / "current.new", state / "current")
    result = asyncio.run(reloader.reload("test"))
    assert result.result == "error" and result.findings[0].code == "E111" and "no digest" in result.error
    assert runtime.snapshot.config.pack.name == "sync-test"


def test_gateway_refuses_a_config_whose_real_path_leaves_the_revision(upstream, tmp_path):
    state = tmp_path / "state"
    good = upstream.head()
    make_agent(upstream, state).sync_once()
    runtime, reloader = _reloader(state)
    host = tmp_path / "host.yaml"
    host.write_text(config_yaml("6.6.6", name="from-the-host"))
    rev = state / "revisions" / good
    (rev / CFG).unlink()
    os.symlink(".", rev / "x")
    os.symlink("x/x/x/../../../host.yaml", rev / CFG)  # put there by hand
    result = asyncio.run(reloader.reload("test"))
    assert result.result == "error" and result.findings[0].code == "E110" and "outside" in result.error
    assert runtime.snapshot.config.pack.name == "sync-test"
    current = state / "current"
    os.replace(state / "current", state / "moved")  # `current` itself moved outside revisions/
    os.symlink(str(tmp_path), current)
    assert asyncio.run(reloader.reload("test")).findings[0].code in ("E110", "E100")


def test_old_state_dir_without_digests_is_republished(upstream, tmp_path):
    state = tmp_path / "state"
    agent = make_agent(upstream, state)
    good = upstream.head()
    agent.sync_once()
    manifest_path(state / "revisions" / good).unlink()  # as a state dir written before digests existed
    assert agent.sync_once().result == "success"
    assert manifest_path(state / "revisions" / good).is_file()
    assert git("-C", str(state / "repo"), "rev-parse", "refs/kt/applied") == good


def test_only_supported_transports_even_if_the_host_allows_more(upstream, tmp_path, monkeypatch):
    marker = tmp_path / "marker"
    home = tmp_path / "home"
    home.mkdir()
    (home / ".gitconfig").write_text("[protocol]\n\tallow = always\n")  # the host opened every transport
    monkeypatch.setenv("HOME", str(home))
    url = f"ext::sh -c touch% {marker}% &&% git-upload-pack% {upstream.bare}"
    agent = SyncAgent(SyncSettings(Remote(url), tmp_path / "state", CFG))
    agent.acquire()
    result = agent.sync_once()
    assert result.result == "error" and not marker.exists()


def test_gateway_checks_a_revision_reached_through_another_link(upstream, tmp_path):
    state = tmp_path / "state"
    good = upstream.head()
    make_agent(upstream, state).sync_once()
    alias = tmp_path / "etc-kt-policy.yaml"
    os.symlink(state / "current" / CFG, alias)  # e.g. /etc/kt/policy.yaml -> <state>/current/policy-config.yaml
    runtime = Runtime()
    reloader = Reloader(runtime, alias)
    assert reloader.load_initial().revision == good
    (state / "revisions" / good / CFG).write_text(config_yaml("6.6.6", name="edited-by-hand"))
    result = asyncio.run(reloader.reload("test"))
    assert result.result == "error" and result.findings[0].code == "E111"
    assert runtime.snapshot.config.pack.version == "1.0.0"


def test_clone_that_lost_the_config_blob_is_recloned_not_refused(upstream, tmp_path, monkeypatch):
    state = tmp_path / "state"
    agent = make_agent(upstream, state)
    assert agent.sync_once().result == "success"
    sha = upstream.commit({CFG: config_yaml("2.0.0")})
    agent.mirror.fetch(agent.settings.remote, 30)  # fetched (as loose objects), then the config blob is lost
    blob = git("-C", str(state / "repo"), "rev-parse", f"{sha}:{CFG}")
    (state / "repo" / "objects" / blob[:2] / blob[2:]).unlink()
    fetch, fetched = agent.mirror.fetch, []

    def fetch_once_unnoticed(remote: Remote, timeout: float) -> str:
        """This run's fetch does not notice (only a re-clone fetches again)."""
        fetched.append(remote)
        return sha if len(fetched) == 1 else fetch(remote, timeout)

    monkeypatch.setattr(agent.mirror, "fetch", fetch_once_unnoticed)
    result = agent.sync_once()
    assert result.result == "success" and read_status(state)["applied_revision"] == sha, result
    assert "version: 2.0.0" in served(state)


def test_submodule_at_the_config_path_is_refused(upstream, tmp_path):
    state = tmp_path / "state"
    agent = make_agent(upstream, state)
    agent.sync_once()
    other = upstream.head()
    git("rm", "-q", CFG, cwd=upstream.work)
    git("update-index", "--add", "--cacheinfo", f"160000,{other},{CFG}", cwd=upstream.work)
    git("commit", "-q", "-m", "config is a submodule", cwd=upstream.work)
    upstream.push()
    result = agent.sync_once()
    assert result.result == "rejected" and result.findings[0]["code"] == "E110" and "submodule" in result.error
